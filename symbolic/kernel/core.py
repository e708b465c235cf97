r"""The trusted core: theorems, their rules, and the only function that makes results (`check`).

A `Theorem` states hypotheses and $\mathrm{lhs} \mathrel{R} \mathrm{rhs}$ over the kernel's typed terms
(`symbolic.kernel.terms`), with steps. Its free variables (and dimensions) are universally
quantified. The rules, each with its own message:

1. **Closed vocabularies.** Relations `RELATIONS` ($=, <, \le, >, \ge$); hypothesis kinds `KINDS`:
   ``nonzero`` ($t \ne 0$: a scalar, or a vector that is not the zero vector), ``coords`` (every
   coordinate of t nonzero), ``positive`` (a scalar $t > 0$), ``equation``, ``definition``.
   A condition or an equation may be universally quantified (`binders`): a condition over an
   index (every expert), an equation over any variables (a controllability hypothesis).
2. **Well-formed terms.** Every term is rebuilt through the typed constructors (`retype`), is
   closed, and uses each variable name with one type.
3. **Conservative definitions.** ``v := e`` (or a family ``v[i] := e(i)``) defines a fresh name:
   not in any earlier hypothesis, not in e; a defined name has no facts but its definition.
4. **Side conditions.** Every division, elementwise division and square root in the statement,
   every step, every definition and every hypothesis has its condition discharged by
   `symbolic.kernel.facts` from the hypotheses and the facts table.
5. **Steps.** *algebra*: both sides have the same normal form (`symbolic.kernel.normal`), with
   definitions opaque and then expanded; an inequality by the sign of rhs - lhs. *rewrite*: a
   hypothesis (or the axiom `sqrt_of_square`: $x \ge 0 \Rightarrow \sqrt{x x} = x$) instantiated
   exactly as the step says, its side conditions discharged, used as an atom rewrite in this step.
   *lemma*: a verified result of this kernel instantiated by a substitution of its variables
   (dimensions renamed consistently, definitions unfolded, quantified hypotheses renamed apart);
   each of its hypotheses, instantiated, must be discharged here: a quantified one only by the same
   quantified hypothesis (never by an instance), or by proving it for fresh variables.
6. **Composition.** A chain composes its relations and connects the statement's sides; a list of
   facts ends with the statement.
7. **Instances.** `symbolic.kernel.instances` evaluates the theorem on random exact models of every
   variable and opaque map; a contradiction is a refutation, hypotheses no draw satisfies make the
   theorem vacuous, and an instance that cannot be evaluated leaves it unverified.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from symbolic.kernel.binders import subst
from symbolic.kernel.boundary import canonical, canonical_or_error, retype
from symbolic.kernel.context import Context
from symbolic.kernel.facts import Obligation, obligations
from symbolic.kernel.lemmas import discharge_hypothesis, instantiate_lemma
from symbolic.kernel.normal import NormalFormError
from symbolic.kernel.show import text
from symbolic.kernel.statements import (
    AXIOMS,
    FAILED,
    KINDS,
    RELATIONS,
    UNCHECKED,
    VERIFIED,
    Hypothesis,
    ProofError,
    Step,
    StepResult,
    Theorem,
    compose,
    theorem_terms,
)
from symbolic.kernel.terms import (
    SCALAR,
    App,
    Family,
    Fn,
    Index,
    Matrix,
    Term,
    TypeError_,
    Var,
    Vector,
    free_vars,
    fresh_var,
    subterms,
)

_TOKEN = object()
_ISSUED: dict[int, tuple] = {}
_MINTING = [False]  # True only while `_issue` builds a result (dataclasses.replace cannot make one)


@dataclass(frozen=True)
class Result:
    """The kernel's verdict on a theorem; only `check` can make one."""

    theorem: Theorem
    status: str
    steps: tuple = ()
    message: str = ""
    seconds: float = 0.0
    token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.token is not _TOKEN or not _MINTING[0]:
            raise ProofError(f"{getattr(self.theorem, 'name', '?')}: a Result is made only by the kernel (check)")

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


