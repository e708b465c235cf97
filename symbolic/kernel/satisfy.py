r"""Making the hypotheses true in a model (`draw`), or saying the draw must be redone (`Degenerate`).

An equation is solved for one of its undrawn variables: exactly when it is affine in it (a linear system over the
rationals), else along a ray, by a quadratic; a solution is checked, never assumed. Conditions are checked (a
quantified one at every index), a quantified equation at the points the steps instantiate it and at two random points.
"""

from __future__ import annotations

import random
from fractions import Fraction

from symbolic.kernel.binders import subst
from symbolic.kernel.interpret import Model
from symbolic.kernel.numbers import Cannot, Undefined, agree, aligned, elementwise, entries, mul, root, sign, sub
from symbolic.kernel.terms import Family, Index, Sum, Term, Var, Vector, fresh_var


class Degenerate(Exception):
    """This draw does not satisfy the hypotheses."""


def solve(m: Model, lhs: Term, rhs: Term) -> None:
    """Make lhs = rhs true by choosing an undrawn variable (affine: exactly; else along a ray)."""
    order = []
    for t in (lhs, rhs):
        for v in _in_order(t):
            if v not in order and v not in m.values and v not in m.ctx.defs and not isinstance(v.ty, (Index, Family)):
                order.append(v)
    if not order:
        if not agree(m.ev(lhs, ()), m.ev(rhs, ())):
            raise Degenerate("an equation fails")
        return
    for v in order:
        if _affine_solve(m, v, lhs, rhs) or _ray_solve(m, v, lhs, rhs):
            if agree(m.ev(lhs, ()), m.ev(rhs, ())):  # a solution is checked, never assumed
                return
        m.values.pop(v, None)
        m.memo.clear()
    raise Degenerate("no variable solves an equation hypothesis")


def _in_order(t: Term):
    if isinstance(t, Var):
        yield t
    for c in getattr(t, "args", ()) or ((t.hi, t.body) if isinstance(t, Sum) else ()):
        yield from _in_order(c)


def _residual(m: Model, v: Var, x, lhs, rhs) -> list:
    m.set(v, x)
    a, b = aligned(m.ev(lhs, ()), m.ev(rhs, ()))
    return [sub(p, q) for p, q in zip(entries(a), entries(b), strict=True)]




def _unflatten(flat, template):
    if isinstance(template, tuple):
        if template and isinstance(template[0], tuple):
            w = len(template[0])
            return tuple(tuple(flat[i * w:(i + 1) * w]) for i in range(len(template)))
        return tuple(flat)
    return flat[0]


def _affine_solve(m: Model, v: Var, lhs, rhs) -> bool:
    template = m.draw(v.ty)
    n = len(entries(template))
    zero = _unflatten([Fraction(0)] * n, template)
    try:
        f0 = _residual(m, v, zero, lhs, rhs)
        cols = []
        for k in range(n):
            e = [Fraction(0)] * n
            e[k] = Fraction(1)
            cols.append([a - b for a, b in zip(_residual(m, v, _unflatten(e, template), lhs, rhs), f0, strict=True)])
        probe = [Fraction(m.rng.randint(1, 9), m.rng.randint(1, 5)) * (k + 2) for k in range(n)]
        fp = _residual(m, v, _unflatten(probe, template), lhs, rhs)
    except (Undefined, Cannot, ZeroDivisionError):
        return False
    predicted = [f + sum((c[i] * p for c, p in zip(cols, probe, strict=True)), Fraction(0)) for i, f in enumerate(f0)]
    if not all(isinstance(x, Fraction) for x in fp + predicted) or fp != predicted:
        return False
    sol = _linear([[c[i] for c in cols] for i in range(len(f0))], [-f for f in f0], m)
    if sol is None:
        return False
    m.set(v, _unflatten(sol, template))
    return True


