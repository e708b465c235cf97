r"""The kernel's theorems as Coq statements (mathcomp, a real closed field): a second prover checks them.

`coq_statement(theorem)` prints a kernel `Theorem` (its dimensions, variables, definitions,
hypotheses and statement) in the prefix vocabulary of proofs/coq/CtxPatch.v: every node
``(op arg1 ... argk)``, types from the kernel's (a dimension d is ``d.+1``, a vector ``'cV[R]_d.+1``,
a family ``nat -> T``, an opaque function ``R -> R``), each definition a hypothesis ``x = rhs``, the
table's facts about exp, tanh, sigmoid and heaviside hypotheses too (they stay arbitrary functions).
`write_coq_project(dir, theorems)` writes a self-contained Coq project (the vocabulary, one file
`theorems/NAME.v` per theorem that has a proof script in proofs/coq/scripts -- or, for a block or
multi-layer theorem, the default script scripts/default/block.ltac -- a `_CoqProject` and `Theorems.v`
over the checked ones) and runs coqc on each file: a theorem is *checked* when coqc accepts its proof
and `Print Assumptions` finds no axiom.

The statements are printed from the theorem objects the kernel checked, so the statement coqc checks
is the one the kernel verified. Nothing here is trusted by the kernel.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
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
    subterms,
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
r0 r1 smax smin vmax vmin vmap2 fun forall exists let in if then else match with end as return at is by Type Prop Set
nat""".split())
#: The table's facts, as hypotheses about the (otherwise arbitrary) functions.
FACTS = {"exp": "forall x : R, 0 < {f} x", "tanh": "forall x : R, - 1 < {f} x < 1",
         "sigmoid": "forall x : R, 0 < {f} x < 1", "heaviside": "forall x : R, 0 <= {f} x <= 1"}
#: The router's maps of a mixture of experts (logits, rank j -> the j-th selected expert, its gate, an
#: expert's routing weight): arbitrary functions; the table's facts about the gates are hypotheses.
ROUTING = {"sel": ("nat", None), "gate": ("R", "0 < {f} l j <= 1"), "expert_gate": ("R", "0 <= {f} l j <= 1")}
ELEMENTWISE = ("sqrt", "exp", "tanh", "sigmoid", "heaviside")
#: max and min of two scalars (Num.max of the real closed field), coordinate by coordinate on vectors.
BINARY = {"max": "max", "min": "min"}


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
        self.seen: dict = {}  # (kind, kernel name) -> (Coq name, binder type)
        self.facts: list[str] = []
        self.dims: list[str] = []
        fns = {s.op.name for t in _terms(th) for s in subterms(t) if isinstance(s, App) and isinstance(s.op, Fn)}
        self.bound_names = {v.name for t in _terms(th) for v in free_vars(t)} | fns  # a sum's binder avoids them
        for t in _terms(th):
            for v in free_vars(t):
                _dims(v.ty, self.dims)
        self.reserved = RESERVED | set(self.dims) | {f"H{i}" for i in range(1, len(th.hypotheses) + 16)}
        self.rename: dict = {}
        self.local: set = set()  # names bound by the hypothesis being printed

    def name(self, n: str, kind: str = "var") -> str:
        """The Coq name of the kernel's variable (kind 'var'), opaque function ('fn') or operation ('op') `n`.
        The kernel keeps the three apart (a family G and a map G are different objects), so the names are keyed
        by kind: two kernel objects never share one Coq name."""
        key = (kind, n)
        if key not in self.rename:
            safe = re.sub(r"[^A-Za-z0-9_']", "_", n)
            safe = safe if safe[0].isalpha() else "x" + safe
            while safe in self.reserved or safe in self.rename.values():
                safe += "_v"
            self.rename[key] = safe
        return self.rename[key]

    def var(self, v: Var) -> str:
        n = self.name(v.name)
        if v.name not in self.local and ("var", v.name) not in self.seen:
            self.seen[("var", v.name)] = (n, coq_type(v.ty))
            if isinstance(v.ty, Index):  # an index in 1..E, as the kernel's table has it
                self.facts.append(_index_range(n, v.ty))
        return n

    def fn(self, name: str, ty: str, kind: str = "op") -> str:
        """A kernel operation (kind 'op': its facts from the table become hypotheses) or a user's function ('fn')."""
        n = self.name(name, kind)
        if kind == "op" and name in FACTS and FACTS[name].format(f=n) not in self.facts:
            self.facts.append(FACTS[name].format(f=n))
        self.seen.setdefault((kind, name), (n, ty))
        return n

    def routing(self, op: str, logits: Vector) -> str:
        """A router map ``'cV[R]_E.+1 -> nat -> T`` (its fact from the table a hypothesis)."""
        result, fact = ROUTING[op]
        n = self.fn(op, f"{coq_type(logits)} -> nat -> {result}")
        if fact:
            text = f"forall (l : {coq_type(logits)}) (j : nat), " + fact.format(f=n)
            if text not in self.facts:
                self.facts.append(text)
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
            name = self.fn(op.name, _fn_type(op), "fn")
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
        if op in BINARY:
            return f"({kind if kind == 'v' else 's'}{BINARY[op]} {p(a[0], ty)} {p(a[1], ty)})"
        if op in ROUTING:
            return f"({self.routing(op, a[0].ty)} {p(a[0])} {p(a[1])})"
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


def _index_range(n: str, ty: Index) -> str:
    """An index of the kernel: in 1..E (E a dimension, ``E.+1`` in Coq), or any positive integer."""
    return f"(0 < {n} <= {ty.bound}.+1)%N" if ty.bound else f"(0 < {n})%N"


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


