r"""The kernel's closed term language: typed, immutable, built only through type-checking constructors.

**Types.** `SCALAR` (a real number), `Vector(d)` (a real vector of symbolic length $d$, a dimension
name: a universally quantified positive integer), `Matrix(r, c)`, `Index(D)` (an integer in
$1..D$; `Index(None)`: any positive integer) and `Family(D, T)` (one vector or matrix of type T per
index in $1..D$, e.g. the stacked weights of the experts).

**Terms.** `Var` (a variable: a name and a type, no sign or integer assumption), `Lit` (a rational
constant), `ILit` (an index literal), `BVar` (a bound index, de Bruijn index: it exists only inside
the body of a `Sum`), `App` (an operation of the fixed set `OPS`, or an opaque function `Fn`
declared by the user) and `Sum` (a finite sum over $j = 1..\mathrm{hi}$ whose binder the kernel
owns: the body refers to it as `BVar(0)`, so no substitution can capture it). Every term is real by
construction: there are no complex constants in the language.

Every node type-checks in its constructor (`__init__`) and is immutable afterwards: an ill-typed
term cannot exist. The kernel re-checks every theorem term by rebuilding it
(`symbolic.kernel.boundary.retype`), so a node altered behind the constructors' back is rejected too.

Substitution (`subst`), dimension renaming (`rename_dims`), abstraction of a named index into a
binder (`abstract`), opening a binder (`instantiate`) and moving a term under or out of binders
(`shift`) are defined here once and used everywhere. All are capture-avoiding: `subst` substitutes
closed terms only, and `abstract` / `instantiate` shift the loose bound variables they carry across a
binder, so no binder of the kernel ever captures a variable that was not its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType

NAME = re.compile(r"[A-Za-z][A-Za-z0-9_']*\Z")


class TypeError_(TypeError):
    """An ill-typed term: the message names the operation and the types it was given."""


# --------------------------------------------------------------------------- types


@dataclass(frozen=True)
class Scalar:
    def __str__(self) -> str:
        return "scalar"


@dataclass(frozen=True)
class Vector:
    dim: str

    def __str__(self) -> str:
        return f"vector of length {self.dim}"


@dataclass(frozen=True)
class Matrix:
    rows: str
    cols: str

    def __str__(self) -> str:
        return f"{self.rows}x{self.cols} matrix"


@dataclass(frozen=True)
class Index:
    bound: str | None

    def __str__(self) -> str:
        return f"index in 1..{self.bound}" if self.bound else "positive integer"


@dataclass(frozen=True)
class Family:
    bound: str
    elem: Vector | Matrix

    def __str__(self) -> str:
        return f"family over 1..{self.bound} of {self.elem}"


SCALAR = Scalar()
Type = Scalar | Vector | Matrix | Index | Family
VALUE = (Scalar, Vector)


def _dim_name(n: str) -> str:
    if not isinstance(n, str) or not NAME.match(n):
        raise TypeError_(f"a dimension is a name (letters, digits, _), not {n!r}")
    return n


def check_type(t) -> Type:
    """A type built from dimension names only."""
    if isinstance(t, Scalar):
        return t
    if isinstance(t, Vector):
        _dim_name(t.dim)
    elif isinstance(t, Matrix):
        _dim_name(t.rows), _dim_name(t.cols)
    elif isinstance(t, Index):
        if t.bound is not None:
            _dim_name(t.bound)
    elif isinstance(t, Family):
        _dim_name(t.bound)
        if not isinstance(t.elem, (Vector, Matrix)):
            raise TypeError_(f"a family holds vectors or matrices, not {t.elem}")
        check_type(t.elem)
    else:
        raise TypeError_(f"not a type of the kernel: {t!r}")
    return t


def rename_type(t: Type, rho: dict[str, str]) -> Type:
    r = rho.get
    if isinstance(t, Vector):
        return Vector(r(t.dim, t.dim))
    if isinstance(t, Matrix):
        return Matrix(r(t.rows, t.rows), r(t.cols, t.cols))
    if isinstance(t, Index):
        return Index(r(t.bound, t.bound) if t.bound else None)
    if isinstance(t, Family):
        return Family(r(t.bound, t.bound), rename_type(t.elem, rho))
    return t


def broadcast(types: list[Type], what: str) -> Type:
    """Elementwise operations: scalars broadcast; vectors must have one length."""
    vecs = {t for t in types if isinstance(t, Vector)}
    for t in types:
        if not isinstance(t, VALUE):
            raise TypeError_(f"{what} takes scalars or vectors, not a {t}")
    if len(vecs) > 1:
        raise TypeError_(f"{what} of vectors of lengths {sorted(v.dim for v in vecs)}")
    return vecs.pop() if vecs else SCALAR


# --------------------------------------------------------------------------- opaque functions


#: Elementwise functions with a meaning (their proven facts are in `symbolic.kernel.facts`).
ELEMENTWISE = MappingProxyType({"sqrt": 1, "exp": 1, "tanh": 1, "sigmoid": 1, "heaviside": 1, "max": 2, "min": 2})


@dataclass(frozen=True)
class Fn:
    """An opaque function: elementwise of `arity` scalars (`sig` None: applied coordinatewise to
    vectors), or a map with declared argument types `sig` and result type `result`."""

    name: str
    arity: int = 1
    sig: tuple | None = None
    result: Type | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise TypeError_(f"a function name is an identifier, not {self.name!r}")
        if self.name in OPS or self.name in ELEMENTWISE:
            raise TypeError_(f"{self.name} is an operation of the kernel, not an opaque function")
        if self.sig is None:
            if self.result is not None or not isinstance(self.arity, int) or self.arity < 1:
                raise TypeError_(f"elementwise {self.name}: an arity >= 1 and no result type")
            return
        if not isinstance(self.sig, tuple) or len(self.sig) != self.arity or self.result is None:
            raise TypeError_(f"map {self.name}: give one type per argument and a result type")
        for t in (*self.sig, self.result):
            check_type(t)
            if isinstance(t, (Family, Matrix)):
                raise TypeError_(f"map {self.name}: arguments and result are scalars, vectors or indices")
        if isinstance(self.result, Index):
            raise TypeError_(f"map {self.name}: the result is a scalar or a vector")

    @staticmethod
    def map(name: str, sig: tuple, result: Type) -> Fn:
        return Fn(name, len(sig), tuple(sig), result)

    def renamed(self, rho: dict[str, str]) -> Fn:
        if self.sig is None:
            return self
        return Fn(self.name, self.arity, tuple(rename_type(t, rho) for t in self.sig), rename_type(self.result, rho))


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


# --------------------------------------------------------------------------- typing of operations


def _matrix_or_value(t: Type, what: str) -> None:
    if not isinstance(t, (Scalar, Vector, Matrix)):
        raise TypeError_(f"{what} takes values or matrices, not a {t}")


def _t_add(ts):
    if any(isinstance(t, Matrix) for t in ts):
        if len(set(ts)) != 1:
            raise TypeError_(f"+ of a matrix and something else: {', '.join(map(str, ts))}")
        return ts[0]
    return broadcast(list(ts), "+")


def _t_mul(ts):
    mats = [t for t in ts if isinstance(t, Matrix)]
    if mats:
        other = [t for t in ts if not isinstance(t, Matrix)]
        if len(mats) > 1 or not all(isinstance(t, Scalar) for t in other):
            raise TypeError_(f"* of a matrix with something other than a scalar: {', '.join(map(str, ts))}")
        return mats[0]
    return broadcast(list(ts), "*")


def _t_neg(ts):
    _matrix_or_value(ts[0], "-")
    return ts[0]


def _t_div(ts):
    a, b = ts
    if isinstance(a, Matrix):
        if not isinstance(b, Scalar):
            raise TypeError_(f"a matrix is divided by scalars only, not by a {b}")
        return a
    return broadcast([a, b], "/")


def _t_elementwise(name):
    return lambda ts: broadcast(list(ts), name)


def _need(t, cls, what):
    if not isinstance(t, cls):
        raise TypeError_(f"{what}, got a {t}")
    return t


def _t_matvec(ts):
    W, v = ts
    _need(W, Matrix, "matvec takes a matrix first")
    _need(v, Vector, "matvec takes a vector second")
    if v.dim != W.cols:
        raise TypeError_(f"matvec of a {W} and a {v}")
    return Vector(W.rows)


def _t_dot(ts):
    a, b = (_need(t, Vector, "dot takes two vectors") for t in ts)
    if a != b:
        raise TypeError_(f"dot of a {a} and a {b}")
    return SCALAR


def _t_outer(ts):
    a, b = (_need(t, Vector, "outer takes two vectors") for t in ts)
    return Matrix(a.dim, b.dim)


def _t_mean(ts):
    broadcast([ts[0]], "mean")
    return SCALAR


def _t_frob(ts):
    a, b = (_need(t, Matrix, "frob takes two matrices") for t in ts)
    if a != b:
        raise TypeError_(f"frob of a {a} and a {b}")
    return SCALAR


def _t_at(ts):
    fam, idx = ts
    _need(fam, Family, "at takes a family first")
    if idx != Index(fam.bound):
        raise TypeError_(f"at: a {fam} is indexed by an index in 1..{fam.bound}, not a {idx}")
    return fam.elem


def _t_routing(result):
    def rule(ts):
        ell, j = ts
        _need(ell, Vector, "a router function takes the logit vector first")
        if j != Index(ell.dim):
            raise TypeError_(f"a router function of {ell} takes an index in 1..{ell.dim}, not a {j}")
        return Index(ell.dim) if result == "index" else SCALAR
    return rule


def _t_num(ts):
    _need(ts[0], Index, "num takes an index")
    return SCALAR


#: The operations of the kernel and their typing rules (argument types -> result type).
OPS = MappingProxyType({"add": (2, _t_add), "mul": (2, _t_mul), "neg": (1, _t_neg), "div": (2, _t_div),
       **{n: (a, _t_elementwise(n)) for n, a in ELEMENTWISE.items()},
       "matvec": (2, _t_matvec), "dot": (2, _t_dot), "outer": (2, _t_outer), "mean": (1, _t_mean),
       "frob": (2, _t_frob), "at": (2, _t_at), "sel": (2, _t_routing("index")), "gate": (2, _t_routing("scalar")),
       "expert_gate": (2, _t_routing("scalar")), "num": (1, _t_num)})


def _t_fn(fn: Fn, ts) -> Type:
    if len(ts) != fn.arity:
        raise TypeError_(f"{fn.name} takes {fn.arity} arguments, got {len(ts)}")
    if fn.sig is None:
        return broadcast(list(ts), fn.name)
    if tuple(ts) != fn.sig:
        raise TypeError_(f"{fn.name} takes ({', '.join(map(str, fn.sig))}), got ({', '.join(map(str, ts))})")
    return fn.result


class App(Term):
    """An operation of `OPS` (by name) or an opaque function `Fn` applied to arguments."""

    __slots__ = ("op", "args")

    def __init__(self, op, args: tuple):
        args = tuple(args)
        if not all(isinstance(a, Term) for a in args):
            raise TypeError_(f"the arguments of {op} must be kernel terms")
        ts = [a.ty for a in args]
        if isinstance(op, Fn):
            ty = _t_fn(op, ts)
        elif isinstance(op, str) and op in OPS:
            n, rule = OPS[op]
            if len(args) != n:
                raise TypeError_(f"{op} takes {n} arguments, got {len(args)}")
            ty = rule(ts)
        else:
            raise TypeError_(f"unknown operation {op!r}; the kernel's operations: {', '.join(OPS)}")
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


# --------------------------------------------------------------------------- structural operations


def children(t: Term) -> tuple:
    if isinstance(t, App):
        return t.args
    if isinstance(t, Sum):
        return (t.hi, t.body)
    return ()


def rebuild(t: Term, kids: tuple) -> Term:
    """The same node over new children, through the typed constructor."""
    if isinstance(t, App):
        return App(t.op, kids)
    if isinstance(t, Sum):
        return Sum(*kids)
    return t


def free_vars(t: Term, acc: set | None = None) -> set:
    acc = set() if acc is None else acc
    if isinstance(t, Var):
        acc.add(t)
    for c in children(t):
        free_vars(c, acc)
    return acc


def subst(t: Term, sub: dict) -> Term:
    """Replace free variables simultaneously (types must agree). Only closed terms are substituted and
    binders are de Bruijn indices, so no variable of a substituted term can be captured."""
    if not sub:
        return t
    for v, e in sub.items():
        if not isinstance(v, Var) or not isinstance(e, Term) or v.ty != e.ty:
            raise TypeError_(f"substituting a {getattr(e, 'ty', e)} for the {getattr(v, 'ty', v)} {v!r}")
        if e.loose:
            raise TypeError_("a substituted term has no loose bound variable")
    return _subst(t, sub, {})


def _subst(t, sub, memo):
    if t in memo:
        return memo[t]
    if isinstance(t, Var):
        out = sub.get(t, t)
    elif isinstance(t, (App, Sum)):
        kids = children(t)
        new = tuple(_subst(c, sub, memo) for c in kids)
        out = t if all(a is b for a, b in zip(new, kids, strict=True)) else rebuild(t, new)
    else:
        out = t
    memo[t] = out
    return out


def rename_dims(t: Term, rho: dict[str, str]) -> Term:
    """Rename dimension names in every type of `t` (variables, bound indices, map signatures)."""
    if not rho:
        return t
    if isinstance(t, Var):
        return fresh_var(t.name, rename_type(t.ty, rho)) if "%" in t.name else Var(t.name, rename_type(t.ty, rho))
    if isinstance(t, BVar):
        return BVar(t.level, rename_type(t.ty, rho))
    if isinstance(t, App):
        op = t.op.renamed(rho) if isinstance(t.op, Fn) else t.op
        return App(op, tuple(rename_dims(a, rho) for a in t.args))
    if isinstance(t, Sum):
        return Sum(rename_dims(t.hi, rho), rename_dims(t.body, rho))
    return t


def shift(t: Term, by: int, cutoff: int = 0) -> Term:
    r"""$\uparrow^{by}_{cutoff}$: every loose bound variable of level >= `cutoff` moves `by` levels out (the
    term is carried under `by` more binders, or out of -by binders it does not use). Levels below the
    cutoff are bound inside the part of the term being moved and stay."""
    if by == 0 or not any(level >= cutoff for level, _ in t.loose):
        return t
    if isinstance(t, BVar):
        if t.level + by < 0:
            raise TypeError_("a bound variable shifted out of its binder")
        return BVar(t.level + by, t.ty)
    if isinstance(t, App):
        return App(t.op, tuple(shift(a, by, cutoff) for a in t.args))
    if isinstance(t, Sum):
        return Sum(shift(t.hi, by, cutoff), shift(t.body, by, cutoff + 1))
    return t


def abstract(t: Term, v: Var, level: int = 0) -> Term:
    r"""Close over the variable `v`: it becomes the bound variable of a new binder `level` levels up.

    Capture-avoiding: the new binder sits between `t`'s own binders below `level` and the ones its loose
    bound variables refer to, so every loose bound variable of level >= `level` moves one level out
    (`instantiate(abstract(t, v), v) == t` for every t, closed or not)."""
    if t == v:
        return BVar(level, v.ty)
    if isinstance(t, BVar):
        return BVar(t.level + 1, t.ty) if t.level >= level else t
    if isinstance(t, App):
        return App(t.op, tuple(abstract(a, v, level) for a in t.args))
    if isinstance(t, Sum):
        return Sum(abstract(t.hi, v, level), abstract(t.body, v, level + 1))
    return t


def instantiate(body: Term, e: Term, level: int = 0) -> Term:
    r"""Open a binder: $\mathrm{body}[\mathrm{BVar}(level) := e]$, capture-avoiding.

    `e` may itself have loose bound variables (the index of an enclosing sum, when a family is unfolded
    under that sum): at depth k below the opened binder it is shifted k levels out, so the binders of
    `body` never capture them. The opened binder disappears, so the body's loose bound variables of
    level > `level` move one level in."""
    if not body.loose:
        return body
    if isinstance(body, BVar):
        if body.level == level:
            if e.ty != body.ty:
                raise TypeError_(f"a binder over a {body.ty} opened with a {e.ty}")
            return shift(e, level)
        return BVar(body.level - 1, body.ty) if body.level > level else body
    if isinstance(body, App):
        return App(body.op, tuple(instantiate(a, e, level) for a in body.args))
    if isinstance(body, Sum):
        return Sum(instantiate(body.hi, e, level), instantiate(body.body, e, level + 1))
    return body


def subterms(t: Term):
    """Every subterm, once per occurrence, outermost first (bound variables stay as BVar)."""
    yield t
    for c in children(t):
        yield from subterms(c)