def _linear(A, b, m: Model):
    """A solution of A x = b over the rationals (free unknowns random), or None."""
    rows, n = len(A), len(A[0]) if A else 0
    M = [row[:] + [bi] for row, bi in zip(A, b, strict=True)]
    pivots, r = [], 0
    for c in range(n):
        p = next((i for i in range(r, rows) if M[i][c] != 0), None)
        if p is None:
            continue
        M[r], M[p] = M[p], M[r]
        M[r] = [x / M[r][c] for x in M[r]]
        for i in range(rows):
            if i != r and M[i][c] != 0:
                M[i] = [x - M[i][c] * y for x, y in zip(M[i], M[r], strict=True)]
        pivots.append(c)
        r += 1
    if any(all(x == 0 for x in M[i][:n]) and M[i][n] != 0 for i in range(rows)):
        return None
    x = [m.rational() for _ in range(n)]
    for i, c in enumerate(pivots):
        x[c] = M[i][n] - sum((M[i][k] * x[k] for k in range(n) if k != c), Fraction(0))
    return x


def _ray_solve(m: Model, v: Var, lhs, rhs) -> bool:
    """v = t v0 for a scalar equation quadratic in t: take a real root."""
    v0 = m.draw(v.ty)
    try:
        g = [_residual(m, v, elementwise(lambda x, s=s: mul(s, x), v0), lhs, rhs) for s in (Fraction(0), Fraction(1),
                                                                                   Fraction(-1), Fraction(2))]
    except (Undefined, Cannot, ZeroDivisionError):
        return False
    if any(len(x) != 1 for x in g):
        return False
    g0, g1, gm, g2 = (x[0] for x in g)
    a, b, c = (g1 + gm) / 2 - g0, (g1 - gm) / 2, g0
    if not agree(a * 4 + b * 2 + c, g2):
        return False
    if a == 0:
        if b == 0:
            return False
        t = -c / b
    else:
        disc = b * b - 4 * a * c
        if disc < 0:
            return False
        t = (-b + root(disc)) / (2 * a)
    m.set(v, elementwise(lambda x: mul(t, x), v0))
    return True




def _condition(m: Model, kind: str, t: Term) -> bool:
    signs = [sign(x) for x in entries(m.ev(t, ()))]
    if kind == "positive":
        return all(s > 0 for s in signs)
    if kind == "coords" or not isinstance(t.ty, Vector):
        return all(s != 0 for s in signs)
    return any(s != 0 for s in signs)


def draw(ctx, sizes: dict, rng: random.Random, wide: bool = False) -> Model:
    m = Model(ctx, dict(sizes), rng, wide)
    for lhs, rhs in ctx.equations:
        solve(m, lhs, rhs)
    try:
        for kind, t in ctx.conds:
            if not _condition(m, kind, t):
                raise Degenerate(f"the hypothesis on {t!r} fails")
        for kind, t, (e,) in ctx.fconds:
            for i in range(1, m.size(e.ty.bound) + 1):
                if not _condition(m, kind, _at_index(m, t, e, i)):
                    raise Degenerate("a quantified hypothesis fails")
        for binders, lhs, rhs in ctx.foralls:
            for point in _forall_points(m, binders):
                if not agree(m.ev(subst(lhs, point), ()), m.ev(subst(rhs, point), ())):
                    raise Degenerate("a quantified equation fails on this model")
    except (Undefined, Cannot) as exc:
        raise Degenerate(str(exc)) from None
    return m


def _at_index(m: Model, t: Term, e: Var, i: int) -> Term:
    """The condition at index i: e becomes a fresh variable whose value is i."""
    f = fresh_var(f"{e.name}%{i}", e.ty)
    m.values[f] = i
    return subst(t, {e: f})


def _forall_points(m: Model, binders: tuple):
    """Where a quantified equation is checked: the steps' instantiations and two random points."""
    out = []
    for st in m.ctx.th.steps:
        for ref, inst in st.rewrite:
            if isinstance(ref, int) and tuple(m.ctx.th.hypotheses[ref - 1].binders) == tuple(binders):
                out.append(dict(inst))
    for _ in range(2):
        point = {}
        for b in binders:
            if isinstance(b.ty, (Index, Family)):
                continue
            c = fresh_var(f"{b.name}%r{len(out)}", b.ty)
            m.values[c] = m.draw(b.ty)
            point[b] = c
        if len(point) == len(binders):
            out.append(point)
    return out
