"""The decoder families of 2026 (issue 29): every layer kind in the zoo's tiny models, and the theory's reach in
inference: the state right after the MLP's add (Gemma 4), y = alpha v + beta branch (MiniMax), a branch over two
modules (Granite 4 hybrid), layers without an MLP (Nemotron-H), flat experts (DBRX), experts split over two
modules with the mixture's output bias (JetMoE), the sparsemixer (PhiMoE), an activation with learned constants
(Apertus); refused by name: no MLP anywhere (Mamba), a token mixer after the last MLP layer, several
residual streams (DeepSeek V4), computation after the add that reads other tokens, an exception inside
transformers. Errors relative, float64, as `numeric.hf.hfcheck` measures them."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from numeric.check.validate import rel_error  # noqa: E402
from numeric.hf import absorb_context, layout_for, zoo, zoo_layers  # noqa: E402  # noqa: E402
from numeric.hf.hfcheck import random_ids, tiny_model  # noqa: E402
from symbolic.errors import ModelInputError, SpecError  # noqa: E402
from symbolic.spec import dump_toml, loads_toml  # noqa: E402


def _pair(c: int = 6, q: int = 4):
    gen = torch.Generator().manual_seed(2)
    return random_ids(c, 64, gen), random_ids(q, 64, gen)


@torch.no_grad()
def _errors(model) -> tuple[float, float, float]:
    """(factored, materialized, unpatched) errors of the query's logits against the run with the context."""
    ctx, q = _pair()
    ps = absorb_context(model, ctx, q)
    want = model(torch.cat([ctx, q], 1)).logits[0, ctx.shape[1]:]
    return (rel_error(ps.logits()[0], want), rel_error(ps.materialized_logits()[0], want),
            rel_error(model(q).logits[0], want))


def _exact(model) -> None:
    factored, materialized, unpatched = _errors(model)
    assert factored <= 1e-6 and materialized <= 1e-5, (factored, materialized)
    assert unpatched >= 1e-3  # the context matters: the patches did something


# --------------------------------------------------------------------------- the zoo


@pytest.mark.parametrize("model_type", ["qwen3_next", "jamba", "nemotron_h", "kimi_linear", "gemma3n_text",
                                        "gemma4_text", "zamba2"])
def test_the_tiny_config_keeps_every_layer_kind_of_the_default(model_type):
    """Per-layer lists (layer_types, mlp_layer_types, layers_block_type), kinds derived from a period and offset
    (Jamba), renumbered layer indices (Zamba2's hybrid_layer_ids), a trailing count (Gemma 3n's KV-shared
    layers) and per-layer overrides (Gemma 4's full-attention head_dim): each kind of the default stack is in the
    tiny one. Cutting layer_types to its first two entries kept only linear-attention layers."""
    from transformers import AutoConfig

    base = AutoConfig.for_model(model_type)
    tiny = zoo.tiny_config(model_type)
    want, have = set(zoo_layers.kinds(base)), set(zoo_layers.kinds(tiny))
    assert len(want) > 1 and want <= have
    assert zoo_layers.layer_count(tiny) <= zoo_layers.MAX_LAYERS


@pytest.mark.parametrize("model_type", ["falcon_h1", "recurrent_gemma", "bamba"])
def test_derived_layer_kinds_are_set_through_their_sources(model_type):
    """FalconH1Config.layers_block_type (and Bamba's, RecurrentGemma's) is a property without a setter: the zoo sets
    the fields it derives from, and the model builds small."""
    model = zoo.tiny_model(model_type)
    assert sum(p.numel() for p in model.parameters()) <= zoo.MAX_PARAMETERS


def test_per_layer_overrides_are_shrunk_with_the_global_sizes():
    """Gemma 4's full-attention layers override head_dim (512 against 256): the tiny config keeps the ratio."""
    tiny = zoo.tiny_config("gemma4_text")
    heads = {tiny.per_layer_config[i].head_dim for i in range(tiny.num_hidden_layers)}
    assert heads == {zoo.SIZES["head_dim"], 2 * zoo.SIZES["head_dim"]}


def test_an_exception_building_a_model_is_a_refusal_naming_the_type(monkeypatch):
    from transformers import AutoModelForCausalLM

    def broken(*_args, **_kwargs):
        raise RuntimeError("inside transformers")
    monkeypatch.setattr(AutoModelForCausalLM, "from_config", broken)
    with pytest.raises(ModelInputError, match="'llama'.*RuntimeError") as info:
        zoo.tiny_model("llama")
    assert "inside transformers" not in str(info.value) and isinstance(info.value.__cause__, RuntimeError)


# --------------------------------------------------------------------------- inference: in the theory


