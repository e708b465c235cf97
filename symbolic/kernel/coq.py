r"""The kernel's theorems as Coq statements (mathcomp, a real closed field): a second prover checks them.

`coq_statement(theorem)` prints a kernel `Theorem` (its dimensions, variables, definitions,
hypotheses and statement) in the prefix vocabulary of proofs/coq/CtxPatch.v: every node
``(op arg1 ... argk)``, types from the kernel's (a dimension d is ``d.+1``, a vector ``'cV[R]_d.+1``,
a family ``nat -> T``, an opaque function ``R -> R``), each definition a hypothesis ``x = rhs``, the
table's facts about exp, tanh, sigmoid and heaviside hypotheses too (they stay arbitrary functions).
`write_coq_project(dir, theorems)` writes a self-contained Coq project (`_CoqProject`, the vocabulary,
`Theorems.v` with every theorem that has a proof script in proofs/coq/scripts, or, for a block or
multi-layer theorem, the default block script scripts/default/block.ltac) and runs coqc on it:
a theorem is *checked* when coqc accepts its proof and `Print Assumptions` finds no axiom.

The statements are printed from the theorem objects the kernel checked, so the statement coqc checks
is the one the kernel verified. Nothing here is trusted by the kernel.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from symbolic.kernel.statements import RELATIONS, Theorem
from symbolic.kernel.terms import (
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
    Var,
    Vector,
    free_vars,
)

HEADER = """From Coq Require Import Ring Field.
From mathcomp Require Import all_ssreflect all_algebra.
From CtxPatch Require Import CtxPatch.

Set Implicit Arguments.
Unset Strict Implicit.
Unset Printing Implicit Defensive.
Import GRing.Theory Num.Theory.
Local Open Scope ring_scope.

