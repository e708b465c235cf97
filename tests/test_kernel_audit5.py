"""The fifth adversarial audit: each test is a false or unchecked claim that ctxpatch made before its fix, with its
counterexample evaluated, and what it says now.

- SymPy solves an outer activation's inverse over the complex numbers and the derivation took its first solution: for
  ``x**3`` the principal root ``t**(1/3)`` (complex for t < 0), which `check` called a perfect patch and `codegen`
  emitted as ``(...)**0.333`` (NaN for half the targets); for ``sinh`` the branch ``log(t - sqrt(t^2 + 1))``.
- "no perfect patch exists" was printed when the verdict was only undecided (``Max(x, 2*x)`` is onto and invertible).
- A derived patch the kernel's language cannot state (Cardano's cube roots) crashed `prove` and `report`.
- `validate` crashed printing a run whose every trial was refused.
- The Coq printer gave one Coq name to a family and an opaque map of the same name: coqc "checked" ``G e = G e`` for
  the kernel's refuted ``G[e] = G(e)``.
"""

from __future__ import annotations

import math
import shutil

import pytest
import sympy as sp

from ctxpatch import api
from ctxpatch.cli import main
from proofs import registry
from symbolic.activations import x
from symbolic.errors import SpecError
from symbolic.kernel import REFUTED, VERIFIED, Fn, Step, Theorem, apply, at, check, exp, family, index, scalar
from symbolic.kernel.coq import coq_statement, write_coq_project
from symbolic.kernel.signature import Index, Vector
from symbolic.ranges import real_inverse


def out_activation_spec(tmp_path, activation: str, name: str = "outer"):
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\nresidual = "sequential"\nskip = true\n[mlp]\nkind = "dense"\n'
                    f'activation = "relu"\nout_activation = "{activation}"\nbias = true\n', encoding="utf-8")
    return path


def test_a_cube_root_that_is_complex_for_negative_targets_is_not_a_perfect_patch(tmp_path):
    """out_activation x**3: the patch b_down = (h_C^3 + delta)^(1/3) - h_C was 'verified' and called a perfect patch,
    but SymPy's t**(1/3) is the principal complex root: at t = -8 it is 1 + i sqrt(3), not -2 (the kernels computed
    NaN). No branch SymPy proposes is real at every real target, so the verdict is now undecided."""
    principal = complex(sp.N(sp.Integer(-8) ** sp.Rational(1, 3)))
    assert abs(principal.imag) > 1 and principal ** 3 == pytest.approx(-8)
    verdict = api.check(str(out_activation_spec(tmp_path, "x**3")))
    assert not verdict.perfect_patch
    assert "none of SymPy's inverses of x**3" in verdict.absence() and "undecided" in verdict.absence()


def test_the_real_branch_of_an_inverse_is_chosen():
    """sinh: SymPy's first solution of sinh(w) = t is log(t - sqrt(t^2 + 1)), the log of a negative number for every
    real t; the real branch log(t + sqrt(t^2 + 1)) = asinh(t) is the one taken now."""
    w, t = sp.Symbol("w", real=True), sp.Dummy("t", real=True)
    sols = sp.solve(sp.Eq(sp.sinh(w), t), w)
    first = complex(sp.N(sols[0].subs(t, 2)))
    assert abs(first.imag) > 1  # the branch taken before: complex at t = 2
    chosen = real_inverse(sp.sinh(x), sols, t)
    assert chosen is not None
    for target in (-1000, -2, 0, sp.Rational(1, 3), 50):
        assert complex(sp.N(chosen.subs(t, target))) == pytest.approx(float(sp.asinh(target)))


def test_an_undecided_verdict_never_claims_that_no_perfect_patch_exists(tmp_path):
    """Max(x, 2*x) is continuous and onto (its inverse: t/2 for t >= 0, t for t < 0), so a perfect patch exists; the
    checker cannot decide it, and `prove` said 'no perfect patch exists'. It now says the question is undecided."""
    f = lambda v: max(v, 2 * v)  # noqa: E731
    inverse = lambda t: t / 2 if t >= 0 else t  # noqa: E731
    assert all(f(inverse(t)) == t for t in (-3.5, -1.0, 0.0, 2.0, 7.25))
    spec = out_activation_spec(tmp_path, "Max(x, 2*x)", "maxlin")
    with pytest.raises(SpecError) as err:
        registry.theorems_for(str(spec))
    assert "no perfect patch exists" not in str(err.value)
    assert "none is ruled out" in str(err.value) and "undecided" in str(err.value)


def test_a_proven_absence_still_says_so():
    """The bounded tanh output is not output controllable (a range invariant): that absence is proven and said."""
    with pytest.raises(SpecError, match="no perfect patch exists"):
        registry.theorems_for("examples/tanh_output.toml")


