"""Types `ctxpatch models` once refused, each for its own cause: one focused test per cause (moshi, kolibri1,
exaone4, roformer, gpt_oss), and the generation reference that the roformer fix showed wrong for the RoBERTa
family (camembert). Errors relative, as `numeric.hf.hfcheck` measures them."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from numeric.check.validate import rel_error  # noqa: E402
from numeric.hf import (  # noqa: E402
    PatchAccuracyWarning,  # noqa: E402
    absorb_context,
    generate_without_context,
)
from numeric.hf.compat import cached, kv_cache  # noqa: E402
from numeric.hf.hfcheck import greedy_with_context, random_ids, tiny_model  # noqa: E402
from numeric.hf.infer import infer  # noqa: E402
from numeric.hf.layout import layer_params  # noqa: E402
from numeric.hf.probe import Float64Mode  # noqa: E402
from numeric.hf.selection import block_patches, resolve  # noqa: E402
from symbolic.errors import ModelInputError, PatchConditionError  # noqa: E402


def _pair(c: int = 6, q: int = 5):
    gen = torch.Generator().manual_seed(2)
    return random_ids(c, 64, gen), random_ids(q, 64, gen)


@torch.no_grad()
def _errors(model, ps, ctx, q) -> tuple[float, float]:
    want = model(torch.cat([ctx, q], 1)).logits[0, ctx.shape[1]:]
    return rel_error(ps.logits()[0], want), rel_error(ps.materialized_logits()[0], want)


@torch.no_grad()
def test_the_factored_run_replays_the_cached_protocol_of_its_patches():
    """Moshi's cache keeps a sliding window that its one-pass causal mask does not apply: the query run in one
    pass and token by token differ beyond the window, and the patches fit the token-by-token u they were
    computed from."""
    model = tiny_model("moshi")
    ctx, q = _pair()
    one, cache, steps = model(q).logits, None, []
    for j in range(q.shape[1]):
        out = model(q[:, j:j + 1], **cached(model, cache))
        cache = kv_cache(out, model)
        steps.append(out.logits)
    window = model.config.sliding_window
    assert rel_error(torch.cat(steps, 1)[0, window:], one[0, window:]) > 1e-2  # the model's own two runs
    with Float64Mode():  # moshi's norms upcast to float32: widened, for round-off
        ps = absorb_context(model, ctx, q, computed_in="model")  # token by token through the cache
        assert ps.incremental
        factored, materialized = _errors(model, ps, ctx, q)
        assert factored <= 1e-12 and materialized <= 1e-12
        ps.incremental = False  # replayed in one pass, the patches meet another u: said, and measured
        with pytest.warns(PatchAccuracyWarning, match="factored"):
            assert _errors(model, ps, ctx, q)[0] > 1e-2


def test_a_moe_block_with_a_post_norm_gets_a_well_conditioned_strategy():
    """kolibri1: MoE with a post-norm, its norms and router in float32. Theorem 1's scale patch (norm_vector, once
    the only exact strategy here) amplifies their rounding about 40 times, which the factored run (patches from
    the model's states, applied to the kernel's) showed as 6.8e-6; rank-1 on the selected experts' W_down
    towards v = t / gamma with a scalar scale does not amplify."""
    model = tiny_model("kolibri1")
    ctx, q = _pair()
    ps = absorb_context(model, ctx, q)
    assert all(set(lp.strategies) == {"down_rank1_norm_scalar"} for lp in ps.layers)
    assert max(a for lp in ps.layers for a in lp.amplification) < 1
    factored, materialized = _errors(model, ps, ctx, q)
    assert factored <= 1e-6 and materialized <= 1e-5
    theorem1 = absorb_context(model, ctx, q, strategy="norm_vector")
    assert max(a for lp in theorem1.layers for a in lp.amplification) > 10
    with Float64Mode():
        assert max(_errors(model, absorb_context(model, ctx, q), ctx, q)) <= 1e-12


def test_a_token_the_context_has_not_reached_gets_the_identity_patch():
    """exaone4 (no pre-norm, sliding windows): a generated padding token whose window holds only padding has
    u = u_C = 0 at layer 0, where `z != 0` fails; with u = u_C the unpatched layer is exact."""
    model = tiny_model("exaone4")
    layout, kernels = resolve(model)
    kernel = next(iter(kernels[layout[0].spec].values()))
    params = layer_params(model.model.layers[0], layout[0])
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(3, 32, generator=gen, dtype=torch.float64)
    target = u + 0.1 * torch.randn(3, 32, generator=gen, dtype=torch.float64)
    u[0], target[0], target[2] = 0.0, 0.0, u[2]
    with pytest.raises(PatchConditionError):
        kernel.block_patches(params, u, target)
    patches = block_patches(kernel, params, u, target)
    y, want = kernel.apply(params, patches, u), kernel.forward(params, target)
    assert float(y[0].abs().max()) == 0 and rel_error(y[1:], want[1:]) <= 1e-12  # row 0: u = u_C = 0, y = 0
    assert all(float(v[[0, 2]].abs().max()) == 0 for fields in patches.values() for f, v in fields.items()
               if f != "scale")
    with pytest.raises(PatchConditionError, match="token 1"):  # a token it has reached keeps its condition
        block_patches(kernel, params, torch.stack([u[2], 0 * u[1]]), torch.stack([u[2], target[1]]))


@torch.no_grad()
def test_the_context_reaches_the_logits_of_a_tiny_post_ln_model():
    """roformer: rotary positions (no offset effect), a LayerNorm after every add, an output head with a bias.
    That bias perturbed at 0.3, against head outputs of about 0.1, hid the context: logits moved by 9.3e-4.
    The zoo leaves it at its init (zero); every other bias is perturbed."""
    model = tiny_model("roformer")
    head = model.get_output_embeddings().bias
    assert float(head.abs().max()) == 0
    assert all(float(p.abs().min()) > 0 for n, p in model.named_parameters() if n.endswith(".bias") and p is not head)
    ctx, q = _pair()
    assert rel_error(model(q).logits[0], model(torch.cat([ctx, q], 1)).logits[0, 6:]) >= 1e-3


def test_gpt_oss_experts_interleaved_transposed_with_biases():
    """gpt-oss: gate_up_proj (E, d, 2m) with gate and up interleaved, biases, a clamped GLU, a router bias; the
    storage read from transformers' declaration (is_transposed, is_concatenated)."""
    model = tiny_model("gpt_oss")
    assert all(float(p.detach().abs().min()) > 0 for n, p in model.named_parameters() if n.endswith("_proj_bias"))
    layout = infer(model)
    adapter = layout[0]
    assert {c: p.layout for c, p in adapter.params.items() if c.startswith("experts.")} == {
        "experts.W_gate": "tcols_even", "experts.W_up": "tcols_odd", "experts.W_down": "t",
        "experts.b_gate": "even", "experts.b_up": "odd", "experts.b_down": "linear"}
    assert adapter.spec.moe.expert_bias and adapter.spec.moe.router_bias
    assert adapter.spec.mlp.up_activation == "Max(-7.0, Min(x, 7.0)) + 1"
    ctx, q = _pair()
    with Float64Mode():
        ps = absorb_context(model, ctx, q)
        assert max(_errors(model, ps, ctx, q)) <= 1e-12
    for layer in model.model.layers:  # misdeclared as concatenated halves: the check refuses every spec
        layer.mlp.experts.is_concatenated = True
    with pytest.raises(ModelInputError, match="no spec reproduces"):
        infer(model)


@torch.no_grad()
def test_generation_is_compared_in_the_models_default_positions():
    """camembert (RoBERTa family) counts positions from padding_idx + 1 by default; ``model.generate`` passes
    0-based position_ids, so it generated other tokens than the default forward that the patches reproduce
    (hidden while the head's bias swamped the logits). The reference is the default forward's greedy run."""
    model = tiny_model("camembert")
    ctx, q = _pair(6, 3)
    ids = torch.cat([ctx, q], 1)
    ref = greedy_with_context(model, ids, 8)
    assert torch.equal(generate_without_context(model, ctx, q, 8), ref)
    n, zero_based = ids.shape[1], []  # what model.generate feeds: position_ids from 0
    out = model(ids, position_ids=torch.arange(n)[None], use_cache=True)
    for i in range(8):
        zero_based.append(out.logits[:, -1].argmax(-1, keepdim=True))
        out = model(zero_based[-1], position_ids=torch.tensor([[n + i]]), **cached(model, kv_cache(out, model)))
    assert not torch.equal(torch.cat(zero_based, 1), ref)
