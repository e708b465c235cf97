r"""The proof kernel: theorems as checked steps, LCF-style. Only `check` makes results.

A `Theorem` holds hypotheses, a statement $\mathrm{lhs} \mathrel{R} \mathrm{rhs}$ and steps. The
kernel's rules, each with its own failure message:

1. **Closed vocabularies.** Relations are $=, <, \le, >, \ge$ (`RELATIONS`), each with its own check
   and composition; hypothesis kinds are ``nonzero``, ``coords``, ``positive``, ``equation``,
   ``definition``. Anything else is rejected, never read as a neighbour.
2. **Conservative definitions.** ``a := e`` defines a fresh symbol (or a per-expert family
   $a^{(e)}$): not defined twice, not occurring in $e$ nor in any earlier hypothesis.
   Definitions are abbreviations; reports show them with the hypotheses.
3. **Types.** Every hypothesis, step and the statement is typed by `symbolic.terms.shape`
   (vectors of symbolic lengths, matrices with rows and columns, per-expert objects); both sides
   of a relation have the same type; inequalities relate scalars.
4. **Denominators.** Every denominator of the statement, of a step, of a definition or an
   equation is covered by a hypothesis (``nonzero``/``coords``/``positive``) or is provably
   nonzero.
5. **Steps.** An *algebra* step is discharged by `symbolic.algebra.is_zero` after the equations
   are applied (first with defined atoms opaque, then expanded); an inequality by the sign of
   the gap. A *lemma* step cites a result of this kernel: the substitution instantiates variables
   of the lemma only, with terms of the same type (dimensions renamed consistently, no bound
   variable captured); every hypothesis of the lemma, instantiated, must follow from the current
   hypotheses; and the step's relation must follow from the lemma's. A *range* step
   $f(t) \mathrel{R} c$ checks its sides against the exact range of $f$ (`function_range`).
6. **Composition.** A chain composes its relations ($=$ with $<$ gives $<$; $<$ with $>$ gives
   nothing) and must connect; a list of facts must end with the statement.
7. **Instances.** The theorem is evaluated on exact instances (`symbolic.instances`) that satisfy
   its hypotheses; a step an instance contradicts is *refuted*, and hypotheses no draw satisfies
   make the theorem *vacuous*.

Results exist only as `check` made them: `Result` refuses construction without the kernel's
token, and a lemma's result is accepted only if the kernel issued it and it is unchanged.
`ProofError` names the theorem and the step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

import sympy as sp
from sympy.calculus.util import function_range

from symbolic.activations import x as ACT_X
from symbolic.algebra import Condition, is_zero, normalize, side_conditions
from symbolic.instances import Degenerate, Nested, NotInstantiable, Spec, Vacuous, compare, instances
from symbolic.printing import latex, pstr
from symbolic.terms import EXPERT, DimensionError, EMat, EVec, Mat, shape

VERIFIED, FAILED, REFUTED, UNCHECKED, VACUOUS = "verified", "failed", "refuted", "unchecked", "vacuous"
KINDS = ("nonzero", "coords", "positive", "equation", "definition")


class ProofError(Exception):
    """A proof the kernel rejects; the message names the theorem, the step and the reason."""


# --------------------------------------------------------------------------- relations


@dataclass(frozen=True)
class Relation:
    """A relation of the closed set: its direction (+1 up: <, <=; -1 down; 0 for =) and strictness."""

    symbol: str
    direction: int
    strict: bool
    latex: str

    def holds(self, gap_sign: int | None) -> bool:
        """Whether sign(rhs - lhs) (exact: -1, 0, 1) satisfies the relation."""
        if gap_sign is None:
            return False
        if self.direction == 0:
            return gap_sign == 0
        want = gap_sign * self.direction
        return want > 0 if self.strict else want >= 0

    def implies(self, other: Relation) -> bool:
        """a R b entails a S b: = entails <= and >=; < entails <=; nothing else."""
        if self == other:
            return True
        if self.direction == 0:
            return not other.strict
        return self.direction == other.direction and self.strict and not other.strict

    @property
    def converse(self) -> Relation:
        return RELATIONS[{"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(self.symbol, self.symbol)]


RELATIONS = {r.symbol: r for r in (Relation("=", 0, False, "="), Relation("<", 1, True, "<"),
                                   Relation("<=", 1, False, r"\le"), Relation(">", -1, True, ">"),
                                   Relation(">=", -1, False, r"\ge"))}


def compose(symbols: list[str]) -> Relation | None:
    """The relation of a chain: = if all are =, else the common direction (strict if any is)."""
    rels = [RELATIONS[s] for s in symbols]
    dirs = {r.direction for r in rels} - {0}
    if len(dirs) > 1:
        return None
    if not dirs:
        return RELATIONS["="]
    up = dirs.pop() == 1
    strict = any(r.strict for r in rels)
    return RELATIONS[("<" if up else ">") + ("" if strict else "=")]


# --------------------------------------------------------------------------- statements


@dataclass(frozen=True)
class Hypothesis:
    """A side condition (`nonzero`, `coords`, `positive`), an equation `expr = rhs`, or a
    conservative `definition` `expr := rhs` of a fresh atom (an abbreviation)."""

    kind: str
    expr: sp.Expr
    rhs: sp.Expr | None = None

    def text(self) -> str:
        if self.kind in ("equation", "definition"):
            return f"{pstr(self.expr)} {'=' if self.kind == 'equation' else ':='} {pstr(self.rhs)}"
        if self.kind == "positive":
            return f"{pstr(self.expr)} > 0"
        return Condition(self.expr, "vector" if self.kind == "nonzero" else self.kind).text()

    def latex(self) -> str:
        if self.kind in ("equation", "definition"):
            op = "=" if self.kind == "equation" else ":="
            return f"{latex(self.expr)} {op} {latex(self.rhs)}"
        if self.kind == "positive":
            return f"{latex(self.expr)} > 0"
        return Condition(self.expr, "vector" if self.kind == "nonzero" else self.kind).latex()


def nonzero(v: sp.Expr) -> Hypothesis:
    return Hypothesis("nonzero", v)


def coords_nonzero(v: sp.Expr) -> Hypothesis:
    return Hypothesis("coords", v)


def positive(v: sp.Expr) -> Hypothesis:
    return Hypothesis("positive", v)


def equation(lhs: sp.Expr, rhs: sp.Expr) -> Hypothesis:
    return Hypothesis("equation", lhs, rhs)


def definition(atom: sp.Expr, expr: sp.Expr) -> Hypothesis:
    return Hypothesis("definition", atom, expr)


@dataclass(frozen=True)
class Step:
    """One link `lhs R rhs` of a proof with its justification: algebra (default), a `lemma`
    instantiated by `substitution`, or a `range_check` (an elementwise function in `x`)."""

    lhs: sp.Expr
    rhs: sp.Expr
    justification: str
    lemma: str | None = None
    substitution: tuple[tuple[sp.Expr, sp.Expr], ...] = ()
    relation: str = "="
    range_check: sp.Expr | None = None


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
    models: tuple[tuple[str, object], ...] = ()  # concrete maps for opaque functions, for instances

    @property
    def definitions(self) -> tuple[Hypothesis, ...]:
        return tuple(h for h in self.hypotheses if h.kind == "definition")

    @property
    def assumptions(self) -> tuple[Hypothesis, ...]:
        return tuple(h for h in self.hypotheses if h.kind != "definition")


@dataclass(frozen=True)
class StepResult:
    status: str
    message: str = ""
    residual: str = ""
    instances: str = ""  # "3/3 exact instances", "n/a: ..."


_TOKEN = object()
_ISSUED: dict[int, tuple[object, int]] = {}


@dataclass(frozen=True)
class Result:
    """The kernel's verdict on a theorem. Only `check` can make one."""

    theorem: Theorem
    status: str
    steps: tuple[StepResult, ...] = ()
    message: str = ""
    seconds: float = 0.0
    token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.token is not _TOKEN:
            raise ProofError(f"{self.theorem.name}: a Result is made only by the kernel (symbolic.proof.check)")

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


