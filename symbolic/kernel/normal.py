r"""Normal forms of the vector algebra: rational functions over typed atoms, with exact coefficients.

A scalar or vector term becomes a `Rat` $N/D$: $N, D$ are sparse Laurent polynomials with `Fraction`
coefficients over *atoms* (variables and the operations the algebra cannot take apart: $\sigma(\cdot)$,
$W v$, $\sum_i v_i$, $\sqrt{\cdot}$, ...). Vectors multiply coordinatewise, so the ring of vector values
is commutative and a scalar is a constant vector: the polynomial identities are those of a
commutative ring, valid for every dimension. A matrix term becomes a `MatNF`: a linear combination
(atom -> scalar `Rat`) of matrix atoms (matrix variables, an expert's matrix, outer products).

Rules (each implemented once below):

- *Ring.* $+, -, \cdot, /$ and integer powers are polynomial arithmetic; $N/D$ is kept with $D$
  primitive (no monomial factor, leading coefficient 1); equality is decided by cross-multiplying:
  $N_1 D_2 - N_2 D_1 = 0$ (no gcd).
- *Square roots.* $\sqrt{x}$ is an atom $s$ with $s^2 = x$: a power $s^{2q+r}$ becomes $x^q s^r$
  (so $\sqrt{x}^2 = x$, never $\sqrt{x^2} = x$).
- *Linearity.* A vector $v = \sum_i c_i m_i$ (scalar coefficients $c_i$, vector monomials $m_i$; a scalar
  is $c \cdot \mathbf 1$) is split before every linear operation: $W v = \sum c_i\, W m_i$,
  $\mathrm{mean}(v) = \mathrm{tot}(v) / d$, $a^\top b = \mathrm{tot}(a \odot b)$ with
  $\mathrm{tot}(\sum c_i m_i) = \sum c_i \mathrm{tot}(m_i)$, $\mathrm{tot}(\mathbf 1) = d$; matrices:
  $(x y^\top) v = x\,\mathrm{tot}(y \odot v)$, $\langle x y^\top, N\rangle_F = \mathrm{tot}(x \odot N y)$,
  bilinearity of outer and Frobenius products.
- *Sums.* $\sum_{j\le n} f$ opens its binder with the kernel's own index (named by its nesting depth,
  so alpha-equivalent sums get the same normal form); factors free of $j$ leave the sum, and
  $\sum_{j \le n} c = n\,c$; a literal bound $n$ expands the sum.
- *Congruence.* Atoms are kept in a table: two atoms with the same head are the same when their
  arguments have equal normal forms (exact comparison by cross-multiplication when an argument
  keeps a denominator).
- *Definitions and equations.* In the expanded mode a defined variable is its definition; an
  equation hypothesis whose left side is $c \cdot a$ for one atom $a$ (c a nonzero constant times
  powers of dimensions) rewrites $a$ wherever the atom is built, including inside other atoms.
"""

from __future__ import annotations

import re
from fractions import Fraction
from math import isqrt

from symbolic.kernel.binders import instantiate
from symbolic.kernel.poly import ONE, ONE_POLY, ZERO, Rat, exact_quotient, mono, mono_mul, padd, pmul, pscale
from symbolic.kernel.terms import (
    ELEMENTWISE,
    SCALAR,
    App,
    BVar,
    Fn,
    ILit,
    Index,
    Lit,
    Matrix,
    Sum,
    Term,
    Var,
    Vector,
    children,
    fresh_var,
)


def kernel_indices(t: Term, memo: dict) -> set:
    """k for every kernel-owned variable j%k free in t (the binders of the sums opened around t)."""
    out = memo.get(t)
    if out is None:
        if isinstance(t, Var):
            out = {int(n) for n in re.findall(r"%\D*(\d+)", t.name)}
        else:
            out = set().union(*(kernel_indices(c, memo) for c in children(t)))
        memo[t] = out
    return out


class NormalFormError(Exception):
    """A term the normal form does not cover (it is then not decided, never assumed)."""


# --------------------------------------------------------------------------- atoms


class Atom:
    __slots__ = ("head", "args", "ty", "bound", "sqrt_of")

    def __init__(self, head, args, ty, bound, sqrt_of=None):
        self.head, self.args, self.ty, self.bound, self.sqrt_of = head, args, ty, bound, sqrt_of


