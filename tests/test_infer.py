"""Adapter inference (numeric.hf.infer): the layout of any transformers decoder read from the model, the
mandatory equivalence check before any patch, user specs in the Hugging Face path, `ctxpatch models`."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

pytest.importorskip("transformers")

from ctxpatch.cli import main  # noqa: E402
from numeric.hf import (  # noqa: E402
    absorb_context,
    layout_for,
    zoo,  # noqa: E402
    zoo_layers,
)
from numeric.hf.equivalence import FLOAT64_BOUND  # noqa: E402
from numeric.hf.hfcheck import hf_check, model_status, random_ids, tiny_model  # noqa: E402
from numeric.hf.infer import infer  # noqa: E402
from numeric.hf.probe import Float64Mode  # noqa: E402
from symbolic import catalog  # noqa: E402
from symbolic.errors import ModelInputError, SpecError  # noqa: E402

#: Types with no hand-written record anywhere: inference alone must read them, and the check must pass at
#: float64 round-off (the float32 casts inside transformers' norms are widened by `Float64Mode`).
INFERRED = ["phi3", "cohere", "stablelm", "granite", "nemotron", "glm4", "starcoder2", "exaone4", "olmo",
            "helium", "smollm3", "arcee", "apertus", "ministral", "seed_oss", "hunyuan_v1_dense", "glm",
            "persimmon", "gpt_bigcode", "codegen", "biogpt", "opt", "bloom", "mpt", "gpt_neo",
            "qwen3_moe", "olmoe", "phimoe", "granitemoe", "ernie4_5", "deepseek_v3", "bitnet", "llama4_text",
            "roberta", "aria_text", "trocr", "megatron-bert", "roberta-prelayernorm", "xlm-roberta-xl",
            "dots1", "cohere_compass_text", "ernie4_5_moe", "hunyuan_v1_moe",  # tiny configs fixed in numeric.hf.zoo
            "moshi", "kolibri1", "roformer", "gpt_oss"]


#: The listed types inference refuses, each with the reason it names (none today: PhiMoE's sparsemixer, once
#: refused, is a routing of the spec language, tests/test_spec_extensions.py; Apertus' xIELU is read with each
#: layer's learned constants, tests/test_families.py).
REFUSED: dict[str, str] = {}


@pytest.mark.parametrize("model_type", INFERRED)
def test_inference_checks_every_layer_in_float64(model_type):
    """Every listed type is read and checked layer by layer, at float64 round-off where its modules compute in
    float64, or refused with its reason where it is one of the known refusals."""
    model = tiny_model(model_type, layers=2)  # a config that cannot be made small fails here, not a pass
    if model_type in REFUSED:
        with pytest.raises(ModelInputError, match=REFUSED[model_type]):
            layout_for(model)
        return
    layout = layout_for(model)
    assert len(layout.checks) == len(layout) == zoo_layers.layer_count(model.config)  # 2, or one per layer kind
    for check in layout.checks:
        assert check["error"] <= check["bound"], check
        if not check["float32_inside"]:
            assert check["bound"] == FLOAT64_BOUND


def test_biases_are_read_from_the_modules():
    """llama with mlp_bias=True: inferred with its biases, patched exactly (once a silent error of 0.65)."""
    from transformers import AutoModelForCausalLM

    cfg = zoo.tiny_config("llama")
    cfg.mlp_bias = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float64, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    spec = layout_for(model).specs[0]
    assert (spec.mlp.bias.gate, spec.mlp.bias.up, spec.mlp.bias.down) == (True, True, True)
    gen = torch.Generator().manual_seed(3)
    ctx, q = random_ids(5, 64, gen), random_ids(3, 64, gen)
    ps = absorb_context(model, ctx, q)
    with torch.no_grad():
        want = model(torch.cat([ctx, q], 1)).logits[0, 5:]
        got = ps.materialized_logits()[0]
    assert float((got - want).norm() / want.norm()) <= 1e-5


def test_a_spec_without_the_biases_is_refused_by_the_check():
    """The user's llama spec (no biases) on a llama with mlp_bias=True: the check refuses, naming the layer."""
    from transformers import AutoModelForCausalLM

    cfg = zoo.tiny_config("llama")
    cfg.mlp_bias = True
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float64, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    params = {"W_gate": "mlp.gate_proj.weight", "W_up": "mlp.up_proj.weight", "W_down": "mlp.down_proj.weight",
              "mlp_pre_norm.scale": "post_attention_layernorm.weight"}
    spec = dataclasses.replace(catalog.load("llama"), name="llama_user")
    spec = dataclasses.replace(spec, mlp=dataclasses.replace(
        spec.mlp, pre_norm=dataclasses.replace(spec.mlp.pre_norm, eps=cfg.rms_norm_eps)))
    with pytest.raises(SpecError, match=r"layer 0 \(model\.layers\.0\).*relative error"):
        absorb_context(model, torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5]]), spec=spec, params=params)


