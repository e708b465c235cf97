"""The spec language where real models need it (issue 14, item 4): each extension's spec fields, and
its generated kernel against the transformers module it models, in float64, with an explicit map
from canonical parameter names to the module's own parameters.

Module comparisons feed the MLP sub-block's input z (after the pre-norm) to the module and compare with
the kernel's branch output ``forward(params, u) - u`` with ``z = pre_norm(u)``: transformers computes its
RMSNorms in float32 even in a float64 model, and the norm is not what these tests are about.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings

import numpy
import pytest
import torch

from numeric import kernels
from numeric.check.reference import norm, select
from numeric.kernels import runtime
from symbolic import catalog
from symbolic.controllability import check
from symbolic.errors import PatchConditionError, SpecError
from symbolic.spec import MoESpec, dump_toml, loads_toml

transformers = pytest.importorskip("transformers")


def _rel(a, b) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _seeded(seed: int) -> torch.Generator:
    print(f"seed {seed}")
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def float64_routers(model_type: str):
    """Run the module's own code with its router's float32 casts made float64.

    The DeepSeek-V3 family computes router logits and scores in float32 even in a float64 model
    (``F.linear(hidden_states.type(torch.float32), ...)``): the module's output then agrees with any
    float64 computation to ~1e-7 only. To compare the rest bit for bit, the module's `torch` global is
    replaced by a proxy whose `float32` is `float64` (everything else is torch itself).
    """
    module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")

    class Torch64:
        float32 = torch.float64
        float = torch.float64

        def __getattr__(self, name):
            return getattr(torch, name)

    saved = module.torch
    module.torch = Torch64()
    try:
        yield
    finally:
        module.torch = saved


# --------------------------------------------------------------------------- 1. DeepSeek-V3 routing


DEEPSEEK_TEXT = catalog.text("deepseek_v3")


def test_deepseek_fields_round_trip_and_defaults():
    spec = catalog.load("deepseek_v3")
    m = spec.moe
    assert (m.scoring, m.selection_bias, m.groups, m.topk_groups, m.routed_scale) == ("sigmoid", True, 8, 4, 2.5)
    assert loads_toml(dump_toml(spec)) == spec
    plain = catalog.load("qwen3_moe")
    assert "scoring" not in dump_toml(plain) and loads_toml(dump_toml(plain)) == plain


@pytest.mark.parametrize(("old", "new", "words"), [
    ("groups = 8", "groups = 7", "divide experts"),
    ("topk_groups = 4", "topk_groups = 9", "topk_groups"),
    ("routed_scale = 2.5", "routed_scale = 0.0", "routed_scale"),
    ('scoring = "sigmoid"', 'scoring = "tanh"', "scoring"),
    ('softmax = "before_topk"', 'softmax = "after_topk"', "after_topk"),
    ("top_k = 8", "top_k = 200", "from 1 to 128"),
    ("selection_bias = true", "selection_bias = 1", "selection_bias"),
])
def test_deepseek_fields_bad_values_are_named(old, new, words):
    assert old in DEEPSEEK_TEXT
    with pytest.raises(SpecError) as exc:
        loads_toml(DEEPSEEK_TEXT.replace(old, new), "ds.toml")
    assert "ds.toml" in str(exc.value) and words in str(exc.value)


def test_top_k_may_not_exceed_the_experts_of_the_chosen_groups():
    text = DEEPSEEK_TEXT.replace("top_k = 8", "top_k = 100").replace("topk_groups = 4", "topk_groups = 2")
    with pytest.raises(SpecError, match="top_k=100 exceeds the experts of the topk_groups=2 chosen groups"):
        loads_toml(text, "ds.toml")


def test_groups_need_two_experts_each():
    with pytest.raises(ValueError, match="two best experts"):
        MoESpec(experts=8, top_k=2, groups=8, topk_groups=4)


def test_routed_scale_divides_the_routed_share_and_not_the_shared_expert():
    """delta / (rho |a_C^(e)|^2): the renormalized gates sum to one, rho scales only the routed sum."""
    d = check(catalog.load("deepseek_v3")).derivation
    text = str(d.formula("experts.W_down").value)
    assert "rho" in text and "delta" in text
    assert "shared.W_down" not in {p.param for p in d.patches}


def test_routing_runtime_matches_the_reference_router():
    """The kernels' runtime router (both back ends) chooses and weighs as `numeric.check.reference.select`."""
    spec = catalog.load("deepseek_v3")
    gen = _seeded(11)
    E = 24
    logits = torch.randn(50, E, generator=gen, dtype=torch.float64)
    bias = 0.3 * torch.randn(E, generator=gen, dtype=torch.float64)
    routing = runtime.Routing("sigmoid", spec.moe.groups, spec.moe.topk_groups)
    idx, scores = select(spec, logits, bias)
    want = torch.zeros(50, E, dtype=torch.float64).scatter_(1, idx, scores)
    got = runtime.route(logits[:, None, :], spec.moe.top_k, routing, bias)[..., 0]
    assert torch.equal(got > 0, want > 0) and torch.allclose(got, want, rtol=1e-15, atol=0)
    got_np = torch.from_numpy(runtime.route(logits[:, None, :].numpy(), spec.moe.top_k, routing, bias.numpy())[..., 0])
    assert torch.equal(got_np > 0, want > 0) and torch.allclose(got_np, want, rtol=1e-15, atol=0)
    no_groups = torch.zeros(50, E, dtype=torch.float64).scatter_(1, (torch.sigmoid(logits) + bias).topk(8)[1], 1.0)
    assert not torch.equal((got > 0).double(), no_groups)  # the group limit changes the choice


