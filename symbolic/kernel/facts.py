r"""Signs: the table of proven facts, intervals over normal forms, and side conditions.

**The facts table** (`atom_interval`): $e^x > 0$; $\tanh x \in (-1, 1)$; $\mathrm{sigmoid}(x) \in (0, 1)$;
$H(x) \in [0, 1]$; $\max, \min$ bounded by their arguments; $\sqrt{x} \ge 0$ ($> 0$ when $x > 0$);
a dimension $d \ge 1$ and an index $n \ge 1$; a softmax gate in $(0, 1]$, an expert's routing weight
in $[0, 1]$; $\mathrm{tot}(m) \ge 0$ for a monomial of even powers (so $v^\top v \ge 0$,
$\mathrm{mean}(v^2) \ge 0$), $> 0$ when $m$ is nonzero as a vector (from a hypothesis $v \ne 0$);
a sum of positive (nonnegative) terms over $1..n$ is positive (nonnegative). Nothing else is
known about a variable: facts about it come only from the theorem's hypotheses.

**Intervals** (`Iv`, exact `Fraction` endpoints, open or closed, possibly infinite) are propagated
through a normal form $N/D$ monomial by monomial; even powers are nonnegative. A denominator of a
normal form is never 0 where the term is defined (every division's side condition is discharged),
so its interval may exclude 0.

**Side conditions** (`obligations`): a division $a / b$ needs $b \ne 0$ (every coordinate of a
vector b), $\sqrt a$ needs $a \ge 0$ (every coordinate); inside a sum or a family's body the
binder is opened with a fresh index about which nothing is known but its range.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType
from typing import NamedTuple

from symbolic.kernel.binders import instantiate, subst
from symbolic.kernel.normal import Normalizer, Rat
from symbolic.kernel.terms import App, Index, Sum, Term, Var, Vector, children, fresh_var


class Iv(NamedTuple):
    """An interval: endpoints (None: infinite) and whether each is included. A tuple, so that no one alters the
    facts table's intervals (a frozen dataclass yields to object.__setattr__)."""

    lo: Fraction | None
    lo_in: bool
    hi: Fraction | None
    hi_in: bool

    def positive(self) -> bool:
        return self.lo is not None and (self.lo > 0 or (self.lo == 0 and not self.lo_in))

    def nonneg(self) -> bool:
        return self.lo is not None and self.lo >= 0

    def negative(self) -> bool:
        return self.hi is not None and (self.hi < 0 or (self.hi == 0 and not self.hi_in))

    def nonzero(self) -> bool:
        return self.positive() or self.negative()


ANY = Iv(None, False, None, False)
NONNEG = Iv(Fraction(0), True, None, False)
POS = Iv(Fraction(0), False, None, False)
AT_LEAST_1 = Iv(Fraction(1), True, None, False)


def point(c: Fraction) -> Iv:
    return Iv(c, True, c, True)


def iv_add(a: Iv, b: Iv) -> Iv:
    lo = None if a.lo is None or b.lo is None else a.lo + b.lo
    hi = None if a.hi is None or b.hi is None else a.hi + b.hi
    return Iv(lo, a.lo_in and b.lo_in, hi, a.hi_in and b.hi_in)


INF = float("inf")


def _ends(a: Iv):
    return ((-INF if a.lo is None else a.lo, a.lo is not None and a.lo_in),
            (INF if a.hi is None else a.hi, a.hi is not None and a.hi_in))


def iv_mul(a: Iv, b: Iv) -> Iv:
    """Product: the hull of the endpoint products (a product's extremes are at corners, 0 times an
    infinite end is 0); an endpoint is attained when both factors' are, or when one factor's attained
    endpoint is 0."""
    ends = []
    for x, xin in _ends(a):
        for y, yin in _ends(b):
            v = 0 if x == 0 or y == 0 else x * y
            ends.append((v, (xin and yin) or (x == 0 and xin) or (y == 0 and yin)))
    lo_v, hi_v = min(e[0] for e in ends), max(e[0] for e in ends)
    lo_in, hi_in = any(c for v, c in ends if v == lo_v), any(c for v, c in ends if v == hi_v)
    return Iv(None if lo_v == -INF else Fraction(lo_v), lo_in, None if hi_v == INF else Fraction(hi_v), hi_in)


def _signs_only(a: Iv, b: Iv) -> Iv:
    sa = 1 if a.positive() else (-1 if a.negative() else (2 if a.nonneg() else None))
    sb = 1 if b.positive() else (-1 if b.negative() else (2 if b.nonneg() else None))
    if sa is None or sb is None:
        return ANY
    if sa == 1 and sb == 1:
        return POS
    if sa == -1 and sb == -1:
        return POS
    if {sa, sb} <= {1, 2}:
        return NONNEG
    if {sa, sb} == {1, -1}:
        return Iv(None, False, Fraction(0), False)
    return Iv(None, False, Fraction(0), True) if {sa, sb} == {-1, 2} else ANY