def _issue(th: Theorem, status: str, steps, message: str, t0: float) -> Result:
    res = Result(th, status, tuple(steps), message, time.perf_counter() - t0, _TOKEN)
    _ISSUED[id(res)] = (res, hash((th, status)))
    return res


def genuine(res: object) -> bool:
    """Whether `res` is a result this kernel issued, unchanged since."""
    entry = _ISSUED.get(id(res))
    return entry is not None and entry[0] is res and entry[1] == hash((res.theorem, res.status))


# --------------------------------------------------------------------------- context of one theorem


class Context:
    """The hypotheses of one theorem, validated, with the operations the rules use."""

    def __init__(self, th: Theorem):
        self.th = th
        self.defs = [(h.expr, h.rhs) for h in th.definitions]
        self.equations = [(h.expr, h.rhs) for h in th.hypotheses if h.kind == "equation"]
        self.conditions = [h for h in th.hypotheses if h.kind in ("nonzero", "coords", "positive")]

    @cached_property
    def defined(self) -> set:
        return {a.args[0] if isinstance(a, (EVec, EMat)) else a for a, _ in self.defs}

    def expand(self, e: sp.Expr) -> sp.Expr:
        """Replace every defined atom by its definition (later definitions may use earlier atoms)."""
        for atom, rhs in reversed(self.defs):
            if isinstance(atom, (EVec, EMat)):
                base = atom.args[0]
                e = e.replace(lambda t, b=base: isinstance(t, (EVec, EMat)) and t.args[0] == b,
                              lambda t, r=rhs: r.xreplace({EXPERT: t.args[1]}))
            elif atom in e.free_symbols:
                e = e.xreplace({atom: rhs}) if isinstance(atom, Mat) else e.subs(atom, rhs)
        return e

    def rewrite(self, e: sp.Expr, definitions: bool = True) -> sp.Expr:
        """Expand definitions (optionally) and apply the equation hypotheses as rewrite rules."""
        if definitions:
            e = self.expand(e)
        for lhs, rhs in self.equations:
            e = _apply_equation(e, lhs, rhs)
            e = _apply_equation(normalize(sp.expand(normalize(e))), lhs, rhs)
        return e

    def equal(self, a: sp.Expr, b: sp.Expr) -> bool:
        if a == b:
            return True
        return any(is_zero(self.rewrite(a - b, expand)) is True for expand in (False, True))

    def covers(self, kind: str, expr: sp.Expr) -> bool:
        """Whether the hypotheses give `expr != 0` (kind nonzero), every coordinate != 0 (coords) or > 0."""
        if _provably(kind, expr):
            return True
        about = [h for h in self.conditions
                 if h.kind == "positive" or (h.kind == "coords" and kind != "positive") or h.kind == kind]
        if any(_matches(h.expr, expr) for h in about):
            return True
        full = self.expand(expr)
        return any(_matches(self.expand(h.expr), full) for h in about)