def test_a_near_tie_between_groups_is_refused():
    """Two groups whose scores tie decide the choice by round-off: the token is refused, naming groups."""
    routing = runtime.Routing("sigmoid", groups=4, topk_groups=2)
    zero = torch.zeros(8, dtype=torch.float64)
    eye = torch.eye(8, dtype=torch.float64)  # a router W = I reading the logits themselves as z_C = z

    def margin(ell):
        runtime.require_topk_margin(ell, 3, "0", routing, zero, roundoff=runtime.router_roundoff(eye, ell, ell, ell))

    margin(torch.tensor([[3.0, 2.0, -1, -1, 1.0, 0.5, 0.0, 0.0]], dtype=torch.float64)[:, None, :])  # groups 1, 3
    tied = torch.tensor([[3.0, 2.0, 1.0, 0.5, -1, -1, 1.0, 0.5]], dtype=torch.float64)[:, None, :]
    with pytest.raises(PatchConditionError) as exc:  # groups 2 and 4 tie for the second place
        margin(tied)
    assert "group" in str(exc.value) and exc.value.tokens == [0]


#: Model types whose MoE block is DeepSeek-V3's (sigmoid router with selection bias, groups, scaled routed
#: sum, ungated shared expert), checked module against kernel below; `hf_model_types` of the catalog entry.
DEEPSEEK_TYPES = catalog.load("deepseek_v3").hf_model_types

TINY = dict(hidden_size=32, intermediate_size=48, moe_intermediate_size=16, n_routed_experts=24, num_local_experts=24,
            num_experts=24, num_experts_per_tok=8, n_group=8, topk_group=4, n_shared_experts=1,
            routed_scaling_factor=2.5, norm_topk_prob=True, first_k_dense_replace=0, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=4, head_dim=8, vocab_size=64, hidden_act="silu",
            kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, rms_norm_eps=1e-6)


def _tiny_layer(model_type: str, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, **{**TINY, **overrides})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float64, attn_implementation="eager",
                                                 experts_implementation="eager")
    return model.model.layers[0]


def _randomize(module: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for _, t in [*module.named_parameters(), *module.named_buffers()]:
            t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * t.shape[-1] ** -0.5)


def deepseek_params(layer) -> dict[str, torch.Tensor]:
    """Canonical names -> the DeepSeek-V3 decoder layer's tensors (gate_up_proj: gate rows first), in the
    layer's dtype (transformers >= 5.24 keeps the router's weight and bias in float32: `hf.layer_params`)."""
    moe, m = layer.mlp, layer.mlp.experts.down_proj.shape[-1]
    dtype = moe.experts.down_proj.dtype
    return {k: v.to(dtype) for k, v in {
        "mlp_pre_norm.scale": layer.post_attention_layernorm.weight,
        "W_router": moe.gate.weight,
        "b_select": moe.gate.e_score_correction_bias,
        "experts.W_gate": moe.experts.gate_up_proj[:, :m],
        "experts.W_up": moe.experts.gate_up_proj[:, m:],
        "experts.W_down": moe.experts.down_proj,
        "shared.W_gate": moe.shared_experts.gate_proj.weight,
        "shared.W_up": moe.shared_experts.up_proj.weight,
        "shared.W_down": moe.shared_experts.down_proj.weight,
    }.items()}


@pytest.mark.parametrize("model_type", DEEPSEEK_TYPES)
def test_deepseek_kernel_is_the_transformers_moe_block(model_type):
    spec = catalog.load("deepseek_v3")
    layer = _tiny_layer(model_type)
    _randomize(layer, _seeded(len(model_type)))
    params = {k: v.detach() for k, v in deepseek_params(layer).items()}
    u = torch.randn(6, 32, generator=_seeded(5), dtype=torch.float64)
    z = norm(spec.mlp.pre_norm, params["mlp_pre_norm.scale"], None, u)
    k = kernels.load("deepseek_v3", "torch")
    branch = k.forward(params, u) - u
    with torch.no_grad(), float64_routers(model_type):
        exact = layer.mlp(z[None])[0]
    assert _rel(branch, exact) <= 1e-12, _rel(branch, exact)
    with torch.no_grad():
        as_shipped = layer.mlp(z[None])[0]
        assert _rel(layer.post_attention_layernorm(u), z) <= 1e-6  # the pre-norm is a plain RMSNorm (float32 inside)
    assert _rel(branch, as_shipped) <= 1e-6  # the float32 router is the floor
    unbiased = k.forward({**params, "b_select": torch.zeros_like(params["b_select"])}, u) - u
    assert _rel(unbiased, exact) > 1e-3  # the selection bias is modelled, not ignored


# --------------------------------------------------------------------------- 2. the branch multiplier


def test_branch_scale_round_trips_and_must_be_nonzero():
    spec = catalog.load("granite")
    assert spec.mlp.branch_scale == 0.22 and loads_toml(dump_toml(spec)) == spec
    with pytest.raises(SpecError) as exc:
        loads_toml(catalog.text("granite").replace("branch_scale = 0.22", "branch_scale = 0"), "g.toml")
    assert "g.toml" in str(exc.value) and "branch_scale" in str(exc.value) and "nonzero" in str(exc.value)