def _issue(th, status, steps, message, t0, kept: Theorem | None = None) -> Result:
    """The Result (holding the theorem as given) and, in the kernel's private table, the kernel's own copy
    `kept` of what it verified: a citation reads that copy, never the Result's fields."""
    _MINTING[0] = True
    try:
        res = Result(th, status, tuple(steps), message, time.perf_counter() - t0, _TOKEN)
    finally:
        _MINTING[0] = False
    _ISSUED[id(res)] = (res, _fingerprint(res), kept, status)
    return res


def _fingerprint(res: Result):
    """The result's verdict and its theorem's statement, rebuilt through the constructors (so an object
    altered after the check no longer matches)."""
    th = res.theorem
    try:
        if type(th) is not Theorem or type(th.hypotheses) not in (tuple, list):
            raise TypeError("a theorem the kernel cannot read back")
        hyps = tuple(type(th.hypotheses).__iter__(th.hypotheses))
        parts = (x for h in hyps for x in (h.expr, h.rhs, *h.binders) if x is not None)
        memo: dict = {}
        terms = tuple(retype(t, memo) for t in (th.lhs, th.rhs, *parts))
        kinds = tuple((str(h.kind), len(h.binders)) for h in hyps)
    except Exception:  # noqa: BLE001 -- a theorem that cannot be read back: only its identity and verdict
        return ("unreadable", id(th), str(res.status), str(res.message))
    return (th.name, th.relation, res.status, res.message, terms, kinds)


def genuine(res: object) -> bool:
    """Whether `res` is a result this kernel issued, unchanged since."""
    entry = _ISSUED.get(id(res))
    return entry is not None and entry[0] is res and entry[1] == _fingerprint(res)


def issued(res: object):
    """(the kernel's own copy of the theorem, the verdict) of a genuine result, else None: a citation uses
    these, which no one outside the kernel holds, so altering the Result or its theorem later changes nothing."""
    if not genuine(res):
        return None
    entry = _ISSUED[id(res)]
    return entry[2], entry[3]


# --------------------------------------------------------------------------- well-formedness


def validate(th: Theorem) -> Context:
    """Rules 1-4 on the kernel's own copy of `th` (`canonical`); raises ProofError naming what is ill-formed.
    The context it returns holds that copy (`ctx.th`): nothing after this reads the user's objects."""
    th = canonical_or_error(th)
    if th.relation not in RELATIONS:
        raise ProofError(f"unknown relation {th.relation!r} in the statement; allowed: {', '.join(RELATIONS)}")
    if not th.steps:
        raise ProofError("the proof has no steps")
    for i, st in enumerate(th.steps, 1):
        if not isinstance(st, Step) or st.relation not in RELATIONS:
            raise ProofError(f"step {i}: unknown relation {getattr(st, 'relation', st)!r}; allowed: "
                             f"{', '.join(RELATIONS)}")
    types: dict = {}
    fns: dict = {}
    for t in theorem_terms(th):
        _well_formed(t, types)
        for sub in subterms(t):
            if isinstance(sub, App) and isinstance(sub.op, Fn) and fns.setdefault(sub.op.name, sub.op) != sub.op:
                raise ProofError(f"the function name {sub.op.name} is declared with two signatures")
    _hypotheses(th)
    _relation_types(th.lhs, th.rhs, th.relation, "the statement")
    for i, st in enumerate(th.steps, 1):
        _relation_types(st.lhs, st.rhs, st.relation, f"step {i}")
    ctx = Context(th)
    _side_conditions(th, ctx)
    return ctx


def _well_formed(t, types: dict) -> None:
    """t is already the kernel's rebuilt copy (`canonical`: every node through its typed constructor)."""
    if not isinstance(t, Term):
        raise ProofError(f"not a kernel term: {t!r}")
    if t.loose:
        raise ProofError(f"{text(t)} has a bound variable outside its sum")
    for v in free_vars(t):
        if types.setdefault(v.name, v.ty) != v.ty:
            raise ProofError(f"the name {v.name} is used as a {types[v.name]} and as a {v.ty}")


