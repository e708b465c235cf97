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

from dataclasses import dataclass

import sympy as sp
from sympy.solvers.solvers import denoms

from symbolic.instances import probe_nonzero
from symbolic.printing import latex, pstr
from symbolic.terms import (
    EXPERT,
    SCALAR_FUNCS,
    VECTOR_FUNCS,
    DimensionError,
    Dot,
    EMat,
    EVec,
    ExpertGate,
    Frob,
    Gate,
    Mat,
    MatVec,
    Mean,
    Outer,
    RmsInverse,
    Sel,
    Vec,
    dim_of,
    is_matrix,
    is_scalar,
    matrix_shape,
    shape,
)

__all__ = ["BOUND", "EXPERT", "SCALAR_FUNCS", "VECTOR_FUNCS", "Condition", "DimensionError", "Dot", "EMat", "EVec",
           "ExpertGate", "Frob", "Gate", "Mat", "MatVec", "Mean", "Outer", "RmsInverse", "Sel", "Vec", "collect_matvec",
           "dim_of",
           "is_matrix", "is_scalar", "is_zero", "linear_terms", "matrix_shape", "normalize", "shape",
           "side_conditions", "tidy"]

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


#: The canonical bound variable of an innermost sum; a sum around it gets `bound(2)`, and so on.
BOUND = sp.Symbol("j", integer=True, positive=True)


def bound(level: int) -> sp.Symbol:
    r"""The canonical name of a bound variable at nesting `level` (1 = innermost): $j, j_2, j_3, \dots$"""
    return BOUND if level == 1 else sp.Symbol(f"j_{level}", integer=True, positive=True)


def _level(e: sp.Basic) -> int:
    """How deeply sums nest inside `e` (0: no sum)."""
    return max([_level(a) for a in e.args] + [0]) + (1 if isinstance(e, sp.Sum) else 0)


def _sum(s: sp.Sum) -> sp.Expr:
    r"""Linearity of a one-index sum, after renaming its index canonically (alpha-equivalence).

    The new name depends on how many sums nest inside, so it never occurs in the summand, free or
    bound: renaming cannot capture a variable ($\sum_i i \sum_l (i + l)^2$ stays two sums).
    """
    (j, lo, hi), = s.limits
    new = bound(_level(s.function) + 1)
    if j != new:
        if new in s.function.atoms(sp.Symbol) or new in (lo.free_symbols | hi.free_symbols):
            return s  # keep the user's name rather than capture
        s = sp.Sum(s.function.xreplace({j: new}), (new, lo, hi))
        j = new
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
        if self.kind == "vector":
            return f"{pstr(self.expr)} != 0"
        if self.kind == "coords":
            return f"every coordinate of {pstr(self.expr)} != 0"
        return f"{pstr(self.expr)} != 0"

    def latex(self) -> str:
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