def test_branch_scale_is_solved_for_not_special_cased():
    """The output strategies aim at t with c_branch t = o_C + delta: a derivation step, and 1 / c_branch in
    every output patch (W_down here; the post-norm scale of a Gemma block with a branch scale)."""
    d = check(catalog.load("granite")).derivation
    assert any(st.what.startswith("branch scale") for st in d.steps)
    assert "c_branch" in str(d.formula("W_down").value)
    gemma = loads_toml(catalog.text("gemma3").replace("[mlp]\n", "[mlp]\nbranch_scale = -3.0\n"))
    assert gemma.mlp.branch_scale == -3.0
    v = check(gemma)
    assert v.perfect_patch and str(v.derivation.formula("mlp_post_norm.scale").value) == "delta/(c_branch*f_C)"


def test_branch_scale_with_a_post_norm_reproduces_the_contextual_run():
    from numeric.check.lambdified import check_instance, random_instance
    from numeric.check.reference import random_params
    from symbolic.derive import Deriver

    text = catalog.text("gemma3").replace('name = "gemma3"', 'name = "scaled_gemma"')
    text = text.replace("[mlp]\n", "[mlp]\nbranch_scale = -3.0\n")
    spec = loads_toml(text)
    gen = _seeded(3)
    params = random_params(spec, 5, 7, gen)
    for outs in check(spec).output.ok:
        der = Deriver(spec).derive("rank1", outs)
        err = check_instance(spec, der, params, random_instance(spec, 5, gen))
        assert err["output"] < 1e-12 and err["unpatched"] > 1e-2, (outs, err)


def _granite_layer(model_type: str, **overrides):
    return _tiny_layer(model_type, **{"residual_multiplier": 0.22, "num_local_experts": 8, "num_experts_per_tok": 3,
                                      **overrides})


def test_granite_kernel_is_the_transformers_mlp_branch():
    """residual + mlp(post_attention_layernorm(residual)) * residual_multiplier, in float64 to round-off."""
    layer = _granite_layer("granite", rms_norm_eps=1e-5)
    _randomize(layer, _seeded(21))
    params = {"mlp_pre_norm.scale": layer.post_attention_layernorm.weight, "W_gate": layer.mlp.gate_proj.weight,
              "W_up": layer.mlp.up_proj.weight, "W_down": layer.mlp.down_proj.weight}
    params = {k: v.detach() for k, v in params.items()}
    u = torch.randn(6, 32, generator=_seeded(22), dtype=torch.float64)
    z = norm(catalog.load("granite").mlp.pre_norm, params["mlp_pre_norm.scale"], None, u)
    with torch.no_grad():
        want = layer.mlp(z[None])[0] * layer.residual_multiplier
    got = kernels.load("granite", "torch").forward(params, u) - u
    assert layer.residual_multiplier == catalog.load("granite").mlp.branch_scale
    assert _rel(got, want) <= 1e-12, _rel(got, want)


def test_granitemoe_kernel_is_the_transformers_moe_branch():
    """GraniteMoE rounds its router logits to float32 (``.float()``) even in float64: 1e-6 is the floor;
    the rest (softmax over the top-k, stacked experts, the multiplier) is checked through it."""
    from dataclasses import replace

    from symbolic.codegen import render

    layer = _granite_layer("granitemoe")
    _randomize(layer, _seeded(23))
    moe = layer.block_sparse_moe
    m = moe.experts.down_proj.shape[-1]
    params = {"mlp_pre_norm.scale": layer.post_attention_layernorm.weight, "W_router": moe.router.weight,
              "experts.W_gate": moe.experts.gate_up_proj[:, :m], "experts.W_up": moe.experts.gate_up_proj[:, m:],
              "experts.W_down": moe.experts.down_proj}
    params = {k: v.detach() for k, v in params.items()}
    spec = catalog.load("granitemoe")
    spec = replace(spec, moe=replace(spec.moe, experts=8, top_k=3))  # the tiny module's routing
    ns: dict = {}
    exec(compile(render(spec, "torch"), "granitemoe_tiny", "exec"), ns)  # noqa: S102 - the generated kernel
    u = torch.randn(6, 32, generator=_seeded(24), dtype=torch.float64)
    z = norm(spec.mlp.pre_norm, params["mlp_pre_norm.scale"], None, u)
    with torch.no_grad():
        want = moe(z[None])[0] * layer.residual_multiplier
    got = ns["forward"](params, u) - u
    assert _rel(got, want) <= 1e-6, _rel(got, want)


# --------------------------------------------------------------------------- 3. LayerNorm with 1 + w


def test_nemotron_kernel_is_the_transformers_mlp_branch():
    """NemotronLayerNorm1P is a LayerNorm with bias and gamma = 1 + w (computed in the input's dtype): the
    whole branch, norm included, agrees to float64 round-off."""
    spec = catalog.load("nemotron")
    assert (spec.mlp.pre_norm.kind, spec.mlp.pre_norm.scale, spec.mlp.pre_norm.bias) == ("layer", "one_plus", True)
    layer = _tiny_layer("nemotron", norm_eps=1e-5, hidden_act="relu2")
    _randomize(layer, _seeded(31))
    ln = layer.post_attention_layernorm
    params = {"mlp_pre_norm.scale": ln.weight, "mlp_pre_norm.bias": ln.bias, "W_up": layer.mlp.up_proj.weight,
              "W_down": layer.mlp.down_proj.weight}
    params = {k: v.detach() for k, v in params.items()}
    u = torch.randn(6, 32, generator=_seeded(32), dtype=torch.float64)
    with torch.no_grad():
        want = u + layer.mlp(ln(u))
    k = kernels.load("nemotron", "torch")
    assert _rel(k.forward(params, u), want) <= 1e-12, _rel(k.forward(params, u), want)
    plain_w = {**params, "mlp_pre_norm.scale": params["mlp_pre_norm.scale"] + 1}  # gamma = w would be wrong
    assert _rel(k.forward(plain_w, u), want) > 1e-3


