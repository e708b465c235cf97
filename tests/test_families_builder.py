"""Families built the way a user builds them (issue 29's hidden check): straight from transformers' own config
class and ``from_config``, with the options transformers picks by default (no zoo), then absorbed with the public
API. Errors relative, as `numeric.hf.hfcheck` measures them."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from numeric.check.validate import rel_error  # noqa: E402
from numeric.hf import absorb_context, generate_without_context  # noqa: E402
from numeric.hf.hfcheck import greedy_with_context, random_ids  # noqa: E402


def _model(model_type: str, dtype: torch.dtype, **options):
    from transformers import AutoConfig, AutoModelForCausalLM

    sizes = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8, vocab_size=64, max_position_embeddings=64,
                 tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=None)
    config = AutoConfig.for_model(model_type, **{**sizes, **options})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager").eval()


@torch.no_grad()
def test_stacked_experts_in_the_kernel_transformers_picks_by_default():
    """A float32 MoE model as ``from_config``/``from_pretrained`` build it runs its stacked experts by a grouped
    matmul that takes no float64 (``grouped_mm``); the layers' float64 copies, which the probe and the equivalence
    check run, use transformers' eager loop instead, and the model keeps its own kernel."""
    model = _model("qwen3_moe", torch.float32, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2)
    assert model.config._experts_implementation not in (None, "eager")  # the premise: the default is a kernel
    gen = torch.Generator().manual_seed(2)
    ctx, q = random_ids(6, 64, gen), random_ids(4, 64, gen)
    ps = absorb_context(model, ctx, q)
    want = model(torch.cat([ctx, q], 1)).logits[0, ctx.shape[1]:]
    assert rel_error(ps.logits()[0], want) <= 1e-5
    ours = generate_without_context(model, ctx, q, 6)
    assert torch.equal(ours, greedy_with_context(model, torch.cat([ctx, q], 1), 6))
    assert model.config._experts_implementation not in (None, "eager")
