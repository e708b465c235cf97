r"""The second line of evidence: evaluate a theorem on explicit instances, in exact arithmetic.

An *instance* fixes every size (d, m, m_s, n_E, the top-k count k) and draws every free symbol:
a vector is a column of random nonzero rationals, a matrix a matrix of rationals (one per expert
inside `EMat`), a positive scalar a positive rational, an integer index a valid index. Defined
atoms are computed from their definitions in order (per expert for a family $a^{(e)}$); an
equation hypothesis $\mathrm{lhs} = \mathrm{rhs}$ is solved for the symbol of its left side that
is still undrawn (`sympy.solve` on its entries; remaining free entries random; only real
solutions). A draw that violates a hypothesis, divides by zero or ties two router logits is
*degenerate*: it is redrawn and counted. If no draw satisfies the hypotheses, the theorem is
*vacuous* (`Vacuous`).

Values stay exact: rationals, square roots of rationals and exact transcendental numbers
(``tanh(3/7)``); an elementwise function the statement leaves opaque ($\sigma$) is a random
polynomial with rational coefficients, an opaque vector-valued map a random function tabulated on
its arguments, `Sel` the index of the j-th largest logit, `Gate` the softmax weight, and a `Sum`
is expanded term by term. `probe_nonzero` (used by `symbolic.algebra.is_zero` to skip SymPy's
simplifier on plainly nonzero expressions) evaluates the same way in 30-digit floats.

Imports only `symbolic.terms`: it sits below the algebra and the kernel.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import sympy as sp
from sympy.core.function import AppliedUndef

from symbolic.terms import (
    EXPERT,
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
    shape,
)

FLOAT_DIGITS = 50  # the precision of the fallback instances (nested radicals)
SIZES = ({"d": 2, "m": 3, "m_s": 2, "n_E": 3, "k": 2}, {"d": 3, "m": 2, "m_s": 3, "n_E": 4, "k": 2},
         {"d": 4, "m": 4, "m_s": 2, "n_E": 3, "k": 1})
DEFAULT_SIZE = 3  # a dimension name not in SIZES
SWELL = 150  # nodes of an exact irrational value before the instance falls back to 50-digit floats
REDRAWS = 12  # draws per size before the hypotheses are declared unsatisfiable
DIGITS = 40  # first precision of the sign test of an exact difference (then 100)


class NotInstantiable(Exception):
    """The expression uses a construct with no concrete model (a pattern variable, RMSinv)."""


class Nested(Exception):
    """A square root of an irrational value: exact zero tests get expensive, so the instance is redone
    in 50-digit floats (and says so)."""


class Degenerate(Exception):
    """This draw divides by zero, ties two logits or violates a hypothesis: draw again."""


class Vacuous(Exception):
    """No draw satisfies the hypotheses: the theorem may be vacuously true."""


@dataclass
class Instance:
    """One concrete model: sizes, values of symbols, and the interpretation of opaque functions."""

    sizes: dict
    rng: random.Random
    exact: bool = True
    opaque_maps: bool = True  # False: refuse opaque multi-argument maps (their table needs exact keys)
    values: dict = field(default_factory=dict)
    families: dict = field(default_factory=dict)  # atom -> rhs in EXPERT, for a^(e) := ...
    models: dict = field(default_factory=dict)  # function name -> python callable on values
    memo: dict = field(default_factory=dict)
    defined: set = field(default_factory=set)

    # ----------------------------------------------------------------- numbers and draws

    def number(self, q) -> sp.Expr:
        return sp.Rational(q) if self.exact else sp.Float(q, FLOAT_DIGITS)

    def rational(self, positive: bool = False) -> sp.Expr:
        while True:
            q = sp.Rational(self.rng.randint(-9, 9), self.rng.randint(1, 5))
            if q != 0:
                return self.number(abs(q) if positive else q)

    def size(self, dim: str) -> int:
        return self.sizes.get(dim, DEFAULT_SIZE)

    def draw(self, s: sp.Symbol):
        if s in self.defined:
            raise NotInstantiable(f"{s} is used before its definition")
        if isinstance(s, Vec):
            return sp.Matrix([self.rational() for _ in range(self.size(s.dim))])
        if isinstance(s, Mat):
            return sp.Matrix(self.size(s.rows), self.size(s.cols), lambda i, j: self.rational())
        if s.is_integer:
            return self._index(s)
        return self.rational(positive=bool(s.is_positive))

    def _index(self, s: sp.Symbol) -> int:
        if s.name == "k":
            return sp.Integer(min(self.sizes.get("k", 2), self.size("n_E")))
        if s == EXPERT:
            return sp.Integer(self.rng.randint(1, self.size("n_E")))
        return sp.Integer(self.rng.randint(1, 3))

    def value(self, s: sp.Symbol):
        if s not in self.values:
            self.values[s] = self.draw(s)
        return self.values[s]

    # ----------------------------------------------------------------- evaluation

    def ev(self, e: sp.Basic):
        if e in self.values:
            return self.values[e]
        if e in self.memo:
            return self.memo[e]
        out = self._ev(e)
        if _bad(out):
            raise Degenerate(f"a division by zero in {e}")
        if self.exact and _swollen(out):
            raise Nested(f"the exact value of {type(e).__name__} grows beyond {SWELL} nodes")
        self.memo[e] = out
        return out

    def _ev(self, e: sp.Basic):
        if isinstance(e, sp.Wild):
            raise NotInstantiable(f"the pattern variable {e}")
        if isinstance(e, sp.Symbol):
            return self.value(e)
        if e.is_Number:
            return self.number(e) if e.is_Rational else e
        if e.is_NumberSymbol:
            return e if self.exact else sp.Float(e, FLOAT_DIGITS)
        handler = _HANDLERS.get(type(e)) or next((h for t, h in _HANDLERS.items() if isinstance(e, t)), None)
        if handler is not None:
            return handler(self, e)
        if isinstance(e, AppliedUndef):
            return self._undefined(e)
        args = [self.ev(a) for a in e.args]
        if isinstance(e, sp.Add):
            return broadcast(lambda *xs: sp.Add(*xs), args)
        if isinstance(e, sp.Mul):
            return broadcast(lambda *xs: sp.Mul(*xs), args)
        if isinstance(e, sp.Pow):
            if self.exact and not e.exp.is_integer and not all(v.is_Rational for v in entries(args[0])):
                raise Nested(f"a root of an irrational value in {e}")
            return broadcast(lambda b, x: b**x, args)
        if isinstance(e, sp.Function):
            if self.exact and not all(v.is_Rational for a in args for v in entries(a)):
                raise Nested(f"{e.func.__name__} of an irrational value")
            return broadcast(lambda *xs: e.func(*xs), args)
        raise NotInstantiable(type(e).__name__)

    def mat(self, W):
        if isinstance(W, Mat):
            return self.value(W)
        if isinstance(W, Outer):
            x, y = (self.ev(a) for a in W.args)
            return x * y.T
        if isinstance(W, EMat):
            return self._expert_object(W.args[0], self.ev(W.args[1]))
        if isinstance(W, sp.Add):
            return sum((self.mat(a) for a in W.args[1:]), self.mat(W.args[0]))
        if isinstance(W, sp.Mul):
            mats = [a for a in W.args if shape(a)[0] == "matrix"]
            coeff = sp.Mul(*(self.ev(a) for a in W.args if a not in mats))
            return coeff * self.mat(mats[0])
        raise NotInstantiable(f"matrix {W}")

    def _expert_object(self, sym: sp.Basic, idx) -> sp.Matrix:
        if sym in self.families:
            return self._family(sym, idx)
        key = (sym, int(idx))
        if key not in self.memo:
            self.memo[key] = self.draw(sym)
        return self.memo[key]

    def _family(self, atom: sp.Basic, idx) -> sp.Matrix:
        key = ("family", atom, int(idx))
        if key not in self.memo:
            saved = self.values.get(EXPERT)
            self._restore(EXPERT, sp.Integer(idx))
            rhs = self.families[atom]
            value = self.mat(rhs) if isinstance(atom, Mat) else self._ev(rhs)
            self._restore(EXPERT, saved)
            self.memo[key] = value
        return self.memo[key]

    def _restore(self, s, saved) -> None:
        """Bind `s` to `saved` (unbind when None) and forget every cached value that depends on it."""
        if saved is None:
            self.values.pop(s, None)
        else:
            self.values[s] = saved
        self.memo = {k: v for k, v in self.memo.items() if isinstance(k, tuple) or s not in k.free_symbols}

    def _undefined(self, e: AppliedUndef):
        name = e.func.__name__
        args = [self.ev(a) for a in e.args]
        if name in self.models:
            return self.models[name](self, *args)
        if len(args) == 1 and getattr(e.func, "dim", None) is None:  # an opaque elementwise sigma
            coeffs = self.memo.setdefault(("poly", name), [self.number(self.rng.randint(-4, 4)) for _ in range(3)])
            return broadcast(lambda t: coeffs[0] + coeffs[1] * t + coeffs[2] * t**2, args)
        if not self.opaque_maps:
            raise NotInstantiable(f"the opaque map {name}")
        key = ("fn", name, tuple(str(sp.N(x, 25)) for a in args for x in (a if isinstance(a, sp.Matrix) else [a])))
        if key not in self.memo:
            s = shape(e)
            self.memo[key] = self.draw(Vec("_", s[1]) if s[0] == "vector" else sp.Symbol("_"))
        return self.memo[key]

    def sum_(self, e: sp.Sum):
        (j, lo, hi), = e.limits
        lo, hi = int(self.ev(lo)), int(self.ev(hi))
        saved, total = self.values.get(j), None
        for i in range(lo, hi + 1):
            self._restore(j, sp.Integer(i))
            term = self._ev(e.function)
            total = term if total is None else broadcast(lambda a, b: a + b, [total, term])
        self._restore(j, saved)
        return total if total is not None else sp.S.Zero

    def selected(self, e: Sel):
        ell, j = self.ev(e.args[0]), int(self.ev(e.args[1]))
        nums = [sp.N(v, DIGITS) for v in ell]
        order = sorted(range(len(nums)), key=lambda i: -nums[i])
        if len(set(nums)) < len(nums):
            raise Degenerate("two router logits tie")
        if not 1 <= j <= len(order):
            raise Degenerate(f"rank {j} outside 1..{len(order)}")
        return sp.Integer(order[j - 1] + 1)

    def gate(self, e: Gate):
        ell, i = self.ev(e.args[0]), int(self.selected(Sel(*e.args)))
        if self.exact and not all(v.is_Rational for v in ell):
            raise Nested("softmax of irrational logits")
        exps = [sp.exp(v) for v in ell]
        return exps[i - 1] / sum(exps)

    def expert_gate(self, e: ExpertGate):
        """The softmax weight of expert e (an opaque positive function of the logits, like `Gate`)."""
        ell, i = self.ev(e.args[0]), int(self.ev(e.args[1]))
        if self.exact and not all(v.is_Rational for v in ell):
            raise Nested("softmax of irrational logits")
        exps = [sp.exp(v) for v in ell]
        return exps[i - 1] / sum(exps)


def _matvec(inst: Instance, e):
    return inst.mat(e.args[0]) * inst.ev(e.args[1])


def _dot(inst: Instance, e):
    a, b = (inst.ev(x) for x in e.args)
    return (a.T * b)[0]


def _mean(inst: Instance, e):
    v = inst.ev(e.args[0])
    return sum(v) / len(v) if isinstance(v, sp.MatrixBase) else v


def _frob(inst: Instance, e):
    A, B = (inst.mat(a) for a in e.args)
    return sum(A.multiply_elementwise(B))


def _evec(inst: Instance, e):
    return inst._expert_object(e.args[0], inst.ev(e.args[1]))


def _unsupported(inst: Instance, e):
    raise NotInstantiable(f"{type(e).__name__} (no concrete model)")


_HANDLERS: dict[type, Callable] = {MatVec: _matvec, Dot: _dot, Mean: _mean, Frob: _frob, EVec: _evec,
                                   Sel: Instance.selected, Gate: Instance.gate, ExpertGate: Instance.expert_gate,
                                   sp.Sum: Instance.sum_,
                                   Outer: _unsupported, EMat: _unsupported, RmsInverse: _unsupported}


def _swollen(v) -> bool:
    """Whether an exact value has grown into a large tree of radicals (its zero test would be slow)."""
    for x in entries(v):
        if isinstance(x, sp.Basic) and not x.is_Rational:
            for n, _ in enumerate(sp.preorder_traversal(x)):
                if n > SWELL:
                    return True
    return False


def _bad(v) -> bool:
    items = list(v) if isinstance(v, sp.MatrixBase) else [v]
    return any(isinstance(x, sp.Basic) and x.has(sp.zoo, sp.nan, sp.oo, -sp.oo) for x in items)


def broadcast(op, args):
    vecs = [a for a in args if isinstance(a, sp.MatrixBase)]
    if not vecs:
        return op(*args)
    n = vecs[0].rows
    return sp.Matrix([op(*(a[i] if isinstance(a, sp.MatrixBase) else a for a in args)) for i in range(n)])


# --------------------------------------------------------------------------- comparing exact values


def entries(v) -> list:
    return list(v) if isinstance(v, sp.MatrixBase) else [v]


def sign(x) -> tuple[int | None, bool]:
    """The sign of an exact real number (-1, 0, 1; None if not real) and whether it was decided exactly.

    A rational is decided exactly; otherwise SymPy's `evalf` (which controls its own error) at 40
    and then 100 digits: a nonzero digit is a proof of the sign, while a value below 1e-90 is
    taken as 0 *numerically* (nested radicals have no cheap exact zero test), which is reported.
    """
    if x == 0:
        return 0, True
    if getattr(x, "is_Rational", False):
        return (1 if x > 0 else -1), True
    for digits in (DIGITS, 100):
        v = sp.N(x, digits)
        if not v.is_real:
            return None, True
        if abs(v) > sp.Float(10, digits) ** -(digits - 10):
            return (1 if v > 0 else -1), True
    return 0, False


def _float_sign(x, scale) -> tuple[int | None, bool]:
    """The sign of a difference of 50-digit floats: 0 below 1e-35 relative (rounding), never 'exact'."""
    v = sp.N(x, FLOAT_DIGITS)
    if not v.is_real:
        return None, False
    if abs(v) <= sp.Float(10, FLOAT_DIGITS) ** -35 * scale:
        return 0, False
    return (1 if v > 0 else -1), False


def compare(a, b) -> tuple[int | None, bool]:
    """sign(a - b) for scalars (for vectors: 0 if every entry agrees, else 1) and whether exactly decided."""
    a, b = _aligned(a, b)
    pairs = list(zip(entries(a), entries(b), strict=True))
    if any(isinstance(v, sp.Float) or (isinstance(v, sp.Basic) and v.atoms(sp.Float)) for p in pairs for v in p):
        scale = max([abs(sp.N(v, 20)) for p in pairs for v in p] + [1])
        signs = [_float_sign(x - y, scale) for x, y in pairs]
    else:
        signs = [sign(x - y) for x, y in pairs]
    exact = all(e for _, e in signs)
    if all(s == 0 for s, _ in signs):
        return 0, exact
    if isinstance(a, sp.MatrixBase):
        return (1 if any(s not in (0, None) for s, _ in signs) else None), exact
    return signs[0][0], exact


def _aligned(a, b):
    if isinstance(a, sp.MatrixBase) and not isinstance(b, sp.MatrixBase):
        b = sp.Matrix([b] * a.rows)
    if isinstance(b, sp.MatrixBase) and not isinstance(a, sp.MatrixBase):
        a = sp.Matrix([a] * b.rows)
    return a, b


# --------------------------------------------------------------------------- the instance generator


@dataclass(frozen=True)
class Spec:
    """What the generator needs from a theorem: definitions, facts to satisfy, opaque-map models."""

    definitions: tuple  # (atom or EVec(atom, EXPERT), rhs), in order
    equations: tuple  # (lhs, rhs) to be made true by solving for an undrawn symbol
    conditions: tuple  # (kind, expr): nonzero, coords, positive
    models: tuple = ()  # (function name, callable)


def instances(spec: Spec, seed: int = 0, exact: bool = True) -> tuple[list[Instance], int]:
    """One satisfying instance per size in SIZES, and the number of degenerate draws redrawn.

    Raises `Vacuous` when no size admits a satisfying draw, `NotInstantiable` when the
    hypotheses use a construct without a concrete model.
    """
    rng, found, redrawn = random.Random(seed), [], 0
    for sizes in SIZES:
        for _ in range(REDRAWS):
            try:
                found.append(_draw(spec, sizes, rng, exact))
                break
            except Degenerate:
                redrawn += 1
    if not found:
        raise Vacuous(f"no draw in {REDRAWS * len(SIZES)} satisfies the hypotheses")
    return found, redrawn


def _draw(spec: Spec, sizes: dict, rng: random.Random, exact: bool = True) -> Instance:
    inst = Instance(dict(sizes), rng, exact=exact, models=dict(spec.models))
    inst.defined = {_atom(a) for a, _ in spec.definitions}
    for lhs, rhs in spec.equations:
        _solve(inst, lhs, rhs)
    for atom, rhs in spec.definitions:
        inst.defined.discard(_atom(atom))
        if isinstance(atom, (EVec, EMat)):
            inst.families[atom.args[0]] = rhs
        else:
            inst.values[atom] = inst.mat(rhs) if isinstance(atom, Mat) else inst.ev(rhs)
    for kind, expr in spec.conditions:
        if not _holds(inst, kind, expr):
            raise Degenerate(f"the hypothesis {kind} {expr} fails on this draw")
    return inst


def _atom(a):
    return a.args[0] if isinstance(a, (EVec, EMat)) else a


def _holds(inst: Instance, kind: str, expr: sp.Expr) -> bool:
    signs = [sign(v)[0] for v in entries(inst.ev(expr))]
    if kind == "nonzero":
        return any(s != 0 for s in signs)
    if kind == "coords":
        return all(s not in (0, None) for s in signs)
    return all(s == 1 for s in signs)  # positive


def _solve(inst: Instance, lhs: sp.Expr, rhs: sp.Expr) -> None:
    """Make lhs = rhs true by solving for the first undrawn symbol of lhs (exact, real solutions)."""
    if lhs.atoms(sp.Wild) or rhs.atoms(sp.Wild):
        return  # a pattern (a universally quantified hypothesis): checked where it is used
    target = inst.ev(rhs)
    free = sorted((s for s in lhs.free_symbols if s not in inst.values and s not in inst.defined),
                  key=lambda s: (not isinstance(s, (Mat, Vec)), sp.default_sort_key(s)))
    if not free:
        if compare(inst.ev(lhs), target)[0] != 0:
            raise Degenerate(f"the equation {lhs} = {rhs} fails on this draw")
        return
    unknown = free[0]
    if isinstance(unknown, (Vec, Mat)):
        drawn = inst.draw(unknown)
        cells = sp.Matrix(drawn.rows, drawn.cols, lambda i, j: sp.Dummy(real=True))
    else:
        cells = sp.Dummy(real=True)
    inst.values[unknown] = cells
    inst.memo.clear()
    eqs = [x - y for x, y in zip(*(entries(v) for v in _aligned(inst.ev(lhs), target)), strict=True)]
    unknowns = entries(cells)
    sols = [s for s in sp.solve(eqs, unknowns, dict=True) if all(v.is_real is not False for v in s.values())]
    if not sols:
        raise Degenerate(f"no real solution of {lhs} = {rhs} on this draw")
    rest = {u: inst.rational() for u in unknowns if u not in sols[0]}
    value = cells.xreplace({**{u: sp.sympify(v).xreplace(rest) for u, v in sols[0].items()}, **rest}) if isinstance(
        cells, sp.MatrixBase) else sp.sympify(sols[0].get(cells, rest.get(cells))).xreplace(rest)
    if any(not sp.sympify(v).is_real for v in entries(value)):
        raise Degenerate(f"a complex solution of {lhs} = {rhs}")
    inst.values[unknown] = value
    inst.memo.clear()


# --------------------------------------------------------------------------- the probe of is_zero


def probe_nonzero(e: sp.Expr, seed: int = 7) -> bool:
    """True if `e` is clearly nonzero on a random 30-digit float instance (False if unsure)."""
    inst = Instance(dict(SIZES[1]), random.Random(seed), exact=False, opaque_maps=False)
    try:
        v = inst.ev(e)
        return any(abs(complex(sp.N(x, 30))) > 1e-20 for x in entries(v))
    except (NotInstantiable, Degenerate, Nested, ZeroDivisionError, TypeError, ValueError, AttributeError):
        return False
