r"""The untrusted translator from the SymPy derivation to the proof kernel's terms.

SymPy derives the patch formulas (`symbolic.derive`); the block theorems state them in the kernel's
closed language (`symbolic.kernel`), translated here. The translation is not trusted: whatever it
produces is type-checked by the kernel's constructors and proved by the kernel, so a translation
error can only make a theorem fail, never make a false one pass.

- `Vec`, `Mat` become vector and matrix variables; a scalar `Symbol` a scalar variable (its SymPy
  assumptions are dropped: facts come from hypotheses); an integer symbol an index (the expert `e` and
  the top-k count `k` range over the experts, ``n_E``).
- `EVec(v, e)`, `EMat(W, e)` become members of the families `v`, `W` over the experts.
- `Sum(f, (j, 1, hi))` becomes a kernel sum (its binder then belongs to the kernel).
- $x^{-n}$ becomes a division, $x^{1/2}$ a square root; `Heaviside(x, 0)` the kernel's heaviside
  (H(0) = 0); `Max`/`Min` the elementwise max/min; exp, tanh the kernel's; an undefined elementwise
  function (sigma) an opaque elementwise function; any other elementwise function of one argument an
  opaque function of the same name (the theorem then holds for every function in its place).
"""

from __future__ import annotations

from fractions import Fraction

import sympy as sp
from sympy.core.function import AppliedUndef

from symbolic import kernel as K
from symbolic.terms import Dot, EMat, EVec, ExpertGate, Frob, Gate, Mat, MatVec, Mean, Outer, Sel, Vec

EXPERTS = "n_E"


class TranslationError(ValueError):
    """A SymPy expression outside the kernel's language."""


def index_var(s: sp.Symbol, bound: str | None = EXPERTS) -> K.Var:
    return K.index(s.name, bound)


def family_of(base: sp.Symbol) -> K.Var:
    if isinstance(base, Mat):
        return K.family(base.name, EXPERTS, K.Matrix(base.rows, base.cols))
    if isinstance(base, Vec):
        return K.family(base.name, EXPERTS, K.Vector(base.dim))
    raise TranslationError(f"an expert's object of {base}, which is not a vector or matrix symbol")


def to_kernel(e: sp.Basic, bound: dict | None = None) -> K.Term:
    """The kernel term of a SymPy expression of the vector algebra; `bound` maps summation symbols."""
    bound = bound or {}
    t = _tr(sp.sympify(e), bound)
    return t


def _tr(e, bound: dict) -> K.Term:
    t = _tr1(e, bound)
    return t


def _value(t: K.Term) -> K.Term:
    """An index used as a number (k experts in a formula) is the kernel's num(k)."""
    return K.num(t) if isinstance(t.ty, K.Index) else t


def _tr1(e, bound: dict) -> K.Term:
    if e in bound:
        return bound[e]
    if isinstance(e, Vec):
        return K.vec(e.name, e.dim)
    if isinstance(e, Mat):
        return K.mat(e.name, e.rows, e.cols)
    if isinstance(e, sp.Symbol):
        return index_var(e) if e.is_integer else K.scalar(e.name)
    if e.is_Rational:
        return K.Lit(Fraction(int(e.p), int(e.q)))
    if isinstance(e, sp.Add):
        out = _value(_tr(e.args[0], bound))
        for a in e.args[1:]:
            out = out + _value(_tr(a, bound))
        return out
    if isinstance(e, sp.Mul):
        return _mul(e, bound)
    if isinstance(e, sp.Pow):
        return _pow(e, bound)
    if isinstance(e, (EVec, EMat)):
        return K.at(family_of(e.args[0]), _tr(e.args[1], bound))
    table = {MatVec: K.matvec, Dot: K.dot, Outer: K.outer, Frob: K.frob, Mean: K.mean, Sel: K.sel, Gate: K.gate,
             ExpertGate: K.expert_gate, sp.exp: K.exp, sp.tanh: K.tanh}
    for cls, fn in table.items():
        if isinstance(e, cls):
            return fn(*(_tr(a, bound) for a in e.args))
    if isinstance(e, sp.Sum):
        return _sum(e, bound)
    if isinstance(e, sp.Heaviside):
        if len(e.args) != 2 or e.args[1] != 0:
            raise TranslationError("Heaviside with H(0) other than 0")
        return K.heaviside(_tr(e.args[0], bound))
    if isinstance(e, (sp.Max, sp.Min)):
        fn = K.vmax if isinstance(e, sp.Max) else K.vmin
        out = _tr(e.args[0], bound)
        for a in e.args[1:]:
            out = fn(out, _tr(a, bound))
        return out
    if isinstance(e, AppliedUndef) and getattr(e.func, "dim", None) is None or (
            isinstance(e, sp.Function) and len(e.args) == 1):
        fn = K.Fn(e.func.__name__, len(e.args))
        return K.apply(fn, *(_tr(a, bound) for a in e.args))
    raise TranslationError(f"{e} ({type(e).__name__}) is outside the kernel's language")


def _mul(e: sp.Mul, bound: dict) -> K.Term:
    """A product as numerator / denominator (negative powers divide); -1 times x is -x."""
    num, den, sign = [], [], 1
    for f in e.args:
        if isinstance(f, sp.Pow) and f.exp.is_Rational and f.exp < 0:
            den.append(sp.Pow(f.base, -f.exp))
        elif f.is_Rational:
            sign = -1 if f < 0 else 1
            if abs(f.p) != 1:
                num.insert(0, sp.Integer(abs(f.p)))
            if f.q != 1:
                den.append(sp.Integer(f.q))
        else:
            num.append(f)
    if den:  # the denominator divides the last factor: (1 + w) * (h / sqrt(...))
        last = _value(_tr(num[-1], bound)) if num else K.Lit(1)
        quotient = last / _product(den, bound)
        out = _product(num[:-1], bound) * quotient if len(num) > 1 else quotient
    else:
        out = _product(num, bound)
    return -out if sign < 0 else out


def _product(fs: list, bound: dict) -> K.Term:
    if not fs:
        return K.Lit(1)
    out = _value(_tr(fs[0], bound))
    for f in fs[1:]:
        out = out * _value(_tr(f, bound))
    return out


def _pow(e: sp.Pow, bound: dict) -> K.Term:
    b, n = e.base, e.exp
    if not n.is_Rational:
        raise TranslationError(f"the power {e} (only rational powers with denominator 1 or 2)")
    if n < 0:
        return K.Lit(1) / _pow(sp.Pow(b, -n, evaluate=False), bound)
    base = _value(_tr(b, bound))
    if n.q == 1:
        return base ** int(n.p)
    if n.q == 2:
        return K.sqrt(base) ** int(n.p)
    raise TranslationError(f"the power {e} (only rational powers with denominator 1 or 2)")


def _sum(e: sp.Sum, bound: dict) -> K.Term:
    (j, lo, hi), = e.limits
    if lo != 1:
        raise TranslationError(f"a sum from {lo}: kernel sums run from 1")
    top = _tr(hi, bound)
    jv = K.index(j.name, top.ty.bound)
    return K.sum_over(jv, top, _tr(e.function, {**bound, j: jv}))