class Normalizer:
    """Normal forms in one context: `defs` (variable -> term, expanded) and `families` (family
    variable -> body over BVar(0)) are the definitions used in the expanded mode."""

    def __init__(self, defs: dict | None = None, families: dict | None = None):
        self.defs, self.families = defs or {}, families or {}
        self.atoms: list[Atom] = []
        self.exact: dict = {}
        self.buckets: dict = {}
        self.rewrites: dict[int, Rat] = {}
        self.cache: dict = {}
        self.kmemo: dict = {}

    # ----------------------------------------------------------------- the atom table

    def _argkey(self, a):
        """Exact key of an argument (Rat with den 1, monomial, int id, name) or None (compare by value)."""
        if isinstance(a, Rat):
            return ("P", tuple(sorted(a.num.items()))) if a.den == ONE_POLY else None
        if isinstance(a, dict):
            return ("M", tuple(sorted((k, v.key()) for k, v in a.items())))
        return a

    def atom(self, head, args: tuple, ty, sqrt_of: Rat | None = None) -> int:
        keys = tuple(self._argkey(a) for a in args)
        if None not in keys:
            k = (head, keys, ty)
            found = self.exact.get(k)
            if found is None:
                found = self.exact[k] = self._new(head, args, ty, sqrt_of)
            return found
        bkey = (head, tuple(k if k is not None else "R" for k in keys), ty)
        for i in self.buckets.get(bkey, ()):
            if all(self._same(a, b) for a, b in zip(args, self.atoms[i].args, strict=True)):
                return i
        i = self._new(head, args, ty, sqrt_of)
        self.buckets.setdefault(bkey, []).append(i)
        return i

    def _same(self, a, b) -> bool:
        if isinstance(a, Rat) and isinstance(b, Rat):
            return self.equal(a, b)
        return self._argkey(a) == self._argkey(b)

    def _new(self, head, args, ty, sqrt_of) -> int:
        """A new atom; `bound` holds the kernel-owned names (opened binders) it mentions."""
        bound: set = set()
        for a in args:
            bound |= self._names(a, head)
        if head == "var" and "%" in args[0]:
            bound.add(args[0])
        self.atoms.append(Atom(head, args, ty, frozenset(bound), sqrt_of))
        return len(self.atoms) - 1

    def _names(self, a, head) -> set:
        if isinstance(a, Rat):
            return set().union(*(self.atoms[i].bound for i in a.atoms()))
        if isinstance(a, tuple) and a and isinstance(a[0], tuple):  # a monomial
            return set().union(*(self.atoms[i].bound for i, _ in a))
        if isinstance(a, int) and not isinstance(a, bool) and head not in ("ilit", "bvar"):  # an atom id
            return set(self.atoms[a].bound)
        return set()

    # ----------------------------------------------------------------- binders of sum atoms

    def abstract(self, x, name: str, depth: int, memo: dict):
        """Replace the opened binder `name` by the atom ("bvar", depth) (a de Bruijn level counted in sum atoms),
        so that alpha-equivalent sums are one atom whatever name they were opened with."""
        if isinstance(x, Rat):
            return Rat(self._abstract_poly(x.num, name, depth, memo), self._abstract_poly(x.den, name, depth, memo))
        if isinstance(x, tuple) and (not x or isinstance(x[0], tuple)):
            out: tuple = ()
            for i, e in x:
                out = mono_mul(out, ((self._abstract_id(i, name, depth, memo), e),))
            return out
        return self._abstract_id(x, name, depth, memo) if isinstance(x, int) else x

    def _abstract_poly(self, p: dict, name, depth, memo) -> dict:
        out: dict = {}
        for m, c in p.items():
            out = padd(out, {self.abstract(m, name, depth, memo): c})
        return out

    def _abstract_id(self, i: int, name: str, depth: int, memo: dict) -> int:
        a = self.atoms[i]
        if name not in a.bound:
            return i
        if (i, depth) not in memo:
            if a.head == "var":
                out = self.atom("bvar", (depth,), a.ty)
            else:
                summing = a.head in ("sum", "sumr")
                args = tuple(self.abstract(x, name, depth + (summing and k == 1), memo)
                             if self._is_ref(a.head, x) else x for k, x in enumerate(a.args))
                sq = self.abstract(a.sqrt_of, name, depth, memo) if a.sqrt_of is not None else None
                out = self.atom(a.head, args, a.ty, sq)
            memo[(i, depth)] = out
        return memo[(i, depth)]

    @staticmethod
    def _is_ref(head, x) -> bool:
        """Whether an atom argument refers to other atoms (a normal form, a monomial or an atom id)."""
        return isinstance(x, (Rat, tuple)) or (isinstance(x, int) and not isinstance(x, bool) and head != "ilit")

    def value(self, i: int) -> Rat:
        """The atom as a normal form (its rewrite, when an equation rewrites it)."""
        return self.rewrites.get(i) or Rat(mono(i))

    # ----------------------------------------------------------------- rational arithmetic

    def canon(self, num: dict, den: dict) -> Rat:
        """N / D with square roots reduced, D primitive and monic."""
        for _ in range(64):
            if not num:
                return ZERO
            if not den:
                raise NormalFormError("a denominator normalized to 0")
            g = self._mono_gcd(den)
            if g:
                inv = tuple((a, -e) for a, e in g)
                num, den = pscale(num, Fraction(1), inv), pscale(den, Fraction(1), inv)
            n, d = self._reduce(num), self._reduce(den)
            if n is None and d is None:
                break
            n = n or Rat(num)
            d = d or Rat(den)
            num, den = pmul(n.num, d.den), pmul(n.den, d.num)
        else:
            raise NormalFormError("square roots do not reduce")
        if list(den) == [()]:
            return Rat(pscale(num, 1 / den[()]))
        lead = den[max(den)]
        if lead != 1:
            num, den = pscale(num, 1 / lead), pscale(den, 1 / lead)
        ratio = self._proportional(num, den)
        if ratio is not None:
            return Rat({(): ratio})
        q = exact_quotient(num, den)
        if q is not None:
            red = self._reduce(q)
            return red if red is not None else Rat(q)
        return Rat(num, den)

    @staticmethod
    def _proportional(num: dict, den: dict) -> Fraction | None:
        if num.keys() != den.keys():
            return None
        ratios = {num[m] / den[m] for m in num}
        return ratios.pop() if len(ratios) == 1 else None

    @staticmethod
    def _mono_gcd(p: dict) -> tuple:
        """The monomial dividing every term of p with the largest exponents (an absent atom counts 0)."""
        atoms = {a for m in p for a, _ in m}
        dicts = [dict(m) for m in p]
        return tuple(sorted((a, e) for a in atoms if (e := min(d.get(a, 0) for d in dicts))))

    def _reduce(self, p: dict) -> Rat | None:
        """Replace s^(2q+r) by x^q s^r for every square-root atom s = sqrt(x); None if nothing to do."""
        hit = False
        for m in p:
            for a, e in m:
                if self.atoms[a].sqrt_of is not None and e not in (0, 1):
                    hit = True
        if not hit:
            return None
        total = ZERO
        for m, c in p.items():
            factor, keep = ONE, []
            for a, e in m:
                arg = self.atoms[a].sqrt_of
                if arg is not None and e not in (0, 1):
                    q, r = divmod(e, 2)
                    factor = self.mul(factor, self.power(arg, q))
                    if r:
                        keep.append((a, 1))
                else:
                    keep.append((a, e))
            total = self.add(total, self.mul(factor, Rat({tuple(keep): c})))
        return total

    def add(self, a: Rat, b: Rat, sign: int = 1) -> Rat:
        if b.is_zero():
            return a
        if a.is_zero() and sign == 1:
            return b
        if a.den == b.den:
            return self.canon(padd(a.num, b.num, sign), a.den)
        return self.canon(padd(pmul(a.num, b.den), pmul(b.num, a.den), sign), pmul(a.den, b.den))

    def mul(self, a: Rat, b: Rat) -> Rat:
        if a.is_zero() or b.is_zero():
            return ZERO
        if a.const() == 1:
            return b
        if b.const() == 1:
            return a
        return self.canon(pmul(a.num, b.num), pmul(a.den, b.den))

    def inv(self, a: Rat) -> Rat:
        if a.is_zero():
            raise NormalFormError("division by a term that normalizes to 0")
        return self.canon(a.den, a.num)

    def power(self, a: Rat, n: int) -> Rat:
        out = ONE
        for _ in range(abs(n)):
            out = self.mul(out, a)
        return self.inv(out) if n < 0 else out

    def equal(self, a: Rat, b: Rat) -> bool:
        """Cross-multiplication: N_a D_b - N_b D_a reduces to the zero polynomial."""
        if a.key() == b.key():
            return True
        diff = padd(pmul(a.num, b.den), pmul(b.num, a.den), -1)
        if not diff:
            return True
        red = self._reduce(diff)
        return red is not None and red.is_zero()

    def const(self, c) -> Rat:
        return Rat({(): Fraction(c)}) if c else ZERO

    # ----------------------------------------------------------------- matrices

    def madd(self, A: dict, B: dict, sign: int = 1) -> dict:
        out = dict(A)
        for k, v in B.items():
            s = self.add(out.get(k, ZERO), v, sign)
            if s.is_zero():
                out.pop(k, None)
            else:
                out[k] = s
        return out

    def mscale(self, A: dict, c: Rat) -> dict:
        out = {k: self.mul(v, c) for k, v in A.items()}
        return {k: v for k, v in out.items() if not v.is_zero()}

    def mequal(self, A: dict, B: dict) -> bool:
        return all(self.add(A.get(k, ZERO), B.get(k, ZERO), -1).is_zero() or self.equal(A.get(k, ZERO),
                                                                                         B.get(k, ZERO))
                   for k in set(A) | set(B))

    # ----------------------------------------------------------------- linear structure of vectors

    def split(self, x: Rat, dim: str) -> list:
        r"""$x = \sum_i c_i m_i$: scalar coefficients and vector parts, each a monomial of vector atoms (()
        is the ones vector), or x itself (a `Rat`, coefficient 1) when its denominator has vector atoms."""
        if any(isinstance(self.atoms[a].ty, Vector) for m in x.den for a, _ in m):
            return [(ONE, x)]
        groups: dict = {}
        for m, c in x.num.items():
            vpart = tuple((a, e) for a, e in m if isinstance(self.atoms[a].ty, Vector))
            spart = tuple((a, e) for a, e in m if not isinstance(self.atoms[a].ty, Vector))
            groups.setdefault(vpart, {})[spart] = c
        return [(self.canon(p, x.den), v) for v, p in groups.items()]

    @staticmethod
    def part(v) -> Rat:
        """A vector part as a normal form."""
        return v if isinstance(v, Rat) else Rat({v: Fraction(1)})

    def total(self, x: Rat, dim: str) -> Rat:
        r"""$\mathrm{tot}(x) = \sum_i x_i$ (for a scalar x: $d\,x$)."""
        out = ZERO
        for c, v in self.split(x, dim):
            t = self.atom("dim", (dim,), SCALAR) if v == () else self.atom("total", (v,), SCALAR)
            out = self.add(out, self.mul(c, self.value(t)))
        return out

    def matvec_atom(self, M: int, v, rows: str, cols: str) -> Rat:
        info = self.atoms[M]
        if info.head == "outer":
            p, q = info.args
            return self.mul(self.part(p), self.total(self.mul(self.part(q), self.part(v)), cols))
        return self.value(self.atom("mv", (M, v), Vector(rows)))

    # ----------------------------------------------------------------- terms

    def nf(self, t: Term):
        """Rat (scalar, vector), dict (matrix) or int (an index atom)."""
        out = self.cache.get(t)
        if out is None:
            out = self.cache[t] = self._nf(t)
        return out

    def _nf(self, t: Term):
        if isinstance(t, Lit):
            return self.const(t.value)
        if isinstance(t, ILit):
            return self.atom("ilit", (t.n,), t.ty)
        if isinstance(t, Var):
            if t in self.defs:
                return self.nf(self.defs[t])
            i = self.atom("var", (t.name, t.ty), t.ty)
            if isinstance(t.ty, Index):
                return i
            return {i: ONE} if isinstance(t.ty, Matrix) else self.value(i)
        if isinstance(t, BVar):
            raise NormalFormError("a bound variable outside its sum")
        if isinstance(t, Sum):
            return self._sum(t)
        return self._app(t)

    def _app(self, t: App):
        op, args = t.op, t.args
        if isinstance(op, Fn):
            vals = tuple(self.nf(a) for a in args)
            # A user function's head holds the Fn itself: it can never coincide with a kernel head ("dim",
            # "total", "sum", ("app", "exp"), ...) whose facts the table gives, whatever its name.
            head = ("map", op) if op.sig is not None else ("fn", op)
            return self.value(self.atom(head, vals, t.ty))
        rule = getattr(self, "_op_" + op, None)
        if rule is not None:
            return rule(t, *args)
        if op in ELEMENTWISE:
            return self.value(self.atom(("app", op), tuple(self.nf(a) for a in args), t.ty))
        raise NormalFormError(f"no normal form for {op}")

    def _op_add(self, t, a, b):
        if isinstance(t.ty, Matrix):
            return self.madd(self.nf(a), self.nf(b))
        return self.add(self.nf(a), self.nf(b))

    def _op_neg(self, t, a):
        if isinstance(t.ty, Matrix):
            return self.mscale(self.nf(a), self.const(-1))
        return self.mul(self.const(-1), self.nf(a))

    def _op_mul(self, t, a, b):
        if isinstance(t.ty, Matrix):
            m, s = (a, b) if isinstance(a.ty, Matrix) else (b, a)
            return self.mscale(self.nf(m), self.nf(s))
        return self.mul(self.nf(a), self.nf(b))

    def _op_div(self, t, a, b):
        if isinstance(t.ty, Matrix):
            return self.mscale(self.nf(a), self.inv(self.nf(b)))
        return self.mul(self.nf(a), self.inv(self.nf(b)))

    def _op_sqrt(self, t, a):
        x = self.nf(a)
        c = x.const()
        if c is not None and c >= 0:
            p, q = isqrt(c.numerator), isqrt(c.denominator)
            if p * p == c.numerator and q * q == c.denominator:
                return self.const(Fraction(p, q))
        return self.value(self.atom("sqrt", (x,), t.ty, sqrt_of=x))

    def _op_mean(self, t, a):
        x = self.nf(a)
        if not isinstance(a.ty, Vector):
            return x
        return self.mul(self.total(x, a.ty.dim), self.inv(self.value(self.atom("dim", (a.ty.dim,), SCALAR))))

    def _op_dot(self, t, a, b):
        return self.total(self.mul(self.nf(a), self.nf(b)), a.ty.dim)

    def _op_matvec(self, t, W, v):
        out = ZERO
        for M, alpha in self.nf(W).items():
            for c, m in self.split(self.nf(v), v.ty.dim):
                out = self.add(out, self.mul(self.mul(alpha, c), self.matvec_atom(M, m, W.ty.rows, W.ty.cols)))
        return out

    def _op_outer(self, t, x, y):
        out: dict = {}
        for c1, m1 in self.split(self.nf(x), x.ty.dim):
            for c2, m2 in self.split(self.nf(y), y.ty.dim):
                k = self.atom("outer", (m1, m2), t.ty)
                out = self.madd(out, {k: self.mul(c1, c2)})
        return out

    def _op_frob(self, t, A, B):
        out = ZERO
        for M, a in self.nf(A).items():
            for N, b in self.nf(B).items():
                out = self.add(out, self.mul(self.mul(a, b), self._frob_atoms(M, N, A.ty)))
        return out

    def _frob_atoms(self, M: int, N: int, ty: Matrix) -> Rat:
        r"""$\langle x y^\top, N\rangle_F = \mathrm{tot}(x \odot N y)$, symmetric."""
        for P, Q in ((M, N), (N, M)):
            if self.atoms[P].head == "outer":
                x, y = self.atoms[P].args
                return self.total(self.mul(self.part(x), self.matvec_atom(Q, y, ty.rows, ty.cols)), ty.rows)
        return self.value(self.atom("frob", (min(M, N), max(M, N)), SCALAR))

    def _op_at(self, t, fam, idx):
        if fam in self.families:
            return self.nf(instantiate(self.families[fam], idx))
        i = self.atom("at", (fam.name, fam.ty, self.nf(idx)), t.ty)
        return {i: ONE} if isinstance(t.ty, Matrix) else self.value(i)

    def _op_sel(self, t, ell, j):
        return self.atom("sel", (self.nf(ell), self.nf(j)), t.ty)

    def _op_gate(self, t, ell, j):
        return self.value(self.atom("gate", (self.nf(ell), self.nf(j)), SCALAR))

    def _op_expert_gate(self, t, ell, j):
        return self.value(self.atom("expert_gate", (self.nf(ell), self.nf(j)), SCALAR))

    def _op_num(self, t, idx):
        i = self.nf(idx)
        if self.atoms[i].head == "ilit":
            return self.const(self.atoms[i].args[0])
        return self.value(self.atom("num", (i,), SCALAR))

    # ----------------------------------------------------------------- sums

    LITERAL_SUM = 16  # a sum up to a literal bound at most this large is expanded term by term

    def _sum(self, t: Sum) -> Rat:
        if isinstance(t.hi, ILit) and t.hi.n <= self.LITERAL_SUM:
            out = ZERO
            for n in range(1, t.hi.n + 1):
                out = self.add(out, self.nf(instantiate(t.body, ILit(n))))
            return out
        hi = self.nf(t.hi)
        j = fresh_var(f"j%{1 + max(kernel_indices(t, self.kmemo), default=0)}", t.hi.ty)
        jname = j.name
        body = self.nf(instantiate(t.body, j))
        count = self.value(self.atom("num", (hi,), SCALAR))

        def dep(a):
            return jname in self.atoms[a].bound

        if any(dep(a) for m in body.den for a, _ in m):
            return self.value(self.atom("sumr", (hi, self.abstract(body, jname, 0, {})), t.ty))
        groups: dict = {}
        for m, c in body.num.items():
            d = tuple((a, e) for a, e in m if dep(a))
            groups.setdefault(d, {})[tuple((a, e) for a, e in m if not dep(a))] = c
        out = ZERO
        for d, p in groups.items():
            coeff = self.canon(p, body.den)
            if not d:
                out = self.add(out, self.mul(coeff, count))
            else:
                ty = Vector(t.ty.dim) if any(isinstance(self.atoms[a].ty, Vector) for a, _ in d) else SCALAR
                out = self.add(out, self.mul(coeff, self.value(self.atom("sum", (hi, self.abstract(d, jname, 0, {})),
                                                                          ty))))
        return out

    # ----------------------------------------------------------------- equations

    def add_rewrite(self, lhs: Term, rhs: Term) -> bool:
        """Orient lhs = rhs as `atom -> value`: lhs is c * atom (c a constant times dimensions), or an atom of
        lhs occurs in lhs - rhs only as c * atom (c a nonzero constant); else the equation is not used."""
        if not isinstance(lhs.ty, (type(SCALAR), Vector)):
            return False
        L, R = self.nf(lhs), self.nf(rhs)
        if len(L.num) == 1 and L.den == ONE_POLY:
            (m, c), = L.num.items()
            key = [(a, e) for a, e in m if self.atoms[a].head != "dim"]
            if len(key) == 1 and key[0][1] == 1:
                a = key[0][0]
                return self._orient(a, self.mul(R, Rat({tuple((b, -e) for b, e in m if b != a): 1 / c})))
        D = self.add(L, R, -1)
        if D.den != ONE_POLY:
            return False
        for a in sorted(L.atoms()):
            terms = {m: c for m, c in D.num.items() if any(b == a for b, _ in m)}
            if list(terms) == [((a, 1),)]:
                c = terms[((a, 1),)]
                rest = {m: v for m, v in D.num.items() if m not in terms}
                return self._orient(a, Rat(pscale(rest, -1 / c)))
        return False

    def _orient(self, a: int, value: Rat) -> bool:
        if self.atoms[a].head in ("ilit", "dim", "bvar"):
            return False
        vector = any(isinstance(self.atoms[b].ty, Vector) for b in value.atoms())
        if vector and not isinstance(self.atoms[a].ty, Vector):
            return False  # a scalar is never rewritten into a vector
        self.rewrites[a] = value
        self.cache.clear()
        return True
