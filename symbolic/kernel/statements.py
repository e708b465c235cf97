r"""The statements of the proof kernel: relations, hypotheses, steps, theorems (data, no decisions).

`Hypothesis` kinds: ``nonzero`` ($t \ne 0$: a scalar, or a vector that is not the zero vector),
``coords`` (every coordinate of t nonzero), ``positive`` (a scalar $t > 0$), ``equation``,
``definition``; a condition or an equation may quantify variables (`binders`). `Hypotheses` sorts
a theorem's hypotheses by kind for the core and for the instances. The rules that decide are in
`symbolic.kernel.core`.
"""

from __future__ import annotations

from dataclasses import dataclass

from symbolic.kernel.terms import SCALAR, App, Term, TypeError_, Var, abstract, retype

VERIFIED, FAILED, REFUTED, UNCHECKED, VACUOUS = "verified", "failed", "refuted", "unchecked", "vacuous"
KINDS = ("nonzero", "coords", "positive", "equation", "definition")


class ProofError(Exception):
    """A proof the kernel rejects; the message names the theorem, the step and the rule."""


# --------------------------------------------------------------------------- relations


@dataclass(frozen=True)
class Relation:
    """A relation: direction (+1 for <, <=; -1 for >, >=; 0 for =) and strictness."""

    symbol: str
    direction: int
    strict: bool
    latex: str

    def implies(self, other: Relation) -> bool:
        """a R b entails a S b: = entails <= and >=; < entails <=."""
        if self == other:
            return True
        if self.direction == 0:
            return not other.strict and other.direction != 0
        return self.direction == other.direction and self.strict and not other.strict

    @property
    def converse(self) -> Relation:
        return RELATIONS[{"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(self.symbol, self.symbol)]


RELATIONS = {r.symbol: r for r in (Relation("=", 0, False, "="), Relation("<", 1, True, "<"),
                                   Relation("<=", 1, False, r"\le"), Relation(">", -1, True, ">"),
                                   Relation(">=", -1, False, r"\ge"))}


def compose(symbols: list[str]) -> Relation | None:
    """= if every link is =; else the common direction (strict if any link is); None if they mix."""
    rels = [RELATIONS[s] for s in symbols]
    dirs = {r.direction for r in rels} - {0}
    if len(dirs) > 1:
        return None
    if not dirs:
        return RELATIONS["="]
    return RELATIONS[("<" if dirs.pop() == 1 else ">") + ("" if any(r.strict for r in rels) else "=")]


# --------------------------------------------------------------------------- statements


@dataclass(frozen=True)
class Hypothesis:
    """A condition (`nonzero`, `coords`, `positive` of `expr`), an equation `expr = rhs`, or a
    definition `expr := rhs` (`expr` a variable; a family variable with `binders` = (index,)).
    `binders`: variables the hypothesis quantifies universally."""

    kind: str
    expr: Term
    rhs: Term | None = None
    binders: tuple = ()

    def text(self) -> str:
        from symbolic.kernel.show import hypothesis_text

        return hypothesis_text(self)

    def latex(self) -> str:
        from symbolic.kernel.show import hypothesis_latex

        return hypothesis_latex(self)


def nonzero(t: Term, over: tuple = ()) -> Hypothesis:
    return Hypothesis("nonzero", t, None, tuple(over))


def coords_nonzero(t: Term, over: tuple = ()) -> Hypothesis:
    return Hypothesis("coords", t, None, tuple(over))


def positive(t: Term) -> Hypothesis:
    return Hypothesis("positive", t)


def equation(lhs: Term, rhs: Term, forall: tuple = ()) -> Hypothesis:
    return Hypothesis("equation", lhs, rhs, tuple(forall))


def definition(v: Var, rhs: Term, index: Var | None = None) -> Hypothesis:
    """v := rhs; with `index`, the family v[index] := rhs(index)."""
    return Hypothesis("definition", v, rhs, (index,) if index is not None else ())


#: Axioms a step may instantiate: name -> (variable, condition, lhs, rhs) over that variable.
_X = Var("x", SCALAR)
AXIOMS = {"sqrt_of_square": (_X, "nonneg", App("sqrt", (_X * _X,)), _X)}


@dataclass(frozen=True)
class Step:
    """One link `lhs R rhs` with its justification: algebra (default), a `lemma` instantiated by
    `substitution` ((variable, term), ...), and/or `rewrite` = ((hypothesis number or axiom name,
    ((variable, term), ...)), ...): equations instantiated as given and used in this step."""

    lhs: Term
    rhs: Term
    justification: str
    relation: str = "="
    lemma: str | None = None
    substitution: tuple = ()
    rewrite: tuple = ()


@dataclass(frozen=True)
class Theorem:
    name: str
    title: str
    hypotheses: tuple
    lhs: Term
    rhs: Term
    steps: tuple
    relation: str = "="
    reference: str = ""
    generic: bool = True
    uses: tuple = ()
    chain: bool = True  # False: the steps are facts, the last of which is the statement
    models: tuple = ()  # (function name, callable) for instances: a model of opaque maps

    @property
    def definitions(self) -> tuple:
        return tuple(h for h in self.hypotheses if h.kind == "definition")

    @property
    def assumptions(self) -> tuple:
        return tuple(h for h in self.hypotheses if h.kind != "definition")


@dataclass(frozen=True)
class StepResult:
    status: str
    message: str = ""
    residual: str = ""
    instances: str = ""


def theorem_terms(th: Theorem):
    yield th.lhs
    yield th.rhs
    for h in th.hypotheses:
        yield h.expr
        if h.rhs is not None:
            yield h.rhs
        yield from h.binders
    for st in th.steps:
        yield st.lhs
        yield st.rhs
        for _, e in st.substitution:
            yield e
        for _, inst in st.rewrite:
            for _, e in inst:
                yield e


# --------------------------------------------------------------------------- the boundary


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


class Hypotheses:
    """A theorem's hypotheses by kind: definitions (variable -> term), families (variable -> body over
    BVar(0)), unquantified equations, quantified equations, conditions, quantified conditions."""

    def __init__(self, th: Theorem):
        self.defs: dict = {}
        self.families: dict = {}
        self.equations: list = []  # (lhs, rhs)
        self.foralls: list = []  # (binders, lhs, rhs)
        self.conds: list = []  # (kind, term)
        self.fconds: list = []  # (kind, term, binders)
        for h in th.hypotheses:
            if h.kind == "definition":
                if h.binders:
                    self.families[h.expr] = abstract(h.rhs, h.binders[0])
                else:
                    self.defs[h.expr] = h.rhs
            elif h.kind == "equation":
                (self.foralls.append((h.binders, h.expr, h.rhs)) if h.binders else
                 self.equations.append((h.expr, h.rhs)))
            else:
                (self.fconds.append((h.kind, h.expr, h.binders)) if h.binders else
                 self.conds.append((h.kind, h.expr)))