def _provably(kind: str, e: sp.Expr) -> bool:
    if kind == "positive":
        return e.is_positive is True
    return e.is_positive is True or (e.is_nonzero is True and kind != "coords") or (e.is_number and e != 0)


def _matches(hyp: sp.Expr, expr: sp.Expr) -> bool:
    """The hypothesis is about `expr`; the generic expert index e is universally quantified."""
    if hyp == expr:
        return True
    if EXPERT not in hyp.free_symbols:
        return False
    return expr.match(hyp.xreplace({EXPERT: sp.Wild("e_any")})) is not None


def _apply_equation(e: sp.Expr, lhs: sp.Expr, rhs: sp.Expr) -> sp.Expr:
    """Rewrite with an equation; one with Wild symbols is a pattern (a universally quantified hypothesis)."""
    if lhs.atoms(sp.Wild):
        return e.replace(lhs, rhs)
    return e.subs(lhs, rhs)


def covered(cond: Condition, th: Theorem) -> bool:
    """Whether a hypothesis of `th` declares the side condition `cond`."""
    return Context(th).covers("nonzero" if cond.kind in ("vector", "scalar") else "coords", cond.expr)


# --------------------------------------------------------------------------- well-formedness


def validate(th: Theorem) -> Context:
    """Rules 1-4 on the whole theorem; raises ProofError naming what is ill-formed."""
    if th.relation not in RELATIONS:
        raise ProofError(f"unknown relation {th.relation!r} in the statement; allowed: {', '.join(RELATIONS)}")
    if not th.steps:
        raise ProofError("the proof has no steps")
    _validate_hypotheses(th)
    ctx = Context(th)
    _typed_relation(th.lhs, th.rhs, th.relation, "the statement")
    for i, st in enumerate(th.steps, 1):
        if st.relation not in RELATIONS:
            raise ProofError(f"step {i}: unknown relation {st.relation!r}; allowed: {', '.join(RELATIONS)}")
        _typed_relation(st.lhs, st.rhs, st.relation, f"step {i}")
    _denominators(th, ctx)
    return ctx