# --------------------------------------------------------------------------- 4. a router bias


def _router_bias_spec():
    text = catalog.text("mixtral").replace('name = "mixtral"', 'name = "mixtral_router_bias"')
    return loads_toml(text.replace('expert = "gated"', 'expert = "gated"\nrouter_bias = true'))


def test_router_bias_is_an_input_bias_of_the_router():
    """logits = W_router z + b_router: rank-1 on W_router leaves b_router alone; the bias strategy patches
    b_router by W_router (z_C - z). Both validate on 4-layer stacks (the reference adds b_router itself)."""
    from numeric.check.validate import Setup, validate

    spec = _router_bias_spec()
    assert loads_toml(dump_toml(spec)) == spec and "b_router" in dict(check(spec).derivation.symbols)
    v = check(spec)
    assert {"rank1", "bias"} <= set(v.input.ok)
    bias = v.derivation_for(None, "bias")
    assert bias.formula("b_router").kind == "bias" and "W_router" in str(bias.formula("b_router").value)
    for ins in ("rank1", "bias"):
        out = validate(spec, Setup(layers=2, input_strategy=ins), trials=1)
        assert out["max_rel_error"] <= 1e-12 and out["unpatched_rel_error"] > 1e-2, (ins, out)


# --------------------------------------------------------------------------- 5. a norm before W_down


def _float64_module_call(fn, *args):
    """Call a transformers module with its float32 upcasts widened to float64 (`numeric.hf.probe.Float64Mode`)."""
    from numeric.hf.probe import Float64Mode

    with torch.no_grad(), Float64Mode():
        return fn(*args)


def _zoo_layer(model_type: str, gen: torch.Generator, **overrides):
    """Layer 0 of a tiny float64 `model_type` (numeric.hf.zoo's sizes) with every parameter randomized."""
    from transformers import AutoModelForCausalLM

    from numeric.hf.zoo import tiny_config

    cfg = tiny_config(model_type, layers=1)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float64, attn_implementation="eager",
                                                 experts_implementation="eager")
    layer = model.model.layers[0]
    with torch.no_grad():
        for _, t in layer.named_parameters():
            t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * (t.shape[-1] ** -0.5 if t.dim() > 1 else 0.3)
                    + (1.0 if t.dim() == 1 else 0.0))
    return layer


def test_mid_norm_round_trips_and_is_refused_for_moe():
    spec = catalog.load("bitnet")
    assert spec.mlp.mid_norm is not None and spec.mlp.mid_norm.kind == "rms"
    assert loads_toml(dump_toml(spec)) == spec and "mid_norm" not in dump_toml(catalog.load("llama"))
    with pytest.raises(SpecError) as exc:
        loads_toml(catalog.text("mixtral").replace("[mlp]\n", '[mlp]\nmid_norm = "rms"\n'), "m.toml")
    assert "m.toml" in str(exc.value) and "mid_norm" in str(exc.value) and "'gated'" in str(exc.value)
    with pytest.raises(SpecError) as exc:
        loads_toml(catalog.text("bitnet").replace('mid_norm = "rms"', 'mid_norm = "batch"'), "b.toml")
    assert "mlp.mid_norm" in str(exc.value) and "'layer'" in str(exc.value)


def test_mid_norm_parameters_have_the_mlp_width_and_w_down_acts_on_the_normalized_activations():
    from symbolic.model import Block

    spec = catalog.load("bitnet")
    assert Block(spec).params["mlp_mid_norm.scale"].symbol.dim == "m"
    d = check(spec).derivation
    down = d.formula("W_down")
    assert str(down.right) == "ahat_C" and "ahat_C" in str(down.value)
    assert dict(d.definitions)["ahat_C"].has(Block(spec).params["mlp_mid_norm.scale"].symbol)
    assert [c.text() for c in d.conditions] == ["z != 0", "ahat_C != 0"]
    no_eps = loads_toml(catalog.text("bitnet").replace('mid_norm = "rms"', 'mid_norm = { kind = "rms", eps = 0.0 }'))
    assert "a_C != 0" in [c.text() for c in check(no_eps).derivation.conditions]


def test_mid_norm_alone_on_the_output_side_is_undecided_not_refuted():
    """With W_down and b_down frozen, only the mid-norm's scale acts after a_C: exact iff W_down diag(f(a_C)) has
    rank d (m >= d, weights permitting). ctxpatch says undecided; with W_down allowed it patches W_down."""
    text = catalog.text("bitnet") + '\n[patch]\nallow = ["W_gate", "W_up", "mlp_mid_norm.scale"]\n'
    with pytest.raises(SpecError) as exc:
        check(loads_toml(text, "frozen_down.toml"))
    assert "undecided" in str(exc.value) and "mlp_mid_norm.scale" in str(exc.value)
    frozen = loads_toml(text.replace('"mlp_mid_norm.scale"', '"W_down"'))
    assert check(frozen).perfect_patch
    no_output = loads_toml(catalog.text("bitnet") + '\n[patch]\nallow = ["W_gate", "W_up"]\n')
    v = check(no_output)
    assert not v.output_controllable and v.counterexample["reason"] == "fixed"


