r"""Dimension-generic vector algebra on top of SymPy.

A `Vec` symbol stands for a real vector of symbolic length (its `dim`, e.g. ``d`` or ``m``).
Arithmetic between vectors is elementwise and a scalar broadcasts, exactly as in NumPy, so the
ring identities SymPy uses hold coordinate by coordinate and its simplifier stays sound. The
operations that couple coordinates are opaque SymPy functions with explicit rewrite rules:

- `MatVec(W, z)`  $W z$ (linear in $W$ and in $z$; $(x y^\top) z = x\,(y^\top z)$);
- `Dot(a, b)`     $a^\top b$ (symmetric, bilinear);
- `Mean(v)`       $\frac1n \sum_i v_i$ (linear, $\mathrm{mean}(c) = c$ for a scalar $c$);
- `Outer(x, y)`   $x y^\top$ (a matrix; appears only inside `MatVec` or as a patch);
- `EMat(W, e)`, `EVec(v, e)` the matrix / vector of expert $e$; `Sel(\ell, j)` the expert ranked
  $j$-th by router logits $\ell$; `Gate(\ell, j)` its routing weight.

`normalize` applies the rewrite rules to a fixed point; `is_zero` decides an identity by
normalizing and simplifying (three-valued: True, or None when SymPy cannot tell). Because no
expression ever fixes a dimension, every identity proved here holds for all sizes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sympy as sp
from sympy.solvers.solvers import denoms


class DimensionError(TypeError):
    """Two vectors of different (symbolic) lengths met in one elementwise or linear operation."""


class Vec(sp.Symbol):
    """A real vector of symbolic length `dim`; arithmetic on it is elementwise.

    The length is part of the symbol's identity: ``Vec("x", "d") != Vec("x", "m")``.
    """

    dim: str

    def __new__(cls, name: str, dim: str):
        obj = sp.Symbol.__xnew__(cls, name, real=True)
        obj.dim = dim
        return obj

    def __getnewargs_ex__(self):
        return (self.name, self.dim), {}

    def _hashable_content(self):
        return super()._hashable_content() + (self.dim,)


class Mat(sp.Symbol):
    """A matrix of symbolic shape (rows, cols); only meaningful inside `MatVec` and `Outer`."""

    rows: str
    cols: str

    def __new__(cls, name: str, rows: str, cols: str):
        obj = sp.Symbol.__xnew__(cls, name, commutative=True)
        obj.rows, obj.cols = rows, cols
        return obj

    def __getnewargs_ex__(self):
        return (self.name, self.rows, self.cols), {}

    def _hashable_content(self):
        return super()._hashable_content() + (self.rows, self.cols)


class MatVec(sp.Function):
    """$W z$."""

    nargs = 2

    @classmethod
    def eval(cls, W, z):
        if z.is_zero:
            return sp.S.Zero
        return None

    def _eval_is_real(self):
        return True


class Dot(sp.Function):
    r"""$a^\top b$, a scalar. Arguments are kept in canonical order."""

    nargs = 2

    @classmethod
    def eval(cls, a, b):
        if a.is_zero or b.is_zero:
            return sp.S.Zero
        if sp.default_sort_key(b) < sp.default_sort_key(a):
            return cls(b, a)
        return None

    def _eval_is_real(self):
        return True

    def _eval_is_nonnegative(self):
        a, b = self.args
        return True if a == b and a.is_real else None


class Mean(sp.Function):
    r"""$\mathrm{mean}(v) = \frac1n\sum_i v_i$, a scalar."""

    nargs = 1

    @classmethod
    def eval(cls, v):
        if is_scalar(v):
            return v
        return None

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_is_nonnegative(self):
        return self.args[0].is_nonnegative


class Outer(sp.Function):
    r"""$x y^\top$, a matrix."""

    nargs = 2


class Frob(sp.Function):
    r"""$\langle A, B\rangle_F = \operatorname{tr}(A^\top B)$, the Frobenius product of two matrices."""

    nargs = 2

    @classmethod
    def eval(cls, A, B):
        if sp.default_sort_key(B) < sp.default_sort_key(A):
            return cls(B, A)
        return None

    def _eval_is_real(self):
        return True

    def _eval_is_nonnegative(self):
        return True if self.args[0] == self.args[1] else None


class EMat(sp.Function):
    """Matrix `W` of expert `e` (a slice of a stacked expert tensor)."""

    nargs = 2


class EVec(sp.Function):
    """Vector `v` of expert `e` (e.g. the hidden activation of expert e)."""

    nargs = 2

    def _eval_is_real(self):
        return True


class Sel(sp.Function):
    r"""The index of the expert ranked `j`-th by router logits $\ell$ (top-k selection)."""

    nargs = 2


class Gate(sp.Function):
    r"""The routing weight of the `j`-th selected expert: $\mathrm{softmax}(\ell)_{\mathrm{Sel}(\ell, j)}$."""

    nargs = 2

    def _eval_is_positive(self):
        return True


class RmsInverse(sp.Function):
    r"""$\arg\min_{y:\ \mathrm{mean}(y^2)=1} \lVert \gamma \odot y - t \rVert^2$ (the constrained RMSNorm inverse)."""

    nargs = 2

    def _eval_is_real(self):
        return True


MATRIX_FUNCS = (Outer, EMat)
SCALAR_FUNCS = (Dot, Mean, Gate, Sel, Frob)
VECTOR_FUNCS = (MatVec, EVec, RmsInverse)


# --------------------------------------------------------------------------- shapes


def is_matrix(e: sp.Basic) -> bool:
    if isinstance(e, Mat) or isinstance(e, MATRIX_FUNCS):
        return True
    if isinstance(e, (sp.Add, sp.Mul)):
        return any(is_matrix(a) for a in e.args)
    return False


def is_scalar(e: sp.Basic) -> bool:
    """Whether `e` denotes a scalar (broadcast over coordinates) rather than a vector."""
    if isinstance(e, Vec) or isinstance(e, VECTOR_FUNCS):
        return False
    if isinstance(e, SCALAR_FUNCS):
        return True
    if is_matrix(e):
        raise DimensionError(f"a matrix is used as a value: {e}")
    if isinstance(e, sp.Sum):
        return is_scalar(e.function)
    if e.is_Atom:
        return True
    return all(is_scalar(a) for a in e.args if not isinstance(a, sp.Tuple))


def dim_of(e: sp.Basic) -> str | None:
    """The symbolic length of vector expression `e` (None for a scalar). Raises DimensionError."""
    if isinstance(e, Vec):
        return e.dim
    if isinstance(e, MatVec):
        W, z = e.args
        rows, cols = matrix_shape(W)
        zd = dim_of(z)
        if zd is not None and zd != cols:
            raise DimensionError(f"{W} has {cols} columns but multiplies a vector of length {zd}: {e}")
        return rows
    if isinstance(e, EVec):
        return dim_of(e.args[0])
    if isinstance(e, RmsInverse):
        return _same(dim_of(a) for a in e.args)
    if isinstance(e, Dot):
        a, b = e.args
        _same([dim_of(a), dim_of(b)])
        return None
    if isinstance(e, (Mean, Gate, Sel)):
        for a in e.args:
            dim_of(a)
        return None
    if isinstance(e, sp.Sum):
        return dim_of(e.function)
    if e.is_Atom:
        return None
    return _same(dim_of(a) for a in e.args if not isinstance(a, sp.Tuple))


def matrix_shape(W: sp.Basic) -> tuple[str, str]:
    if isinstance(W, Mat):
        return W.rows, W.cols
    if isinstance(W, EMat):
        return matrix_shape(W.args[0])
    if isinstance(W, Outer):
        x, y = W.args
        return dim_of(x), dim_of(y)
    if isinstance(W, sp.Add):
        shapes = {matrix_shape(a) for a in W.args}
        if len(shapes) != 1:
            raise DimensionError(f"matrices of different shapes added: {W}")
        return shapes.pop()
    if isinstance(W, sp.Mul):
        mats = [a for a in W.args if is_matrix(a)]
        if len(mats) != 1 or not all(is_scalar(a) for a in W.args if a is not mats[0]):
            raise DimensionError(f"not a scalar multiple of one matrix: {W}")
        return matrix_shape(mats[0])
    raise DimensionError(f"not a matrix: {W}")


def _same(dims: Iterable[str | None]) -> str | None:
    found = {d for d in dims if d is not None}
    if len(found) > 1:
        raise DimensionError(f"vectors of lengths {sorted(found)} combined elementwise")
    return found.pop() if found else None


# --------------------------------------------------------------------------- rewriting


def linear_terms(v: sp.Expr) -> list[tuple[sp.Expr, sp.Expr]]:
    """Split a vector expression into sum_i c_i * v_i with scalar c_i (v_i = 1 is the ones vector)."""
    out = []
    for term in sp.Add.make_args(sp.expand_mul(v, deep=False)):
        scal = [f for f in sp.Mul.make_args(term) if is_scalar(f)]
        vect = [f for f in sp.Mul.make_args(term) if not is_scalar(f)]
        out.append((sp.Mul(*scal), sp.Mul(*vect)))
    return out


def _matvec(W: sp.Expr, z: sp.Expr) -> sp.Expr:
    if isinstance(W, sp.Add):
        return sp.Add(*(_matvec(t, z) for t in W.args))
    if isinstance(W, sp.Mul):
        coeff = sp.Mul(*(a for a in W.args if not is_matrix(a)))
        mat = sp.Mul(*(a for a in W.args if is_matrix(a)))
        return coeff * _matvec(mat, z)
    if isinstance(W, Outer):
        x, y = W.args
        return x * _dot(y, z)
    terms = linear_terms(z)
    if len(terms) == 1 and terms[0][0] == 1:
        return MatVec(W, z)
    return sp.Add(*(c * MatVec(W, v) for c, v in terms))


def _dot(a: sp.Expr, b: sp.Expr) -> sp.Expr:
    ta, tb = linear_terms(a), linear_terms(b)
    if len(ta) == 1 and len(tb) == 1 and ta[0][0] == 1 and tb[0][0] == 1:
        return Dot(a, b)
    return sp.Add(*(ca * cb * Dot(va, vb) for ca, va in ta for cb, vb in tb))


def _matrix_terms(A: sp.Expr) -> list[tuple[sp.Expr, sp.Expr]]:
    """A matrix expression as sum_i c_i * M_i with scalar c_i."""
    out = []
    for term in sp.Add.make_args(sp.expand_mul(A, deep=False)):
        mats = [f for f in sp.Mul.make_args(term) if is_matrix(f)]
        coeff = sp.Mul(*(f for f in sp.Mul.make_args(term) if not is_matrix(f)))
        out.append((coeff, sp.Mul(*mats)))
    return out


def _frob(A: sp.Expr, B: sp.Expr) -> sp.Expr:
    r"""Bilinear, and $\langle x y^\top, N\rangle_F = x^\top N y$."""
    out = []
    for ca, a in _matrix_terms(A):
        for cb, b in _matrix_terms(B):
            if isinstance(a, Outer):
                out.append(ca * cb * _dot(a.args[0], _matvec(b, a.args[1])))
            elif isinstance(b, Outer):
                out.append(ca * cb * _dot(b.args[0], _matvec(a, b.args[1])))
            else:
                out.append(ca * cb * Frob(a, b))
    return sp.Add(*out)


def _mean(v: sp.Expr) -> sp.Expr:
    terms = linear_terms(v)
    if len(terms) == 1 and terms[0][0] == 1:
        return Mean(v)
    return sp.Add(*(c * Mean(w) for c, w in terms))


#: The canonical bound variable of a top-k sum; sums are renamed to it (alpha-equivalence).
BOUND = sp.Symbol("j", integer=True, positive=True)


def _sum(s: sp.Sum) -> sp.Expr:
    (j, lo, hi), = s.limits
    if j != BOUND and BOUND not in s.function.free_symbols:
        s = sp.Sum(s.function.xreplace({j: BOUND}), (BOUND, lo, hi))
        j = BOUND
    out = []
    for term in sp.Add.make_args(sp.expand_mul(s.function, deep=False)):
        indep, dep = term.as_independent(j, as_Add=False)
        out.append(indep * (hi - lo + 1) if dep == 1 else indep * sp.Sum(dep, (j, lo, hi)))
    return sp.Add(*out)


def collect_matvec(e: sp.Expr) -> sp.Expr:
    r"""Fold $c_1 W v_1 + c_2 W v_2$ back into $W (c_1 v_1 + c_2 v_2)$ (and likewise Dot) for display."""
    groups: dict[tuple, list[sp.Expr]] = {}
    rest = []
    for term in sp.Add.make_args(sp.expand(e)):
        coeff = [f for f in sp.Mul.make_args(term) if not isinstance(f, (MatVec, Dot))]
        ops = [f for f in sp.Mul.make_args(term) if isinstance(f, (MatVec, Dot))]
        if len(ops) == 1 and all(is_scalar(c) for c in coeff):
            op = ops[0]
            groups.setdefault((op.func, op.args[0]), []).append(sp.Mul(*coeff) * op.args[1])
        else:
            rest.append(term)
    folded = [func(first, sp.Add(*vs)) for (func, first), vs in groups.items()]
    return sp.Add(*folded, *rest)


def tidy(e: sp.Expr) -> sp.Expr:
    """A display form: one fraction, matrix-vector products folded by linearity."""
    num, den = sp.fraction(sp.together(e))
    return collect_matvec(num) / den


def _rewrite(e: sp.Basic) -> sp.Basic:
    if e.is_Atom:
        return e
    args = [_rewrite(a) for a in e.args]
    if args != list(e.args):
        e = e.func(*args)
    if isinstance(e, MatVec):
        return _matvec(*e.args)
    if isinstance(e, Dot):
        return _dot(*e.args)
    if isinstance(e, Mean):
        return _mean(e.args[0])
    if isinstance(e, Frob):
        return _frob(*e.args)
    if isinstance(e, sp.Sum) and len(e.limits) == 1:
        return _sum(e)
    return e


def normalize(e: sp.Expr, rounds: int = 20) -> sp.Expr:
    """Apply the linearity rules of MatVec, Dot, Mean and Sum until nothing changes."""
    for _ in range(rounds):
        new = _rewrite(e)
        if new == e:
            return e
        e = new
    return e


def is_zero(e: sp.Expr) -> bool | None:
    """True when `e` is identically zero for every dimension; None when it is not shown to be.

    After normalization, a numeric probe on random instances skips SymPy's (slow) simplifier
    for expressions that are plainly nonzero; it never turns a nonzero expression into True.
    """
    e = normalize(sp.expand(normalize(e)))
    if e == 0:
        return True
    from symbolic.instances import probe_nonzero

    if probe_nonzero(e):
        return None
    if sp.cancel(sp.together(e)) == 0:  # rational in its generators (functions, roots): often enough
        return True
    try:
        e = sp.simplify(sp.together(e))
    except (StopIteration, RecursionError, NotImplementedError):  # SymPy's sum_simplify can fail
        return None
    if e == 0:
        return True
    e = normalize(sp.expand(e))
    return True if sp.simplify(e) == 0 else None


# --------------------------------------------------------------------------- side conditions


@dataclass(frozen=True)
class Condition:
    r"""A side condition `expr != 0`.

    `kind` is ``vector`` ($v \neq 0$, from a squared norm in a denominator), ``coords`` (every
    coordinate of a vector nonzero, from an elementwise division) or ``scalar``.
    """

    expr: sp.Expr
    kind: str

    def text(self) -> str:
        from symbolic.printing import pstr

        if self.kind == "vector":
            return f"{pstr(self.expr)} != 0"
        if self.kind == "coords":
            return f"every coordinate of {pstr(self.expr)} != 0"
        return f"{pstr(self.expr)} != 0"

    def latex(self) -> str:
        from symbolic.printing import latex

        if self.kind == "coords":
            return rf"\left({latex(self.expr)}\right)_i \neq 0 \ \forall i"
        return rf"{latex(self.expr)} \neq 0"


def side_conditions(expr: sp.Expr) -> list[Condition]:
    """Conditions under which `expr` is defined: every denominator nonzero, simplified."""
    out: list[Condition] = []
    for d in sorted(denoms(expr), key=sp.default_sort_key):
        out += _nonzero(d)
    return _dedupe(out)


def _nonzero(d: sp.Expr) -> list[Condition]:
    if d.is_number or d.is_nonzero or d.is_positive:
        return []
    if isinstance(d, sp.Pow) and d.exp.is_positive:
        return _nonzero(d.base)
    if isinstance(d, sp.Mul):
        return [c for f in d.args for c in _nonzero(f)]
    if isinstance(d, Dot) and d.args[0] == d.args[1]:
        return [Condition(d.args[0], "vector")]
    if isinstance(d, Mean) and isinstance(d.args[0], sp.Pow) and d.args[0].exp == 2:
        return [Condition(d.args[0].base, "vector")]
    if is_scalar(d):
        return [Condition(d, "scalar")]
    return [Condition(d, "coords")]


def _dedupe(conds: list[Condition]) -> list[Condition]:
    seen, out = set(), []
    for c in conds:
        if (c.expr, c.kind) not in seen:
            seen.add((c.expr, c.kind))
            out.append(c)
    return out