def _validate_hypotheses(th: Theorem) -> None:
    seen: set = set()
    for i, h in enumerate(th.hypotheses, 1):
        where = f"hypothesis {i} ({h.kind})"
        if h.kind not in KINDS:
            raise ProofError(f"{where}: unknown kind; allowed: {', '.join(KINDS)}")
        if (h.rhs is None) != (h.kind not in ("equation", "definition")):
            raise ProofError(f"{where}: an equation or definition has a right side, a condition has none")
        if h.kind == "definition":
            _conservative(h, seen, where)
        _typed_hypothesis(h, where)
        seen |= _symbols(h.expr) | (_symbols(h.rhs) if h.rhs is not None else set())


def _symbols(e: sp.Basic) -> set:
    return set(e.atoms(sp.Symbol))


def _conservative(h: Hypothesis, seen: set, where: str) -> None:
    atom = h.expr.args[0] if isinstance(h.expr, (EVec, EMat)) and h.expr.args[1] == EXPERT else h.expr
    if not isinstance(atom, sp.Symbol) or isinstance(atom, sp.Wild):
        raise ProofError(f"{where}: a definition must define a fresh symbol (or a family a^(e)), not {pstr(h.expr)}")
    if atom in seen:
        raise ProofError(f"{where}: {atom} is not fresh: it occurs in an earlier hypothesis (definitions are "
                         "conservative: a new symbol, defined once)")
    if atom in _symbols(h.rhs):
        raise ProofError(f"{where}: {atom} occurs in its own definition")


def _typed_hypothesis(h: Hypothesis, where: str) -> None:
    try:
        s = shape(h.expr)
        if h.rhs is None:
            if s[0] == "matrix" or (h.kind == "positive" and s[0] != "scalar"):
                raise DimensionError(f"a {h.kind} condition on a {s[0]}")
            return
        r = shape(h.rhs)
        if h.kind == "definition" and s != r and not h.expr.atoms(sp.Wild):
            raise DimensionError(f"{pstr(h.expr)} is a {_kind(s)} but its definition a {_kind(r)}")
        _compatible(s, r)
    except DimensionError as exc:
        raise ProofError(f"{where} is ill-typed: {exc}") from None


def _kind(s: tuple) -> str:
    if s[0] == "scalar":
        return "scalar"
    return f"vector of length {s[1]}" if s[0] == "vector" else f"{s[1]}x{s[2]} matrix"


