r"""The second, independent check: random exact models of a theorem, evaluated.

A model fixes every dimension (one instance has them all 1, the middle ones draw 1..4, the last one
is *wide*: every dimension 5..9, an index at least 5 three times in four, so that a claim false only at
an index >= 5, such as a polynomial in the index that vanishes on 1..4, can be refuted), every
variable (rationals; an index in its range), every family member, and every opaque function: an elementwise
$\sigma$ is a random polynomial with rational coefficients, a map, the router's selection and gates
are random tables (any function with the declared type and facts is a model). A theorem's own
`models` interpret maps its quantified hypotheses constrain. Values stay exact `Fraction`s while
they can; square roots, exp and tanh switch to 60-digit `mpmath` numbers.

The hypotheses are made true or the draw is redone: an equation is solved for one of its
undrawn variables (exactly, when the equation is affine in it: a linear system over the
rationals; else along a ray, by a quadratic), conditions are checked (a quantified one at every
index), a quantified equation at the points the steps use it and at random points. Then:

- a step or the statement false at a model of the hypotheses: **refuted**;
- a division by zero, a square root of a negative number or any other undefined value at a model
  of the hypotheses (in a definition, a step or the statement): **refuted** (the kernel discharged
  a side condition that does not hold);
- no draw satisfies the hypotheses: **vacuous**;
- a value that cannot be evaluated or decided: the theorem is **not verified**.
"""

from __future__ import annotations

import random
from fractions import Fraction
from math import isqrt

import mpmath

from symbolic.kernel.binders import subst
from symbolic.kernel.statements import FAILED, REFUTED, VACUOUS, Hypotheses, StepResult, theorem_terms
from symbolic.kernel.terms import (
    App,
    BVar,
    Family,
    Fn,
    ILit,
    Index,
    Lit,
    Matrix,
    Scalar,
    Sum,
    Term,
    Var,
    Vector,
    fresh_var,
    subterms,
)


class _Context(Hypotheses):
    """The hypotheses of the theorem a model interprets."""

    def __init__(self, th):
        super().__init__(th)
        self.th = th

MP = mpmath.MPContext()
MP.dps = 60
TOL = MP.mpf(10) ** -40
INSTANCES = 3
SMALL, WIDE = (1, 4), (5, 9)  # the dimensions of the middle instances and of the last (wide) one
REDRAWS = 30


class Undefined(Exception):
    """A partial operation outside its domain (a division by zero, a root of a negative number)."""


class Cannot(Exception):
    """A value that cannot be evaluated or decided."""


class Degenerate(Exception):
    """This draw does not satisfy the hypotheses."""


# --------------------------------------------------------------------------- numbers


def _mp(x):
    return MP.mpf(x.numerator) / x.denominator if isinstance(x, Fraction) else x


def _pair(a, b):
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a, b
    return _mp(a), _mp(b)


def add(a, b):
    a, b = _pair(a, b)
    return a + b


def sub(a, b):
    a, b = _pair(a, b)
    return a - b


def mul(a, b):
    a, b = _pair(a, b)
    return a * b


def total(xs):
    out = Fraction(0)
    for x in xs:
        out = add(out, x)
    return out


def sign(x) -> int:
    """The sign of an exact or 60-digit number; Cannot when a 60-digit number is too close to 0."""
    if isinstance(x, Fraction):
        return (x > 0) - (x < 0)
    if abs(x) <= TOL:
        raise Cannot("a value within 1e-40 of 0")
    return 1 if x > 0 else -1


def _bc(op, *xs):
    """Broadcast an elementwise operation over vectors (tuples)."""
    n = next((len(x) for x in xs if isinstance(x, tuple)), None)
    if n is None:
        return op(*xs)
    return tuple(op(*(x[i] if isinstance(x, tuple) else x for x in xs)) for i in range(n))


