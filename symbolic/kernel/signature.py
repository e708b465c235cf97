r"""The kernel's signature: its types, its operations with their typing rules, and opaque functions.

**Types.** `SCALAR` (a real number), `Vector(d)` (a real vector of symbolic length $d$, a dimension
name: a universally quantified positive integer), `Matrix(r, c)`, `Index(D)` (an integer in
$1..D$; `Index(None)`: any positive integer) and `Family(D, T)` (one vector or matrix of type T per
index in $1..D$, e.g. the stacked weights of the experts).

**Operations.** `OPS`: the fixed operations of the kernel by name, each with its arity and typing rule
(argument types -> result type); `ELEMENTWISE`: those with a meaning coordinatewise (their proven
facts are in `symbolic.kernel.facts`). An opaque function `Fn` is declared by the user: elementwise
($\sigma$, applied coordinatewise) or a map with declared argument and result types. `op_type` types
one application; `symbolic.kernel.terms` calls it in every node's constructor. The tables are
read-only views: no one adds an operation or changes a typing rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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


def _fn_type(fn: Fn, ts) -> Type:
    if len(ts) != fn.arity:
        raise TypeError_(f"{fn.name} takes {fn.arity} arguments, got {len(ts)}")
    if fn.sig is None:
        return broadcast(list(ts), fn.name)
    if tuple(ts) != fn.sig:
        raise TypeError_(f"{fn.name} takes ({', '.join(map(str, fn.sig))}), got ({', '.join(map(str, ts))})")
    return fn.result


def op_type(op, ts: list) -> Type:
    """The type of `op` (an operation of `OPS` by name, or an opaque function `Fn`) applied to arguments of the
    types `ts`; raises TypeError_ naming the operation and the types when the application is ill-typed."""
    if isinstance(op, Fn):
        return _fn_type(op, ts)
    if isinstance(op, str) and op in OPS:
        n, rule = OPS[op]
        if len(ts) != n:
            raise TypeError_(f"{op} takes {n} arguments, got {len(ts)}")
        return rule(ts)
    raise TypeError_(f"unknown operation {op!r}; the kernel's operations: {', '.join(OPS)}")
