"""Real transformers models (tiny, random, built from configs): absorb_context for every supported
model type in float64 and float32, greedy generation without the context, the paper's reduced run,
the storage format of the patches (the parameter names and layouts of the model itself), and errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("transformers")

from ctxpatch.cli import main  # noqa: E402
from numeric.hf import PatchAccuracyWarning, absorb_context, generate_without_context, layout_for  # noqa: E402
from numeric.hf.hfcheck import BOUNDS, ENCODERS, TINY, hf_check, random_ids, tiny_model  # noqa: E402
from symbolic.errors import ModelInputError, PatchConditionError  # noqa: E402

TYPES = sorted(TINY)
CAUSAL = [t for t in TYPES if t not in ENCODERS]


#: What inference must find in each family: residual mode, MLP kind, norms (pre, post) as kind/scale.
EXPECTED = {"llama": ("sequential", "gated", "rms/plain", None), "gemma": ("sequential", "gated", "rms/one_plus", None),
            "gemma3_text": ("sequential", "gated", "rms/one_plus", "rms/one_plus"),
            "olmo2": ("sequential", "gated", None, "rms/plain"), "gpt2": ("sequential", "dense", "layer/plain", None),
            "gptj": ("parallel", "dense", "layer/plain", None), "falcon": ("parallel", "dense", "layer/plain", None),
            "gpt_neox": ("parallel", "dense", "layer/plain", None), "mixtral": ("sequential", "moe", "rms/plain", None),
            "qwen2_moe": ("sequential", "moe", "rms/plain", None)}


@pytest.mark.parametrize("model_type", sorted(EXPECTED))
def test_inference_reads_the_structure(model_type):
    model = tiny_model(model_type, layers=2)
    layout = layout_for(model)
    spec = layout.specs[0]

    def norm(n):
        return None if n is None else f"{n.kind}/{n.scale}"
    got = (spec.residual, spec.mlp.kind, norm(spec.mlp.pre_norm), norm(spec.mlp.post_norm))
    assert got == EXPECTED[model_type]
    assert all(c["error"] <= c["bound"] for c in layout.checks)
    assert len(layout.checks) == model.config.num_hidden_layers  # every layer checked (zoo: every layer kind)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("model_type", TYPES)
def test_patched_query_alone_matches_the_run_with_context(model_type, dtype):
    out = hf_check(model_type, layers=2, dtype=dtype)
    assert out["max_rel_error"] <= BOUNDS[dtype], out
    assert out["unpatched_rel_error"] >= 1e-3, out  # the context matters, and the patch undoes it


@pytest.mark.parametrize("model_type", ["gpt2", "gptj", "gpt_neox", "phi", "falcon", "bert"])
def test_layernorm_families_are_exact_in_float64(model_type):
    """No float32 upcast inside these blocks: the patched run matches to float64 round-off."""
    assert hf_check(model_type, layers=2, dtype="float64")["max_rel_error"] <= 1e-13


@pytest.mark.parametrize("model_type", CAUSAL)
def test_greedy_generation_without_context_is_identical(model_type):
    out = hf_check(model_type, layers=2, dtype="float32", generate=32, query_len=3)
    assert out["generation_identical"], out


@pytest.mark.parametrize("model_type", TYPES)
def test_keep_positions_and_the_dense_storage_format(model_type):
    """Each token alone at its absolute position; PatchSet.rank1/values, applied densely to a copy of
    the model, reproduce the contextual output of that token (in the parameters' own storage layouts)."""
    model = tiny_model(model_type, layers=2, dtype="float64")
    gen = torch.Generator().manual_seed(7)
    ctx, q = random_ids(4, 64, gen), random_ids(3, 64, gen)
    ps = absorb_context(model, ctx, q, keep_positions=True)
    encoder = model_type in ENCODERS
    with torch.no_grad():
        full = model(torch.cat([ctx, q], 1))
        want = (full.last_hidden_state if encoder else full.logits)[0, 4:]
        got = (ps.hidden_states() if encoder else ps.logits())[0]
        assert float((got - want).norm() / want.norm()) <= 1e-6
        for j in (0, 2):
            dense = copy.deepcopy(model)
            layers = dense.get_submodule(ps.layout.layers)
            for n, lp in enumerate(ps.layers):
                layer = layers[n]
                for name, (U, V) in lp.rank1.items():
                    path, _, idx = name.partition("[")
                    p = layer.get_parameter(path)
                    target = p[int(idx[:-1])] if idx else p
                    target += torch.outer(U[j], V[j])
                for name, value in lp.values.items():
                    layer.get_parameter(name).copy_(value[j])
            out = dense(q[:, j:j + 1], position_ids=torch.tensor([[4 + j]]))
            y = (out.last_hidden_state if encoder else out.logits)[0, 0]
            # Gemma's RMSNorm multiplies by (1 + weight.float()): the patched post-norm weight
            # w + delta / f_C is large where f_C is small, and its rounding to float32 is amplified.
            tol = 1e-4 if model_type.startswith("gemma") else 1e-6
            assert float((y - want[j]).norm() / want[j].norm()) <= tol, j


def test_patch_shapes_follow_the_design():
    model = tiny_model("qwen2_moe", layers=1)
    gen = torch.Generator().manual_seed(3)
    ps = absorb_context(model, random_ids(4, 64, gen), random_ids(5, 64, gen))
    lp = ps.layers[0]
    U, V = lp.rank1["mlp.experts.gate_up_proj[2]"]  # a slice of the stacked, fused expert tensor
    assert U.shape == (5, 32) and V.shape == (5, 32)
    assert lp.rank1["mlp.gate.weight"][0].shape == (5, 4)
    assert set(lp.values) == set()
    gemma = tiny_model("gemma3_text", layers=1)
    lp = absorb_context(gemma, random_ids(4, 64, gen), random_ids(5, 64, gen), strategy="norm_vector").layers[0]
    assert lp.values["post_feedforward_layernorm.weight"].shape == (5, 32)  # w, with gamma = 1 + w
    assert set(lp.rank1) == {"mlp.gate_proj.weight", "mlp.up_proj.weight"}  # Theorem 1: W_down untouched
    assert lp.strategies == ["norm_vector"] * 5


@pytest.mark.parametrize("applied", ["factored", "materialized"])
def test_generation_reuses_caches_and_matches_generate(applied):
    model = tiny_model("llama", layers=2, dtype="float32")
    gen = torch.Generator().manual_seed(5)
    ctx, q = random_ids(5, 64, gen), random_ids(4, 64, gen)
    ours = generate_without_context(model, ctx, q, 10, applied=applied)
    ref = model.generate(torch.cat([ctx, q], 1), max_new_tokens=10, do_sample=False)[:, 9:]
    assert torch.equal(ours, ref)


def test_zero_embedding_names_the_token():
    """A lone token with a zero embedding row has u = 0 at layer 0: z = 0, the rank-1 patch is undefined."""
    model = tiny_model("llama", layers=1)
    with torch.no_grad():
        model.get_input_embeddings().weight[9] = 0.0
    q = torch.tensor([[5, 9, 7]])
    with pytest.raises(PatchConditionError) as exc:
        absorb_context(model, torch.tensor([[3, 4]]), q, keep_positions=True)
    assert exc.value.tokens == [1] and exc.value.condition == "z != 0" and exc.value.layer == "0"


def test_bad_inputs_are_clear_errors():
    model = tiny_model("llama", layers=1)
    with pytest.raises(ModelInputError, match="shape"):
        absorb_context(model, torch.tensor([1, 2]), torch.tensor([[3]]))
    with pytest.raises(ModelInputError, match="outside"):
        absorb_context(model, torch.tensor([[1, 200]]), torch.tensor([[3]]))
    model.model.layers[0].mlp = torch.nn.Identity()  # a layer without the maps of an MLP: refused, named
    with pytest.raises(ModelInputError, match="mlp.*linear maps"):
        absorb_context(model, torch.tensor([[1]]), torch.tensor([[3]]))


def test_hf_check_command(capsys):
    assert main(["hf-check", "gemma3_text", "--json", "--generate", "4", "--dtype", "float32"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("model_type", "max_rel_error", "unpatched_rel_error", "generation_identical"):
        assert key in out
    assert out["generation_identical"] is True and out["arch"] == "gemma3_text"
    assert main(["hf-check", "t5"]) == 2
    assert main(["hf-check", "llama", "--layers", "0"]) == 2
    assert "--layers" in capsys.readouterr().err


def test_options_are_an_object_or_keywords_and_name_their_protocol():
    """`Options` or its fields as keywords (which override the object's) give the same patches; a named strategy
    is computed in the model's arithmetic by default (an encoder's, whose tokens see the later ones, cannot)."""
    from numeric.hf import Options

    model = tiny_model("llama", layers=2, dtype="float64")
    gen = torch.Generator().manual_seed(8)
    ctx, q = random_ids(5, 64, gen), random_ids(3, 64, gen)
    a = absorb_context(model, ctx, q, Options(keep_positions=True))
    b = absorb_context(model, ctx, q, keep_positions=True)
    assert a.positions is not None and torch.equal(a.logits(), b.logits())
    assert absorb_context(model, ctx, q, Options(keep_positions=True), keep_positions=False).positions is None
    assert Options().protocol(encoder=False) == "kernel" and Options(strategy="stable").protocol(False) == "model"
    assert Options(strategy="stable").protocol(encoder=True) == "kernel"
    assert Options(strategy="stable", keep_positions=True).protocol(encoder=True) == "model"
    with pytest.raises(ModelInputError, match="an encoder"):
        Options(computed_in="model").protocol(encoder=True)
    with pytest.raises(ModelInputError, match="computed_in must be one of model, kernel, got 'gpu'"):
        Options(computed_in="gpu")
    with pytest.raises(TypeError, match="options must be an Options"):
        absorb_context(model, ctx, q, True)


def test_layer_params_are_read_in_the_layers_dtype():
    """A parameter kept in float32 in a float64 model (transformers 5.24 keeps DeepSeek-V3's router so) is
    read in the dtype of the layer's other parameters, the one the kernels compute in; values unchanged."""
    from numeric.hf.layout import layer_params

    model = tiny_model("llama", layers=1)
    layout = layout_for(model)
    layer = model.model.layers[0]
    before = layer_params(layer, layout[0])
    layer.mlp.gate_proj.to(torch.float32)
    after = layer_params(layer, layout[0])
    assert layer.mlp.gate_proj.weight.dtype == torch.float32
    assert {t.dtype for t in after.values()} == {torch.float64}
    for k in before:  # W_gate rounded to float32 and widened back; the others untouched
        assert torch.equal(after[k], before[k].float().double() if k == "W_gate" else before[k]), k
    assert not torch.equal(after["W_gate"], before["W_gate"])


def test_benchmark_dense_baseline_computes_the_same_logits():
    """The per-token dense-dW baseline of benchmarks/run.py is a correct (slow) implementation."""
    from tests.conftest import benchmark

    bench = benchmark("run")
    model = tiny_model("llama", layers=2)
    gen = torch.Generator().manual_seed(11)
    ps = absorb_context(model, random_ids(5, 64, gen), random_ids(4, 64, gen))
    dense = bench.dense_loop_logits(model, ps)
    assert float((dense - ps.logits()).norm() / dense.norm()) < 1e-10
    assert bench.memory_ratio(model, ps) > 5


def _layer_inputs(model_type: str, layers: int = 2):
    """A float64 tiny model, its layout and kernels, and layer n's (u, target) for a 5-token query."""
    from numeric.hf.passes import contextual_bases
    from numeric.hf.selection import resolve

    model = tiny_model(model_type, layers=layers, dtype="float64")
    gen = torch.Generator().manual_seed(3)
    ctx, q = random_ids(6, 64, gen), random_ids(5, 64, gen)
    layout, kernels = resolve(model)
    bases, _ = contextual_bases(model, layout, torch.cat([ctx, q], 1), head=False)
    plain, _ = contextual_bases(model, layout, q, head=False)  # the u of each layer without the context
    return model, layout, kernels, [(plain[n], bases[n][6:]) for n in range(layers)]


def test_a_layer_starts_from_the_choice_of_the_layer_below(monkeypatch):
    """Without a previous choice of its own, a layer keeps the layer below's strategy when the rule keeps it
    (measured, at most ACCEPT); when the rule rejects it, every candidate is compared as before."""
    import numeric.hf.selection as selection

    model, layout, kernels, inputs = _layer_inputs("gemma3_text")
    names = list(kernels[layout[1].spec])
    assert len(names) > 1
    (u, target) = inputs[1]
    for below in names:
        patcher = selection.Patcher(model, layout, kernels, memory=selection.Memory({0: below}))
        lp = patcher.layer(1, u, target, None)
        best = selection.Patcher(model, layout, kernels).best(1, patcher.params(1), u[:1], target[:1], None, 0)
        amp = [a for a in lp.amplification if a == a]
        if set(lp.strategies) == {below}:  # kept: measured once, within the rule
            assert len(amp) >= 1 and max(amp) <= selection.ACCEPT
        else:  # rejected: the first token compared every candidate
            assert lp.strategies[0] == best.strategy
    monkeypatch.setattr(selection, "ACCEPT", 0.0)  # nothing is kept: token by token, every candidate compared
    patcher = selection.Patcher(model, layout, kernels, memory=selection.Memory({0: names[0]}))
    lp = patcher.layer(1, u, target, None)
    one = selection.Patcher(model, layout, kernels)
    want = [one.best(1, patcher.params(1), u[j:j + 1], target[j:j + 1], None, j).strategy for j in range(5)]
    assert lp.strategies == want


def test_the_choice_prefers_well_conditioned_then_least_amplification_with_ties_in_order():
    """`choose`: an ill-conditioned candidate loses to any well-conditioned one; among those, amplifications
    within TIE of the least are equal and the checker's order (the list's) decides."""
    from numeric.hf.selection import TIE, Candidate, choose

    ill = Candidate("a", {}, 1.0, ill=True)
    far, near, least = Candidate("b", {}, 3.0), Candidate("c", {}, 1.0 * TIE), Candidate("d", {}, 1.0)
    assert choose([ill, far]) is far
    assert choose([ill, far, near, least]) is near  # within TIE of the least, and listed first
    assert choose([far, least, near]) is least
    assert choose([ill]) is ill  # nothing better: the only candidate


@pytest.mark.parametrize("model_type", ["gemma3_text", "llama"])
def test_batched_choice_is_the_token_by_token_choice(model_type):
    """The default computes every token's patches of a layer in one call (`Patcher.layer`): the same
    strategies and, to round-off, the same patches as choosing token by token (`Patcher.best`)."""
    from numeric.hf.layout import layer_params
    from numeric.hf.passes import contextual_bases
    from numeric.hf.selection import Patcher, resolve

    model = tiny_model(model_type, layers=2, dtype="float64")
    gen = torch.Generator().manual_seed(3)
    ctx, q = random_ids(6, 64, gen), random_ids(5, 64, gen)
    layout, kernels = resolve(model)
    bases, _ = contextual_bases(model, layout, torch.cat([ctx, q], 1), head=False)
    plain, _ = contextual_bases(model, layout, q, head=False)  # layer 0's u without the context
    u, target = plain[0], bases[0][6:]
    batched = Patcher(model, layout, kernels).layer(0, u, target, None)
    one = Patcher(model, layout, kernels)
    params = layer_params(model.model.layers[0], layout[0])
    chosen = [one.best(0, params, u[j:j + 1], target[j:j + 1], None, j) for j in range(5)]
    assert batched.strategies == [c.strategy for c in chosen]
    assert sum(a == a for a in batched.amplification) >= 1  # measured at least once
    for j, candidate in enumerate(chosen):
        mine = batched.token(j)
        for param, fields in candidate.patches.items():
            for f, v in fields.items():
                assert torch.allclose(mine[param][f], v, rtol=1e-9, atol=1e-12), (j, param)  # O(1) parameters


@pytest.mark.parametrize(("model_type", "want"), [("gemma3_text", {"W_gate", "W_up", "W_down"}),
                                                  ("llama", {"W_gate", "W_up"}), ("gpt2", set()), ("gptj", set()),
                                                  ("mixtral", set())])
def test_contextual_products_come_from_the_modules_that_compute_them(model_type, want):
    """Inference records per layer the bias-free linear modules whose output is a contextual product of the
    kernel (`Adapter.products`; none for GPT-2's biased Conv1D, a parallel block or a mixture); the contextual
    run stores their query rows, which equal the kernel's own `products` of the same u_C (to the float32 that
    transformers' norms compute in)."""
    from numeric.hf.layout import layer_params
    from numeric.hf.passes import contextual_bases
    from numeric.hf.selection import resolve

    model = tiny_model(model_type, layers=2, dtype="float64")
    layout, kernels = resolve(model)
    assert [{c for c, _ in a.products} for a in layout.kinds] == [want] * len(layout.kinds)
    gen = torch.Generator().manual_seed(3)
    ctx, q = random_ids(6, 64, gen), random_ids(5, 64, gen)
    given: dict = {}
    bases, _ = contextual_bases(model, layout, torch.cat([ctx, q], 1), head=False, given=given, start=6)
    assert sorted(given) == (list(range(model.config.num_hidden_layers)) if want else [])
    for n in given:
        kernel = next(iter(kernels[layout[n].spec].values()))
        ours = kernel.products(layer_params(model.model.layers[n], layout[n]), bases[n][6:])
        for name in want:
            assert given[n][name].shape == ours[name].shape
            assert float((given[n][name] - ours[name]).norm() / ours[name].norm()) <= 1e-5, (n, name)


def test_a_module_whose_output_is_not_the_product_is_not_taken(monkeypatch):
    """The check behind `Adapter.products` is numeric: a kernel whose `products` disagree with the modules'
    outputs gets none (the layout itself is still inferred and checked)."""
    from numeric import kernels
    from numeric.hf import infer

    real = kernels.load

    class Skewed:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getattr__(self, name):
            return getattr(self.kernel, name)

        def products(self, params, u_ctx):
            return {k: v * (1 + 1e-3 * v) for k, v in self.kernel.products(params, u_ctx).items()}

    model = tiny_model("llama", layers=2, dtype="float64")
    assert all(a.products for a in infer.infer(model).kinds)
    monkeypatch.setattr(kernels, "load", lambda *a, **kw: Skewed(real(*a, **kw)))
    assert [a.products for a in infer.infer(model).kinds] == [(), ()]


def _skewed_given(monkeypatch) -> list:
    """Patcher.layer with every given product distorted; returns the given keys it received, call by call."""
    import numeric.hf.selection as selection

    real, seen = selection.Patcher.layer, []

    def layer(self, n, u, target, x, given=None, plain=None):
        seen.append(sorted(given or {}))
        skew = None if given is None else {k: v * (1 + 0.01 * v) for k, v in given.items()}
        return real(self, n, u, target, x, skew, plain)
    monkeypatch.setattr(selection.Patcher, "layer", layer)
    return seen


def test_absorb_and_generation_patch_with_the_products_of_the_contextual_run(monkeypatch):
    """absorb_context and generate_without_context hand every layer the contextual run's products, and the
    patches are made of them: distorted, the patched run no longer reproduces the contextual one."""
    model = tiny_model("llama", layers=2, dtype="float64")
    gen = torch.Generator().manual_seed(5)
    ctx, q = random_ids(6, 64, gen), random_ids(4, 64, gen)
    with torch.no_grad():
        want = model(torch.cat([ctx, q], 1)).logits[0, 6:]

    def err(ps):
        return float((ps.logits()[0] - want).norm() / want.norm())
    assert err(absorb_context(model, ctx, q)) <= 1e-6
    ref = generate_without_context(model, ctx, q, 3)
    seen = _skewed_given(monkeypatch)
    with pytest.warns(PatchAccuracyWarning, match="the patched run's logits .* above the float64 bound") as told:
        ps = absorb_context(model, ctx, q)  # the patch set's own measurement sees the distortion
        assert err(ps) > 1e-4 and not ps.accuracy.ok  # and so does its replay: one warning each
    assert [str(w.message).split(":")[0] for w in told] == ["absorb_context", "PatchSet.logits"]
    assert seen == [["W_gate", "W_up"]] * 2
    seen.clear()
    with pytest.warns(PatchAccuracyWarning, match="generate_without_context: the patched next-token logits left"):
        generate_without_context(model, ctx, q, 3)
    assert seen == [["W_gate", "W_up"]] * 2 * 3  # the query, then each new token but the last
    assert ref.shape == (1, 3)


def test_the_query_pass_reads_the_input_maps_once_and_replays_to_the_bit(monkeypatch):
    """absorb_context hands every layer's patch formulas the no-context products `apply` computes (`plain`):
    distorted, the patches no longer fit; undistorted, the reported figures are the replay's, bit for bit."""
    import numeric.hf.selection as selection
    from numeric import kernels

    model = tiny_model("llama", layers=2, dtype="float64")
    gen = torch.Generator().manual_seed(6)
    ctx, q = random_ids(6, 64, gen), random_ids(4, 64, gen)
    real, seen = selection.Patcher.layer, []

    def layer(self, n, u, target, x, given=None, plain=None):
        seen.append(sorted(plain or {}))
        return real(self, n, u, target, x, given, plain)
    monkeypatch.setattr(selection.Patcher, "layer", layer)
    ps = absorb_context(model, ctx, q)
    keys = tuple(kernels.load("llama", "torch").PLAIN)
    assert seen == [sorted(keys)] * 2 and all("@" in k for k in keys)
    reported = ps.accuracy.figures["factored"].error
    ps.logits()  # the replay measures itself again
    assert ps.accuracy.figures["factored"].error == reported <= 1e-6

    def skewed(self, n, u, target, x, given=None, plain=None):
        return real(self, n, u, target, x, given, {k: v * (1 + 0.01 * v) for k, v in plain.items()})
    monkeypatch.setattr(selection.Patcher, "layer", skewed)
    with pytest.warns(PatchAccuracyWarning):
        assert not absorb_context(model, ctx, q).accuracy.ok