Section Theorems.
Variable R : rcfType.
Add Field ctx_field : (ctx_field_theory R).
"""

RESERVED = set("""R sadd ssub sneg smul sdiv sinv spow ssqrt snat vadd vsub vneg vscale vzero madd msub mneg mscale
mzero matvec outer vconst had ediv vpow vsqrt vmap dot mean frob coords_nz coord ctxE radd rmul ropp rinv rsub rdiv
r0 r1 fun forall exists let in if then else match with end as return at is by Type Prop Set nat""".split())
#: The table's facts, as hypotheses about the (otherwise arbitrary) functions.
FACTS = {"exp": "forall x : R, 0 < exp x", "tanh": "forall x : R, - 1 < tanh x < 1",
         "sigmoid": "forall x : R, 0 < sigmoid x < 1", "heaviside": "forall x : R, 0 <= heaviside x <= 1"}
ELEMENTWISE = ("sqrt", "exp", "tanh", "sigmoid", "heaviside")


class Unprintable(ValueError):
    """A kernel construct the Coq vocabulary does not have (yet)."""


def coq_type(t) -> str:
    if isinstance(t, Scalar):
        return "R"
    if isinstance(t, Vector):
        return f"'cV[R]_{t.dim}.+1"
    if isinstance(t, Matrix):
        return f"'M[R]_({t.rows}.+1, {t.cols}.+1)"
    if isinstance(t, Index):
        return "nat"
    if isinstance(t, Family):
        return f"nat -> {coq_type(t.elem)}"
    raise Unprintable(f"the type {t}")


def _fn_type(fn: Fn) -> str:
    if fn.sig is None:
        if fn.arity != 1:
            raise Unprintable(f"the elementwise function {fn.name} of {fn.arity} arguments")
        return "R -> R"
    return " -> ".join(coq_type(t) for t in (*fn.sig, fn.result))


def _dims(t, out: list) -> None:
    for name in (getattr(t, "dim", None), getattr(t, "rows", None), getattr(t, "cols", None),
                 getattr(t, "bound", None) if isinstance(t, Family) else None):
        if name and name not in out:
            out.append(name)
    if isinstance(t, Family):
        _dims(t.elem, out)


class _Printer:
    """Prints terms of one theorem, recording its variables and functions in order of appearance."""

    def __init__(self, th: Theorem):
        self.seen: dict = {}  # kernel name -> (Coq name, binder type)
        self.facts: list[str] = []
        self.dims: list[str] = []
        taken = {v.name for t in _terms(th) for v in free_vars(t)}
        self.bound_names = taken
        for t in _terms(th):
            for v in free_vars(t):
                _dims(v.ty, self.dims)
        self.reserved = RESERVED | set(self.dims) | {f"H{i}" for i in range(1, len(th.hypotheses) + 16)}
        self.rename: dict = {}
        self.local: set = set()  # names bound by the hypothesis being printed

    def name(self, n: str) -> str:
        if n not in self.rename:
            safe = re.sub(r"[^A-Za-z0-9_']", "_", n)
            safe = safe if safe[0].isalpha() else "x" + safe
            while safe in self.reserved or safe in self.rename.values():
                safe += "_v"
            self.rename[n] = safe
        return self.rename[n]

    def var(self, v: Var) -> str:
        n = self.name(v.name)
        if v.name not in self.local:
            self.seen.setdefault(v.name, (n, coq_type(v.ty)))
        return n

    def fn(self, name: str, ty: str) -> str:
        if name in FACTS and FACTS[name] not in self.facts:
            self.facts.append(FACTS[name])
        n = self.name(name)
        self.seen.setdefault(name, (n, ty))
        return n

    # ----------------------------------------------------------------- terms

    def top(self, t: Term, want=None, bound=()) -> str:
        s = self.term(t, want, bound)
        return s[1:-1] if s.startswith("(") and s.endswith(")") and _balanced(s[1:-1]) else s

    def term(self, t: Term, want=None, bound=()) -> str:
        """Parenthesized prefix form; `want` the type the context needs (a scalar broadcast to a vector)."""
        if isinstance(want, Vector) and isinstance(t.ty, Scalar):
            return "vzero" if isinstance(t, Lit) and t.value == 0 else f"(vconst {self.term(t, None, bound)})"
        if isinstance(t, Var):
            return self.var(t)
        if isinstance(t, Lit):
            return _literal(t.value)
        if isinstance(t, ILit):
            return str(t.n)
        if isinstance(t, BVar):
            return bound[-1 - t.level]
        if isinstance(t, Sum):
            j = self._binder(bound)
            hi = self.term(t.hi, None, bound)
            return f"(\\sum_(1 <= {j} < {hi}.+1) {self.term(t.body, t.ty, bound + (j,))})"
        return self.app(t, bound)

    def _binder(self, bound) -> str:
        k = 0
        while (name := f"j{k or ''}") in self.bound_names or name in bound or name in self.reserved:
            k += 1
        return name

    def app(self, t: App, bound) -> str:
        op, a, ty = t.op, t.args, t.ty
        p = lambda x, w=None: self.term(x, w, bound)  # noqa: E731
        kind = "m" if isinstance(ty, Matrix) else ("v" if isinstance(ty, Vector) else "s")
        if isinstance(op, Fn):
            name = self.fn(op.name, _fn_type(op))
            if op.sig is None:
                return f"(vmap {name} {p(a[0], ty)})" if kind == "v" else f"({name} {p(a[0])})"
            return f"({name} {' '.join(p(x, w) for x, w in zip(a, op.sig, strict=True))})"
        if op == "add":
            if _is(a[1], "neg"):
                return f"({kind}sub {p(a[0], ty)} {p(a[1].args[0], ty)})"
            return f"({kind}add {p(a[0], ty)} {p(a[1], ty)})"
        if op == "neg":
            return f"({kind}neg {p(a[0], ty)})"
        if op == "mul":
            power = _power(t)
            if power is not None and kind != "m":
                base, n = power
                return f"({kind}pow {p(base, ty)} {n})"
            if kind == "s":
                return f"(smul {p(a[0])} {p(a[1])})"
            scal = [x for x in a if isinstance(x.ty, Scalar)]
            if scal:
                other = a[1] if a[0] is scal[0] else a[0]
                return f"({'m' if kind == 'm' else 'v'}scale {p(scal[0])} {p(other, ty)})"
            return f"(had {p(a[0], ty)} {p(a[1], ty)})"
        if op == "div":
            if kind == "s":
                one = isinstance(a[0], Lit) and a[0].value == 1
                return f"(sinv {p(a[1])})" if one else f"(sdiv {p(a[0])} {p(a[1])})"
            if isinstance(a[1].ty, Scalar):
                return f"({'m' if kind == 'm' else 'v'}scale (sinv {p(a[1])}) {p(a[0], ty)})"
            return f"(ediv {p(a[0], ty)} {p(a[1], ty)})"
        if op in ELEMENTWISE:
            if op == "sqrt":
                return f"(vsqrt {p(a[0], ty)})" if kind == "v" else f"(ssqrt {p(a[0])})"
            name = self.fn(op, "R -> R")
            return f"(vmap {name} {p(a[0], ty)})" if kind == "v" else f"({name} {p(a[0])})"
        if op in ("matvec", "dot", "outer", "frob"):
            return f"({op} {p(a[0])} {p(a[1])})"
        if op == "mean":
            return f"(mean {p(a[0])})" if isinstance(a[0].ty, Vector) else p(a[0])
        if op == "at":
            return f"({p(a[0])} {p(a[1])})"
        if op == "num":
            return f"(snat {p(a[0])})"
        raise Unprintable(f"the operation {op} (no Coq spelling in CtxPatch.v)")

    # ----------------------------------------------------------------- hypotheses

    def hypothesis(self, h) -> str:
        self.local = {b.name for b in h.binders}
        try:
            return self._hypothesis(h)
        finally:
            self.local = set()

    def _hypothesis(self, h) -> str:
        binders = " ".join(f"({self.name(b.name)} : {coq_type(b.ty)})" for b in h.binders)
        q = f"forall {binders}, " if h.binders else ""
        if h.kind == "definition":
            head = self.var(h.expr)
            if h.binders:
                e = self.name(h.binders[0].name)
                return f"forall {e} : nat, {head} {e} = {self.top(h.rhs, h.expr.ty.elem)}"
            return f"{head} = {self.top(h.rhs, h.expr.ty)}"
        if h.kind == "equation":
            return f"{q}{self.top(h.expr, h.rhs.ty)} = {self.top(h.rhs, h.expr.ty)}"
        if h.kind == "positive":
            return f"{q}0 < {self.top(h.expr)}"
        if h.kind == "coords" and isinstance(h.expr.ty, Vector):
            return f"{q}coords_nz {self.term(h.expr)}"
        return f"{q}{self.term(h.expr)} != 0"


def _terms(th: Theorem):
    for h in th.hypotheses:
        yield h.expr
        if h.rhs is not None:
            yield h.rhs
    yield th.lhs
    yield th.rhs


def _is(t: Term, op: str) -> bool:
    return isinstance(t, App) and t.op == op


def _power(t: Term):
    """x * x * ... * x (n factors) -> (x, n)."""
    flat: list = []

    def walk(x):
        if _is(x, "mul"):
            walk(x.args[0]), walk(x.args[1])
        else:
            flat.append(x)

    walk(t)
    return (flat[0], len(flat)) if len(flat) > 1 and all(f == flat[0] for f in flat) else None


def _literal(v) -> str:
    def natural(n: int) -> str:
        return str(n) if n in (0, 1) else f"(snat {n})"

    if v.denominator != 1:
        top = natural(abs(v.numerator))
        s = f"(sdiv {top} {natural(v.denominator)})"
        return f"(sneg {s})" if v < 0 else s
    return f"(sneg {natural(-v.numerator)})" if v < 0 else natural(v.numerator)


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def _relation(rel: str, lhs: str, rhs: str) -> str:
    r = RELATIONS[rel]
    if r.direction == 0:
        return f"{lhs} = {rhs}"
    op = "<" if r.strict else "<="
    return f"{lhs} {op} {rhs}" if r.direction == 1 else f"{rhs} {op} {lhs}"


def coq_statement(th: Theorem) -> str:
    """``Theorem NAME (dims : nat) (binders) (H1 : ...) ... : CONCLUSION.`` (without the proof)."""
    pr = _Printer(th)
    hyps = [pr.hypothesis(h) for h in th.hypotheses]
    concl = _relation(th.relation, pr.top(th.lhs, th.rhs.ty), pr.top(th.rhs, th.lhs.ty))
    hyps = pr.facts + hyps
    lines = [f"Theorem {th.name}" + (f" ({' '.join(sorted(pr.dims))} : nat)" if pr.dims else "")]
    groups: list = []
    for name, ty in pr.seen.values():
        if groups and groups[-1][1] == ty:
            groups[-1][0].append(name)
        else:
            groups.append(([name], ty))
    binders = [f"({' '.join(names)} : {ty})" for names, ty in groups]
    if binders:
        lines.append("  " + " ".join(binders))
    lines += [f"  (H{i} : {h})" for i, h in enumerate(hyps, 1)]
    lines[-1] += " :"
    lines.append(f"  {concl}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the project


def coq_source() -> Path:
    """proofs/coq: the vocabulary and the proof scripts, beside the theorems."""
    import proofs

    return Path(proofs.__file__).resolve().parent / "coq"


def write_coq_project(out: Path, theorems: list[Theorem], source: Path | None = None,
                      timeout: int = 600) -> list[dict]:
    """Write the Coq project into `out` and check it with coqc: one {name, checked, reason} per theorem."""
    source = Path(source) if source is not None else coq_source()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict = {}
    blocks: dict = {}
    if not (source / "_CoqProject").exists():
        return [{"name": th.name, "checked": False, "reason": f"no Coq sources in {source}"} for th in theorems]
    for th in theorems:
        script = _script(source, th.name)
        if script is None:
            rows[th.name] = {"name": th.name, "checked": False, "reason": "no proof script in proofs/coq/scripts"}
            continue
        try:
            blocks[th.name] = f"{coq_statement(th)}\nProof.\n{script.read_text().rstrip()}\nQed.\n"
        except Unprintable as exc:
            rows[th.name] = {"name": th.name, "checked": False, "reason": f"cannot be printed: {exc}"}
    project = (source / "_CoqProject").read_text()
    shutil.copy(source / "_CoqProject", out / "_CoqProject")
    for line in project.splitlines():
        if line.strip().endswith(".v") and line.strip() != "Theorems.v":
            shutil.copy(source / line.strip(), out / line.strip())
    if shutil.which("coqc") is None or shutil.which("coq_makefile") is None:
        _write(out, blocks)
        return _rows(theorems, rows, {n: "coqc is not installed (make install-system)" for n in blocks})
    failed: dict = {}
    while blocks:
        _write(out, blocks)
        ok, log = _build(out, timeout)
        if ok:
            closed = _assumptions(log, list(blocks))
            failed.update({n: "Print Assumptions lists an axiom" for n in blocks if not closed.get(n)})
            break
        culprit = _culprit(out / "Theorems.v", log, list(blocks))
        if culprit is None:
            failed.update({n: f"coqc: {log[-300:]}" for n in blocks})
            break
        error = " ".join(log[log.index('File "./Theorems.v"'):].split())
        failed[culprit] = "coqc refuses the proof: " + error[:300]
        del blocks[culprit]
    for n in blocks:
        rows.setdefault(n, {"name": n, "checked": n not in failed, "reason": failed.get(n, "")})
    return _rows(theorems, rows, failed)


def _script(source: Path, name: str) -> Path | None:
    """scripts/NAME.ltac; for a block or multi-layer theorem without one, scripts/default/block.ltac."""
    own = source / "scripts" / f"{name}.ltac"
    if own.exists():
        return own
    default = source / "scripts" / "default" / "block.ltac"
    return default if name.startswith(("block_", "multilayer_")) and default.exists() else None


def _rows(theorems, rows: dict, failed: dict) -> list[dict]:
    out = []
    for th in theorems:
        row = rows.get(th.name) or {"name": th.name, "checked": False, "reason": failed.get(th.name, "")}
        if th.name in failed:
            row = {"name": th.name, "checked": False, "reason": failed[th.name]}
        out.append(row)
    return out


def _write(out: Path, blocks: dict) -> None:
    footer = "End Theorems.\n\n" + "".join(f"Print Assumptions {n}.\n" for n in blocks)
    (out / "Theorems.v").write_text(HEADER + "\n" + "\n".join(blocks.values()) + "\n" + footer)


def _build(out: Path, timeout: int) -> tuple[bool, str]:
    try:
        mk = subprocess.run(["coq_makefile", "-f", "_CoqProject", "-o", "Makefile.coq"], cwd=out, capture_output=True,
                            text=True, timeout=timeout)
        if mk.returncode:
            return False, mk.stdout + mk.stderr
        run = subprocess.run(["make", "-f", "Makefile.coq"], cwd=out, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"coqc took more than {timeout} s"
    return run.returncode == 0, run.stdout + run.stderr


def _assumptions(log: str, names: list[str]) -> dict:
    """Whether each Print Assumptions (in order) says 'Closed under the global context'."""
    answers = re.findall(r"(Closed under the global context|Axioms:)", log)
    return {n: i < len(answers) and answers[i].startswith("Closed") for i, n in enumerate(names)}


def _culprit(path: Path, log: str, names: list[str]) -> str | None:
    m = re.search(r'File "\./Theorems\.v", line (\d+)', log)
    if not m:
        return None
    line = int(m.group(1))
    current = None
    for i, text in enumerate(path.read_text().splitlines(), 1):
        t = re.match(r"Theorem (\S+)", text)
        if t:
            current = t.group(1)
        if i == line:
            return current if current in names else None
    return None
