r"""The statements of the proof kernel: relations, hypotheses, steps, theorems (data, no decisions).

`Hypothesis` kinds: ``nonzero`` ($t \ne 0$: a scalar, or a vector that is not the zero vector),
``coords`` (every coordinate of t nonzero), ``positive`` (a scalar $t > 0$), ``equation``,
``definition``; a condition or an equation may quantify variables (`binders`). `Hypotheses` sorts
a theorem's hypotheses by kind for the core and for the instances. The rules that decide are in
`symbolic.kernel.core`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from symbolic.kernel.binders import abstract
from symbolic.kernel.terms import SCALAR, App, Term, Var

VERIFIED, FAILED, REFUTED, UNCHECKED, VACUOUS = "verified", "failed", "refuted", "unchecked", "vacuous"
KINDS = ("nonzero", "coords", "positive", "equation", "definition")


class ProofError(Exception):
    """A proof the kernel rejects; the message names the theorem, the step and the rule."""


# --------------------------------------------------------------------------- relations


class Relation(NamedTuple):
    """A relation: direction (+1 for <, <=; -1 for >, >=; 0 for =) and strictness. A tuple: no one can alter the
    kernel's relations (a frozen dataclass yields to object.__setattr__)."""

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


RELATIONS = MappingProxyType({r.symbol: r for r in (Relation("=", 0, False, "="), Relation("<", 1, True, "<"),
                                   Relation("<=", 1, False, r"\le"), Relation(">", -1, True, ">"),
                                   Relation(">=", -1, False, r"\ge"))})


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


#: Axioms a step may instantiate: name -> (variable, condition, lhs, rhs) over that variable. The kernel's tables are
#: read-only views (`MappingProxyType`): no user can add an axiom or redefine a relation, a fact or an operation.
_X = Var("x", SCALAR)
AXIOMS = MappingProxyType({"sqrt_of_square": (_X, "nonneg", App("sqrt", (_X * _X,)), _X)})


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
