r"""The second line of evidence: evaluate a proof step on explicit instances.

Every vector symbol becomes a column of random nonzero rationals of a concrete length (sizes
d, m in {2, 3, 4}), every matrix a matrix of rationals, every positive scalar a positive
rational; the elementwise algebra is then evaluated by SymPy in 60-digit arithmetic (`W z` as a
matrix product, `mean` as a sum over the length), and both sides must agree to 40 digits.
Steps using top-k routing or the RMSNorm inverse are not instantiated
("n/a"); their symbolic verdict stands alone.
"""

from __future__ import annotations

import random

import sympy as sp
from sympy.core.function import AppliedUndef

from symbolic.algebra import Dot, EMat, EVec, Frob, Gate, Mat, MatVec, Mean, Outer, RmsInverse, Sel, Vec

SIZES = ({"d": 2, "m": 3, "m_s": 2, "n_E": 3}, {"d": 3, "m": 2, "m_s": 3, "n_E": 4},
         {"d": 4, "m": 4, "m_s": 2, "n_E": 3})
UNSUPPORTED = (EMat, EVec, Gate, Sel, RmsInverse, sp.Sum)


class NotInstantiable(Exception):
    pass


DIGITS = 60


def _rational(rng: random.Random) -> sp.Float:
    """A random nonzero rational, carried at 60 significant digits."""
    while True:
        q = sp.Rational(rng.randint(-9, 9), rng.randint(1, 5))
        if q != 0:
            return sp.Float(q, DIGITS)


def _value(sym: sp.Symbol, sizes: dict, rng: random.Random):
    if isinstance(sym, Vec):
        return sp.Matrix([_rational(rng) for _ in range(sizes[sym.dim])])
    if isinstance(sym, Mat):
        return sp.Matrix(sizes[sym.rows], sizes[sym.cols], lambda i, j: _rational(rng))
    if sym.is_positive:
        return abs(_rational(rng))
    return _rational(rng)


def _ev(e, env):
    if e in env:
        return env[e]
    if e.is_Number or e in (sp.pi, sp.E):
        return sp.Float(e, DIGITS)
    if isinstance(e, UNSUPPORTED):
        raise NotInstantiable(type(e).__name__)
    if isinstance(e, MatVec):
        return _mat(e.args[0], env) * _ev(e.args[1], env)
    if isinstance(e, Dot):
        a, b = (_ev(x, env) for x in e.args)
        return (a.T * b)[0]
    if isinstance(e, Mean):
        v = _ev(e.args[0], env)
        return sum(v) / len(v) if isinstance(v, sp.MatrixBase) else v
    if isinstance(e, Frob):
        A, B = (_mat(a, env) for a in e.args)
        return sum(A.multiply_elementwise(B))
    if isinstance(e, (Outer, AppliedUndef)) or isinstance(e, sp.Wild):
        raise NotInstantiable(f"{type(e).__name__} (not a concrete vector function)")
    args = [_ev(a, env) for a in e.args]
    if isinstance(e, sp.Add):
        return _broadcast(lambda *xs: sp.Add(*xs), args)
    if isinstance(e, sp.Mul):
        return _broadcast(lambda *xs: sp.Mul(*xs), args)
    if isinstance(e, sp.Pow):
        return _broadcast(lambda b, x: b**x, args)
    if isinstance(e, sp.Function):
        return _broadcast(lambda *xs: e.func(*xs), args)
    raise NotInstantiable(type(e).__name__)


def _mat(W, env):
    if W in env:
        return env[W]
    if isinstance(W, Outer):
        x, y = (_ev(a, env) for a in W.args)
        return x * y.T
    if isinstance(W, sp.Add):
        return sum((_mat(a, env) for a in W.args[1:]), _mat(W.args[0], env))
    if isinstance(W, sp.Mul):
        mats = [a for a in W.args if isinstance(a, (Mat, Outer, sp.Add))]
        coeff = sp.Mul(*(_ev(a, env) for a in W.args if a not in mats))
        return coeff * _mat(mats[0], env)
    raise NotInstantiable(f"matrix {W}")


def _broadcast(op, args):
    vecs = [a for a in args if isinstance(a, sp.MatrixBase)]
    if not vecs:
        return op(*args)
    n = vecs[0].rows
    return sp.Matrix([op(*(a[i] if isinstance(a, sp.MatrixBase) else a for a in args)) for i in range(n)])


def _equal(a, b) -> bool:
    diff = _broadcast(lambda x, y: x - y, [a, b])
    entries = list(diff) if isinstance(diff, sp.MatrixBase) else [diff]
    scale = max([abs(sp.N(x, DIGITS)) for x in (list(a) if isinstance(a, sp.MatrixBase) else [a])] + [1])
    return all(abs(sp.N(d, DIGITS)) <= sp.Float(10, DIGITS) ** -40 * scale for d in entries)


def check_instances(step, th, seed: int = 0, definitions: bool = True) -> str:
    """'3/3 exact instances', 'refuted at d=..., m=...', or 'n/a: <why>'."""
    from symbolic.proof import _rewrite

    lhs, rhs = _rewrite(step.lhs, th, definitions), _rewrite(step.rhs, th, definitions)
    symbols = sorted((lhs - rhs).free_symbols | lhs.free_symbols | rhs.free_symbols, key=sp.default_sort_key)
    rng = random.Random(seed)
    ok = 0
    for sizes in SIZES:
        env = {s: _value(s, sizes, rng) for s in symbols}
        try:
            a, b = _ev(lhs, env), _ev(rhs, env)
        except NotInstantiable as exc:
            return f"n/a: {exc} is not instantiated"
        except (ZeroDivisionError, TypeError, ValueError) as exc:  # a degenerate draw, e.g. a zero denominator
            return f"n/a: {type(exc).__name__}"
        if any(x.has(sp.zoo, sp.nan) for x in (a, b) if hasattr(x, "has")):
            continue
        if not _equal(a, b):
            return f"refuted at {sizes}"
        ok += 1
    return f"{ok}/{len(SIZES)} exact instances"


def probe_nonzero(e: sp.Expr, seed: int = 7) -> bool:
    """True if `e` evaluates to a clearly nonzero value on a random instance (False if unsure)."""
    rng = random.Random(seed)
    symbols = sorted(e.free_symbols, key=sp.default_sort_key)
    sizes = SIZES[1]
    env = {s: _value(s, sizes, rng) for s in symbols}
    try:
        v = _ev(e, env)
    except (NotInstantiable, ZeroDivisionError, TypeError, ValueError, AttributeError):
        return False
    entries = list(v) if isinstance(v, sp.MatrixBase) else [v]
    try:
        return any(abs(complex(sp.N(x, 30))) > 1e-20 for x in entries)
    except (TypeError, ValueError):
        return False
