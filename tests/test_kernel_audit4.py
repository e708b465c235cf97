"""The fourth adversarial audit of the proof kernel (issue 32): each test is an attack through the public API that
verified a false statement before its fix, with its counterexample evaluated, and the refusal it gets now."""

from __future__ import annotations

from fractions import Fraction

import pytest

from symbolic.kernel import AXIOMS, RELATIONS, VERIFIED, Fn, Step, Theorem, apply, check, nonzero, scalar, sqrt
from symbolic.kernel.facts import FIXED, POS
from symbolic.kernel.signature import ELEMENTWISE, OPS

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


@pytest.mark.parametrize("table,key,value", [
    (AXIOMS, "sqrt_of_nonzero_square", (x, "coords", sqrt(x * x), x)),  # sqrt(a a) = a for a != 0: a = -1
    (RELATIONS, "<", RELATIONS["<="]),  # x < x
    (FIXED, "tanh", POS),  # tanh(x) > 0: x = -1
    (ELEMENTWISE, "F", 1), (OPS, "max", OPS["min"])])
def test_the_kernels_tables_are_read_only(table, key, value):
    """The kernel's tables are public names: a user added an axiom sqrt(x x) = x under x != 0 to AXIOMS, or made '<'
    the relation '<=', and the core verified sqrt(a a) = a (a = -1: 1 != -1) and x < x. They are read-only views."""
    with pytest.raises(TypeError):
        table[key] = value
    a = scalar("a")
    th = Theorem("abs", "sqrt(a a) = a", (nonzero(a),), sqrt(a * a), a,
                 (Step(sqrt(a * a), a, "axiom", rewrite=(("sqrt_of_nonzero_square", ((x, a),)),)),))
    assert check(th, instances=False).status != VERIFIED
    assert Fraction(1) != Fraction(-1)  # sqrt((-1) (-1)) = 1, not -1


def test_a_relation_of_the_kernel_cannot_be_altered():
    """RELATIONS["<"] was a frozen dataclass: object.__setattr__(RELATIONS["<"], "strict", False) made '<' non-strict
    for every later check (x < x verified). A Relation is a tuple now."""
    with pytest.raises(AttributeError):
        object.__setattr__(RELATIONS["<"], "strict", False)
    th = Theorem("lt_refl", "x < x", (), x, x, (Step(x, x, "algebra", "<"),), relation="<")
    assert check(th, instances=False).status != VERIFIED


def test_an_interval_of_the_facts_table_cannot_be_altered():
    """The facts table's intervals were frozen dataclasses: object.__setattr__(FIXED["tanh"], "lo", 0) would make
    tanh(x) > 0 a fact (x = -1: tanh(-1) < 0). An interval is a tuple now."""
    from symbolic.kernel import Lit, tanh

    with pytest.raises(AttributeError):
        object.__setattr__(FIXED["tanh"], "lo", Fraction(0))
    th = Theorem("tanh_pos", "tanh(x) > 0", (), tanh(x), Lit(0), (Step(tanh(x), Lit(0), "facts", ">"),), relation=">")
    assert check(th, instances=False).status != VERIFIED