def test_a_user_spec_that_matches_is_accepted():
    model = tiny_model("llama")
    params = {"W_gate": "mlp.gate_proj.weight", "W_up": "mlp.up_proj.weight", "W_down": "mlp.down_proj.weight",
              "mlp_pre_norm.scale": "post_attention_layernorm.weight"}
    spec = catalog.load("llama")
    spec = dataclasses.replace(spec, mlp=dataclasses.replace(
        spec.mlp, pre_norm=dataclasses.replace(spec.mlp.pre_norm, eps=model.config.rms_norm_eps)))
    layout = infer(model, spec, params)
    assert layout.specs == [spec] and all(c["error"] <= FLOAT64_BOUND for c in layout.checks)
    with pytest.raises(SpecError, match="missing.*W_down"):
        infer(model, spec, {k: v for k, v in params.items() if k != "W_down"})


def test_a_swapped_activation_is_refused():
    """A module changed after loading (SiLU -> tanh in one layer, then sin in another): the check compares the
    module itself, so the layer is checked again and read as what it now is (a named activation, or the module's
    own map when none matches), never patched as before."""
    model = tiny_model("llama")
    before = layout_for(model)
    model.model.layers[1].mlp.act_fn = torch.nn.Tanh()
    after = layout_for(model)
    assert after is not before
    assert after[1].spec.mlp.activation == "tanh" and after[0].spec.mlp.activation == "silu"
    assert len(after.specs) == 2

    class Odd(torch.nn.Module):
        def forward(self, x):
            return torch.sin(x)
    model.model.layers[0].mlp.act_fn = Odd()  # no named activation: read as the module's own opaque map
    odd = layout_for(model)
    assert odd[0].spec.mlp.activation == "module" and odd[1].spec.mlp.activation == "tanh"


def test_mixed_layer_kinds_get_one_spec_each():
    """qwen2_moe with decoder_sparse_step=2: dense and MoE layers alternate (once an AttributeError)."""
    from transformers import AutoModelForCausalLM

    cfg = zoo.tiny_config("qwen2_moe", layers=2)
    cfg.decoder_sparse_step = 2
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float64, attn_implementation="eager",
                                             experts_implementation="eager").eval()
    layout = layout_for(model)
    assert [k.spec.mlp.kind for k in layout.kinds] == ["gated", "moe"]
    assert len({s.name for s in layout.specs}) == 2
    gen = torch.Generator().manual_seed(1)
    ctx, q = random_ids(5, 64, gen), random_ids(3, 64, gen)
    ps = absorb_context(model, ctx, q)
    with torch.no_grad():
        want = model(torch.cat([ctx, q], 1)).logits[0, 5:]
    assert float((ps.logits()[0] - want).norm() / want.norm()) <= 1e-6


def test_float64_mode_widens_casts_and_reports_them():
    x = torch.randn(3, dtype=torch.float64)
    with Float64Mode() as mode:
        y = x.float() * 2
        z = torch.softmax(x, -1, dtype=torch.float32)
    assert y.dtype == torch.float64 and z.dtype == torch.float64
    assert "float" in mode.widened and not mode.narrow


