r"""The kernel's closed term language: typed, immutable, built only through type-checking constructors.

**Terms.** `Var` (a variable: a name and a type of `symbolic.kernel.signature`, no sign or integer
assumption), `Lit` (a rational constant), `ILit` (an index literal), `BVar` (a bound index, de Bruijn
index: it exists only inside the body of a `Sum`), `App` (an operation of the fixed set `OPS`, or an
opaque function `Fn` declared by the user) and `Sum` (a finite sum over $j = 1..\mathrm{hi}$ whose binder
the kernel owns: the body refers to it as `BVar(0)`, so no substitution can capture it). Every term is
real by construction: there are no complex constants in the language.

Every node type-checks in its constructor (`__init__`, by `signature.op_type`) and is immutable
afterwards: an ill-typed term cannot exist. The kernel re-checks every theorem term by rebuilding it
(`symbolic.kernel.boundary.retype`), so a node altered behind the constructors' back is rejected too.
`children`, `free_vars` and `subterms` walk a term; substitution and binders are in
`symbolic.kernel.binders`. The types and `Fn` are re-exported here for the modules that build terms.
"""

from __future__ import annotations

from fractions import Fraction

from symbolic.kernel.signature import (
    ELEMENTWISE,
    NAME,
    OPS,
    SCALAR,
    VALUE,
    Family,
    Fn,
    Index,
    Matrix,
    Scalar,
    Type,
    TypeError_,
    Vector,
    broadcast,
    check_type,
    op_type,
    rename_type,
)

# --------------------------------------------------------------------------- terms


class Term:
    """Base of the term nodes: immutable, hashed once, compared structurally."""

    __slots__ = ("ty", "_hash", "loose", "depth")

    def __setattr__(self, key, value):
        raise AttributeError("kernel terms are immutable")

    def _init(self, ty, loose: frozenset, depth: int) -> None:
        object.__setattr__(self, "ty", ty)
        object.__setattr__(self, "loose", loose)
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "_hash", hash((type(self).__name__, self.key())))

    def key(self) -> tuple:
        raise NotImplementedError

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return self is other or (type(self) is type(other) and self._hash == other._hash and self.key() == other.key())

    def __repr__(self) -> str:  # `symbolic.kernel.show.text` prints a term as a formula
        return f"{type(self).__name__}{self.key()!r}"

    # arithmetic: numbers become literals; every operator goes through the typed constructor
    def __add__(self, o):
        return App("add", (self, lift(o)))

    def __radd__(self, o):
        return App("add", (lift(o), self))

    def __sub__(self, o):
        return App("add", (self, App("neg", (lift(o),))))

    def __rsub__(self, o):
        return App("add", (lift(o), App("neg", (self,))))

    def __mul__(self, o):
        return App("mul", (self, lift(o)))

    def __rmul__(self, o):
        return App("mul", (lift(o), self))

    def __truediv__(self, o):
        return App("div", (self, lift(o)))

    def __rtruediv__(self, o):
        return App("div", (lift(o), self))

    def __neg__(self):
        return App("neg", (self,))

    def __pow__(self, n):
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError_(f"only integer powers exist in the kernel, not {n!r}")
        if n < 0:
            return App("div", (Lit(1), self**-n))
        if n == 0:
            return Lit(1)
        out = self
        for _ in range(n - 1):
            out = App("mul", (out, self))
        return out


class Var(Term):
    """A variable of a type; the name and type together are its identity."""

    __slots__ = ("name",)

    def __init__(self, name: str, ty: Type):
        if not isinstance(name, str) or not NAME.match(name):
            raise TypeError_(f"a variable name is an identifier (letters, digits, _ and '), not {name!r}")
        _make_var(self, name, ty)

    def key(self) -> tuple:
        return (self.name, self.ty)


def _make_var(v: Var, name: str, ty: Type) -> None:
    check_type(ty)
    object.__setattr__(v, "name", name)
    v._init(ty, frozenset(), 0)


def fresh_var(name: str, ty: Type) -> Var:
    """A kernel-owned variable: its name has a '%', which no user variable can have."""
    v = Var.__new__(Var)
    _make_var(v, name, ty)
    return v