def _relation_types(a: Term, b: Term, rel: str, where: str) -> None:
    if RELATIONS[rel].direction != 0 and not (a.ty == SCALAR and b.ty == SCALAR):
        raise ProofError(f"{where}: inequalities relate scalars, not a {a.ty} and a {b.ty}")
    if not _comparable(a.ty, b.ty):
        raise ProofError(f"{where}: a {a.ty} related to a {b.ty}")


def _comparable(s, t) -> bool:
    if s == t:
        return True
    return {type(s), type(t)} == {type(SCALAR), Vector}  # a scalar is a constant vector


def _hypotheses(th: Theorem) -> None:
    seen: set = set()
    for i, h in enumerate(th.hypotheses, 1):
        where = f"hypothesis {i} ({getattr(h, 'kind', '?')})"
        if not isinstance(h, Hypothesis) or h.kind not in KINDS:
            raise ProofError(f"{where}: unknown kind; allowed: {', '.join(KINDS)}")
        if (h.rhs is None) != (h.kind not in ("equation", "definition")):
            raise ProofError(f"{where}: an equation or definition has a right side, a condition has none")
        if len(set(h.binders)) != len(h.binders) or not all(isinstance(b, Var) for b in h.binders):
            raise ProofError(f"{where}: the quantified variables must be distinct variables")
        if len(h.binders) > 1 and h.kind != "equation":
            raise ProofError(f"{where}: a definition or condition is quantified over one index at most")
        if h.kind == "definition":
            _conservative(h, seen, where)
        elif h.kind == "equation":
            if not _comparable(h.expr.ty, h.rhs.ty) or isinstance(h.expr.ty, (Index, Family)):
                raise ProofError(f"{where}: an equation between a {h.expr.ty} and a {h.rhs.ty}")
        else:
            if h.binders and not all(isinstance(b.ty, Index) for b in h.binders):
                raise ProofError(f"{where}: a condition is quantified over indices only")
            if not isinstance(h.expr.ty, (type(SCALAR), Vector)):
                raise ProofError(f"{where}: a condition on a {h.expr.ty}")
            if h.kind == "positive" and h.expr.ty != SCALAR:
                raise ProofError(f"{where}: a positive condition on a vector; use coords (every coordinate != 0)")
        seen |= {v.name for t in (h.expr, h.rhs) if t is not None for v in free_vars(t)} | {b.name for b in h.binders}


def _conservative(h: Hypothesis, seen: set, where: str) -> None:
    v = h.expr
    if not isinstance(v, Var):
        raise ProofError(f"{where}: a definition must define a fresh symbol, not {text(v)}")
    if v.name in seen:
        raise ProofError(f"{where}: {v.name} is not fresh (it occurs earlier)")
    body_vars = free_vars(h.rhs)
    if v in body_vars or v.name in {b.name for b in h.binders}:
        raise ProofError(f"{where}: {v.name} occurs in its own definition")
    if h.binders:
        (e,) = h.binders
        if not isinstance(v.ty, Family) or e.ty != Index(v.ty.bound) or h.rhs.ty != v.ty.elem:
            raise ProofError(f"{where}: a family {v.name}[{e.name}] := ... needs a family type, an index over its "
                             f"range and a body of its element type")
    elif h.rhs.ty != v.ty or isinstance(v.ty, Family):
        raise ProofError(f"{where}: {v.name} is a {v.ty} but is defined as a {h.rhs.ty} (a family is defined "
                         "member by member: v[e] := ...)")