def _compatible(a: tuple, b: tuple) -> None:
    if "matrix" in (a[0], b[0]) and a != b:
        raise DimensionError(f"a {_kind(a)} related to a {_kind(b)}")
    if a[0] == b[0] == "vector" and a != b:
        raise DimensionError(f"a {_kind(a)} related to a {_kind(b)}")


def _typed_relation(lhs: sp.Expr, rhs: sp.Expr, relation: str, where: str) -> None:
    try:
        a, b = shape(lhs), shape(rhs)
        _compatible(a, b)
        if "matrix" in (a[0], b[0]):
            raise DimensionError("a step relates values (scalars or vectors), not matrices")
        if relation != "=" and "vector" in (a[0], b[0]):
            raise DimensionError(f"an inequality {relation} between vectors (inequalities relate scalars)")
    except DimensionError as exc:
        raise ProofError(f"{where} is ill-typed: {exc}") from None


def _denominators(th: Theorem, ctx: Context) -> None:
    parts = [("the statement", th.lhs), ("the statement", th.rhs)]
    parts += [(f"step {i}", e) for i, st in enumerate(th.steps, 1) for e in (st.lhs, st.rhs)]
    parts += [(f"hypothesis {i}", h.rhs) for i, h in enumerate(th.hypotheses, 1) if h.rhs is not None]
    for where, e in parts:
        for cond in side_conditions(e):
            kind = "nonzero" if cond.kind in ("vector", "scalar") else "coords"
            if not ctx.covers(kind, cond.expr):
                raise ProofError(f"{where} divides by {cond.text().replace(' != 0', '')}, which no "
                                 "hypothesis declares nonzero")


# --------------------------------------------------------------------------- steps


def check_step(step: Step, ctx: Context, lemmas: dict[str, Result]) -> StepResult:
    if step.lemma is not None and step.range_check is not None:
        return StepResult(FAILED, "a step has one justification: a lemma or a range fact, not both")
    if step.lemma is not None:
        return _lemma_step(step, ctx, lemmas)
    if step.substitution:
        return StepResult(FAILED, "a substitution without a lemma to instantiate")
    if step.range_check is not None:
        return _range_step(step)
    if step.relation != "=":
        return _inequality(step, ctx)
    if ctx.equal(step.lhs, step.rhs):
        return StepResult(VERIFIED)
    residual = pstr(normalize(sp.expand(normalize(ctx.rewrite(step.lhs - step.rhs)))))
    return StepResult(FAILED, "lhs - rhs does not normalize to zero", residual)


def _inequality(step: Step, ctx: Context) -> StepResult:
    rel = RELATIONS[step.relation]
    gap = sp.together(ctx.rewrite(step.rhs - step.lhs))  # sign(gap) decides the relation
    sign = 1 if gap.is_positive else (0 if gap.is_zero else (-1 if gap.is_negative else None))
    if sign is None and not rel.strict:
        sign = 0 if (rel.direction * gap).is_nonnegative else None
    if rel.holds(sign):
        return StepResult(VERIFIED, "by the sign assumptions of the hypotheses")
    return StepResult(FAILED, f"SymPy cannot establish lhs {rel.symbol} rhs", pstr(gap))