def test_mid_norm_layernorm_with_bias_validates_on_layer_stacks():
    """A dense MLP with a LayerNorm (bias) on its hidden activations, down bias and W_down strategies."""
    from numeric.check.validate import Setup, validate

    text = catalog.text("gpt2").replace('name = "gpt2"', 'name = "gpt2_mid"')
    spec = loads_toml(text.replace("[mlp]\n", '[mlp]\nmid_norm = { kind = "layer", eps = 1e-5, bias = true }\n'))
    assert {"mlp_mid_norm.scale", "mlp_mid_norm.bias"} <= set(dict(check(spec).derivation.symbols))
    for outs in ("down_bias", "down_rank1"):
        out = validate(spec, Setup(layers=2, strategy=outs), trials=1)
        assert out["max_rel_error"] <= 1e-12 and out["unpatched_rel_error"] > 1e-2, (outs, out)


def bitnet_params(layer) -> dict[str, torch.Tensor]:
    """Canonical names -> BitNetDecoderLayer's tensors (nn.Linear weights, (out, in))."""
    mlp = layer.mlp
    return {"mlp_pre_norm.scale": layer.post_attention_layernorm.weight, "W_gate": mlp.gate_proj.weight,
            "W_up": mlp.up_proj.weight, "W_down": mlp.down_proj.weight, "mlp_mid_norm.scale": mlp.ffn_sub_norm.weight}


def test_bitnet_kernel_is_the_transformers_mlp_branch():
    """u + mlp(post_attention_layernorm(u)) with ffn_sub_norm before down_proj, in float64 to round-off (the
    unquantized BitNet's linears are plain nn.Linear: no weight quantization in forward)."""
    layer = _zoo_layer("bitnet", _seeded(41))
    assert type(layer.mlp.down_proj) is torch.nn.Linear
    params = {k: v.detach() for k, v in bitnet_params(layer).items()}
    u = torch.randn(6, 32, generator=_seeded(42), dtype=torch.float64)
    want = _float64_module_call(lambda v: v + layer.mlp(layer.post_attention_layernorm(v)), u)
    k = kernels.load("bitnet", "torch")
    assert _rel(k.forward(params, u), want) <= 1e-12, _rel(k.forward(params, u), want)
    flat = {**params, "mlp_mid_norm.scale": torch.ones_like(params["mlp_mid_norm.scale"])}
    assert _rel(k.forward(flat, u), want) > 1e-3  # the mid-norm's scale is read, not ignored
    ctx = torch.randn(6, 32, generator=_seeded(43), dtype=torch.float64)
    patches = k.block_patches(params, u, ctx)
    assert _rel(k.apply(params, patches, u), k.forward(params, ctx)) <= 1e-12


def test_up_only_is_not_generic_for_a_relu_gate():
    """a_C / sigma(W_gate z) needs every gate coordinate nonzero: a null-set condition for SiLU, but ReLU^2
    vanishes on a half-line (half the coordinates of a random token), so the strategy is restricted there."""
    r = check(catalog.load("bitnet")).input.restrictions["up_only"]
    assert r.reason == "unsolvable" and "vanishes on" in r.invariant and "0" in r.invariant
    assert "up_only" in check(catalog.load("llama")).input.ok


# --------------------------------------------------------------------------- 6. gpt-oss


def gpt_oss_params(layer) -> dict[str, torch.Tensor]:
    """Canonical names -> GptOssDecoderLayer's tensors. The experts store x @ W (E, in, out) with gate and up
    interleaved in the last axis: gate_up_proj (E, d, 2m), gate = [..., ::2], up = [..., 1::2] (biases likewise,
    gate_up_proj_bias (E, 2m)); down_proj (E, m, d), down_proj_bias (E, d). Canonical layout: (E, out, in)."""
    mlp = layer.mlp
    gu, gub = mlp.experts.gate_up_proj, mlp.experts.gate_up_proj_bias
    return {"mlp_pre_norm.scale": layer.post_attention_layernorm.weight,
            "W_router": mlp.router.weight, "b_router": mlp.router.bias,
            "experts.W_gate": gu[..., ::2].transpose(1, 2), "experts.b_gate": gub[..., ::2],
            "experts.W_up": gu[..., 1::2].transpose(1, 2), "experts.b_up": gub[..., 1::2],
            "experts.W_down": mlp.experts.down_proj.transpose(1, 2), "experts.b_down": mlp.experts.down_proj_bias}


def test_gpt_oss_fields_round_trip_and_are_checked():
    spec = catalog.load("gpt_oss")
    assert spec.moe.expert_bias and spec.moe.router_bias and spec.mlp.up_activation != "identity"
    assert loads_toml(dump_toml(spec)) == spec
    assert {"experts.b_gate", "experts.b_up", "experts.b_down"} <= set(dict(check(spec).derivation.symbols))
    with pytest.raises(SpecError) as exc:
        loads_toml(catalog.text("gpt2").replace("[mlp]\n", '[mlp]\nup_activation = "tanh"\n'), "g.toml")
    assert "g.toml" in str(exc.value) and "up_activation" in str(exc.value) and "gated" in str(exc.value)
    with pytest.raises(SpecError) as exc:
        loads_toml(catalog.text("mixtral").replace("bias = false", "bias = true"), "x.toml")
    assert "moe.expert_bias" in str(exc.value)


def test_up_activation_is_inverted_or_refused_by_the_one_map_strategies():
    """psi(p) = clamp(p, -7, 7) + 1 is bounded, so W_up alone cannot reach a generic a_C (up_only restricted
    by psi's range); gate_only still divides by psi(p), whose zero set {-1} is null."""
    text = catalog.text("llama").replace("[mlp]\n", '[mlp]\nup_activation = "Max(-7.0, Min(x, 7.0)) + 1"\n')
    v = check(loads_toml(text))
    r = v.input.restrictions["up_only"]
    assert r.reason == "range" and r.stage == "up_activation"
    assert v.perfect_patch and "rank1" in v.input.ok
    sinh_up = check(loads_toml(catalog.text("llama").replace("[mlp]\n", '[mlp]\nup_activation = "sinh(x)"\n')))
    assert "up_only" in sinh_up.input.ok  # sinh is onto: up_only inverts it (asinh, the real branch)
    # x**3 is onto too, but SymPy's inverses are complex roots (t**(1/3) at t < 0): undecided, never a complex patch
    cube_up = check(loads_toml(catalog.text("llama").replace("[mlp]\n", '[mlp]\nup_activation = "x**3"\n')))
    assert cube_up.input.restrictions["up_only"].reason == "undecided"