def _side_conditions(th: Theorem, ctx: Context) -> None:
    parts = [("the statement", th.lhs), ("the statement", th.rhs)]
    parts += [(f"step {i}", e) for i, st in enumerate(th.steps, 1) for e in (st.lhs, st.rhs)]
    for i, h in enumerate(th.hypotheses, 1):
        for e in (h.expr, h.rhs):
            if e is not None and not (h.kind == "definition" and e is h.expr):
                parts.append((f"hypothesis {i}", _opened(h, e)))
    for where, e in parts:
        for ob in obligations(e, ctx.names):
            if not ctx.discharge(ob.kind, ob.term):
                raise ProofError(f"{where}: {_need(ob)}, which neither the hypotheses nor the facts table give")


def _opened(h: Hypothesis, e: Term) -> Term:
    """A quantified hypothesis' term with its binders replaced by fresh (kernel) variables."""
    if not h.binders:
        return e
    return subst(e, {b: fresh_var(f"{b.name}%0", b.ty) for b in h.binders})


def _need(ob: Obligation) -> str:
    what = "divides by" if ob.kind == "coords" else "takes the square root of"
    tail = ", which must be nonzero" + (" in every coordinate" if isinstance(ob.term.ty, Vector) else "") if (
        ob.kind == "coords") else ", which must be >= 0"
    return f"{what} {text(ob.term)}{tail}"


# --------------------------------------------------------------------------- steps


def check_step(step: Step, ctx: Context, lemmas: dict) -> StepResult:
    try:
        extra = tuple(_rewrites(step, ctx))
    except ProofError as exc:
        return StepResult(FAILED, f"rule rewrite: {exc}")
    if step.lemma is not None:
        return _lemma_step(step, ctx, lemmas, extra)
    if step.substitution:
        return StepResult(FAILED, "rule lemma: a substitution without a lemma to instantiate")
    return _algebra(step, ctx, extra)


def _algebra(step: Step, ctx: Context, extra: tuple) -> StepResult:
    rel = RELATIONS[step.relation]
    if rel.direction == 0:
        if ctx.equal(step.lhs, step.rhs, extra):
            return StepResult(VERIFIED)
        return StepResult(FAILED, "rule algebra: lhs - rhs does not normalize to zero", _residual(ctx, step, extra))
    gap = step.rhs - step.lhs if rel.direction == 1 else step.lhs - step.rhs  # must be > 0 (strict) or >= 0
    if ctx.discharge("positive" if rel.strict else "nonneg", gap, extra):
        return StepResult(VERIFIED, "by the signs of the hypotheses and the facts table")
    return StepResult(FAILED, f"rule algebra: the facts do not give lhs {rel.symbol} rhs", text(gap))


def _residual(ctx: Context, step: Step, extra: tuple) -> str:
    return text(step.lhs - step.rhs) if step.lhs.ty == step.rhs.ty and not isinstance(step.lhs.ty, Matrix) else ""


def _rewrites(step: Step, ctx: Context):
    """The equations a step instantiates: every quantified variable exactly as given, conditions discharged."""
    hyps = ctx.th.hypotheses
    for ref, inst in step.rewrite:
        sub = dict(inst)
        if len(sub) != len(inst):
            raise ProofError("a variable is instantiated twice")
        if isinstance(ref, str):
            if ref not in AXIOMS:
                raise ProofError(f"unknown axiom {ref!r}; the axioms: {', '.join(AXIOMS)}")
            x, cond, lhs, rhs = AXIOMS[ref]
            if len(sub) != 1:
                raise ProofError(f"{ref} instantiates its one variable x")
            value = next(iter(sub.values()))
            if not isinstance(value, Term) or value.loose or not isinstance(value.ty, (type(SCALAR), Vector)):
                raise ProofError(f"{ref}: x must be a scalar or a vector term")
            ob = ctx.undefined(value)
            if ob is not None:
                raise ProofError(f"{ref} at x := {text(value)}: x {_need(ob)}; the hypotheses do not give it")
            if not ctx.discharge(cond, value):
                raise ProofError(f"{ref} needs {text(value)} >= 0, which the hypotheses do not give")
            yield (App("sqrt", (value * value,)), value)
            continue
        if not isinstance(ref, int) or not 1 <= ref <= len(hyps) or hyps[ref - 1].kind != "equation":
            raise ProofError(f"{ref!r} is not the number of an equation hypothesis")
        h = hyps[ref - 1]
        if set(sub) != set(h.binders):
            raise ProofError(f"hypothesis {ref} quantifies over {', '.join(b.name for b in h.binders) or 'nothing'}; "
                             "the step must instantiate exactly those (an instance is never found by matching)")
        try:
            lhs, rhs = subst(h.expr, sub), subst(h.rhs, sub)
        except TypeError_ as exc:
            raise ProofError(f"hypothesis {ref}: {exc}") from None
        for t in (*sub.values(), lhs, rhs):  # a value the binder does not occur in is still checked
            ob = ctx.undefined(t)
            if ob is not None:
                raise ProofError(f"hypothesis {ref} instantiated {_need(ob)}; the hypotheses do not give it")
        yield (lhs, rhs)


