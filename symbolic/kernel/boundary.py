r"""The kernel's boundary: what it reads of a theorem, copied into exact built-in values before anything else.

A user hands the kernel Python objects, and Python lets any class redefine iteration, indexing, length,
equality and hashing. The kernel therefore never reads a user's object twice nor calls a method a user
could override: `canonical` copies a theorem, once, into the kernel's own exact objects (`Theorem`,
`Hypothesis`, `Step`; built-in `tuple`, `str`, `int`, `bool`; `Fraction` of built-in ints) and every term
is rebuilt through the typed constructors of `symbolic.kernel.terms` (`retype`). A subclass of any of
them (a tuple whose indexing and iteration disagree, a `str` equal to everything, a `Var` whose `!=`
lies), a node altered behind its constructor's back or a forged object is refused here, naming what is
wrong. Everything after this (`symbolic.kernel.core`) works on the copy.
"""

from __future__ import annotations

from fractions import Fraction

from symbolic.kernel.statements import Hypothesis, ProofError, Step, Theorem
from symbolic.kernel.terms import (
    NAME,
    OPS,
    SCALAR,
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
    Type,
    TypeError_,
    Var,
    Vector,
    check_type,
)

# --------------------------------------------------------------------------- terms and types


def exact_name(n, what: str = "a name") -> str:
    """A built-in `str` identifier (a `str` subclass could redefine equality or hashing: refused)."""
    if type(n) is not str or not NAME.match(n):
        raise TypeError_(f"{what} is an identifier of type str (letters, digits, _ and '), not {n!r}")
    return n


def canon_type(t) -> Type:
    """An exact copy of a type: the kernel's own classes (no subclass) over built-in `str` names."""
    cls = type(t)
    if cls is Scalar:
        return SCALAR
    if cls is Vector:
        return Vector(exact_name(t.dim, "a dimension"))
    if cls is Matrix:
        return Matrix(exact_name(t.rows, "a dimension"), exact_name(t.cols, "a dimension"))
    if cls is Index:
        return Index(None if t.bound is None else exact_name(t.bound, "a dimension"))
    if cls is Family:
        return check_type(Family(exact_name(t.bound, "a dimension"), canon_type(t.elem)))
    raise TypeError_(f"not a type of the kernel: {t!r}")


def canon_fn(f) -> Fn:
    """An exact copy of an opaque function's declaration (built-in name, arity and signature tuple)."""
    if type(f) is not Fn or type(f.arity) is not int:
        raise TypeError_(f"not an opaque function of the kernel: {f!r}")
    if f.sig is None:
        return Fn(exact_name(f.name, "a function name"), f.arity, None, None if f.result is None else
                  canon_type(f.result))
    if type(f.sig) is not tuple:
        raise TypeError_(f"map {f.name}: the signature is a tuple of types")
    return Fn(exact_name(f.name, "a function name"), f.arity, tuple(canon_type(x) for x in tuple.__iter__(f.sig)),
              canon_type(f.result))


def retype(t: Term, memo: dict | None = None) -> Term:
    """Rebuild `t` through the constructors, from exact built-in values only: a node altered behind their
    back, a subclass of a node, a type or a container (whose methods could lie) raises here. The copy
    shares nothing with `t` that a user could redefine."""
    memo = {} if memo is None else memo
    key = id(t)
    hit = memo.get(key)
    if hit is not None and hit[0] is t:
        return hit[1]
    out = _retype(t, memo)
    memo[key] = (t, out)
    return out


def _retype(t, memo) -> Term:
    cls = type(t)
    if cls is Var:
        return Var(exact_name(t.name, "a variable name"), canon_type(t.ty))
    if cls is Lit:
        v = t.value
        if type(v) is not Fraction or type(v.numerator) is not int or type(v.denominator) is not int:
            raise TypeError_(f"a literal holds a Fraction of built-in ints, not {v!r}")
        return Lit(Fraction(v.numerator, v.denominator))
    if cls is ILit:
        if type(t.n) is not int:
            raise TypeError_(f"an index literal holds an int, not {t.n!r}")
        return ILit(t.n)
    if cls is BVar:
        if type(t.level) is not int:
            raise TypeError_(f"a bound variable's level is an int, not {t.level!r}")
        return BVar(t.level, canon_type(t.ty))
    if cls is App:
        if type(t.args) is not tuple:
            raise TypeError_("the arguments of an operation are a tuple")
        if type(t.op) is str:
            if t.op not in OPS:
                raise TypeError_(f"unknown operation {t.op!r}")
            op = t.op
        else:
            op = canon_fn(t.op)
        return App(op, tuple(retype(a, memo) for a in tuple.__iter__(t.args)))
    if cls is Sum:
        return Sum(retype(t.hi, memo), retype(t.body, memo))
    raise TypeError_(f"not a kernel term: {t!r}")