def _div(a, b):
    if isinstance(b, Fraction) and b == 0:
        raise Undefined("a division by zero")
    if not isinstance(b, Fraction) and abs(b) <= TOL:
        raise Undefined("a division by a number within 1e-40 of zero")
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a / b
    return _mp(a) / _mp(b)


def _sqrt(x):
    if isinstance(x, Fraction):
        if x < 0:
            raise Undefined(f"the square root of {x} < 0")
        p, q = isqrt(x.numerator), isqrt(x.denominator)
        if p * p == x.numerator and q * q == x.denominator:
            return Fraction(p, q)
        return MP.sqrt(_mp(x))
    if x < -TOL:
        raise Undefined("the square root of a negative number")
    return MP.sqrt(max(x, MP.mpf(0)))


def _heaviside(x):
    return Fraction(1) if sign(x) > 0 else Fraction(0)


BUILTIN = {"sqrt": _sqrt, "exp": lambda x: MP.exp(_mp(x)) if x != 0 else Fraction(1),
           "tanh": lambda x: MP.tanh(_mp(x)) if x != 0 else Fraction(0),
           "sigmoid": lambda x: 1 / (1 + MP.exp(-_mp(x))) if x != 0 else Fraction(1, 2),
           "heaviside": _heaviside, "max": lambda a, b: a if sign(sub(a, b)) >= 0 else b,
           "min": lambda a, b: a if sign(sub(a, b)) <= 0 else b}


def _key(v):
    if isinstance(v, tuple):
        return tuple(_key(x) for x in v)
    if isinstance(v, int):
        return v
    x = _mp(v)  # exact and 60-digit values of one number agree; a rounding residue of 0 (1e-61) is 0
    return "0" if abs(x) <= TOL else MP.nstr(x, 30)


# --------------------------------------------------------------------------- a model