# --------------------------------------------------------------------------- lemmas


def _lemma_step(step: Step, ctx: Context, lemmas: dict, extra: tuple) -> StepResult:
    res = lemmas.get(step.lemma) if type(lemmas) is dict else None
    if res is None:
        return StepResult(UNCHECKED, f"rule lemma: {step.lemma} was not checked before this theorem")
    got = issued(res)
    if got is None:
        return StepResult(FAILED, f"rule lemma: the result given for {step.lemma} was not made by the kernel, or was "
                          "altered")
    lem, status = got  # the kernel's own copy: nothing the caller holds is read from here on
    if status != VERIFIED or lem is None:
        return StepResult(UNCHECKED, f"rule lemma: {step.lemma} is {status}, not verified")
    if lem.name != step.lemma:
        return StepResult(FAILED, f"rule lemma: the result given for {step.lemma} is that of {lem.name}")
    try:
        lhs, rhs, rel, hyps, bodies = instantiate_lemma(lem, step.substitution, ctx)
    except (ProofError, TypeError_) as exc:
        return StepResult(FAILED, f"rule lemma: {step.lemma}: {exc}")
    # Definedness first, in this context and without the lemma's hypotheses: every term the instance brings in
    # (the substituted values, the instantiated definitions, statement and hypotheses, quantified ones opened
    # with fresh variables) has its side conditions discharged here, so the normal forms used below are valid.
    for what, t in ([("the substitution", v) for _, v in step.substitution] + [("a definition", b) for b in bodies]
                    + [("the statement", lhs), ("the statement", rhs)]
                    + [("a hypothesis", x) for h in hyps for x in h[2:] if x is not None]):
        ob = ctx.undefined(t, extra)
        if ob is not None:
            return StepResult(FAILED, f"rule lemma: the instance of {step.lemma} ({what}) {_need(ob)}, which the "
                              "hypotheses here do not give")
    for h in hyps:
        why = discharge_hypothesis(h, ctx, extra)
        if why:
            return StepResult(FAILED, f"rule lemma: {step.lemma} needs {why} here, which the hypotheses do not give")
    want = RELATIONS[step.relation]
    if ctx.equal(step.lhs, lhs, extra) and ctx.equal(step.rhs, rhs, extra) and rel.implies(want):
        return StepResult(VERIFIED, f"instance of {step.lemma}")
    if ctx.equal(step.lhs, rhs, extra) and ctx.equal(step.rhs, lhs, extra) and rel.converse.implies(want):
        return StepResult(VERIFIED, f"instance of {step.lemma}")
    return StepResult(FAILED, f"rule lemma: not an instance of {step.lemma} ({rel.symbol}) under the given "
                      "substitution")


# --------------------------------------------------------------------------- the theorem


