r"""One model of a theorem (`Model`): its dimensions, variables, family members and opaque functions, and the
evaluation of the kernel's terms in it.

A model fixes every dimension (drawn as the evaluation meets them: 1..4, or 5..9 for the wide one), every variable
(rationals; an index in its range, at least 5 three times in four in the wide model), every family member, and every
opaque function: an elementwise $\sigma$ is a random polynomial with rational coefficients (`random_poly`), a map, the
router's selection and gates are random tables (any function with the declared type and facts is a model). A
theorem's own `models` interpret the maps its quantified hypotheses constrain.
"""

from __future__ import annotations

import random
from fractions import Fraction

from symbolic.kernel.numbers import BUILTIN, Cannot, Undefined, add, divide, elementwise, mul, table_key, total
from symbolic.kernel.statements import Hypotheses
from symbolic.kernel.terms import App, BVar, Family, Fn, ILit, Index, Lit, Matrix, Scalar, Sum, Term, Var, Vector

SMALL, WIDE = (1, 4), (5, 9)  # the dimensions of the middle instances and of the last (wide) one


class ModelContext(Hypotheses):
    """The hypotheses of the theorem a model interprets."""

    def __init__(self, th):
        super().__init__(th)
        self.th = th


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
                total = elementwise(add, total, self.ev(t.body, bv + (j,)))
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
            return elementwise(BUILTIN[op], *args)
        return getattr(self, "_op_" + op)(t, *args)

    def _op_add(self, t, a, b):
        if isinstance(t.ty, Matrix):
            return tuple(tuple(add(x, y) for x, y in zip(r, s, strict=True)) for r, s in zip(a, b, strict=True))
        return elementwise(add, a, b)

    def _op_neg(self, t, a):
        if isinstance(t.ty, Matrix):
            return tuple(tuple(-x for x in r) for r in a)
        return elementwise(lambda x: -x, a)

    def _op_mul(self, t, a, b):
        if isinstance(t.ty, Matrix):
            m, c = (a, b) if isinstance(t.args[0].ty, Matrix) else (b, a)
            return tuple(tuple(mul(c, x) for x in r) for r in m)
        return elementwise(mul, a, b)

    def _op_div(self, t, a, b):
        if isinstance(t.ty, Matrix):
            return tuple(tuple(divide(x, b) for x in r) for r in a)
        return elementwise(divide, a, b)

    def _op_matvec(self, t, W, v):
        return tuple(total(mul(w, x) for w, x in zip(row, v, strict=True)) for row in W)

    def _op_dot(self, t, a, b):
        return total(mul(x, y) for x, y in zip(a, b, strict=True))

    def _op_outer(self, t, x, y):
        return tuple(tuple(mul(a, b) for b in y) for a in x)

    def _op_mean(self, t, v):
        return divide(total(v), Fraction(len(v))) if isinstance(v, tuple) else v

    def _op_frob(self, t, A, B):
        return total(mul(x, y) for r, s in zip(A, B, strict=True) for x, y in zip(r, s, strict=True))

    def _op_num(self, t, i):
        return Fraction(i)

    def _table(self, name, args, draw):
        key = (name, table_key(tuple(args)))
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
            return elementwise(lambda *xs: random_poly(coeffs, xs), *args)
        return self._table(("map", fn), args, lambda: self.draw(fn.result))


def random_poly(c, xs):
    """c0 + sum_i (c_{2i+1} x_i + c_{2i+2} x_i^2) + c_last * prod x_i: a random polynomial."""
    out, prod = c[0], Fraction(1)
    for i, x in enumerate(xs):
        out = add(out, add(mul(c[2 * i + 1], x), mul(c[2 * i + 2], mul(x, x))))
        prod = mul(prod, x)
    return add(out, mul(c[-1], prod)) if len(xs) > 1 else out