def _range_step(step: Step) -> StepResult:
    r"""$f(t) \mathrel{R} c$: t real, c a number, and the exact range of f on R satisfies R with c."""
    f, rel = step.range_check, RELATIONS[step.relation]
    if rel.direction == 0:
        return StepResult(FAILED, "a range fact bounds a value; it cannot prove an equation")
    t = sp.Wild("t")
    match = step.lhs.match(f.xreplace({ACT_X: t}))
    if match is None or f.xreplace({ACT_X: match.get(t, ACT_X)}) != step.lhs:
        return StepResult(FAILED, f"the left side {pstr(step.lhs)} is not {pstr(f)} at some argument")
    arg = match.get(t, ACT_X)
    if arg.is_real is not True or shape(arg) != ("scalar",):
        return StepResult(FAILED, f"the argument {pstr(arg)} is not known to be a real scalar")
    if not (step.rhs.is_number and step.rhs.is_real):
        return StepResult(FAILED, f"the bound {pstr(step.rhs)} is not a real number")
    try:
        rng = function_range(f, ACT_X, sp.S.Reals)
    except (NotImplementedError, ValueError) as exc:
        return StepResult(FAILED, f"SymPy cannot compute the range of {pstr(f)}: {exc}")
    end = rng.sup if rel.direction == 1 else rng.inf
    gap = sp.sign(step.rhs - end)
    attained = bool(rng.contains(end)) if end.is_finite else False
    ok = gap * rel.direction > 0 or (gap == 0 and (not rel.strict or not attained)) if end.is_finite else False
    if ok:
        return StepResult(VERIFIED, f"the range of {pstr(f)} on R is {rng}")
    return StepResult(FAILED, f"the range of {pstr(f)} on R is {rng}, which does not give {step.relation} "
                      f"{pstr(step.rhs)}")


def _lemma_step(step: Step, ctx: Context, lemmas: dict[str, Result]) -> StepResult:
    res = lemmas.get(step.lemma)
    if res is None:
        return StepResult(UNCHECKED, f"lemma {step.lemma} was not checked before this theorem")
    if not genuine(res):
        return StepResult(FAILED, f"the result given for lemma {step.lemma} was not made by the kernel, or was altered")
    if res.theorem.name != step.lemma:
        return StepResult(FAILED, f"the result given for lemma {step.lemma} is that of {res.theorem.name}")
    if res.status != VERIFIED:
        return StepResult(UNCHECKED, f"lemma {step.lemma} is {res.status}, not verified")
    try:
        lhs, rhs, rel, hyps = _instantiate(res.theorem, step.substitution)
    except ProofError as exc:
        return StepResult(FAILED, f"lemma {step.lemma}: {exc}")
    for kind, expr, r in hyps:
        if not (ctx.equal(expr, r) if kind == "equation" else ctx.covers(kind, expr)):
            shown = f"{pstr(expr)} = {pstr(r)}" if kind == "equation" else f"{kind}({pstr(expr)})"
            return StepResult(FAILED, f"lemma {step.lemma} needs {shown} here, which the hypotheses do not give")
    want = RELATIONS[step.relation]
    if ctx.equal(step.lhs, lhs) and ctx.equal(step.rhs, rhs) and rel.implies(want):
        return StepResult(VERIFIED, f"instance of {step.lemma}")
    if ctx.equal(step.lhs, rhs) and ctx.equal(step.rhs, lhs) and rel.converse.implies(want):
        return StepResult(VERIFIED, f"instance of {step.lemma}")
    return StepResult(FAILED, f"not an instance of {step.lemma} ({rel.symbol}) under the given substitution")


def _instantiate(lem: Theorem, substitution) -> tuple:
    """The lemma's statement and hypotheses (definitions expanded) under a checked substitution."""
    lctx = Context(lem)
    sub = dict(substitution)
    if len(sub) != len(substitution):
        raise ProofError("a variable is instantiated twice")
    body = [lctx.expand(lem.lhs), lctx.expand(lem.rhs)]
    hyps = [(h.kind, lctx.expand(h.expr), lctx.expand(h.rhs) if h.rhs is not None else None) for h in lem.assumptions]
    variables = set().union(*(e.free_symbols for e in body), *(h[1].free_symbols for h in hyps))
    bound = set().union(*(_bound(e) for e in body))
    dims: dict[str, str] = {}
    for var, value in sub.items():
        if not isinstance(var, sp.Symbol) or var not in variables:
            raise ProofError(f"{pstr(var)} is not a variable of the lemma: a lemma instantiates variables only "
                             "(a compound term needs a proven equation)")
        _unify(shape(var), _typed(value), dims, var, value)
        if value.free_symbols & bound:
            raise ProofError(f"substituting {pstr(value)} would capture a bound variable of the lemma")
    for var in variables - set(sub):
        s = shape(var)
        if s[0] != "scalar" and any(dims.get(n, n) != n for n in s[1:]):
            raise ProofError(f"{var} keeps its dimensions while another variable renames them")
    inst = [e.xreplace(sub) for e in body]
    for e in inst:
        _typed(e)
    hyps = [(k, e.xreplace(sub), r.xreplace(sub) if r is not None else None) for k, e, r in hyps]
    return inst[0], inst[1], RELATIONS[lem.relation], hyps


