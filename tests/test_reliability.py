"""Reliability: degenerate inputs case by case, ill-conditioning warnings, the precision report,
mutation testing, and fuzzed specs (valid ones through the whole pipeline, invalid ones to exit 2)."""

from __future__ import annotations

import json
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxpatch.api import check
from ctxpatch.cli import main
from numeric import kernels
from numeric.check.counterexample import best_residual
from numeric.check.reference import forward, random_params
from numeric.check.validate import Setup, precision, validate
from numeric.kernels.runtime import IllConditionedPatchWarning
from symbolic import catalog
from symbolic.errors import PatchConditionError, SpecError
from symbolic.spec import loads_toml

T, D, M = 5, 6, 8


def _setup(arch_or_spec, seed: str, text: str | None = None):
    spec = loads_toml(text) if text else catalog.load(arch_or_spec)
    gen = torch.Generator().manual_seed(zlib.crc32(seed.encode()))
    params = random_params(spec, D, M, gen, n_experts=spec.moe.experts if spec.moe else None)
    u, u_ctx = (torch.randn(T, D, generator=gen, dtype=torch.float64) for _ in range(2))
    return spec, params, u, u_ctx


# --------------------------------------------------------------------------- degenerate inputs


def test_h_equal_zero_names_the_condition():
    """a_C = 0 (W_up = 0): the rank-1 W_down patch divides by |a_C|^2."""
    spec, params, u, u_ctx = _setup("llama", "h0")
    params["W_up"] = torch.zeros_like(params["W_up"])
    with pytest.raises(PatchConditionError) as exc:
        kernels.load("llama").block_patches(params, u, u_ctx, layer="2")
    assert exc.value.condition == "a_C != 0" and exc.value.tokens == list(range(T)) and exc.value.layer == "2"


@pytest.mark.parametrize("strategy", ["down_rank1_norm_scalar", "stable"])
def test_zero_gamma_where_the_target_needs_it(strategy):
    """gamma_i = 0 (w_i = -1 with gamma = 1 + w, as in real Gemma 3 270M): the strategies that aim through
    gamma invert against gamma_nz (zeros set to RMS(gamma)) and give that coordinate a scale entry: exact."""
    spec, params, u, u_ctx = _setup("gemma3", "gamma0")
    params["mlp_post_norm.scale"][3] = -1.0
    k = kernels.load("gemma3", strategy=strategy)
    patches = k.block_patches(params, u, u_ctx)
    assert bool((params["mlp_post_norm.scale"] + patches["mlp_post_norm.scale"]["delta"] != -1)[:, 3].all())
    want = forward(spec, params, u_ctx, u_ctx).y
    assert torch.allclose(k.apply(params, patches, u), want, rtol=0, atol=1e-10)
    # The paper's Theorem 1 does not divide by gamma: the same parameters are fine there.
    y = kernels.load("gemma3").apply(params, kernels.load("gemma3").block_patches(params, u, u_ctx), u)
    assert torch.allclose(y, want, rtol=0, atol=1e-10)


def test_eps_zero_adds_the_input_condition():
    text = catalog.text("llama").replace("eps = 1e-6", "eps = 0.0").replace('name = "llama"', 'name = "llama_eps0"')
    spec, params, u, u_ctx = _setup(None, "eps0", text)
    u[1] = 0.0  # RMSNorm without eps divides by |u|: 0/0
    with pytest.raises(PatchConditionError) as exc:
        kernels.load(spec).block_patches(params, u, u_ctx)
    assert exc.value.tokens == [1] and exc.value.condition in ("u != 0", "z != 0")


def test_router_tie_at_the_top_k_boundary_is_refused():
    spec, params, u, u_ctx = _setup("mixtral", "tie")
    W = params["W_router"]
    W[1:] = 0.0  # logits (l0, 0, 0, ...): experts 1.. tie for the second slot
    with pytest.raises(PatchConditionError) as exc:
        kernels.load("mixtral").block_patches(params, u, u_ctx, layer="4")
    assert "tie" in exc.value.condition and exc.value.tokens == list(range(T))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_parameters_or_inputs_never_give_a_patch(value):
    spec, params, u, u_ctx = _setup("gpt2", "nonfinite")
    u[2, 0] = value
    with pytest.raises(PatchConditionError) as exc:
        kernels.load("gpt2").block_patches(params, u, u_ctx)
    assert exc.value.tokens == [2]
    spec, params, u, u_ctx = _setup("gpt2", "nonfinite-param")
    params["W_up"][0, 0] = value  # a broken weight: the patch itself would be non-finite
    with pytest.raises(PatchConditionError, match="finite"):
        kernels.load("gpt2").block_patches(params, u, u_ctx)