def iv_inv(a: Iv) -> Iv:
    """1/x on the interval, for x != 0 (the caller guarantees it)."""
    if a.nonneg():
        if a.hi is not None and a.hi == 0:
            return ANY
        lo, lo_in = (Fraction(0), False) if a.hi is None else (1 / a.hi, a.hi_in)
        hi, hi_in = (None, False) if a.lo == 0 else (1 / a.lo, a.lo_in)
        return Iv(lo, lo_in, hi, hi_in)
    if a.hi is not None and a.hi <= 0:
        return iv_neg(iv_inv(iv_neg(a)))
    return ANY


def iv_neg(a: Iv) -> Iv:
    return Iv(None if a.hi is None else -a.hi, a.hi_in, None if a.lo is None else -a.lo, a.lo_in)


def iv_pow(a: Iv, e: int, nonzero: bool) -> Iv:
    if e < 0:
        return iv_inv(iv_pow(a, -e, nonzero))
    out = point(Fraction(1))
    for _ in range(e):
        out = iv_mul(out, a)
    if e % 2 == 0:
        floor = POS if nonzero or a.nonzero() else NONNEG
        if not out.nonneg():
            out = floor
        elif nonzero and not out.positive():
            out = Iv(out.lo, False, out.hi, out.hi_in)
    return out


FIXED = MappingProxyType({"exp": POS, "tanh": Iv(Fraction(-1), False, Fraction(1), False),
         "sigmoid": Iv(Fraction(0), False, Fraction(1), False), "heaviside": Iv(Fraction(0), True, Fraction(1), True),
         "gate": Iv(Fraction(0), False, Fraction(1), True), "expert_gate": Iv(Fraction(0), True, Fraction(1), True),
         "dim": AT_LEAST_1, "num": AT_LEAST_1})


class Signs:
    """Intervals of the atoms of one normalizer, from the facts table and the hypotheses.

    `positive`, `nonzero`, `vnonzero` are the Rats the hypotheses declare > 0, != 0 (every
    coordinate) and != 0 (as a vector)."""

    def __init__(self, N: Normalizer, positive: list[Rat], nonzero: list[Rat], vnonzero: list[Rat]):
        self.N, self.pos, self.nz, self.vnz = N, positive, nonzero, vnonzero
        self.memo: dict[int, Iv] = {}

    def _declared(self, rats: list[Rat], i: int) -> bool:
        atom = self.N.value(i)
        return any(self.N.equal(r, atom) for r in rats)

    def atom_nonzero(self, i: int) -> bool:
        """Every coordinate of atom i is nonzero."""
        return self.atom_interval(i).nonzero() or self._declared(self.nz + self.pos, i)

    def atom_vnonzero(self, i: int) -> bool:
        return self.atom_nonzero(i) or self._declared(self.vnz, i)

    def atom_interval(self, i: int) -> Iv:
        if i not in self.memo:
            self.memo[i] = ANY  # no cycles: an atom's facts never rest on itself
            self.memo[i] = self._atom_interval(i)
        return self.memo[i]

    def _atom_interval(self, i: int) -> Iv:
        a = self.N.atoms[i]
        # ("app", op) is a kernel operation (op a str of ELEMENTWISE); a user function's head is ("fn", Fn) or
        # ("map", Fn) and gets no fact from the table, whatever its name.
        head = a.head[1] if isinstance(a.head, tuple) and a.head[0] == "app" and type(a.head[1]) is str else a.head
        if isinstance(head, tuple):
            return POS if self._declared(self.pos, i) else ANY
        if self._declared(self.pos, i):
            return POS
        if head in FIXED:
            return FIXED[head]
        if head == "sqrt":
            return POS if self.interval(a.sqrt_of).positive() else NONNEG
        if head in ("max", "min"):
            x, y = (self.interval(r) for r in a.args)
            test = any if head == "max" else all
            if test(v.positive() for v in (x, y)):
                return POS
            return NONNEG if test(v.nonneg() for v in (x, y)) else ANY
        if head == "total":
            arg = a.args[0]
            if isinstance(arg, Rat):
                iv = self.interval(arg)
                return POS if iv.positive() else (NONNEG if iv.nonneg() else ANY)
            return self._total(arg)
        if head in ("sum", "sumr"):
            body = a.args[1]
            iv = self.monomial(body) if isinstance(body, tuple) else self.interval(body)
            return POS if iv.positive() else (NONNEG if iv.nonneg() else ANY)
        return ANY

    def _total(self, m: tuple) -> Iv:
        r"""$\mathrm{tot}(m) = \sum_i m_i$ has the sign of m's coordinates; of even powers it is $\ge 0$,
        and $> 0$ when m is nonzero as a vector."""
        iv = self.monomial(m)
        if iv.positive():
            return POS
        if not iv.nonneg():
            # d >= 1 coordinates each <= hi < 0: the sum is <= hi (no lower bound: d is any dimension)
            return Iv(None, False, iv.hi, iv.hi_in) if iv.negative() else ANY
        odd = [a for a, e in m if e % 2]
        if not odd:
            weak = [a for a, _ in m if not self.atom_nonzero(a)]
            if not weak or (len(weak) == 1 and self.atom_vnonzero(weak[0])):
                return POS
        return NONNEG

    def monomial(self, m: tuple, c: Fraction = Fraction(1)) -> Iv:
        out = point(c)
        for a, e in m:
            out = iv_mul(out, iv_pow(self.atom_interval(a), e, e < 0 or self.atom_nonzero(a)))
        return out

    def poly(self, p: dict) -> Iv:
        out = point(Fraction(0))
        for m, c in p.items():
            out = iv_add(out, self.monomial(m, c))
        return out

    def interval(self, r: Rat) -> Iv:
        """The interval of N/D; D != 0 wherever the term is defined."""
        n, d = self.poly(r.num), self.poly(r.den)
        if d.nonneg() and not d.positive():
            d = Iv(d.lo, False, d.hi, d.hi_in)
        elif d.hi is not None and d.hi <= 0 and not d.negative():
            d = Iv(d.lo, d.lo_in, d.hi, False)
        return iv_mul(n, iv_inv(d))

    def is_positive(self, r: Rat) -> bool:
        return any(self.N.equal(r, h) for h in self.pos) or self.interval(r).positive()

    def is_nonneg(self, r: Rat) -> bool:
        return r.is_zero() or self.is_positive(r) or self.interval(r).nonneg()

    def is_nonzero(self, r: Rat, kind: str) -> bool:
        """kind: 'coords' (every coordinate; a scalar: itself) or 'vector' (not the zero vector)."""
        declared = self.nz + self.pos + (self.vnz if kind == "vector" else [])
        if r.is_zero():
            return False
        if any(self.N.equal(r, h) for h in declared) or self.interval(r).nonzero():
            return True
        if len(r.num) != 1:
            return False
        (m, _), = r.num.items()
        weak = [a for a, _ in m if not self.atom_nonzero(a)]
        return not weak or (kind == "vector" and len(weak) == 1 and self.atom_vnonzero(weak[0]))