class Model:
    """One interpretation of a theorem's dimensions, variables and functions."""

    def __init__(self, ctx, sizes: dict, rng: random.Random, wide: bool = False):
        self.ctx, self.sizes, self.rng, self.wide = ctx, sizes, rng, wide
        self.values: dict = {}
        self.tables: dict = {}
        self.memo: dict = {}
        self.user = dict(ctx.th.models)

    def size(self, dim: str) -> int:
        if dim not in self.sizes:
            self.sizes[dim] = self.rng.randint(*WIDE if self.wide else SMALL)
        return self.sizes[dim]

    def rational(self) -> Fraction:
        if self.rng.random() < 0.05:
            return Fraction(0)
        return Fraction(self.rng.randint(-9, 9) or 1, self.rng.randint(1, 5))

    def draw(self, ty):
        if isinstance(ty, Scalar):
            return self.rational()
        if isinstance(ty, Vector):
            return tuple(self.rational() for _ in range(self.size(ty.dim)))
        if isinstance(ty, Matrix):
            return tuple(tuple(self.rational() for _ in range(self.size(ty.cols))) for _ in range(self.size(ty.rows)))
        if isinstance(ty, Index):
            hi = self.size(ty.bound) if ty.bound else (WIDE if self.wide else SMALL)[1]
            wide = self.wide and hi >= WIDE[0] and self.rng.random() < 0.75  # most wide draws are >= 5
            return self.rng.randint(WIDE[0] if wide else 1, hi)
        if isinstance(ty, Family):
            return {}
        raise Cannot(f"no model of a {ty}")

    def var(self, v: Var):
        if v in self.ctx.defs:
            if v not in self.values:
                self.values[v] = self.ev(self.ctx.defs[v], ())
            return self.values[v]
        if v not in self.values:
            self.values[v] = self.draw(v.ty)
        return self.values[v]

    def member(self, fam: Var, i: int):
        if not 1 <= i <= self.size(fam.ty.bound):
            raise Undefined(f"index {i} outside 1..{fam.ty.bound}")
        if fam in self.ctx.families:
            key = ("fam", fam, i)
            if key not in self.memo:
                self.memo[key] = self.ev(self.ctx.families[fam], (i,))
            return self.memo[key]
        table = self.values.setdefault(fam, {})
        if i not in table:
            table[i] = self.draw(fam.ty.elem)
        return table[i]

    def set(self, v: Var, value) -> None:
        self.values[v] = value
        self.memo.clear()
        for d in self.ctx.defs:
            self.values.pop(d, None)

    # ----------------------------------------------------------------- evaluation

    def ev(self, t: Term, bv: tuple):
        key = (t, bv) if t.loose else (t, ())
        if key in self.memo:
            return self.memo[key]
        out = self._ev(t, bv)
        self.memo[key] = out
        return out

    def _ev(self, t: Term, bv: tuple):
        if isinstance(t, Var):
            return self.var(t)
        if isinstance(t, Lit):
            return t.value
        if isinstance(t, ILit):
            return t.n
        if isinstance(t, BVar):
            return bv[-1 - t.level]
        if isinstance(t, Sum):
            total = Fraction(0)
            for j in range(1, self.ev(t.hi, bv) + 1):
                total = _bc(add, total, self.ev(t.body, bv + (j,)))
            return total
        return self._app(t, bv)

    def _app(self, t: App, bv: tuple):
        op = t.op
        if op == "at":
            return self.member(t.args[0], self.ev(t.args[1], bv))
        args = [self.ev(a, bv) for a in t.args]
        if isinstance(op, Fn):
            return self._fn(op, args)
        if op in BUILTIN:
            return _bc(BUILTIN[op], *args)
        return getattr(self, "_op_" + op)(t, *args)

    def _op_add(self, t, a, b):
        if isinstance(t.ty, Matrix):
            return tuple(tuple(add(x, y) for x, y in zip(r, s, strict=True)) for r, s in zip(a, b, strict=True))
        return _bc(add, a, b)

    def _op_neg(self, t, a):
        if isinstance(t.ty, Matrix):
            return tuple(tuple(-x for x in r) for r in a)
        return _bc(lambda x: -x, a)

    def _op_mul(self, t, a, b):
        if isinstance(t.ty, Matrix):
            m, c = (a, b) if isinstance(t.args[0].ty, Matrix) else (b, a)
            return tuple(tuple(mul(c, x) for x in r) for r in m)
        return _bc(mul, a, b)

    def _op_div(self, t, a, b):
        if isinstance(t.ty, Matrix):
            return tuple(tuple(_div(x, b) for x in r) for r in a)
        return _bc(_div, a, b)

    def _op_matvec(self, t, W, v):
        return tuple(total(mul(w, x) for w, x in zip(row, v, strict=True)) for row in W)

    def _op_dot(self, t, a, b):
        return total(mul(x, y) for x, y in zip(a, b, strict=True))

    def _op_outer(self, t, x, y):
        return tuple(tuple(mul(a, b) for b in y) for a in x)

    def _op_mean(self, t, v):
        return _div(total(v), Fraction(len(v))) if isinstance(v, tuple) else v

    def _op_frob(self, t, A, B):
        return total(mul(x, y) for r, s in zip(A, B, strict=True) for x, y in zip(r, s, strict=True))

    def _op_num(self, t, i):
        return Fraction(i)

    def _table(self, name, args, draw):
        key = (name, _key(tuple(args)))
        if key not in self.tables:
            self.tables[key] = draw()
        return self.tables[key]

    def _op_sel(self, t, ell, j):
        return self._table("sel", (ell, j), lambda: self.rng.randint(1, len(ell)))

    def _op_gate(self, t, ell, j):
        return self._table("gate", (ell, j), lambda: Fraction(self.rng.randint(1, 8), 8))

    def _op_expert_gate(self, t, ell, j):
        return self._table("expert_gate", (ell, j), lambda: Fraction(self.rng.randint(0, 8), 8))

    def _fn(self, fn: Fn, args):
        if fn.name in self.user:
            return self.user[fn.name](self, *args)
        if fn.sig is None:
            coeffs = self.tables.setdefault(("poly", fn.name, fn.arity), [
                Fraction(self.rng.randint(-5, 5), self.rng.randint(1, 3)) for _ in range(1 + 2 * fn.arity + 1)])
            return _bc(lambda *xs: _poly(coeffs, xs), *args)
        return self._table(("map", fn), args, lambda: self.draw(fn.result))


