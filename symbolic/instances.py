r"""A numeric probe of SymPy expressions of the vector algebra: `probe_nonzero`.

`symbolic.algebra.is_zero` (the derivation's zero test) calls `probe_nonzero` to skip SymPy's slow
simplifier on plainly nonzero expressions: an *instance* fixes every size (d, m, m_s, n_E, the
top-k count k) and draws every free symbol (a vector is a column of random rationals, a matrix a
matrix of rationals, one per expert inside `EMat`); an elementwise function the expression leaves
opaque ($\sigma$) is a random polynomial, `Sel` the index of the j-th largest logit, `Gate` the
softmax weight, and a `Sum` is expanded term by term, in 30-digit floats. The probe only ever
answers "clearly nonzero" or "unsure": it never makes an identity true. (The proof kernel's own
second check is `symbolic.kernel.instances`, over the kernel's terms.)

Imports only `symbolic.terms`: it sits below the algebra.
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
DIGITS = 40  # the precision of a logit comparison (top-k selection)


class NotInstantiable(Exception):
    """The expression uses a construct with no concrete model (a pattern variable, RMSinv)."""


class Nested(Exception):
    """A square root of an irrational value: exact zero tests get expensive, so the instance is redone
    in 50-digit floats (and says so)."""


class Degenerate(Exception):
    """This draw divides by zero, ties two logits or violates a hypothesis: draw again."""


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


def entries(v) -> list:
    return list(v) if isinstance(v, sp.MatrixBase) else [v]


# --------------------------------------------------------------------------- the probe of is_zero


def probe_nonzero(e: sp.Expr, seed: int = 7) -> bool:
    """True if `e` is clearly nonzero on a random 30-digit float instance (False if unsure)."""
    inst = Instance(dict(SIZES[1]), random.Random(seed), exact=False, opaque_maps=False)
    try:
        v = inst.ev(e)
        return any(abs(complex(sp.N(x, 30))) > 1e-20 for x in entries(v))
    except (NotInstantiable, Degenerate, Nested, ZeroDivisionError, TypeError, ValueError, AttributeError):
        return False