def test_a_patch_outside_the_kernels_language_is_a_clear_error(tmp_path, capsys):
    """x**3 + x: the real inverse is Cardano's formula with cube roots, which the kernel's terms do not have; `prove`
    died in the bridge with a TranslationError traceback. It is now a clear error naming the construct (exit 2)."""
    spec = out_activation_spec(tmp_path, "x**3 + x", "cardano")
    code = main(["prove", str(spec), "--brief"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "cannot be stated in the kernel's language" in err and "1/3" in err


def test_validate_prints_a_run_whose_every_trial_was_refused(monkeypatch, capsys):
    """Every trial refused by a side condition leaves no measured figure (None): the table crashed formatting it."""
    import numeric.check.validate as V

    real = V.validate

    def all_refused(spec, setup, trials, seed):
        out = real(spec, setup, trials=trials, seed=seed)
        return out | {"per_layer_error": [], "max_rel_error": 0.0, "unpatched_rel_error": None, "ok": False,
                      "refused": [{"trial": k, "reason": "a side condition fails"} for k in range(trials)]}

    monkeypatch.setattr(V, "validate", all_refused)
    code = main(["validate", "vanilla", "--layers", "1", "--trials", "1", "--d", "4", "--m", "6", "--heads", "2",
                 "--kv-heads", "2"])
    out = capsys.readouterr()
    assert code == 1 and "Traceback" not in out.err
    assert "n/a (no trial measured)" in out.out and "FAILED" in out.out


def conflated() -> Theorem:
    """G[e] = G(e) for a family G and an opaque map G: false (G[e] := 1, G(e) := 0)."""
    e = index("e", "E")
    G = family("G", "E", Vector("d"))
    Gm = Fn.map("G", (Index("E"),), Vector("d"))
    return Theorem("block_conflate", "a family and a map of one name", (), at(G, e), apply(Gm, e),
                   (Step(at(G, e), apply(Gm, e), "the same name"),))


def test_the_coq_statement_keeps_a_family_and_a_map_of_one_name_apart():
    th = conflated()
    assert check(th).status == REFUTED
    statement = coq_statement(th)
    assert "G e = G e" not in statement and "G e = G_v e" in statement, statement


def test_a_variable_named_like_a_kernel_operation_is_not_that_operation():
    """A scalar variable `exp` was printed with the name of the kernel's exp: `exp exp = exp exp`."""
    v = scalar("exp")
    th = Theorem("block_expvar", "exp of a variable named exp", (), exp(v), exp(v), (Step(exp(v), exp(v), "refl"),))
    assert check(th).status == VERIFIED
    statement = coq_statement(th)
    assert "exp exp =" not in statement and "exp exp_v = exp exp_v" in statement and "0 < exp x" in statement, statement


@pytest.mark.skipif(shutil.which("coqc") is None, reason="coqc (make install-system) is not installed")
def test_coqc_does_not_check_a_statement_the_kernel_refutes(tmp_path):
    """Before the fix coqc checked the printed `G e = G e` with the default block script."""
    rows = write_coq_project(tmp_path / "coq", [conflated()])
    assert rows == [{"name": "block_conflate", "checked": False, "reason": rows[0]["reason"]}] and rows[0]["reason"]


def test_codegen_writes_no_kernel_from_a_derivation_that_did_not_verify(tmp_path, capsys):
    """sinh: the derivation does not verify symbolically (SymPy cannot simplify sinh(asinh(t)) here); `codegen --spec`
    still wrote its kernels, exit 0 (with the complex branch taken before, kernels that computed NaN)."""
    spec = out_activation_spec(tmp_path, "sinh(x)", "sinh_out")
    assert not api.check(str(spec)).perfect_patch
    out = tmp_path / "kernels"
    assert main(["codegen", "--spec", str(spec), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "did not verify symbolically" in err and "Traceback" not in err
    assert not out.exists()


def test_an_undecided_check_shows_no_witness_of_unreachability(tmp_path, capsys):
    """`check` on Max(x, 2*x) printed 'witness: delta = e_1: the strategy cannot reach a generic target', false: the
    bias patch reaches every target (Max(x, 2*x) is onto). An undecided verdict shows the draw as what it is."""
    spec = out_activation_spec(tmp_path, "Max(x, 2*x)", "maxlin")
    assert main(["check", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "cannot reach" not in out and "not a proven" in out and "undecided" in out


@pytest.mark.parametrize("text,as_written", [("sqrt(x)**2", lambda v: math.sqrt(v) ** 2),
                                             ("exp(log(x))", lambda v: math.exp(math.log(v)))])
def test_an_activation_is_read_as_written_not_as_sympy_rewrote_it(tmp_path, text, as_written):
    """SymPy rewrites sqrt(x)**2 and exp(log(x)) to x when it parses them, so `check` called the block with
    out_activation "sqrt(x)**2" perfectly patchable (the identity is onto), while the function as written is undefined
    for x < 0 (its real range is [0, oo): not onto). The text as written is probed now, like sqrt(x) and log(x)."""
    with pytest.raises(ValueError):
        as_written(-1.0)  # math domain error: undefined at x = -1
    with pytest.raises(SpecError, match="x = -100"):
        api.check(str(out_activation_spec(tmp_path, text, "as_written")))