def _poly(c, xs):
    """c0 + sum_i (c_{2i+1} x_i + c_{2i+2} x_i^2) + c_last * prod x_i: a random polynomial."""
    out, prod = c[0], Fraction(1)
    for i, x in enumerate(xs):
        out = add(out, add(mul(c[2 * i + 1], x), mul(c[2 * i + 2], mul(x, x))))
        prod = mul(prod, x)
    return add(out, mul(c[-1], prod)) if len(xs) > 1 else out


def entries(v) -> list:
    if isinstance(v, tuple):
        return [y for x in v for y in entries(x)]
    return [v]


# --------------------------------------------------------------------------- making the hypotheses true


def _solve(m: Model, lhs: Term, rhs: Term) -> None:
    """Make lhs = rhs true by choosing an undrawn variable (affine: exactly; else along a ray)."""
    order = []
    for t in (lhs, rhs):
        for v in _in_order(t):
            if v not in order and v not in m.values and v not in m.ctx.defs and not isinstance(v.ty, (Index, Family)):
                order.append(v)
    if not order:
        if not _agree(m.ev(lhs, ()), m.ev(rhs, ())):
            raise Degenerate("an equation fails")
        return
    for v in order:
        if _affine_solve(m, v, lhs, rhs) or _ray_solve(m, v, lhs, rhs):
            if _agree(m.ev(lhs, ()), m.ev(rhs, ())):  # a solution is checked, never assumed
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
    a, b = _aligned(m.ev(lhs, ()), m.ev(rhs, ()))
    return [sub(p, q) for p, q in zip(entries(a), entries(b), strict=True)]


def _aligned(a, b):
    if isinstance(a, tuple) and not isinstance(b, tuple):
        b = _bc(lambda x, y: y, a, b)
    if isinstance(b, tuple) and not isinstance(a, tuple):
        a = _bc(lambda x, y: y, b, a)
    return a, b


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
        g = [_residual(m, v, _bc(lambda x, s=s: mul(s, x), v0), lhs, rhs) for s in (Fraction(0), Fraction(1),
                                                                                   Fraction(-1), Fraction(2))]
    except (Undefined, Cannot, ZeroDivisionError):
        return False
    if any(len(x) != 1 for x in g):
        return False
    g0, g1, gm, g2 = (x[0] for x in g)
    a, b, c = (g1 + gm) / 2 - g0, (g1 - gm) / 2, g0
    if not _agree(a * 4 + b * 2 + c, g2):
        return False
    if a == 0:
        if b == 0:
            return False
        t = -c / b
    else:
        disc = b * b - 4 * a * c
        if disc < 0:
            return False
        t = (-b + _sqrt(disc)) / (2 * a)
    m.set(v, _bc(lambda x: mul(t, x), v0))
    return True


def _agree(a, b) -> bool:
    a, b = _aligned(a, b)
    return all(sub(x, y) == 0 if isinstance(sub(x, y), Fraction) else abs(sub(x, y)) <= TOL * max(1, abs(_mp(x)),
                                                                                                  abs(_mp(y)))
               for x, y in zip(entries(a), entries(b), strict=True))


def _condition(m: Model, kind: str, t: Term) -> bool:
    signs = [sign(x) for x in entries(m.ev(t, ()))]
    if kind == "positive":
        return all(s > 0 for s in signs)
    if kind == "coords" or not isinstance(t.ty, Vector):
        return all(s != 0 for s in signs)
    return any(s != 0 for s in signs)