#: The vocabulary and the files written by hand, copied into every project (CtxPatch.v first).
LIBRARY = ("CtxPatch.v", "Multilayer.v", "Moe.v")
FLAGS = ["-w", "-notation-overridden,-ambiguous-paths,-redundant-canonical-projection,-projection-no-head-constant"]


def coq_file(th: Theorem, script: str) -> str:
    """One theorem as a file of its own: the header, the printed statement, its proof script, and
    `Print Assumptions` (coqc answers 'Closed under the global context' when nothing is assumed)."""
    return (f"{HEADER}\n{coq_statement(th)}\nProof.\n{script.rstrip()}\nQed.\n\nEnd Theorems.\n\n"
            f"Print Assumptions {th.name}.\n")


def write_coq_project(out: Path, theorems: list[Theorem], source: Path | None = None, timeout: int = 240,
                      jobs: int = 2) -> list[dict]:
    """Write the Coq project into `out` and check it with coqc: one {name, checked, reason} per theorem.

    Every theorem is its own file `theorems/NAME.v`, checked by its own coqc run (at most `timeout`
    seconds, `jobs` at a time), so that one refused or slow proof costs only itself. A theorem is
    checked when coqc accepts the file and its `Print Assumptions` finds no axiom. The project's
    `_CoqProject` lists the library and the checked theorems, and `Theorems.v` requires them all:
    `coq_makefile -f _CoqProject -o Makefile.coq && make -f Makefile.coq` checks it again. A refused
    theorem's file and coqc's answer stay in `refused/` (not part of the project)."""
    source = Path(source) if source is not None else coq_source()
    out = Path(out)
    for sub in ("theorems", "refused"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True)
    if not (source / "CtxPatch.v").exists():
        return [_row(th.name, f"no Coq sources in {source}") for th in theorems]
    rows: dict = {}
    files: dict = {}
    for th in theorems:
        script = _script(source, th.name)
        if script is None:
            rows[th.name] = _row(th.name, "no proof script in proofs/coq/scripts")
            continue
        try:
            files[th.name] = coq_file(th, script.read_text())
        except Unprintable as exc:
            rows[th.name] = _row(th.name, f"cannot be printed: {exc}")
    for name in LIBRARY:
        shutil.copy(source / name, out / name)
    for name, text in files.items():
        (out / "theorems" / f"{name}.v").write_text(text)
    if shutil.which("coqc") is None or shutil.which("coq_makefile") is None:
        rows |= {n: _row(n, "coqc is not installed (make install-system)") for n in files}
        return [rows[th.name] for th in theorems]
    ok, log = _coqc(out, "CtxPatch.v", timeout)
    if not ok:
        rows |= {n: _row(n, f"coqc refuses CtxPatch.v: {_error(log)}") for n in files}
        return [rows[th.name] for th in theorems]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        answers = dict(zip(files, pool.map(lambda n: _coqc(out, f"theorems/{n}.v", timeout), files), strict=True))
    for name, (ok, log) in answers.items():
        if ok and "Closed under the global context" in log:
            rows[name] = {"name": name, "checked": True, "reason": ""}
            continue
        late = log.startswith("coqc took more than")
        rows[name] = _row(name, "Print Assumptions lists an axiom" if ok else
                          log if late else f"coqc refuses the proof: {_error(log)}")
        (out / "theorems" / f"{name}.v").replace(out / "refused" / f"{name}.v")
        (out / "refused" / f"{name}.log").write_text(log)
    _write_index(out, source, [n for n in files if rows[n]["checked"]])
    return [rows[th.name] for th in theorems]


def _row(name: str, reason: str) -> dict:
    return {"name": name, "checked": False, "reason": reason}


def _script(source: Path, name: str) -> Path | None:
    """scripts/NAME.ltac; for a block or multi-layer theorem without one, scripts/default/block.ltac."""
    own = source / "scripts" / f"{name}.ltac"
    if own.exists():
        return own
    default = source / "scripts" / "default" / "block.ltac"
    return default if name.startswith(("block_", "multilayer_")) and default.exists() else None


def _coqc(out: Path, path: str, timeout: int) -> tuple[bool, str]:
    """coqc on one file of the project (its whole process group stopped after `timeout` seconds)."""
    cmd = ["coqc", "-q", *FLAGS, "-R", ".", "CtxPatch", path]
    with subprocess.Popen(cmd, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as proc:
        try:
            log, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return False, f"coqc took more than {timeout} s"
    return proc.returncode == 0, log


def _error(log: str) -> str:
    """coqc's error: from the location it names, on one line."""
    at = log.find("File ")
    return " ".join(log[at if at >= 0 else 0:].split())[:400]


def _write_index(out: Path, source: Path, checked: list[str]) -> None:
    """`_CoqProject` (the library and the checked theorems) and `Theorems.v`, which requires them all."""
    head = [line for line in (source / "_CoqProject").read_text().splitlines() if not line.strip().endswith(".v")]
    files = [*LIBRARY, *(f"theorems/{n}.v" for n in checked), "Theorems.v"]
    (out / "_CoqProject").write_text("\n".join(head + files) + "\n")
    lines = ["(** The theorems of ctxpatch's kernel that coqc checked, one file each in theorems/. *)",
             "From CtxPatch Require " + " ".join(f"theorems.{n}" for n in checked) + "." if checked else "",
             "", *(f"Print Assumptions theorems.{n}.{n}." for n in checked)]
    (out / "Theorems.v").write_text("\n".join(lines) + "\n")
