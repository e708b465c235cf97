"""Random-instance validation: the layer-by-layer algorithm on stacks with real attention, every
catalog architecture, float64 and float32, property tests over sizes, seeds and context lengths,
and a wrong patch that validation must catch."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxpatch.cli import main
from numeric import kernels
from numeric.check.reference import small_expert_count
from numeric.check.validate import BOUNDS, MIN_UNPATCHED, Setup, validate
from symbolic import catalog


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("arch", catalog.names())
def test_four_layer_stacks_match_the_contextual_run(arch, dtype):
    spec = catalog.load(arch)
    # float32: the router's choice must beat the round-off of its products (runtime.router_roundoff); hundreds
    # of experts behind a rank-16 router tie that closely often enough that tokens are refused (by design), so
    # float32 uses the fewest experts that keep the routing a real choice.
    experts = small_expert_count(spec) if spec.moe is not None and dtype == "float32" else None
    out = validate(spec, Setup(layers=4, dtype=dtype, experts=experts), trials=1)
    assert out["max_rel_error"] <= BOUNDS[dtype], out
    assert out["unpatched_rel_error"] >= MIN_UNPATCHED, out
    assert out["ok"]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=st.sampled_from(["gemma3", "llama", "mixtral", "falcon", "bert", "qwen2_moe", "vanilla"]),
       heads=st.sampled_from([(2, 1), (2, 2), (4, 2)]), d_per_head=st.sampled_from([2, 4]),
       m=st.integers(3, 12), layers=st.integers(1, 3), context_len=st.integers(1, 6),
       query_len=st.integers(1, 5), rope=st.booleans(), seed=st.integers(0, 2**16))
def test_validation_holds_over_sizes_seeds_and_context_lengths(arch, heads, d_per_head, m, layers, context_len,
                                                               query_len, rope, seed):
    h, kv = heads
    setup = Setup(layers=layers, d=h * d_per_head, m=m, heads=h, kv_heads=kv, rope=rope,
                  context_len=context_len, query_len=query_len)
    out = validate(catalog.load(arch), setup, trials=1, seed=seed)
    assert out["max_rel_error"] <= BOUNDS["float64"], out


def test_a_patch_from_the_wrong_token_is_caught(monkeypatch):
    """Validation can fail: patches computed for the neighbouring token leave a large error."""
    real = kernels.load("gemma3", "torch")

    class Shifted:
        def __getattr__(self, name):
            return getattr(real, name)

        def block_patches(self, params, u, u_ctx, layer=""):
            return real.block_patches(params, u, u_ctx.roll(1, 0), layer)

    monkeypatch.setattr(kernels, "load", lambda *a, **k: Shifted())
    out = validate(catalog.load("gemma3"), Setup(layers=2), trials=1)
    assert not out["ok"] and out["max_rel_error"] > 1e-2


def test_validate_command_json_keys_and_exit_codes(capsys):
    assert main(["validate", "llama", "--layers", "2", "--trials", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("arch", "dtype", "trials", "layers", "max_rel_error", "unpatched_rel_error"):
        assert key in out
    assert out["arch"] == "llama" and out["layers"] == 2 and out["dtype"] == "float64"
    assert main(["validate", "gpt2", "--json", "--trials", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["min_abs_gamma"] is not None
    assert main(["validate", "llama", "--heads", "3"]) == 2
    assert main(["validate", "llama", "--strategy", "stable"]) == 2
    assert main(["validate", "no_such_arch"]) == 2
    assert "no_such_arch" in capsys.readouterr().err


def test_alternative_strategy_validates(capsys):
    assert main(["validate", "gemma3", "--strategy", "stable", "--layers", "2", "--trials", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_rel_error"] <= 1e-10


class _RefusingKernel:
    """The generated kernel, except that its patches' side condition fails on the first `refusals` calls."""

    def __init__(self, spec, refusals: int):
        self.inner, self.left, self.calls = kernels.load(spec, "torch"), refusals, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def block_patches(self, *args, **kwargs):
        from symbolic.errors import PatchConditionError

        self.calls += 1
        if self.left > 0:
            self.left -= 1
            raise PatchConditionError("a test condition", [0], kwargs.get("layer", ""))
        return self.inner.block_patches(*args, **kwargs)


@pytest.mark.parametrize("refusals, ok", [(1, True), (3, False)])
def test_a_refused_draw_is_counted_and_shown_never_patched(refusals, ok):
    """A trial whose patch condition fails is listed in `refused` with its reason; `ok` needs a completed trial."""
    spec = catalog.load("llama")
    kernel = _RefusingKernel(spec, refusals)
    out = validate(spec, Setup(layers=2), trials=3, kernel=kernel)
    assert [r["trial"] for r in out["refused"]] == list(range(refusals))
    assert all("a test condition" in r["reason"] for r in out["refused"])
    assert out["ok"] is ok
    assert kernel.calls == refusals + 2 * (3 - refusals)  # refused trials stop at their first layer