def test_layers_without_an_mlp_are_run_as_they_are_and_absorbed_by_the_next_mlp_layer():
    """Nemotron-H: Mamba, MoE, attention and MLP blocks, one module each; the Mamba and attention blocks have no
    MLP (None in the layout) and the MLP blocks after them absorb what they changed (theorem multilayer_mlpless)."""
    model = tiny_model("nemotron_h")
    layout = layout_for(model)
    kinds = model.config.layers_block_type
    assert [k is None for k in layout.kinds] == [t not in ("mlp", "moe") for t in kinds]
    _exact(model)


def test_the_state_right_after_the_add_is_the_target_where_the_layer_goes_on():
    """Gemma 4: after the MLP's add the layer gates a per-layer input into the state and scales it: the patches
    make the state after the add exact, and what follows reads no other token (theorem after_add)."""
    model = tiny_model("gemma4_text")
    assert all(k.after_add for k in layout_for(model).kinds)
    _exact(model)


def test_a_scaled_residual_is_a_branch_scale_in_the_mlp_input_frame():
    """MiniMax: r = alpha norm(u) + beta MoE(norm(u)): u is the MLP's own input, the branch scale beta / alpha, the
    state r / alpha (theorem scaled_residual)."""
    model = tiny_model("minimax")
    cfg = model.config
    for k in layout_for(model).kinds:
        assert k.u_module == k.branch_module and k.spec.mlp.pre_norm is None
        assert k.outer_scale == pytest.approx(cfg.mlp_alpha_factor)
        assert k.spec.mlp.branch_scale == pytest.approx(cfg.mlp_beta_factor / cfg.mlp_alpha_factor)
    _exact(model)


def test_a_branch_over_two_modules_is_one_branch():
    """Granite 4 hybrid: the MoE and the shared MLP beside it read the same input and are summed: the shared MLP
    is the mixture's shared expert (theorem branch_sum)."""
    model = tiny_model("granitemoehybrid")
    for k in layout_for(model).kinds:
        assert k.parts == ("shared_mlp",) and k.spec.moe.shared_expert == "plain"
    factored, _materialized, unpatched = _errors(model)
    assert factored <= 1e-6 and unpatched >= 1e-3


def test_flat_experts_are_read_and_patched_per_expert():
    """DBRX stores every expert's matrices in one (E m, d) tensor each (w1, v1, w2)."""
    model = tiny_model("dbrx")
    params = layout_for(model)[0].params
    rows = {params[f"experts.{w}"].rows for w in ("W_gate", "W_up", "W_down")}
    assert rows == {model.config.ffn_config.ffn_hidden_size}
    _exact(model)


def test_experts_split_over_two_modules_with_an_output_bias_are_read():
    """JetMoE keeps the experts' input maps (E, 2m, d) and output maps (E, d, m) in two modules (input_linear,
    output_linear: the activation on the first half) and adds a bias of the mixture once to its output
    (mlp.bias.down, b_down): read as a mixture's experts, checked, patched exactly (its attention experts mix
    tokens and are not patched)."""
    model = tiny_model("jetmoe")
    with torch.no_grad():  # initializer_range 0.01 leaves attention near uniform: let the context matter
        for layer in model.model.layers:
            for p in layer.self_attention.parameters():
                if p.dim() > 1:
                    p.mul_(30.0)
        assert all(float(layer.mlp.bias.abs().max()) > 0.1 for layer in model.model.layers)  # the check sees b_down
    adapter = layout_for(model)[0]
    assert adapter.params["experts.W_gate"].path == "mlp.input_linear.weight"
    assert (adapter.params["experts.W_gate"].layout, adapter.params["experts.W_up"].layout) == ("rows0", "rows1")
    assert adapter.params["b_down"].path == "mlp.bias" and adapter.spec.mlp.bias.down
    assert adapter.spec.moe.gates_sum_to_one  # JetMoE's softmax over the top-k logits (= renormalized scores)
    assert loads_toml(dump_toml(adapter.spec)) == adapter.spec
    _exact(model)


def test_sparsemixer_routing_is_read_and_patched_exactly():
    """PhiMoE routes by its sparsemixer (top-2 logits, each weighted by a softmax over the logits not yet chosen
    within 2 router_jitter_noise of it, relatively): a context-free function of the token's own logits, read as
    moe.scoring = 'sparsemixer' with the config's jitter, checked and patched exactly."""
    model = tiny_model("phimoe")
    adapter = layout_for(model)[0]
    assert adapter.spec.moe.scoring == "sparsemixer"
    assert adapter.spec.moe.jitter_eps == model.config.router_jitter_noise > 0
    _exact(model)


def test_an_activation_with_learned_constants_is_each_layers_own():
    """Apertus's xIELU has learned constants per layer: each layer's spec carries its own."""
    model = tiny_model("apertus")
    layout = layout_for(model)
    assert len(layout.specs) == len(layout)  # the zoo perturbs each layer's constants
    _exact(model)


# --------------------------------------------------------------------------- inference: refused by name