def test_extreme_patch_norms_warn():
    """A post-norm output coordinate near zero makes Theorem 1's delta / f_C huge: warned in float32."""
    spec, params, u, u_ctx = _setup("gemma3", "extreme")
    params["W_down"][2] *= 1e-6
    p32 = {k: v.float() for k, v in params.items()}
    with pytest.warns(IllConditionedPatchWarning, match="mlp_post_norm.scale"):
        kernels.load("gemma3").block_patches(p32, u.float(), u_ctx.float(), layer="1")


# --------------------------------------------------------------------------- precision


def test_precision_report_explains_the_error_by_conditioning():
    out = precision(catalog.load("gemma3"), trials=2)
    s = out["summary"]
    assert s["float64"]["max_rel_error"] < 1e-12 < s["float32"]["max_rel_error"] < s["bfloat16"]["max_rel_error"]
    for dtype in ("float64", "float32", "bfloat16"):
        assert s[dtype]["max_error_over_kappa_eps"] < 10  # error ~ eps x conditioning, not a defect


def test_precision_command(capsys):
    assert main(["precision", "llama", "--trials", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["summary"]) == {"float64", "float32", "bfloat16"}


# --------------------------------------------------------------------------- mutation testing


def test_every_mutant_is_killed(capsys):
    """`ctxpatch mutate` runs exactly the registered mutants, each once: every proof mutant is caught by the proof
    kernel and every kernel mutant by random validation, and the kernel mutants include each kind of error the
    module names (a dropped eps, a wrong denominator, a sign flip, z and z_C swapped, a transposed factor, a
    missing norm offset, a wrong top-k renormalisation, an off-by-one layer)."""
    from numeric.check.mutants import KERNEL_MUTANTS
    from proofs.mutations import MUTATIONS

    assert main(["mutate", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["results"]
    assert [r["name"] for r in rows] == [*MUTATIONS, *(m.name for m in KERNEL_MUTANTS)]
    assert out["survivors"] == [] and out["killed"] == out["mutants"] == len(rows)
    for r in rows:
        assert r["killed"] and r["caught_by"] == (["prove"] if r["kind"] == "proof" else ["validate"]), r
    assert {"kernel_drop_eps_post", "kernel_norm_of_z_C", "kernel_sign_flip", "kernel_swap_z_z_C",
            "kernel_transposed_factor", "kernel_scale_without_one_plus", "kernel_topk_not_renormalized",
            "algorithm_off_by_one_layer"} <= {m.name for m in KERNEL_MUTANTS}


def test_unmutated_kernels_pass_the_same_validation():
    """The control: what kills a mutant is its edit (the same validation passes the real kernel)."""
    from numeric.check.mutants import KERNEL_MUTANTS

    for m in {(m.arch, m.strategy) for m in KERNEL_MUTANTS}:
        assert validate(catalog.load(m[0]), Setup(layers=3, strategy=m[1]), trials=1)["ok"], m


def test_a_stale_mutant_is_an_error():
    from numeric.check.mutants import Edit, MutantError, mutated_source

    with pytest.raises(MutantError):
        mutated_source("\ndef block_patches():\n    return 1\n", (Edit("block_patches", "nothing", "x"),))


# --------------------------------------------------------------------------- fuzzed specs

NORM = st.sampled_from(["none", "rms", "layer"])


@st.composite
def spec_texts(draw):
    residual = draw(st.sampled_from(["sequential", "parallel"]))
    skip = True if residual == "parallel" else draw(st.booleans())
    kind = draw(st.sampled_from(["dense", "gated", "moe"]))
    act = draw(st.sampled_from(["relu", "gelu", "gelu_tanh", "silu", "x*tanh(x) + x", "x/(1 + exp(-x))"]))
    out_act = draw(st.sampled_from(["identity", "identity", "tanh"]))
    post_ln = draw(st.sampled_from(["none", "layer"])) if skip and residual == "sequential" else "none"
    lines = ['name = "fuzz"', f'residual = "{residual}"', f"skip = {str(skip).lower()}", "",
             "[norm]", f"eps = {draw(st.sampled_from(['1e-6', '1e-5']))}",
             f'scale = "{draw(st.sampled_from(["plain", "one_plus"]))}"', f"bias = {str(draw(st.booleans())).lower()}",
             "", "[mlp]", f'kind = "{kind}"', f'activation = "{act}"', f'out_activation = "{out_act}"',
             f"bias = {str(draw(st.booleans())).lower() if kind != 'moe' else 'false'}",
             f'pre_norm = "{draw(NORM)}"', f'post_norm = "{draw(NORM)}"', f'post_ln = "{post_ln}"']
    if kind == "moe":
        experts = draw(st.integers(2, 4))
        lines += ["", "[moe]", f"experts = {experts}", f"top_k = {draw(st.integers(1, experts - 1))}",
                  f'softmax = "{draw(st.sampled_from(["before_topk", "after_topk"]))}"',
                  f"renormalize = {str(draw(st.booleans())).lower()}",
                  f'shared_expert = "{draw(st.sampled_from(["none", "plain", "gated"]))}"']
    allow = draw(st.sampled_from(['["*"]', '["W_down", "b_down"]', '["W_up", "W_gate"]', '["mlp_post_norm.*"]',
                                  '["*_norm.scale:scale"]', '["W_*"]']))
    lines += ["", "[patch]", f"allow = {allow}"]
    return "\n".join(lines) + "\n"


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=spec_texts(), seed=st.integers(0, 2**16))
def test_random_valid_specs_are_consistent_end_to_end(text, seed):
    try:
        spec = loads_toml(text)
    except Exception as exc:  # a combination the spec language forbids must say so clearly
        assert isinstance(exc, SpecError), (text, exc)
        return
    try:
        v = check(spec)
    except SpecError as exc:  # the one case the checker declines to decide (see controllability)
        assert "undecided" in str(exc) and spec.mlp.post_ln is not None, exc
        return
    if v.perfect_patch:  # a perfect-patch verdict always validates numerically, through the generated kernel
        assert v.derivation.verified, text
        out = validate(spec, Setup(layers=1, d=8, m=6, heads=2, kv_heads=1, context_len=3, query_len=2),
                       trials=1, seed=seed)
        assert out["max_rel_error"] <= 1e-9, (text, out)
    else:  # a negative verdict's counterexample is out of reach of every allowed parameter
        ce = v.to_json()["counterexample"]
        assert ce is not None and ce["invariant"], text
        assert best_residual(spec, ce, ce["side"], draws=60, steps=150, starts=2) > 1e-3, text


CORRUPTIONS = [
    ('kind = "', 'kind = "dens'), ("residual = ", "residal = "), ('activation = "', 'activation = "x +* '),
    ("eps = ", "eps = -"), ("[mlp]", "[mlp]\nunknown_field = 3"), ('name = "', 'name = '), ("skip = ", "skip = 3 #"),
    ('allow = [', 'allow = [5, '), ('post_norm = "', 'post_norm = "batch'), ("scale = ", "scale = 1 #"),
]


@settings(max_examples=25, deadline=None)
@given(base=st.sampled_from(["gemma3", "gpt2", "mixtral", "bert", "falcon"]),
       corruption=st.sampled_from(CORRUPTIONS))
def test_random_invalid_toml_exits_2_with_a_message(base, corruption, tmp_path_factory):
    import contextlib
    import io

    old, new = corruption
    text = catalog.text(base)
    if old not in text:
        return
    path = tmp_path_factory.mktemp("fuzz") / "bad.toml"
    path.write_text(text.replace(old, new, 1))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["check", str(path)]) == 2
    message = err.getvalue()
    assert "Traceback" not in message and "bad.toml" in message, message


def test_post_norm_then_post_ln_range_restriction_is_undecided_not_negative():
    """Regression found by fuzzing: the old verdict said 'no perfect patch' with a counterexample that
    a free W_down actually reaches (the post-LN's invariance enlarges the target set)."""
    text = ('name = "fuzz"\nresidual = "sequential"\nskip = true\n[norm]\neps = 1e-6\nscale = "plain"\nbias = false\n'
            '[mlp]\nkind = "dense"\nactivation = "relu"\nbias = false\npre_norm = "none"\npost_norm = "rms"\n'
            'post_ln = "layer"\n[patch]\nallow = ["W_*"]\n')
    with pytest.raises(SpecError, match="undecided"):
        check(loads_toml(text))


def test_counterexample_search_when_no_free_parameter_reaches_the_target():
    """Found by fuzzing: a MoE whose only allowed parameter is the router. The hidden activations do
    not depend on it, so the search has no gradient; the residual is what it is (and large)."""
    text = ('name = "fuzz"\nresidual = "sequential"\nskip = false\n[mlp]\nkind = "moe"\nactivation = "relu"\n'
            '[moe]\nexperts = 2\ntop_k = 1\n[patch]\nallow = ["W_*"]\n')
    v = check(loads_toml(text))
    ce = v.to_json()["counterexample"]
    assert not v.perfect_patch and ce["side"] == "input"
    assert best_residual(v.spec, ce, "input", draws=5, steps=5, starts=1) > 1e-3