def _typed(e: sp.Expr) -> tuple:
    try:
        return shape(e)
    except DimensionError as exc:
        raise ProofError(f"the instance is ill-typed: {exc}") from None


def _unify(s: tuple, t: tuple, dims: dict, var, value=None) -> None:
    if s[0] == "vector" and t[0] == "scalar" and value is not None and value.is_number:
        return  # a constant vector (e.g. the zero vector 0)
    if s[0] != t[0] or len(s) != len(t):
        raise ProofError(f"{var} is a {_kind(s)} but is instantiated with a {_kind(t)}")
    for a, b in zip(s[1:], t[1:], strict=True):
        if dims.setdefault(a, b) != b:
            raise ProofError(f"dimension {a} is instantiated as both {dims[a]} and {b} (at {var})")


def _bound(e: sp.Basic) -> set:
    return {lim[0] for s in e.atoms(sp.Sum) for lim in s.limits}


# --------------------------------------------------------------------------- the theorem


def check(th: Theorem, lemmas: dict[str, Result] | None = None, instances: bool = True) -> Result:
    """Check every rule on `th`; it is verified only if every step is, the steps compose to the
    statement, and (with `instances`) exact instances satisfying the hypotheses agree."""
    t0 = time.perf_counter()
    try:
        ctx = validate(th)
    except ProofError as exc:
        skipped = [StepResult(UNCHECKED, "not checked: the theorem is ill-formed")] * len(th.steps)
        return _issue(th, FAILED, skipped, f"ill-formed: {exc}", t0)
    results = [check_step(s, ctx, lemmas or {}) for s in th.steps]
    if instances:
        results, vacuous = _with_instances(th, ctx, results)
        if vacuous:
            return _issue(th, VACUOUS, results, f"vacuous: {vacuous}", t0)
    gap = _chain_gap(th, ctx) if th.chain else _fact_gap(th, ctx)
    bad = [(i, r) for i, r in enumerate(results) if r.status != VERIFIED]
    if bad:
        i, r = bad[0]
        statuses = {r.status for _, r in bad}
        status = REFUTED if REFUTED in statuses else (FAILED if FAILED in statuses else UNCHECKED)
        message = f"step {i + 1} ({th.steps[i].justification}) {r.status}: {r.message}" + (
            f"; residual {r.residual}" if r.residual else "")
        return _issue(th, status, results, message, t0)
    return _issue(th, FAILED if gap else VERIFIED, results, gap, t0)


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


# --------------------------------------------------------------------------- instances


def instance_spec(th: Theorem) -> Spec:
    return Spec(tuple((h.expr, h.rhs) for h in th.definitions),
                tuple((h.expr, h.rhs) for h in th.hypotheses if h.kind == "equation"),
                tuple((h.kind, h.expr) for h in th.hypotheses if h.kind in ("nonzero", "coords", "positive")),
                th.models)