def test_gpt_oss_kernel_is_the_transformers_moe_branch():
    """u + GptOssMLP(post_attention_layernorm(u)) in float64 to round-off: router bias, softmax over the top-4
    logits, interleaved gate/up with biases, the clamped GLU (exercised: the weights are scaled so that the
    clamps at +-7 bind), expert down biases."""
    spec = catalog.load("gpt_oss")
    layer = _zoo_layer("gpt_oss", _seeded(51), num_local_experts=8, num_experts_per_tok=spec.moe.top_k)
    assert (layer.mlp.experts.alpha, layer.mlp.experts.limit) == (1.702, 7.0)
    with torch.no_grad():
        layer.mlp.experts.gate_up_proj.mul_(12.0)  # pre-activations ~ N(0, 12^2): many beyond +-7
    params = {k: v.detach() for k, v in gpt_oss_params(layer).items()}
    u = torch.randn(6, 32, generator=_seeded(52), dtype=torch.float64)
    z = norm(spec.mlp.pre_norm, params["mlp_pre_norm.scale"], None, u)
    gate = torch.einsum("emd,td->tem", params["experts.W_gate"], z) + params["experts.b_gate"]
    up = torch.einsum("emd,td->tem", params["experts.W_up"], z) + params["experts.b_up"]
    assert float((gate > 7).double().mean()) > 0.1 and float((up.abs() > 7).double().mean()) > 0.1
    want = _float64_module_call(lambda v: v + layer.mlp(layer.post_attention_layernorm(v)[None])[0][0], u)
    k = kernels.load("gpt_oss", "torch")
    assert _rel(k.forward(params, u), want) <= 1e-12, _rel(k.forward(params, u), want)
    m = params["experts.b_up"].shape[-1]
    halves = {**params, "experts.W_gate": layer.mlp.experts.gate_up_proj[..., :m].transpose(1, 2).detach()}
    assert _rel(k.forward(halves, u), want) > 1e-3  # the interleaving is what the module reads
    no_bias = {**params, "experts.b_down": torch.zeros_like(params["experts.b_down"])}
    assert _rel(k.forward(no_bias, u), want) > 1e-3
    ctx = torch.randn(6, 32, generator=_seeded(53), dtype=torch.float64)
    assert _rel(k.apply(params, k.block_patches(params, u, ctx), u), k.forward(params, ctx)) <= 1e-12


# --------------------------------------------------------------------------- 7. Llama 4


def llama4_params(layer) -> dict[str, torch.Tensor]:
    """Canonical names -> Llama4TextDecoderLayer's tensors (an MoE layer). The experts store x @ W (E, in, out):
    gate_up_proj (E, d, 2m) concatenated, gate = [..., :m], up = [..., m:]; down_proj (E, m, d). Canonical
    layout: (E, out, in). The router and the shared expert are nn.Linear (out, in)."""
    ff = layer.feed_forward
    gu, m = ff.experts.gate_up_proj, ff.experts.down_proj.shape[1]
    return {"mlp_pre_norm.scale": layer.post_attention_layernorm.weight, "W_router": ff.router.weight,
            "experts.W_gate": gu[..., :m].transpose(1, 2), "experts.W_up": gu[..., m:].transpose(1, 2),
            "experts.W_down": ff.experts.down_proj.transpose(1, 2),
            "shared.W_gate": ff.shared_expert.gate_proj.weight, "shared.W_up": ff.shared_expert.up_proj.weight,
            "shared.W_down": ff.shared_expert.down_proj.weight}


def test_input_weighting_round_trips_and_is_checked():
    spec = catalog.load("llama4")
    assert spec.moe.weighting == "input" and loads_toml(dump_toml(spec)) == spec
    assert "weighting" not in dump_toml(catalog.load("mixtral"))
    with pytest.raises(SpecError) as exc:
        loads_toml(catalog.text("llama4").replace("renormalize = false", "renormalize = true"), "l4.toml")
    assert "l4.toml" in str(exc.value) and "weighting" in str(exc.value) and "renormalize = false" in str(exc.value)
    with pytest.raises(SpecError) as exc:
        loads_toml(catalog.text("llama4").replace('weighting = "input"', 'weighting = "inputs"'), "l4.toml")
    assert "moe.weighting" in str(exc.value) and "'output'" in str(exc.value)


def test_input_weighting_puts_the_weight_inside_the_hidden_activations():
    """a_C^(e) reads weight(ell_C, e) z_C, the routed sum has no weights, so each of the k selected experts takes
    delta / k; with top_k = 2 the kernels (which mask the expert sum to the top-k) validate on layer stacks."""
    from numeric.check.validate import Setup, validate

    d = check(catalog.load("llama4")).derivation
    assert "ExpertGate(MatVec(W_router, z_C), e)" in str(dict(d.definitions)["a_C[e]"])
    assert str(d.formula("experts.W_down").value).startswith("delta/(k*")
    text = catalog.text("llama4").replace('name = "llama4"', 'name = "llama4_top2"').replace("top_k = 1", "top_k = 2")
    spec = loads_toml(text)
    for ins in ("rank1", "bias") if "bias" in check(spec).input.ok else ("rank1",):
        out = validate(spec, Setup(layers=2, input_strategy=ins), trials=1)
        assert out["max_rel_error"] <= 1e-12 and out["unpatched_rel_error"] > 1e-2, (ins, out)
    out = validate(spec, Setup(layers=2, strategy="shared_down_rank1"), trials=1)
    assert out["max_rel_error"] <= 1e-12


