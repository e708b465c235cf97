r"""The proof kernel: theorems as chains of equalities, each step discharged by SymPy.

A `Theorem` holds hypotheses (side conditions $v \neq 0$, positivity, or equations used as
rewrite rules) and a statement $\mathrm{lhs} = \mathrm{rhs}$ (or an inequality). Its proof is a
chain of `Step`s $e_0 = e_1 = \dots = e_n$ with $e_0 = \mathrm{lhs}$, $e_n = \mathrm{rhs}$, each
with a justification. The kernel (`check`) is small and trusts only SymPy normalization:

1. the chain must connect (each step starts where the previous ended);
2. every denominator in a step must be covered by a hypothesis (or be provably nonzero);
3. a step justified by a lemma must be an instance of that lemma, and the lemma must be verified;
4. otherwise $\mathrm{lhs} - \mathrm{rhs}$, after the equational hypotheses are applied, must
   normalize to zero in the dimension-generic vector algebra (`symbolic.algebra.is_zero`).

A step is *verified* only when the kernel discharged it; a step SymPy cannot decide is *failed*
with its residual expression, or *refuted* when an exact instance shows it false; a step the
kernel could not examine (its lemma unverified) is *unchecked*. As a second line of evidence
every verified step is also evaluated on explicit instances (random rationals, several sizes;
`symbolic.instances`). The one exception type, `ProofError`, names the failing step.

Known limit: SymPy evaluates ``x / x`` to 1 while an expression is built, so a denominator that
cancels syntactically never reaches rule 2. Generated theorems take their hypotheses from the
denominators of the solved formulas, which are collected before any such cancellation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import sympy as sp

from symbolic.algebra import Condition, is_zero, normalize, side_conditions

VERIFIED, FAILED, REFUTED, UNCHECKED = "verified", "failed", "refuted", "unchecked"


class ProofError(Exception):
    """A proof step the kernel rejects; the message names the theorem and the step."""


@dataclass(frozen=True)
class Hypothesis:
    """A side condition (`nonzero`, `coords`, `positive`), an equation `expr = rhs` used as a rewrite,
    or a `definition` of an atom (`expr := rhs`, expanded before checking)."""

    kind: str
    expr: sp.Expr
    rhs: sp.Expr | None = None

    def text(self) -> str:
        from symbolic.printing import pstr

        if self.kind in ("equation", "definition"):
            return f"{pstr(self.expr)} {'=' if self.kind == 'equation' else ':='} {pstr(self.rhs)}"
        if self.kind == "positive":
            return f"{pstr(self.expr)} > 0"
        return Condition(self.expr, "vector" if self.kind == "nonzero" else self.kind).text()

    def latex(self) -> str:
        from symbolic.printing import latex

        if self.kind in ("equation", "definition"):
            return f"{latex(self.expr)} {'=' if self.kind == 'equation' else ':='} {latex(self.rhs)}"
        if self.kind == "positive":
            return f"{latex(self.expr)} > 0"
        return Condition(self.expr, "vector" if self.kind == "nonzero" else self.kind).latex()


def nonzero(v: sp.Expr) -> Hypothesis:
    return Hypothesis("nonzero", v)


def coords_nonzero(v: sp.Expr) -> Hypothesis:
    return Hypothesis("coords", v)


def equation(lhs: sp.Expr, rhs: sp.Expr) -> Hypothesis:
    return Hypothesis("equation", lhs, rhs)


def definition(atom: sp.Symbol, expr: sp.Expr) -> Hypothesis:
    return Hypothesis("definition", atom, expr)


@dataclass(frozen=True)
class Step:
    """One link `lhs = rhs` (or `lhs < rhs` etc. with `relation`) of a proof, with its justification."""

    lhs: sp.Expr
    rhs: sp.Expr
    justification: str
    lemma: str | None = None  # name of a verified theorem this step instantiates
    substitution: tuple[tuple[sp.Expr, sp.Expr], ...] = ()
    relation: str = "="  # "=", "<", "<=", ">="
    range_check: sp.Expr | None = None  # a claim justified by `symbolic.ranges` instead of algebra
    abstracts: bool = False  # the step cites `lemma` in abstract notation: only its verification is checked


@dataclass(frozen=True)
class Theorem:
    name: str
    title: str
    hypotheses: tuple[Hypothesis, ...]
    lhs: sp.Expr
    rhs: sp.Expr
    steps: tuple[Step, ...]
    relation: str = "="
    reference: str = ""
    generic: bool = True  # stated for symbolic sizes
    uses: tuple[str, ...] = ()  # lemmas the proof instantiates
    chain: bool = True  # False: the steps are facts, and the last one is the statement itself


@dataclass
class StepResult:
    status: str
    message: str = ""
    residual: str = ""
    instances: str = ""  # "3/3 exact instances", "n/a: ..."


@dataclass
class Result:
    theorem: Theorem
    status: str
    steps: list[StepResult] = field(default_factory=list)
    message: str = ""
    seconds: float = 0.0

    @property
    def verified_steps(self) -> int:
        return sum(s.status == VERIFIED for s in self.steps)

    def to_json(self) -> dict:
        return {"name": self.theorem.name, "status": self.status, "steps": len(self.theorem.steps),
                "verified_steps": self.verified_steps, "generic": self.theorem.generic,
                "title": self.theorem.title, "message": self.message, "seconds": round(self.seconds, 3)}

    def raise_if_failed(self) -> None:
        if self.status != VERIFIED:
            raise ProofError(f"{self.theorem.name}: {self.message}")


# --------------------------------------------------------------------------- the kernel


def _rewrite(e: sp.Expr, th: Theorem, definitions: bool = True) -> sp.Expr:
    for h in reversed(th.hypotheses if definitions else ()):  # later definitions may use earlier atoms
        if h.kind == "definition":
            e = e.subs(h.expr, h.rhs)
    for h in th.hypotheses:
        if h.kind == "equation":
            e = _apply_equation(e, h)
            e = _apply_equation(normalize(sp.expand(normalize(e))), h)
    return e


def _apply_equation(e: sp.Expr, h: Hypothesis) -> sp.Expr:
    """Rewrite with an equation; one with Wild symbols is a pattern (a universally quantified lemma)."""
    if h.expr.atoms(sp.Wild):
        return e.replace(h.expr, h.rhs)
    return e.subs(h.expr, h.rhs)


def _covered(cond: Condition, th: Theorem) -> bool:
    """Whether a hypothesis declares `cond`; the generic expert index e is universally quantified."""
    from symbolic.model import expert

    for h in th.hypotheses:
        if h.expr != cond.expr:
            pattern = h.expr.xreplace({expert: sp.Wild("e_any")}) if expert in h.expr.free_symbols else None
            if pattern is None or cond.expr.match(pattern) is None:
                continue
        if h.kind == "positive" or h.kind == "coords" or (h.kind == "nonzero" and cond.kind in ("vector", "scalar")):
            return True
    return False


def _denominators_covered(step: Step, th: Theorem) -> str:
    for side in (step.lhs, step.rhs, *(h.rhs for h in th.hypotheses if h.kind == "definition")):
        for cond in side_conditions(side):
            if not _covered(cond, th):
                return f"divides by {cond.text().replace(' != 0', '')}, which no hypothesis declares nonzero"
    return ""


def _same(a: sp.Expr, b: sp.Expr) -> bool:
    return a == b or is_zero(a - b) is True


def check_step(step: Step, th: Theorem, lemmas: dict[str, Result], instances: bool = True) -> StepResult:
    from symbolic.instances import check_instances
    from symbolic.printing import pstr

    uncovered = _denominators_covered(step, th)
    if uncovered:
        return StepResult(FAILED, uncovered)
    if step.lemma is not None and not step.abstracts:
        return _check_lemma_step(step, lemmas)
    if step.lemma is not None:  # cited in abstract notation: the lemma must be verified, and the
        res = lemmas.get(step.lemma)  # step must follow from its abstract form (a hypothesis) by rewriting
        if res is None or res.status != VERIFIED:
            return StepResult(UNCHECKED, f"lemma {step.lemma} is not verified")
    if step.range_check is not None:
        return _check_range_step(step)
    if step.relation != "=":
        return _check_inequality(step, th)
    # First with defined atoms opaque (an identity for arbitrary values holds for the defined ones,
    # and it is much cheaper), then with every definition expanded.
    for expand in (False, True):
        diff = _rewrite(step.lhs - step.rhs, th, definitions=expand)
        if is_zero(diff) is True:
            inst = check_instances(step, th, definitions=expand) if instances else ""
            if inst.startswith("refuted"):
                return StepResult(REFUTED, "an exact instance contradicts the symbolic verdict", "", inst)
            return StepResult(VERIFIED, instances=inst)
    residual = pstr(normalize(sp.expand(normalize(diff))))
    inst = check_instances(step, th) if instances else ""
    status = REFUTED if inst.startswith("refuted") else FAILED
    return StepResult(status, "lhs - rhs does not normalize to zero", residual, inst)


def _check_lemma_step(step: Step, lemmas: dict[str, Result]) -> StepResult:
    res = lemmas.get(step.lemma)
    if res is None or res.status != VERIFIED:
        return StepResult(UNCHECKED, f"lemma {step.lemma} is not verified")
    sub = dict(step.substitution)
    lem = res.theorem
    lhs, rhs = lem.lhs.xreplace(sub), lem.rhs.xreplace(sub)
    if (_same(lhs, step.lhs) and _same(rhs, step.rhs)) or (_same(lhs, step.rhs) and _same(rhs, step.lhs)):
        return StepResult(VERIFIED, f"instance of {step.lemma}")
    return StepResult(FAILED, f"not an instance of {step.lemma} under the given substitution")


def _check_range_step(step: Step) -> StepResult:
    from symbolic.ranges import elementwise_range

    rng = elementwise_range(step.range_check)
    if rng.onto is False:
        return StepResult(VERIFIED, rng.proof)
    return StepResult(FAILED, f"range analysis does not bound {step.range_check}: {rng.proof}")


def _check_inequality(step: Step, th: Theorem) -> StepResult:
    from symbolic.printing import pstr

    gap = sp.together(_rewrite(step.rhs - step.lhs, th))  # must be > 0 (or >= 0)
    sign = gap.is_positive if step.relation == "<" else gap.is_nonnegative
    if step.relation == ">=":
        sign = (-gap).is_nonnegative
    if sign:
        return StepResult(VERIFIED, "by the sign assumptions of the hypotheses")
    return StepResult(FAILED, "SymPy cannot establish the inequality", pstr(gap))


def check(th: Theorem, lemmas: dict[str, Result] | None = None, instances: bool = True) -> Result:
    """Check every step of `th`; the theorem is verified only if all steps are and the chain connects."""
    t0 = time.perf_counter()
    lemmas = lemmas or {}
    results = [check_step(s, th, lemmas, instances) for s in th.steps]
    message = _chain_gap(th) if th.chain else _fact_gap(th)
    bad = [(i, r) for i, r in enumerate(results) if r.status != VERIFIED]
    if bad and not message:
        i, r = bad[0]
        message = f"step {i + 1} ({th.steps[i].justification}) {r.status}: {r.message}" + (
            f"; residual {r.residual}" if r.residual else "")
    if message and not bad:
        status = FAILED
    elif bad:
        status = REFUTED if any(r.status == REFUTED for _, r in bad) else (
            FAILED if any(r.status == FAILED for _, r in bad) else UNCHECKED)
    else:
        status = VERIFIED
    return Result(th, status, results, message, time.perf_counter() - t0)


def _fact_gap(th: Theorem) -> str:
    if not th.steps:
        return "the proof has no steps"
    last = th.steps[-1]
    if not (_same(last.lhs, th.lhs) and _same(last.rhs, th.rhs) and last.relation == th.relation):
        return "the last step is not the statement"
    return ""


def _composed(relations: list[str]) -> str:
    if "<" in relations:
        return "<" if ">=" not in relations else "?"
    if "<=" in relations:
        return "<=" if ">=" not in relations else "?"
    return ">=" if ">=" in relations else "="


def _chain_gap(th: Theorem) -> str:
    if not th.steps:
        return "the proof has no steps"
    if _composed([s.relation for s in th.steps]) != th.relation:
        return f"the steps compose to '{_composed([s.relation for s in th.steps])}', not the stated '{th.relation}'"
    if not _same(th.steps[0].lhs, th.lhs):
        return "step 1 does not start from the statement's left side"
    for i in range(1, len(th.steps)):
        if not _same(th.steps[i - 1].rhs, th.steps[i].lhs):
            return f"step {i + 1} does not start where step {i} ended"
    if not _same(th.steps[-1].rhs, th.rhs):
        return "the last step does not end at the statement's right side"
    return ""