def test_models_command_reports_supported_and_refused(capsys, tmp_path):
    md = tmp_path / "MODELS.md"
    assert main(["models", "--types", "llama", "mamba", "--json", "--markdown", str(md)]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["model_type"]: r for r in out["models"]}
    assert rows["llama"]["status"] == "supported" and rows["llama"]["generation_identical"] is True
    assert rows["llama"]["factored_error"] <= 1e-6 and rows["llama"]["unpatched_error"] >= 1e-3
    assert rows["mamba"]["status"] == "refused" and rows["mamba"]["reason"]
    assert out["summary"] == {**out["summary"], "types": 2, "supported": 1, "refused": 1}
    assert "| llama | supported |" in md.read_text()
    assert main(["models", "--types", "no_such_type"]) == 2


def test_model_status_names_an_encoder_decoder():
    row = model_status("bart")
    assert row["status"] == "refused" and row["reason"]


def test_hf_check_with_a_user_spec(capsys):
    argv = ["hf-check", "gpt2", "--json", "--spec", "gpt2", "--param", "W_up=mlp.c_fc.weight:conv1d",
            "--param", "b_up=mlp.c_fc.bias", "--param", "W_down=mlp.c_proj.weight:conv1d",
            "--param", "b_down=mlp.c_proj.bias", "--param", "mlp_pre_norm.scale=ln_2.weight",
            "--param", "mlp_pre_norm.bias=ln_2.bias"]
    # the catalog gpt2 spec has eps 1e-5 and gelu_tanh, as the tiny gpt2 config
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["max_rel_error"] <= 1e-12
    assert main(["hf-check", "gpt2", "--param", "W_up=x"]) == 2


def test_a_branch_multiplier_is_read_and_patched_exactly():
    """granite's residual_multiplier (0.5 here) becomes mlp.branch_scale; the check composes it too."""
    from transformers import AutoModelForCausalLM

    cfg = zoo.tiny_config("granite")
    cfg.residual_multiplier = 0.5
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float64, attn_implementation="eager").eval()
    layout = layout_for(model)
    assert layout.specs[0].mlp.branch_scale == 0.5
    assert all(c["error"] <= FLOAT64_BOUND for c in layout.checks)
    gen = torch.Generator().manual_seed(2)
    ctx, q = random_ids(5, 64, gen), random_ids(3, 64, gen)
    ps = absorb_context(model, ctx, q)
    with torch.no_grad():
        want = model(torch.cat([ctx, q], 1)).logits[0, 5:]
    assert float((ps.materialized_logits()[0] - want).norm() / want.norm()) <= 1e-5
    assert float((ps.logits()[0] - want).norm() / want.norm()) <= 1e-6  # factored: the module's output is o, not c o


#: branches split over modules: (type, mode, u module, branch module, chain)
SPLIT = [("opt", "sequential", "final_layer_norm", "fc2", ("final_layer_norm", "fc1", "activation_fn")),
         ("trocr", "post_ln", "fc1", "final_layer_norm", ("fc1", "activation_fn", "fc2")),
         ("megatron-bert", "sequential", "ln", "output", ("ln", "intermediate")),
         ("roberta-prelayernorm", "sequential", "intermediate", "output", ("intermediate",))]


@pytest.mark.parametrize(("model_type", "mode", "u_module", "branch", "chain"), SPLIT)
def test_split_branches_are_read_and_patched_exactly(model_type, mode, u_module, branch, chain):
    """An MLP written on the layer itself (OPT: fc1, activation, fc2 as the layer's children, the states reshaped
    to (T, d) rows; TrOCR: the same after the add's LayerNorm) or over BERT's intermediate/output with a pre-LN:
    read as such, and the factored and the materialized patches reproduce the contextual logits in float64."""
    layout = layout_for(tiny_model(model_type, encoder=False))
    a = layout[0]
    assert (a.mode, a.u_module, a.branch_module, a.chain) == (mode, u_module, branch, chain)
    assert (a.spec.mlp.post_ln is not None) == (mode == "post_ln") != (a.spec.mlp.pre_norm is not None)
    out = hf_check(model_type, dtype="float64", encoder=False)
    assert out["max_rel_error"] <= 1e-12 and out["materialized_rel_error"] <= 1e-12, out
    assert out["unpatched_rel_error"] >= 1e-3