def check(th: Theorem, lemmas: dict | None = None, instances: bool = True) -> Result:
    """Check every rule; verified only if every step is, the steps compose to the statement, and
    (with `instances`) the random exact instances agree."""
    t0 = time.perf_counter()
    name = th.name if type(th) is Theorem and type(th.name) is str else "?"
    try:
        ctx = validate(th)
    except (ProofError, TypeError_, AttributeError) as exc:
        n = len(th.steps) if type(th) is Theorem and type(th.steps) in (tuple, list) else 0
        skipped = [StepResult(UNCHECKED, "not checked: the theorem is ill-formed")] * n
        return _issue(th, FAILED, skipped, f"{name}: ill-formed: {exc}", t0)
    given, th = th, ctx.th
    table = {k: v for k, v in dict(lemmas or {}).items() if type(k) is str}  # a plain copy of the citable results
    results = []
    for st in th.steps:
        try:
            results.append(check_step(st, ctx, table))
        except (NormalFormError, TypeError_, ArithmeticError, RecursionError, ValueError) as exc:
            results.append(StepResult(FAILED, f"rule algebra: not decided ({type(exc).__name__}: {exc})"))
    bad = [(i, r) for i, r in enumerate(results) if r.status != VERIFIED]
    if bad:
        i, r = bad[0]
        statuses = {r.status for _, r in bad}
        status = FAILED if FAILED in statuses else UNCHECKED
        message = f"step {i + 1} ({th.steps[i].justification}) {r.status}: {r.message}" + (
            f"; residual {r.residual}" if r.residual else "")
    else:
        gap = _chain_gap(th, ctx) if th.chain else _fact_gap(th, ctx)
        status, message = (FAILED, f"rule composition: {gap}") if gap else (VERIFIED, "")
    if instances:
        from symbolic.kernel.instances import evaluate

        # The models are user code: they evaluate a copy of their own, never the copy the kernel keeps for citations.
        results, verdict = evaluate(canonical(th), results)
        if verdict:  # a refutation, a vacuous theorem or a model that cannot be evaluated: never verified
            status = verdict[0] if verdict[0] != FAILED or status == VERIFIED else status
            message = "; ".join(m for m in (message, verdict[1]) if m)
    return _issue(given, status, results, f"{name}: {message}" if message else "", t0,
                  th if status == VERIFIED else None)


def _fact_gap(th: Theorem, ctx: Context) -> str:
    last = th.steps[-1]
    if not (RELATIONS[last.relation].implies(RELATIONS[th.relation]) and ctx.equal(last.lhs, th.lhs)
            and ctx.equal(last.rhs, th.rhs)):
        return "the last step is not the statement"
    return ""


def _chain_gap(th: Theorem, ctx: Context) -> str:
    composed = compose([s.relation for s in th.steps])
    if composed is None:
        return "the steps mix < and > and compose to no relation"
    if not composed.implies(RELATIONS[th.relation]):
        return f"the steps compose to '{composed.symbol}', which does not give the stated '{th.relation}'"
    if not ctx.equal(th.steps[0].lhs, th.lhs):
        return "step 1 does not start from the statement's left side"
    for i in range(1, len(th.steps)):
        if not ctx.equal(th.steps[i - 1].rhs, th.steps[i].lhs):
            return f"step {i + 1} does not start where step {i} ended"
    if not ctx.equal(th.steps[-1].rhs, th.rhs):
        return "the last step does not end at the statement's right side"
    return ""


def side_conditions(th: Theorem) -> list[Obligation]:
    """The side conditions of `th` its hypotheses do not discharge (for tools that add hypotheses)."""
    ctx = Context(canonical_or_error(th))
    th = ctx.th
    out = []
    for e in [th.lhs, th.rhs] + [x for st in th.steps for x in (st.lhs, st.rhs)] + [
            h.rhs for h in th.hypotheses if h.kind == "definition" and not h.binders]:
        out += [ob for ob in obligations(e, ctx.names) if not ctx.discharge(ob.kind, ob.term) and ob not in out]
    return out


__all__ = ["Context", "Result", "check", "check_step", "genuine", "side_conditions", "validate"]