# --------------------------------------------------------------------------- theorems


def _seq(x, what: str) -> tuple:
    """A built-in tuple or list, copied into a built-in tuple by the built-in iterator (a subclass could make
    iteration, indexing and len disagree: refused)."""
    if type(x) is tuple:
        return tuple(tuple.__iter__(x))
    if type(x) is list:
        return tuple(list.__iter__(x))
    raise ProofError(f"{what} must be a tuple or a list (not a subclass), not a {type(x).__name__}")


def _str(x, what: str, optional: bool = False):
    if optional and x is None:
        return None
    if type(x) is not str:
        raise ProofError(f"{what} must be a str (not a subclass), not {type(x).__name__}")
    return x


def _bool(x, what: str) -> bool:
    if type(x) is not bool:
        raise ProofError(f"{what} must be True or False, not {x!r}")
    return x


def _pairs(x, what: str, memo: dict) -> tuple:
    out = []
    for p in _seq(x, what):
        p = _seq(p, f"each pair of {what}")
        if len(p) != 2:
            raise ProofError(f"{what}: each entry is a (variable, term) pair")
        out.append((retype(p[0], memo), retype(p[1], memo)))
    return tuple(out)


def _ref(r):
    if type(r) is int or type(r) is str:
        return r
    raise ProofError(f"a rewrite names a hypothesis by its number (an int) or an axiom (a str), not {r!r}")


def canonical(th) -> Theorem:
    """The kernel's own copy of a theorem, made at the boundary before anything is read: exact `Theorem`,
    `Hypothesis` and `Step` objects, built-in tuples, `str`, `int` and `bool`, every term rebuilt through
    the typed constructors (`retype`). After this no method a user could override is ever called; a
    subclass, a lying container or an altered node is refused here with its reason."""
    if type(th) is not Theorem:
        raise ProofError(f"not a Theorem (a subclass is refused): {type(th).__name__}")
    memo: dict = {}
    R = lambda t: retype(t, memo)  # noqa: E731
    hyps = []
    for n, h in enumerate(_seq(th.hypotheses, "the hypotheses"), 1):
        if type(h) is not Hypothesis:
            raise ProofError(f"hypothesis {n}: not a Hypothesis (a subclass is refused): {type(h).__name__}")
        hyps.append(Hypothesis(_str(h.kind, f"hypothesis {n}: the kind"), R(h.expr),
                               None if h.rhs is None else R(h.rhs),
                               tuple(R(b) for b in _seq(h.binders, f"hypothesis {n}: the binders"))))
    steps = []
    for n, st in enumerate(_seq(th.steps, "the steps"), 1):
        if type(st) is not Step:
            raise ProofError(f"step {n}: not a Step (a subclass is refused): {type(st).__name__}")
        rw = []
        for entry in _seq(st.rewrite, f"step {n}: the rewrites"):
            entry = _seq(entry, f"step {n}: a rewrite")
            if len(entry) != 2:
                raise ProofError(f"step {n}: a rewrite is (hypothesis number or axiom name, instantiation)")
            rw.append((_ref(entry[0]), _pairs(entry[1], f"step {n}: an instantiation", memo)))
        steps.append(Step(R(st.lhs), R(st.rhs), _str(st.justification, f"step {n}: the justification"),
                          _str(st.relation, f"step {n}: the relation"),
                          _str(st.lemma, f"step {n}: the lemma", optional=True),
                          _pairs(st.substitution, f"step {n}: the substitution", memo), tuple(rw)))
    models = tuple((_str(m[0], "a model's name"), m[1]) for m in (_seq(x, "a model") for x in
                                                                   _seq(th.models, "the models")) if len(m) == 2)
    if len(models) != len(_seq(th.models, "the models")):
        raise ProofError("each model is a (function name, callable) pair")
    return Theorem(_str(th.name, "the name"), _str(th.title, "the title"), tuple(hyps), R(th.lhs), R(th.rhs),
                   tuple(steps), _str(th.relation, "the relation"), _str(th.reference, "the reference"),
                   _bool(th.generic, "generic"), tuple(_str(u, "a lemma name") for u in _seq(th.uses, "uses")),
                   _bool(th.chain, "chain"), models)


def canonical_or_error(th) -> Theorem:
    try:
        return canonical(th)
    except TypeError_ as exc:
        raise ProofError(f"ill-typed term: {exc}") from None