def test_opt_post_ln_variant_is_read_as_post_ln():
    """OPT with do_layer_norm_before=False (OPT-350m): the final LayerNorm after the add is the branch module; the
    patches are exact, factored, written into the weights, and as one sequence patch of the pre-LN OPT."""
    from transformers import AutoModelForCausalLM

    cfg = zoo.tiny_config("opt")
    cfg.do_layer_norm_before = False
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float64, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    layout = layout_for(model)
    assert layout[0].mode == "post_ln" and layout[0].branch_module == "final_layer_norm"
    gen = torch.Generator().manual_seed(2)
    ctx, q = random_ids(6, 64, gen), random_ids(4, 64, gen)
    ps = absorb_context(model, ctx, q)
    with torch.no_grad():
        want = model(torch.cat([ctx, q], 1)).logits[0, 6:]
        plain = model(q).logits[0]
    for got in (ps.logits()[0], ps.materialized_logits()[0]):
        assert float((got - want).norm() / want.norm()) <= 1e-12
    assert float((plain - want).norm() / want.norm()) >= 1e-3
    pre_ln = tiny_model("opt")
    with torch.no_grad():
        want = pre_ln(torch.cat([ctx, q], 1)).logits[0, 6:]
        got = absorb_context(pre_ln, ctx, q, mode="sequence").logits()[0]
    assert float((got - want).norm() / want.norm()) <= 1e-12


def test_a_virtual_mlp_with_an_unknown_activation_is_refused():
    """OPT's activation module replaced by one no spec names: the layer is not read as an MLP layer, never patched
    as a ReLU; the last layer, a token mixer with no MLP layer after it, the model is refused (theorem
    multilayer_mlpless)."""
    model = tiny_model("opt")
    layout_for(model)

    class Odd(torch.nn.Module):
        def forward(self, x):
            return torch.sin(x)
    model.model.decoder.layers[1].activation_fn = Odd()
    with pytest.raises(ModelInputError, match=r"layer 1 .* mixes tokens and has no MLP branch"):
        layout_for(model)


def test_gpt1_post_ln_around_its_mlp_module_is_read():
    """openai-gpt: n = ln_1(x + a); h = ln_2(n + mlp(n)). The chain is the MLP module, the branch module ln_2 (the
    MLP's input is u, not ln_1's input); its activation is a function (gelu_new), chosen by the check."""
    model = tiny_model("openai-gpt", encoder=False)
    a = layout_for(model)[0]
    assert (a.mode, a.u_module, a.branch_module, a.chain) == ("post_ln", "mlp", "ln_2", ("mlp",))
    assert a.spec.mlp.activation == "gelu_tanh" and a.spec.mlp.pre_norm is None
    gen = torch.Generator().manual_seed(2)
    ctx, q = random_ids(6, 64, gen), random_ids(4, 64, gen)
    ps = absorb_context(model, ctx, q)
    with torch.no_grad():
        want = model(torch.cat([ctx, q], 1)).logits[0, 6:]
        plain = model(q).logits[0]
    assert float((ps.logits()[0] - want).norm() / want.norm()) <= 1e-12
    assert float((plain - want).norm() / want.norm()) >= 1e-3
    with pytest.raises(ModelInputError, match="returns no key/value cache"):  # GPT-1 keeps none: refused, not run wrong
        ps.materialized_logits()