@pytest.mark.parametrize("model_type", ["mamba", "zamba2"])
def test_a_stack_with_no_mlp_is_refused_by_name(model_type):
    """Mamba has no MLP; Zamba2's MLP sits in the shared transformer block, whose output feeds the layer's Mamba
    mixer before the residual stream: neither has an MLP output that reaches the stream, and the refusal names the
    theorem whose condition fails."""
    with pytest.raises(ModelInputError, match="no layer of .* adds an MLP branch.*no token mixer between it and the "
                                              "head .theorem multilayer_mlpless"):
        layout_for(tiny_model(model_type))


def test_a_token_mixer_after_the_last_mlp_layer_is_refused_by_name():
    from transformers import AutoModelForCausalLM

    cfg = zoo.tiny_config("nemotron_h")
    cfg.layers_block_type = ["mlp", "linear_attention"]
    cfg.num_hidden_layers = 2
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float64).eval()
    with pytest.raises(ModelInputError, match="layer 1 .* mixes tokens .*theorem multilayer_mlpless"):
        layout_for(model)


def test_several_residual_streams_are_refused_by_the_condition():
    with pytest.raises(ModelInputError, match="residual streams .*collinear.*theorem several_streams"):
        layout_for(tiny_model("deepseek_v4"))


def _wrap_layers(model, after):
    """Every decoder layer's output passed through ``after`` (a function of the output tensor): a forward hook,
    which the float64 copies of the probe keep."""
    for layer in model.model.layers:
        layer.register_forward_hook(lambda _m, _a, out: after(out))


def test_computation_after_the_add_that_reads_other_tokens_is_refused():
    """A layer that mixes the positions of its state after the MLP's add (a running sum): the patched state is
    exact at the query, but what follows reads the earlier positions, so nothing is exact."""
    model = tiny_model("llama")
    _wrap_layers(model, lambda y: y + 0.1 * torch.cumsum(y, dim=-2))
    with pytest.raises(ModelInputError, match="after the MLP's add the layer reads other tokens"):
        layout_for(model)


def test_position_wise_computation_after_the_add_is_accepted():
    model = tiny_model("llama")
    _wrap_layers(model, lambda y: y + 0.1 * torch.tanh(y))
    assert all(k.after_add for k in layout_for(model).kinds)
    _exact(model)


def test_an_exception_inside_transformers_is_a_refusal_naming_layer_and_module():
    model = tiny_model("llama")

    def broken(*_args, **_kwargs):
        raise RuntimeError("The size of tensor a (4) must match the size of tensor b (6)")
    model.model.layers[1].mlp.down_proj.forward = broken
    with pytest.raises(ModelInputError, match=r"RuntimeError in model\.layers\.1\.mlp\.down_proj \(Linear\)") as info:
        layout_for(model)
    assert "size of tensor" not in str(info.value) and isinstance(info.value.__cause__, RuntimeError)


# --------------------------------------------------------------------------- the spec field


def test_a_dense_shared_expert_round_trips_and_needs_a_plain_shared_expert():
    text = ('name = "nh"\n[mlp]\nkind = "moe"\nactivation = "relu2"\n'
            '[moe]\nexperts = 4\ntop_k = 2\nexpert = "dense"\nshared_expert = "plain"\nshared_kind = "dense"\n')
    spec = loads_toml(text)
    assert spec.moe.shared_kind == "dense" and loads_toml(dump_toml(spec)) == spec
    from symbolic.spec import patchable_parameters

    assert {"shared.W_up", "shared.W_down"} <= set(patchable_parameters(spec))
    assert "shared.W_gate" not in patchable_parameters(spec)
    with pytest.raises(SpecError, match="shared_kind"):
        loads_toml(text.replace('shared_expert = "plain"', 'shared_expert = "gated"'))


def test_an_activation_that_is_not_elementwise_is_the_modules_own_map():
    """Gemma 3n's sparse layers cut the gate's pre-activations at mean + k std before the GELU: no elementwise
    formula; the rank-1 input patches reproduce the pre-activations, so the module's own map gives the contextual
    hidden activations (theorem opaque_activation). Its AltUp streams are corrected after the add (after_add)."""
    model = tiny_model("gemma3n_text")
    layout = layout_for(model)
    sparse = [n for n, s in enumerate(model.config.activation_sparsity_pattern) if s > 0]
    assert sparse and all(layout[n].spec.mlp.activation == "module" for n in sparse)
    assert all(k.after_add for k in layout.kinds)
    _exact(model)


def test_a_module_activation_spec_offers_only_the_strategies_that_need_no_formula():
    from ctxpatch.api import check

    text = ('name = "opaque"\n[mlp]\nkind = "gated"\nactivation = "module"\npre_norm = "rms"\n'
            'post_norm = "rms"\n')
    spec = loads_toml(text)
    assert spec.mlp.activation == "module" and loads_toml(dump_toml(spec)) == spec
    with pytest.raises(SpecError, match="up_activation"):
        loads_toml(text.replace('activation = "module"', 'activation = "module"\nup_activation = "module"'))
    verdict = check(spec)
    assert verdict.input_controllable and verdict.output_controllable
