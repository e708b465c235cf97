"""Constructors for writing theorems: named variables of each type and one function per operation.

Not part of the trusted core: each of these only calls the typed constructors of
`symbolic.kernel.terms`, which check every node.
"""

from __future__ import annotations

from symbolic.kernel.binders import abstract
from symbolic.kernel.terms import (
    SCALAR,
    App,
    Family,
    Fn,
    Index,
    Matrix,
    Sum,
    Term,
    TypeError_,
    Var,
    Vector,
    free_vars,
    lift,
)


def scalar(name: str) -> Var:
    return Var(name, SCALAR)


def vec(name: str, dim: str) -> Var:
    return Var(name, Vector(dim))


def mat(name: str, rows: str, cols: str) -> Var:
    return Var(name, Matrix(rows, cols))


def index(name: str, bound: str | None = None) -> Var:
    return Var(name, Index(bound))


def family(name: str, bound: str, elem: Vector | Matrix) -> Var:
    return Var(name, Family(bound, elem))


def op(name: str):
    """The constructor of the kernel operation `name` (e.g. ``op("matvec")(W, z)``)."""
    return lambda *args: App(name, tuple(lift(a) for a in args))


matvec, dot, outer, mean, frob = op("matvec"), op("dot"), op("outer"), op("mean"), op("frob")
sqrt, exp, tanh, sigmoid, heaviside = op("sqrt"), op("exp"), op("tanh"), op("sigmoid"), op("heaviside")
vmax, vmin, at, sel, gate, expert_gate, num = (op(n) for n in ("max", "min", "at", "sel", "gate", "expert_gate",
                                                                "num"))


def apply(fn: Fn, *args) -> App:
    return App(fn, tuple(lift(a) for a in args))


def sum_over(j: Var, hi: Term, body) -> Sum:
    r"""$\sum_{j=1}^{hi}$ body: the named index `j` becomes the kernel's bound variable."""
    body = lift(body)
    if not isinstance(j, Var) or j.ty != hi.ty:
        raise TypeError_(f"the summation index must be a variable of the type of its bound ({hi.ty})")
    if j in free_vars(hi):
        raise TypeError_("the bound of a sum cannot use its own index")
    return Sum(hi, abstract(body, j))