# --------------------------------------------------------------------------- side conditions


@dataclass(frozen=True)
class Obligation:
    """A side condition: `term` != 0 (kind 'coords' / 'vector'), or >= 0 (kind 'nonneg')."""

    kind: str
    term: Term
    where: Term  # the operation that needs it

    def text(self) -> str:
        from symbolic.kernel.show import text

        what = {"coords": "!= 0" + (" in every coordinate" if isinstance(self.term.ty, Vector) else ""),
                "vector": "!= 0", "nonneg": ">= 0" + (" in every coordinate" if isinstance(self.term.ty, Vector)
                                                       else "")}[self.kind]
        return f"{text(self.term)} {what}"


def fresh_index(t: Term, ty: Index, taken: set) -> Var:
    """A kernel-owned index not free in t nor in `taken` (names)."""
    k = 1
    names = {v.name for v in _free(t)} | taken
    while f"i%{k}" in names or f"j%{k}" in names:
        k += 1
    return fresh_var(f"i%{k}", ty)


def _free(t: Term) -> set:
    out = set()
    stack = [t]
    while stack:
        x = stack.pop()
        if isinstance(x, Var):
            out.add(x)
        stack.extend(children(x))
    return out


def obligations(t: Term, taken: set | None = None) -> list[Obligation]:
    """Every side condition of the partial operations in t, binders opened with fresh indices."""
    out: list[Obligation] = []
    taken = set() if taken is None else taken
    _collect(t, out, taken)
    return out


def _collect(t: Term, out: list, taken: set) -> None:
    if isinstance(t, Sum):
        _collect(t.hi, out, taken)
        j = fresh_index(t.body, t.hi.ty, taken)
        _collect(instantiate(t.body, j), out, taken | {j.name})
        return
    if isinstance(t, App):
        if t.op == "div":
            out.append(Obligation("coords", t.args[1], t))
        elif t.op == "sqrt":
            out.append(Obligation("nonneg", t.args[0], t))
        for a in t.args:
            _collect(a, out, taken)


def family_instances(cond_term: Term, binders: tuple, target: Term) -> list[Term]:
    """A universally quantified condition at every index the target mentions (sound instantiation:
    the quantified variable ranges over every index of its type)."""
    (e,) = binders
    cands = {s for s in _subterms(target) if isinstance(s.ty, Index) and s.ty == e.ty and not s.loose}
    return [subst(cond_term, {e: c}) for c in cands]


def _subterms(t: Term):
    stack = [t]
    while stack:
        x = stack.pop()
        yield x
        stack.extend(children(x))


def is_app(t: Term, op: str) -> bool:
    return isinstance(t, App) and t.op == op
