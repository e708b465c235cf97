"""Sparse Laurent polynomials with exact `Fraction` coefficients, and quotients of them (`Rat`).

A monomial is a sorted tuple ((atom id, exponent), ...) with nonzero integer exponents (negative ones
divide: an atom in a denominator is nonzero where the term is defined); a polynomial maps monomials
to nonzero Fractions. `exact_quotient` is multivariate division (lex order) that succeeds only when
the remainder is zero. Nothing here knows what an atom is (`symbolic.kernel.normal` does).
"""

from __future__ import annotations

from fractions import Fraction

ONE_POLY = {(): Fraction(1)}


class Rat:
    """N / D over atom ids; `num` and `den` map monomials (sorted ((atom, exponent), ...)) to Fractions."""

    __slots__ = ("num", "den")

    def __init__(self, num: dict, den: dict = ONE_POLY):
        self.num, self.den = num, den

    def is_zero(self) -> bool:
        return not self.num

    def const(self) -> Fraction | None:
        if self.den == ONE_POLY and (not self.num or list(self.num) == [()]):
            return self.num.get((), Fraction(0))
        return None

    def key(self):
        return (tuple(sorted(self.num.items())), tuple(sorted(self.den.items())))

    def atoms(self) -> set:
        return {a for p in (self.num, self.den) for m in p for a, _ in m}


ZERO = Rat({})
ONE = Rat(ONE_POLY)


# --------------------------------------------------------------------------- polynomials


def mono_mul(a: tuple, b: tuple) -> tuple:
    if not a:
        return b
    if not b:
        return a
    out = dict(a)
    for k, e in b:
        s = out.get(k, 0) + e
        if s:
            out[k] = s
        else:
            del out[k]
    return tuple(sorted(out.items()))


def padd(p: dict, q: dict, sign: int = 1) -> dict:
    out = dict(p)
    for m, c in q.items():
        s = out.get(m, 0) + sign * c
        if s:
            out[m] = s
        else:
            out.pop(m, None)
    return out


def pmul(p: dict, q: dict) -> dict:
    out: dict = {}
    for m1, c1 in p.items():
        for m2, c2 in q.items():
            m = mono_mul(m1, m2)
            s = out.get(m, 0) + c1 * c2
            if s:
                out[m] = s
            else:
                out.pop(m, None)
    return out


def pscale(p: dict, c: Fraction, m: tuple = ()) -> dict:
    if not c:
        return {}
    return {mono_mul(k, m): v * c for k, v in p.items()}


def mono(atom: int, e: int = 1) -> dict:
    return {((atom, e),): Fraction(1)}


def exact_quotient(num: dict, den: dict, limit: int = 400) -> dict | None:
    """num / den when den divides num exactly (multivariate division, lex order), else None."""
    atoms = sorted({a for p in (num, den) for m in p for a, _ in m})
    shift = {a: -min([0] + [dict(m).get(a, 0) for m in num]) for a in atoms}
    if any(e < 0 for m in den for _, e in m):
        return None

    def key(m):
        d = dict(m)
        return tuple(d.get(a, 0) + shift[a] for a in atoms)

    lead = max(den, key=key)
    ld, cd = dict(lead), den[lead]
    rem = dict(num)
    out: dict = {}
    for _ in range(limit):
        if not rem:
            return out
        m = max(rem, key=key)
        md = dict(m)
        if any(md.get(a, 0) + shift[a] < e for a, e in ld.items()):
            return None
        factor = tuple(sorted((a, md.get(a, 0) - ld.get(a, 0)) for a in set(md) | set(ld)
                              if md.get(a, 0) - ld.get(a, 0)))
        c = rem[m] / cd
        out = padd(out, {factor: c})
        rem = padd(rem, pscale(den, c, factor), -1)
    return None
