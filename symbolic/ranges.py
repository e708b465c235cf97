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