def _with_instances(th: Theorem, ctx: Context, results: list[StepResult]) -> tuple[list[StepResult], str]:
    """Evaluate every step on exact instances; returns the results and a reason if vacuous."""
    try:
        found, redrawn, exact = _draw_instances(th, ctx)
    except Vacuous as exc:
        return [_note(r, "n/a: vacuous") for r in results], f"the hypotheses admit no instance ({exc})"
    except NotInstantiable as exc:
        return [_note(r, f"n/a: {exc} is not instantiated") for r in results], ""
    except (TypeError, ValueError, NotImplementedError) as exc:
        return [_note(r, f"n/a: {type(exc).__name__}") for r in results], ""
    wild = [(lhs, rhs) for lhs, rhs in ctx.equations if lhs.atoms(sp.Wild)]
    broken = _patterns_fail(th, found, wild)
    if broken:
        return [_note(r, "n/a: vacuous") for r in results], broken
    out = []
    for i, (st, r) in enumerate(zip(th.steps, results, strict=True)):
        last = i == len(th.steps) - 1  # the redraw count is said once, on the last step
        out.append(_step_instances(st, r, found, redrawn if last else 0, exact))
    return out, ""


def _patterns_fail(th: Theorem, found, wild) -> str:
    """A universally quantified equation must hold on the instances wherever the steps use it; else no
    instance satisfying the hypotheses was found (give the theorem a model of its opaque maps)."""
    for lhs, rhs in wild:
        for inst in found:
            try:
                for st in th.steps:
                    _check_pattern(inst, lhs, rhs, st)
            except NotInstantiable:
                return f"no instance satisfies the hypothesis {pstr(lhs)} = {pstr(rhs)}"
            except (Degenerate, Nested, TypeError, ValueError, ZeroDivisionError):
                continue
    return ""


def _draw_instances(th: Theorem, ctx: Context) -> tuple[list, int, bool]:
    """Exact instances where every step evaluates without nested radicals, else 50-digit ones."""
    spec = instance_spec(th)
    try:
        found, redrawn = instances(spec)
        for inst in found:
            for st in th.steps:
                inst.ev(st.lhs), inst.ev(st.rhs)
        return found, redrawn, True
    except (Nested, Degenerate):
        found, redrawn = instances(spec, exact=False)
        return found, redrawn, False


def _note(r: StepResult, text: str) -> StepResult:
    return StepResult(r.status, r.message, r.residual, text)


def _step_instances(st: Step, r: StepResult, found, redrawn: int, exact_values: bool) -> StepResult:
    rel, ok, numeric = RELATIONS[st.relation], 0, 0
    for inst in found:
        try:
            verdict, exact = compare(inst.ev(st.rhs), inst.ev(st.lhs))
        except NotInstantiable as exc:
            return _note(r, f"n/a: {exc} is not instantiated")
        except (Degenerate, TypeError, ValueError, ZeroDivisionError) as exc:
            return _note(r, f"n/a: {type(exc).__name__} on an instance")
        if verdict is not None and (exact or not exact_values) and not rel.holds(verdict):
            text = f"refuted at {inst.sizes}"
            why = "an exact instance contradicts the symbolic verdict" if r.status == VERIFIED else (
                f"{r.message}; an exact instance contradicts the step")
            return StepResult(REFUTED, why, r.residual, text)
        ok += verdict is not None and rel.holds(verdict)
        numeric += not exact
    notes = [f"{redrawn} degenerate draws redrawn"] * bool(redrawn) + [
        f"{numeric} zero tests to 100 digits"] * bool(numeric and exact_values)
    kind = "exact instances" if exact_values else "instances in 50-digit floats"
    return _note(r, f"{ok}/{len(found)} {kind}" + (f" ({'; '.join(notes)})" if notes else ""))


def _check_pattern(inst, lhs: sp.Expr, rhs: sp.Expr, st: Step) -> None:
    """A universally quantified equation must hold on the instance wherever the step uses it."""
    for side in (st.lhs, st.rhs):
        for term in side.find(lhs):
            match = term.match(lhs)
            if match is not None and compare(inst.ev(term), inst.ev(rhs.xreplace(match)))[0] != 0:
                raise NotInstantiable(f"the model of {pstr(lhs)} = {pstr(rhs)}")