def _draw(ctx, sizes: dict, rng: random.Random, wide: bool = False) -> Model:
    m = Model(ctx, dict(sizes), rng, wide)
    for lhs, rhs in ctx.equations:
        _solve(m, lhs, rhs)
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
                if not _agree(m.ev(subst(lhs, point), ()), m.ev(subst(rhs, point), ())):
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


# --------------------------------------------------------------------------- the verdict


def models(th, seed: int = 0):
    """INSTANCES models of the hypotheses (dimensions 1 first, wide last), and the number of redraws."""
    ctx = _Context(th)
    rng = random.Random(f"{th.name}:{seed}")
    found, redrawn = [], 0
    for k in range(INSTANCES):
        for _ in range(REDRAWS):
            sizes = {} if k else {d: 1 for d in _dims(th)}
            try:
                found.append(_draw(ctx, sizes, rng, wide=k == INSTANCES - 1))
                break
            except Degenerate:
                redrawn += 1
    return found, redrawn


def _dims(th) -> set:
    out = set()
    for t in theorem_terms(th):
        for s in subterms(t):
            ty = s.ty
            while isinstance(ty, Family):
                out.add(ty.bound)
                ty = ty.elem
            out |= {x for x in (getattr(ty, "dim", None), getattr(ty, "rows", None), getattr(ty, "cols", None),
                                getattr(ty, "bound", None)) if x}
    return out


def _holds(rel: str, a, b) -> bool:
    a, b = _aligned(a, b)
    if rel == "=":
        return _agree(a, b)
    s = sign(sub(b, a))
    return {"<": s > 0, "<=": s >= 0, ">": s < 0, ">=": s <= 0}[rel]


def _where(m: Model) -> str:
    """The model's dimensions, read when it refutes (they are drawn as the evaluation meets them)."""
    return f"at dimensions {dict(sorted(m.sizes.items()))}"


def evaluate(th, results: list):
    """Check the steps, the statement and the definitions on the models; returns (step results,
    None or (status, why) for the whole theorem)."""
    try:
        found, redrawn = models(th)
    except (Cannot, TypeError, ValueError, ZeroDivisionError) as exc:
        return results, (FAILED, f"rule instances: the hypotheses cannot be evaluated ({exc})")
    if not found:
        return ([StepResult(r.status, r.message, r.residual, "n/a: vacuous") for r in results],
                (VACUOUS, f"rule instances: vacuous: no draw in {REDRAWS * INSTANCES} satisfies the hypotheses"))
    out = list(results)
    for m in found:
        try:
            for v in list(m.ctx.defs):
                m.var(v)
            for fam in m.ctx.families:
                for i in range(1, m.size(fam.ty.bound) + 1):
                    m.member(fam, i)
            for i, st in enumerate(th.steps):
                if not _holds(st.relation, m.ev(st.lhs, ()), m.ev(st.rhs, ())):
                    why = ("an exact instance contradicts the step the kernel verified"
                           if results[i].status == "verified" else
                           f"{results[i].message}; an exact instance contradicts the step")
                    out[i] = StepResult(REFUTED, why, results[i].residual, f"refuted {_where(m)}")
                    return out, (REFUTED, f"rule instances: step {i + 1} ({st.justification}) is false {_where(m)}")
            if not _holds(th.relation, m.ev(th.lhs, ()), m.ev(th.rhs, ())):
                return out, (REFUTED, f"rule instances: the statement is false {_where(m)}")
        except Undefined as exc:
            return out, (REFUTED, f"rule instances: {exc} {_where(m)}, where the hypotheses hold")
        except (Cannot, TypeError, ValueError, ZeroDivisionError) as exc:
            return out, (FAILED, f"rule instances: cannot evaluate {_where(m)}: {exc}")
    note = f"{len(found)}/{INSTANCES} models" + (f" ({redrawn} draws redone)" if redrawn else "")
    return [StepResult(r.status, r.message, r.residual, note) for r in out], None