class Lit(Term):
    """A rational constant."""

    __slots__ = ("value",)

    def __init__(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, Fraction)):
            raise TypeError_(f"a literal is an int or a Fraction, not {value!r} (no floats, no complex numbers)")
        object.__setattr__(self, "value", Fraction(value))
        self._init(SCALAR, frozenset(), 0)

    def key(self) -> tuple:
        return (self.value,)


class ILit(Term):
    """An index literal n >= 1 (a positive integer)."""

    __slots__ = ("n",)

    def __init__(self, n: int):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise TypeError_(f"an index literal is an integer >= 1, not {n!r}")
        object.__setattr__(self, "n", n)
        self._init(Index(None), frozenset(), 0)

    def key(self) -> tuple:
        return (self.n,)


class BVar(Term):
    """The index bound by the `level`-th enclosing `Sum` (0: the innermost; a de Bruijn index)."""

    __slots__ = ("level",)

    def __init__(self, level: int, ty: Index):
        if not isinstance(level, int) or level < 0 or not isinstance(ty, Index):
            raise TypeError_("a bound variable has a level >= 0 and an index type")
        check_type(ty)
        object.__setattr__(self, "level", level)
        self._init(ty, frozenset({(level, ty)}), 0)

    def key(self) -> tuple:
        return (self.level, self.ty)


def lift(x) -> Term:
    if isinstance(x, Term):
        return x
    return Lit(x)


class App(Term):
    """An operation of `OPS` (by name) or an opaque function `Fn` applied to arguments."""

    __slots__ = ("op", "args")

    def __init__(self, op, args: tuple):
        args = tuple(args)
        if not all(isinstance(a, Term) for a in args):
            raise TypeError_(f"the arguments of {op} must be kernel terms")
        ty = op_type(op, [a.ty for a in args])
        if op == "at" and not isinstance(args[0], Var):
            raise TypeError_("only a family variable is indexed")
        for a in args:
            if isinstance(a.ty, Family) and op != "at":
                raise TypeError_(f"a family is used only as at(family, index), not in {op}")
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "args", args)
        self._init(ty, frozenset().union(*(a.loose for a in args)), max([a.depth for a in args] + [0]))

    def key(self) -> tuple:
        return (self.op, self.args)


class Sum(Term):
    r"""$\sum_{j=1}^{\mathrm{hi}} \mathrm{body}$; the body refers to j as `BVar(0)` of type Index(bound of hi)."""

    __slots__ = ("hi", "body")

    def __init__(self, hi: Term, body: Term):
        if not isinstance(hi, Term) or not isinstance(hi.ty, Index):
            raise TypeError_("a sum runs up to an index")
        if not isinstance(body, Term) or not isinstance(body.ty, VALUE):
            raise TypeError_("a sum adds scalars or vectors")
        for level, ty in body.loose:
            if level == 0 and ty != hi.ty:
                raise TypeError_(f"the summation index is a {hi.ty}, but the body uses it as a {ty}")
        loose = frozenset((lv - 1, t) for lv, t in body.loose if lv > 0) | hi.loose
        object.__setattr__(self, "hi", hi)
        object.__setattr__(self, "body", body)
        self._init(body.ty, loose, max(body.depth, hi.depth) + 1)

    def key(self) -> tuple:
        return (self.hi, self.body)


# --------------------------------------------------------------------------- walking a term


def children(t: Term) -> tuple:
    if isinstance(t, App):
        return t.args
    if isinstance(t, Sum):
        return (t.hi, t.body)
    return ()


def free_vars(t: Term, acc: set | None = None) -> set:
    acc = set() if acc is None else acc
    if isinstance(t, Var):
        acc.add(t)
    for c in children(t):
        free_vars(c, acc)
    return acc


def subterms(t: Term):
    """Every subterm, once per occurrence, outermost first (bound variables stay as BVar)."""
    yield t
    for c in children(t):
        yield from subterms(c)


__all__ = ["ELEMENTWISE", "NAME", "OPS", "SCALAR", "VALUE", "App", "BVar", "Family", "Fn", "ILit", "Index", "Lit",
           "Matrix", "Scalar", "Sum", "Term", "Type", "TypeError_", "Var", "Vector", "broadcast", "check_type",
           "children", "free_vars", "fresh_var", "lift", "rename_type", "subterms"]