def test_llama4_kernel_is_the_transformers_moe_branch():
    """u + Llama4TextMoe(post_attention_layernorm(u)) in float64 to round-off: top-1 sigmoid router scaling the
    expert's input, concatenated gate/up, the shared expert added."""
    spec = catalog.load("llama4")
    layer = _zoo_layer("llama4_text", _seeded(61), num_local_experts=8, num_experts_per_tok=spec.moe.top_k)
    assert layer.is_moe_layer
    params = {k: v.detach() for k, v in llama4_params(layer).items()}
    u = torch.randn(6, 32, generator=_seeded(62), dtype=torch.float64)
    want = _float64_module_call(lambda v: v + layer.feed_forward(layer.post_attention_layernorm(v))[0], u)
    k = kernels.load("llama4", "torch")
    assert _rel(k.forward(params, u), want) <= 1e-12, _rel(k.forward(params, u), want)
    from dataclasses import replace

    from symbolic.codegen import render

    ns: dict = {}
    out_weighted = replace(spec, name="llama4_output_weighted", moe=replace(spec.moe, weighting="output"))
    exec(compile(render(out_weighted, "torch"), "llama4_output_weighted", "exec"), ns)  # noqa: S102 - generated
    assert _rel(ns["forward"](params, u), want) > 1e-3  # weighting the output instead is a different block
    ctx = torch.randn(6, 32, generator=_seeded(63), dtype=torch.float64)
    assert _rel(k.apply(params, k.block_patches(params, u, ctx), u), k.forward(params, ctx)) <= 1e-12


# --------------------------------------------------------------------------- 9. LFM2-MoE: s / (sum s + eps)


def _renorm_eps_spec(eps: float):
    text = catalog.text("qwen3_moe").replace("experts = 128", "experts = 4").replace("top_k = 8", "top_k = 2")
    return loads_toml(text.replace("[moe]", f'[moe]\nscoring = "sigmoid"\nrenormalize_eps = {eps!r}'), "lfm.toml")


def test_renormalize_eps_round_trips_and_bad_values_are_named():
    spec = _renorm_eps_spec(1e-6)
    assert spec.moe.renormalize_eps == 1e-6 and loads_toml(dump_toml(spec)) == spec
    assert "renormalize_eps" not in dump_toml(catalog.load("qwen3_moe"))
    with pytest.raises(SpecError, match="renormalize_eps"):
        _renorm_eps_spec(-1.0)
    text = dump_toml(spec).replace("renormalize = true", "renormalize = false")
    with pytest.raises(SpecError, match="renormalize_eps guards the top-k renormalisation"):
        loads_toml(text, "lfm.toml")


def test_renormalize_eps_enters_the_down_patch_and_validates():
    r"""The routed sum adds X sum_j s_j / (S + eps) = X S / (S + eps): the derived W_down patch carries
    (S + eps) / S (not 1, as for eps = 0), and the generated kernel validates against the reference router
    (which divides by S + eps itself) on 2-layer stacks; a large eps makes the difference unmistakable."""
    from numeric.check.validate import Setup, validate

    spec = _renorm_eps_spec(0.5)
    down = str(check(spec).derivation_for("down_rank1", None).formula("experts.W_down").value)
    assert "epsilon_route" in down and "Gate" in down
    assert "epsilon_route" not in str(check(_renorm_eps_spec(0.0)).derivation_for("down_rank1", None).formula(
        "experts.W_down").value)
    out = validate(spec, Setup(layers=2), trials=1)
    assert out["max_rel_error"] <= 1e-12 and out["unpatched_rel_error"] > 1e-2, out


# --------------------------------------------------------------------------- 10. JetMoE: the mixture's output bias


def test_a_mixtures_output_bias_is_b_down_and_validates():
    """mlp.bias = {down = true} on a mixture: h = sum_j s_j E_j(z) + b_down (JetMoE). It round-trips, the block
    gains b_down (so the down_bias strategy applies), both output strategies validate against the reference
    (which adds b_down itself), and biases of maps a mixture does not have are refused by name."""
    from numeric.check.validate import Setup, validate

    text = catalog.text("mixtral").replace("bias = false", "bias = { down = true }")
    spec = loads_toml(text, "jet.toml")
    assert spec.mlp.bias.down and loads_toml(dump_toml(spec)) == spec
    assert "b_down" in dict(check(spec).derivation.symbols) and "down_bias" in check(spec).output.ok
    for outs in ("down_rank1", "down_bias"):
        out = validate(spec, Setup(layers=2, strategy=outs), trials=1)
        assert out["max_rel_error"] <= 1e-12 and out["unpatched_rel_error"] > 1e-2, (outs, out)
    with pytest.raises(SpecError, match="bias"):
        loads_toml(catalog.text("mixtral").replace("bias = false", "bias = { up = true }"), "jet.toml")


# --------------------------------------------------------------------------- 11. PhiMoE: the sparsemixer


def _sparsemixer_spec(extra: str = ""):
    text = catalog.text("mixtral").replace("experts = 8", "experts = 6").replace("renormalize = true", "")
    return loads_toml(text.replace("[moe]", f'[moe]\nscoring = "sparsemixer"\njitter_eps = 0.05{extra}'), "phi.toml")