def test_matrices_used_directly_are_refused_by_name(monkeypatch):
    """Flat (E*m, d) expert matrices read by the forward itself, no linear module, under names no layout of
    `FLAT_EXPERTS` declares (DBRX's w1/v1/w2, once refused, are read: tests/test_families.py): named in the
    refusal."""
    from numeric.hf import identify

    monkeypatch.setattr(identify, "FLAT_EXPERTS", {})
    with pytest.raises(ModelInputError, match=r"experts\.mlp\.w1 \(\d+, \d+\).* used by its forward directly"):
        layout_for(tiny_model("dbrx"))


def _lfm2_moe(norm_topk_prob: bool):
    from transformers import AutoModelForCausalLM

    cfg = zoo.tiny_config("lfm2_moe")
    cfg.norm_topk_prob = norm_topk_prob
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float64, attn_implementation="eager",
                                             experts_implementation="eager").eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
        for layer in model.model.layers:  # the selection bias (zeros when built): random, so that it decides
            if hasattr(layer.feed_forward, "expert_bias"):
                layer.feed_forward.expert_bias.copy_(torch.randn(cfg.num_experts, generator=gen, dtype=torch.float64))
    return model


def _patched_exactly(model, seed: int = 2) -> None:
    """absorb_context on 6 context and 4 query tokens: the factored and the written-in replays reproduce the run
    with the context (float64), and the run without it does not."""
    gen = torch.Generator().manual_seed(seed)
    ctx, q = random_ids(6, 64, gen), random_ids(4, 64, gen)
    ps = absorb_context(model, ctx, q)
    with torch.no_grad():
        want = model(torch.cat([ctx, q], 1)).logits[0, 6:]
        unpatched = model(q).logits[0]
    assert float((ps.logits()[0] - want).norm() / want.norm()) <= 1e-6
    assert float((ps.materialized_logits()[0] - want).norm() / want.norm()) <= 1e-5
    assert float((unpatched - want).norm() / want.norm()) >= 1e-3


def test_lfm2_moe_sigmoid_routing_with_a_block_selection_bias():
    """LFM2-MoE without renormalisation: sigmoid scores (no scoring_func in the config), the selection bias a buffer
    of the MoE block, F.silu called as a function (no module names it: the check picks silu); patched exactly."""
    model = _lfm2_moe(False)
    layout = layout_for(model)
    moe = layout[1]
    assert moe.spec.moe.scoring == "sigmoid" and moe.spec.moe.selection_bias and moe.spec.mlp.activation == "silu"
    assert moe.params["b_select"].path == "feed_forward.expert_bias"
    assert all(c["error"] <= FLOAT64_BOUND for c in layout.checks)
    _patched_exactly(model)


def test_lfm2_moe_renormalisation_epsilon_is_read_and_patched_exactly():
    """norm_topk_prob=True (LFM2-MoE's default) divides by sum s + 1e-6: inference measures the epsilon, the spec
    carries it (moe.renormalize_eps), the check passes at float64 round-off, where the same spec without it fails
    (the epsilon is not a rounding), and the patches are exact."""
    from numeric.hf.equivalence import check_adapter, state_of, u_of
    from numeric.hf.probe import float64_copy, layer_calls, trace

    model = _lfm2_moe(True)
    layout = layout_for(model)
    moe = layout[1]
    assert moe.spec.moe.renormalize and moe.spec.moe.renormalize_eps == 1e-6
    assert all(c["error"] <= FLOAT64_BOUND for c in layout.checks)
    call = layer_calls(model, layout.layers, random_ids(6, 64, torch.Generator().manual_seed(3)))[1]
    layer64 = float64_copy(model.model.layers[1])
    record, x, y = trace(layer64, call, f"{layout.layers}.1")
    plain = dataclasses.replace(moe, spec=dataclasses.replace(moe.spec, name="lfm2_moe_no_eps", moe=dataclasses.replace(
        moe.spec.moe, renormalize_eps=0.0)))
    without = check_adapter(layer64, plain, u_of(plain, record, x), None, state_of(plain, record, x, y)[0])
    assert without["error"] > without["bound"]
    _patched_exactly(model)
