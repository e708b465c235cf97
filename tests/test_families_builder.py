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


def _bamba(dtype: torch.dtype):
    return _model("bamba", dtype, attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8,
                  mamba_n_groups=1, mamba_chunk_size=8, experts_implementation=None)


@torch.no_grad()
def test_a_model_whose_cached_step_restarts_its_positions_is_stepped_at_its_own_positions():
    """Bamba's forward (transformers 5.25) counts a call's positions from 0 even after its cache: its own run
    token by token put every token at position 0, 2.4e-4 from its run of the whole sequence in float64. The
    token-by-token runs (the patches written into its modules, generation) give a cached step its position,
    and generation is `model.generate`'s with the context (which passes positions too)."""
    from numeric.hf.compat import explicit_step_positions

    model = _bamba(torch.float64)
    assert explicit_step_positions(model)
    gen = torch.Generator().manual_seed(2)
    ctx, q = random_ids(6, 64, gen), random_ids(5, 64, gen)
    ps = absorb_context(model, ctx, q)
    want = model(torch.cat([ctx, q], 1)).logits[0, ctx.shape[1]:]
    assert rel_error(ps.logits()[0], want) <= 1e-6
    assert rel_error(ps.materialized_logits()[0], want) <= 1e-5
    model = _bamba(torch.float32)
    ids = torch.cat([ctx, q], 1)
    ref = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, eos_token_id=None,
                         pad_token_id=0)[:, ids.shape[1]:]
    assert torch.equal(generate_without_context(model, ctx, q, 8), ref)


@pytest.mark.parametrize("model_type", ["llama", "roberta"])
def test_a_model_that_counts_a_cached_steps_positions_keeps_its_default(model_type):
    """Llama counts a cached step's positions from its past; RoBERTa from ``padding_idx + 1``: explicit 0-based
    positions would move it. Neither is given positions."""
    from numeric.hf.compat import explicit_step_positions

    options = {"is_decoder": True, "pad_token_id": 1} if model_type == "roberta" else {}
    assert not explicit_step_positions(_model(model_type, torch.float64, **options))


def test_the_models_table_header_says_how_the_tiny_models_are_built():
    """MODELS.md's header is generated: the layers a tiny model has (every kind of the family's stack, at most
    `MAX_LAYERS`), and the bounds a `supported` row met, as `SUPPORT` has them (not rounded to another one)."""
    from numeric.hf.hfcheck import SUPPORT, models_markdown
    from numeric.hf.zoo_layers import MAX_LAYERS

    head = models_markdown([], {"types": 0, "supported": 0, "refused": 0, "bounds": SUPPORT}).split("\n")[2]
    assert f"at most {MAX_LAYERS}" in head and "every kind" in head and "(2 layers," not in head
    assert f"factored error <= {SUPPORT['factored']:.1e}" in head
    assert f"materialized error <= {SUPPORT['materialized']:.1e}" in head


def test_a_float64_model_whose_experts_kernel_takes_no_float64_is_refused_by_name():
    """transformers' default kernel for stacked experts (``grouped_mm``) takes no float64, so such a model cannot
    run its own forward in float64: refused before any run, naming the kernel and the option that fixes it."""
    from symbolic.errors import ModelInputError

    model = _model("qwen3_moe", torch.float64, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2)
    with pytest.raises(ModelInputError, match="'grouped_mm' kernel, which takes no float64.*"
                                              "experts_implementation='eager'"):
        absorb_context(model, torch.tensor([[3, 4, 5]]), torch.tensor([[6, 7]]))