def test_sparsemixer_runtime_is_transformers_own_at_inference():
    """runtime's sparsemixer weights (both back ends) and the reference's are transformers' ``sparsemixer``
    (training=False) on random logits with many masked and unmasked experts; the choice is the top-2 logits."""
    from transformers.models.phimoe.modeling_phimoe import sparsemixer

    gen = _seeded(12)
    logits = 0.2 * torch.randn(200, 6, generator=gen, dtype=torch.float64) + 1.0  # ratios near the threshold
    w_hf, idx_hf = sparsemixer(logits, jitter_eps=0.05, training=False)
    want = torch.zeros_like(logits).scatter_(1, idx_hf, w_hf)
    masked = (w_hf < 1).sum()
    assert 50 < masked < 350  # the masks decide: neither all experts kept nor all masked
    routing = runtime.Routing("sparsemixer", jitter_eps=0.05)
    got = runtime.route(logits[:, None, :], 2, routing)[..., 0]
    got_np = torch.from_numpy(runtime.route(logits[:, None, :].numpy(), 2, routing)[..., 0])
    idx, w = select(_sparsemixer_spec(), logits)
    ref = torch.zeros_like(logits).scatter_(1, idx, w)
    for other in (got, got_np, ref):
        assert torch.equal(other > 0, want > 0) and torch.allclose(other, want, rtol=1e-14, atol=0)


def test_sparsemixer_spec_round_trips_and_is_checked():
    spec = _sparsemixer_spec()
    assert spec.moe.scoring == "sparsemixer" and spec.moe.jitter_eps == 0.05 and spec.moe.thresholded
    assert loads_toml(dump_toml(spec)) == spec
    with pytest.raises(SpecError, match="sparsemixer' computes its own weights"):
        _sparsemixer_spec("\nrenormalize = true")
    with pytest.raises(SpecError, match="jitter_eps sets the sparsemixer's mask threshold"):
        loads_toml(catalog.text("mixtral").replace("[moe]", "[moe]\njitter_eps = 0.01"), "phi.toml")
    with pytest.raises(SpecError, match="jitter_eps"):
        loads_toml(dump_toml(_sparsemixer_spec()).replace("jitter_eps = 0.05", "jitter_eps = 2.0"), "phi.toml")


def test_sparsemixer_block_validates_and_its_weights_are_read_by_the_down_patch():
    """The weights do not sum to one: the W_down patch divides by their sum (the Gate of the spec's router), and
    the generated kernels validate against the reference sparsemixer on 2-layer stacks."""
    from numeric.check.validate import Setup, validate

    spec = _sparsemixer_spec()
    down = str(check(spec).derivation_for("down_rank1", None).formula("experts.W_down").value)
    assert "Sum(Gate(ell_C, j)" in down
    out = validate(spec, Setup(layers=2), trials=2)
    assert out["max_rel_error"] <= 1e-12 and out["unpatched_rel_error"] > 1e-2, out


@pytest.mark.parametrize(("logits", "why"), [
    ([2.0, 1.0, 0.5, 0.2], None),  # every ratio far from the threshold: decided
    ([2.0, 2.0 * (1 - 0.1), 0.5, 0.2], "masks"),  # (2 - 1.8) / 2 = 0.1 = 2 jitter_eps exactly
    ([2.0, 1.0 + 1e-15, 1.0, 0.2], "order"),  # the 2nd and 3rd logits tie to round-off
    ([2.0, 1.9, 1.9 * (1 - 0.1) + 1e-14, 0.2], "masks"),  # the 2nd pick's mask of the 3rd, at its threshold
])
def test_sparsemixer_margin_refuses_a_mask_or_an_order_decided_by_round_off(logits, why):
    ell = torch.tensor([[logits, [3.0, 1.0, 0.0, -1.0]]], dtype=torch.float64).reshape(2, 1, 4)
    routing = runtime.Routing("sparsemixer", jitter_eps=0.05)
    if why is None:
        runtime.require_mask_margin(ell, 2, "0", routing)
        runtime.require_mask_margin(ell.numpy(), 2, "0", routing)
        return
    for arr in (ell, ell.numpy()):
        with pytest.raises(PatchConditionError, match="sparsemixer") as exc:
            runtime.require_mask_margin(arr, 2, "0", routing)
        assert exc.value.tokens == [0]  # the other token is decided
    runtime.require_mask_margin(ell, 2, "0", runtime.Routing("softmax"))  # no masks: nothing to check


@pytest.mark.parametrize("which", ["renormalize_eps", "sparsemixer"])
def test_both_back_ends_give_the_same_patches(which):
    """The NumPy and PyTorch kernels of the new routings (rendered from one derivation) give the same patches."""
    from numeric.check.reference import random_params

    spec = _renorm_eps_spec(0.5) if which == "renormalize_eps" else _sparsemixer_spec()
    gen = _seeded(13)
    params = random_params(spec, 16, 8, gen)
    u, u_ctx = (torch.randn(5, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    got = kernels.load(spec, "torch").block_patches(params, u, u_ctx, "0")
    other = kernels.load(spec, "numpy").block_patches({k: v.numpy() for k, v in params.items()}, u.numpy(),
                                                      u_ctx.numpy(), "0")
    assert set(got) == set(other) and "experts.W_down" in got
    for name, fields in got.items():
        for field, value in fields.items():
            theirs = torch.tensor(numpy.array(other[name][field]))
            assert torch.allclose(value, theirs, rtol=1e-12, atol=1e-14), (name, field)
