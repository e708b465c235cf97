"""The fourth adversarial audit of the proof kernel (issue 32): each test is an attack through the public API that
verified a false statement before its fix, with its counterexample evaluated, and the refusal it gets now."""

from __future__ import annotations

from fractions import Fraction

from symbolic.kernel import VERIFIED, Fn, Step, Theorem, apply, check, scalar

x = scalar("x")
F = Fn("F")


def test_a_model_cannot_rewrite_the_copy_the_kernel_keeps_for_citations():
    """A theorem's models are user code: one was handed the kernel's own copy of the theorem (model.ctx.th), the copy
    a citation reads, and rewrote its statement F(x) = F(x) into F(x) = x while it was checked; a citation then
    'verified' F(x) = x for every opaque F (false: F = 0, x = 1). The models now evaluate a copy of their own."""

    def model(m, t):
        object.__setattr__(m.ctx.th, "rhs", x)
        return t

    lemma = Theorem("lem", "F(x) = F(x)", (), apply(F, x), apply(F, x),
                    (Step(apply(F, x), apply(F, x), "reflexivity"),), models=(("F", model),))
    lem = check(lemma)
    assert lem.status == VERIFIED and lem.theorem.rhs == apply(F, x)
    th = Theorem("F_is_identity", "F(x) = x", (), apply(F, x), x, (Step(apply(F, x), x, "by lem", lemma="lem"),))
    res = check(th, {"lem": lem}, instances=False)
    assert res.status != VERIFIED and "not an instance of lem" in res.message, res.message
    zero = lambda t: Fraction(0)  # noqa: E731 -- the counterexample: F = 0 at x = 1
    assert zero(Fraction(1)) != Fraction(1)
