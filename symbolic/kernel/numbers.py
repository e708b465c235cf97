r"""Numbers of the instance check: exact `Fraction`s while they can, 60-digit `mpmath` numbers once a square root,
exp or tanh appears; elementwise operations broadcast over vectors (tuples).

A partial operation outside its domain raises `Undefined` (a division by zero, the root of a negative number); a
value that cannot be decided (a 60-digit number within 1e-40 of 0 whose sign is asked) raises `Cannot`. Values are
compared exactly, or to 1e-40 relative at 60 digits (`agree`); an opaque table is keyed by `table_key`, which reads a
rounding residue of 0 as 0.
"""

from __future__ import annotations

from fractions import Fraction
from math import isqrt

import mpmath

MP = mpmath.MPContext()
MP.dps = 60
TOL = MP.mpf(10) ** -40


class Undefined(Exception):
    """A partial operation outside its domain (a division by zero, a root of a negative number)."""


class Cannot(Exception):
    """A value that cannot be evaluated or decided."""


def to_mp(x):
    return MP.mpf(x.numerator) / x.denominator if isinstance(x, Fraction) else x


def _pair(a, b):
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a, b
    return to_mp(a), to_mp(b)


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


def elementwise(op, *xs):
    """Broadcast an elementwise operation over vectors (tuples)."""
    n = next((len(x) for x in xs if isinstance(x, tuple)), None)
    if n is None:
        return op(*xs)
    return tuple(op(*(x[i] if isinstance(x, tuple) else x for x in xs)) for i in range(n))


def divide(a, b):
    if isinstance(b, Fraction) and b == 0:
        raise Undefined("a division by zero")
    if not isinstance(b, Fraction) and abs(b) <= TOL:
        raise Undefined("a division by a number within 1e-40 of zero")
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a / b
    return to_mp(a) / to_mp(b)


def root(x):
    if isinstance(x, Fraction):
        if x < 0:
            raise Undefined(f"the square root of {x} < 0")
        p, q = isqrt(x.numerator), isqrt(x.denominator)
        if p * p == x.numerator and q * q == x.denominator:
            return Fraction(p, q)
        return MP.sqrt(to_mp(x))
    if x < -TOL:
        raise Undefined("the square root of a negative number")
    return MP.sqrt(max(x, MP.mpf(0)))


def _heaviside(x):
    return Fraction(1) if sign(x) > 0 else Fraction(0)


BUILTIN = {"sqrt": root, "exp": lambda x: MP.exp(to_mp(x)) if x != 0 else Fraction(1),
           "tanh": lambda x: MP.tanh(to_mp(x)) if x != 0 else Fraction(0),
           "sigmoid": lambda x: 1 / (1 + MP.exp(-to_mp(x))) if x != 0 else Fraction(1, 2),
           "heaviside": _heaviside, "max": lambda a, b: a if sign(sub(a, b)) >= 0 else b,
           "min": lambda a, b: a if sign(sub(a, b)) <= 0 else b}


def table_key(v):
    if isinstance(v, tuple):
        return tuple(table_key(x) for x in v)
    if isinstance(v, int):
        return v
    x = to_mp(v)  # exact and 60-digit values of one number agree; a rounding residue of 0 (1e-61) is 0
    return "0" if abs(x) <= TOL else MP.nstr(x, 30)


def entries(v) -> list:
    if isinstance(v, tuple):
        return [y for x in v for y in entries(x)]
    return [v]


def aligned(a, b):
    if isinstance(a, tuple) and not isinstance(b, tuple):
        b = elementwise(lambda x, y: y, a, b)
    if isinstance(b, tuple) and not isinstance(a, tuple):
        a = elementwise(lambda x, y: y, b, a)
    return a, b


def agree(a, b) -> bool:
    a, b = aligned(a, b)
    return all(sub(x, y) == 0 if isinstance(sub(x, y), Fraction) else abs(sub(x, y)) <= TOL * max(1, abs(to_mp(x)),
                                                                                                  abs(to_mp(y)))
               for x, y in zip(entries(a), entries(b), strict=True))
