r"""Is an elementwise function onto $\mathbb{R}$? A small, sound range analysis.

A function continuous on $\mathbb{R}$ with limits $-\infty$ and $+\infty$ at the two ends is onto
(intermediate value theorem). If neither limit is $-\infty$ it is bounded below (continuous
with finite or $+\infty$ ends), so values far below are unreachable; likewise above. SymPy
computes the limits; continuity comes from `continuous_domain`, or, where that gives up (erf),
from the expression being built of everywhere-continuous functions with positive denominators.
The numeric bound reported for a witness is a grid estimate, and witnesses keep a wide margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import sympy as sp
from sympy.calculus.util import continuous_domain
from sympy.solvers.solvers import denoms

from symbolic.activations import x

_CONTINUOUS = (sp.exp, sp.erf, sp.tanh, sp.sinh, sp.cosh, sp.sin, sp.cos, sp.atan, sp.Max, sp.Min, sp.Abs)


@dataclass(frozen=True)
class Range:
    onto: bool | None  # True: every real value is reached; False: bounded on a side; None: unknown
    below: float | None = None  # an estimate of inf f, when bounded below
    above: float | None = None  # an estimate of sup f, when bounded above
    proof: str = ""

    def outside(self, margin: float = 1.0) -> float:
        """A value no input reaches (when not onto)."""
        return self.below - margin if self.below is not None else self.above + margin

    def text(self) -> str:
        lo = f"{self.below:.4g}" if self.below is not None else "-oo"
        hi = f"{self.above:.4g}" if self.above is not None else "oo"
        return f"[{lo}, {hi}] (approximately)"


def continuous_everywhere(f: sp.Expr) -> bool:
    try:
        return continuous_domain(f, x, sp.S.Reals) == sp.S.Reals
    except (NotImplementedError, ValueError, TypeError):
        pass
    funcs = {a.func for a in f.atoms(sp.Function)}
    if not all(issubclass(g, _CONTINUOUS) for g in funcs):
        return False
    return all(d.is_positive or d.is_number and d != 0 for d in denoms(f))


def _eventually(f: sp.Expr, end: sp.Expr) -> sp.Expr | None:
    """f with every Max/Min replaced by the argument it eventually equals as x -> end (None: a tie).

    Innermost first: when the arguments' limits differ, Max (Min) is eventually the argument with the
    largest (smallest) limit, so f and the result agree for all x beyond some point.
    """
    if f.is_Atom:
        return f
    args = [_eventually(a, end) for a in f.args]
    if any(a is None for a in args):
        return None
    g = f.func(*args)
    if not isinstance(g, (sp.Max, sp.Min)):
        return g
    limits = [sp.limit(a, x, end) for a in g.args]
    best = (max if g.func is sp.Max else min)(limits, key=lambda v: float(v) if v.is_finite else v)
    return g.args[limits.index(best)] if limits.count(best) == 1 else None


def limit_at(f: sp.Expr, end: sp.Expr) -> sp.Expr | None:
    """The limit of f as x -> end (+-oo); Max/Min first resolved by `_eventually`. None when SymPy fails."""
    try:
        g = _eventually(f, end)
        return None if g is None else sp.limit(g, x, end)
    except (NotImplementedError, TypeError, ValueError):
        return None


@cache
def elementwise_range(f: sp.Expr) -> Range:
    if f == x:
        return Range(True, proof="the identity is onto")
    if not continuous_everywhere(f):
        return Range(None, proof="continuity on R could not be established")
    lo, hi = limit_at(f, -sp.oo), limit_at(f, sp.oo)
    if lo is None or hi is None:
        return Range(None, proof="SymPy cannot take the limits at the ends")
    ends = {lo, hi}
    if not all(v in (sp.oo, -sp.oo) or (v.is_real and v.is_finite and v.is_comparable) for v in ends):
        return Range(None, proof=f"the limits at the ends ({lo}, {hi}) are not determined")
    if ends == {-sp.oo, sp.oo}:
        return Range(True, proof=f"continuous with limits {lo} and {hi}: onto by the intermediate value theorem")
    fn = sp.lambdify(x, f, modules="math")
    grid = [float(fn(i / 10)) for i in range(-400, 401)]
    below = min(grid + [float(v) for v in ends if v.is_finite]) if -sp.oo not in ends else None
    above = max(grid + [float(v) for v in ends if v.is_finite]) if sp.oo not in ends else None
    side = " and ".join(n for n, v in (("below", below), ("above", above)) if v is not None)
    return Range(False, below, above, f"continuous with limits {lo} (x -> -oo) and {hi} (x -> oo): bounded {side}")


#: Real targets at which a proposed inverse is checked: both signs, tiny, moderate and large magnitudes (the
#: principal cube root of a negative number, the wrong branch of asinh, Cardano's casus irreducibilis all fail at
#: some of them).
INVERSE_PROBES = tuple(sp.Rational(n, d) for n, d in ((-1000, 1), (-75, 2), (-10, 1), (-3, 1), (-1, 1), (-7, 10),
                                                     (-2, 5), (-1, 10), (-1, 100), (0, 1), (1, 100), (1, 10), (2, 5),
                                                     (7, 10), (1, 1), (3, 1), (10, 1), (75, 2), (1000, 1)))


def _preimage_at(f: sp.Expr, inverse: sp.Expr, tau: sp.Symbol, target: sp.Rational) -> bool:
    """Whether `inverse` at tau = target is a real number w with f(w) = target (to 1e-12 relative, 30 digits)."""
    try:
        value = complex(inverse.subs(tau, target).evalf(30))
        if abs(value.imag) > 1e-20 * (1 + abs(value.real)):
            return False
        image = complex(f.subs(x, sp.Float(value.real, 30)).evalf(30))
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):  # nan, zoo, a Piecewise with no branch
        return False
    return abs(image.imag) <= 1e-12 and abs(image.real - float(target)) <= 1e-12 * (1 + abs(float(target)))


def real_inverse(f: sp.Expr, candidates: list, tau: sp.Symbol) -> sp.Expr | None:
    r"""The first of SymPy's solutions $w(\tau)$ of $f(w) = \tau$ that is a real preimage at every probe target
    (`INVERSE_PROBES`), or None. `sympy.solve` works over the complex numbers: its first solution of
    $\sinh w = \tau$ is $\log(\tau - \sqrt{\tau^2 + 1})$ (complex for every real $\tau$), of $w^3 = \tau$ the principal
    root $\tau^{1/3}$ (complex for $\tau < 0$); a patch built from such a branch is NaN in the kernels while the
    complex identity $f(w(\tau)) = \tau$ still checks symbolically."""
    for inverse in candidates:
        if all(_preimage_at(f, inverse, tau, target) for target in INVERSE_PROBES):
            return inverse
    return None
