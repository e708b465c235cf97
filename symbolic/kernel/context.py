r"""The context of a theorem: its hypotheses sorted by kind, with the decision procedures over them.

`Context.equal` decides an equality by normal forms (`symbolic.kernel.normal`), with the definitions opaque
and then expanded, the equation hypotheses (and a step's instantiated equations) as atom rewrites.
`Context.discharge` decides t != 0 (every coordinate, or as a vector), t >= 0 and t > 0: first by rules on the
term's shape (`_structural`), then by the intervals of `symbolic.kernel.facts` over the normal form, from the
hypotheses and the facts table. `Context.undefined` names the first side condition of a term (a divisor != 0, a
square root's argument >= 0) that these do not discharge. Part of the trusted core (`symbolic.kernel.core`).
"""

from __future__ import annotations

from symbolic.kernel.facts import Obligation, Signs, family_instances, obligations
from symbolic.kernel.normal import NormalFormError, Normalizer
from symbolic.kernel.statements import Hypotheses, Theorem, theorem_terms
from symbolic.kernel.terms import SCALAR, App, Lit, Term, Vector, free_vars


class Context:
    """The hypotheses of one theorem, sorted by kind, with the decision procedures over them."""

    def __init__(self, th: Theorem):
        self.th = th
        hs = Hypotheses(th)
        self.defs, self.families, self.equations = hs.defs, hs.families, hs.equations
        self.foralls, self.conds, self.fconds = hs.foralls, hs.conds, hs.fconds
        self.names = {v.name for t in theorem_terms(th) for v in free_vars(t)}
        self._modes: dict = {}

    def normalizer(self, expanded: bool, extra: tuple = ()) -> Normalizer:
        key = (expanded, extra)
        if key not in self._modes:
            N = Normalizer(self.defs, self.families) if expanded else Normalizer()
            for lhs, rhs in self.equations + list(extra):
                N.add_rewrite(lhs, rhs)
            self._modes[key] = N
        return self._modes[key]

    def modes(self, extra: tuple = ()):
        for expanded in (False, True):
            yield self.normalizer(expanded, extra)

    def equal(self, a: Term, b: Term, extra: tuple = ()) -> bool:
        if a == b:
            return True
        if a.ty != b.ty and not {type(a.ty), type(b.ty)} <= {type(SCALAR), Vector}:
            return False
        for N in self.modes(extra):
            try:
                x, y = N.nf(a), N.nf(b)
                if isinstance(x, dict) and isinstance(y, dict):
                    if N.mequal(x, y):
                        return True
                elif isinstance(x, int) or isinstance(y, int):
                    if x == y:
                        return True
                elif not isinstance(x, dict) and not isinstance(y, dict) and N.equal(x, y):
                    return True
            except NormalFormError:
                continue
        return False

    def signs(self, N: Normalizer, target: Term) -> Signs:
        pos, nz, vnz = [], [], []
        conds = list(self.conds) + [(k, inst) for k, t, b in self.fconds for inst in family_instances(t, b, target)]
        for kind, t in conds:
            r = N.nf(t)
            if kind == "positive":
                pos.append(r)
            elif kind == "coords" or not isinstance(t.ty, Vector):
                nz.append(r)
            else:
                vnz.append(r)
        return Signs(N, pos, nz, vnz)

    def discharge(self, kind: str, t: Term, extra: tuple = ()) -> bool:
        """t != 0 ('coords': every coordinate; 'vector': not the zero vector), t >= 0 ('nonneg'), t > 0 ('positive')."""
        structural = self._structural(kind, t)
        if structural is not None:
            return structural
        for N in self.modes(extra):
            try:
                r, S = N.nf(t), self.signs(N, t)
                ok = (S.is_nonzero(r, kind) if kind in ("coords", "vector") else
                      S.is_nonneg(r) if kind == "nonneg" else S.is_positive(r))
            except NormalFormError:
                ok = False
            if ok:
                return True
        return False

    def undefined(self, t: Term, extra: tuple = ()) -> Obligation | None:
        """The first side condition of t (a divisor != 0, a square root's argument >= 0, binders opened with fresh
        indices) that the hypotheses and the facts table do not discharge; None when t is defined."""
        for ob in obligations(t, self.names):
            if not self.discharge(ob.kind, ob.term, extra):
                return ob
        return None

    def _structural(self, kind: str, t: Term) -> bool | None:
        r"""Rules on the term's shape: a product is nonzero when its factors are, a quotient when its
        numerator is (its divisor already is), exp and sigmoid are positive, sqrt(x) != 0 when x > 0,
        $\mathrm{mean}(x \odot x) = \lVert x\rVert^2 / d > 0$ when the vector x is not the zero vector."""
        d = self.discharge
        if isinstance(t, Lit):
            v = t.value
            return {"coords": v != 0, "vector": v != 0, "nonneg": v >= 0, "positive": v > 0}[kind]
        if not isinstance(t, App):
            return None
        a = t.args
        if kind in ("coords", "vector"):
            if t.op in ("exp", "sigmoid"):
                return True
            if t.op == "sqrt":
                return d("positive", a[0]) or None
            if t.op in ("div", "neg"):
                return d(kind, a[0]) or None
            if t.op == "mul":
                if kind == "coords":
                    return (d("coords", a[0]) and d("coords", a[1])) or None
                if not all(isinstance(x.ty, Vector) for x in a):  # a scalar times a vector
                    return all(d("vector" if isinstance(x.ty, Vector) else "coords", x) for x in a) or None
                return (d("coords", a[0]) and d("vector", a[1])) or (d("vector", a[0]) and d("coords", a[1])) or None
        if kind in ("positive", "nonneg"):
            if t.op in ("exp", "sigmoid"):
                return True
            if t.op in ("dot", "frob", "mul") and a[0] == a[1]:  # x x, x^T x, <A, A>_F
                if kind == "nonneg":
                    return True
                return {"dot": "vector", "mul": "coords"}.get(t.op) is not None and (
                    d({"dot": "vector", "mul": "coords"}[t.op], a[0]) or None)
            if t.op == "mean":
                x = a[0]
                if isinstance(x.ty, Vector) and isinstance(x, App) and x.op == "mul" and x.args[0] == x.args[1] and (
                        kind == "nonneg" or d("vector", x.args[0])):
                    return True
                return d(kind, x) or None
            if t.op == "sqrt":
                return d(kind, a[0]) or None
            if t.op in ("mul", "div"):
                return (d(kind, a[0]) and d(kind if t.op == "mul" else "positive", a[1])) or None
            if t.op == "add":
                weak = "nonneg"
                return (d(kind, a[0]) and d(weak, a[1])) or (d(weak, a[0]) and d(kind, a[1])) or None
        return None
