r"""Citing a lemma: its statement and hypotheses instantiated exactly as the citation says.

Rule 5 of `symbolic.kernel.core` (*lemma*), the part that builds the instance: the substitution
instantiates variables of the lemma only (a compound term is refused: it would need a proven
equation), with terms of the same types up to one consistent renaming of dimensions; a variable the
substitution leaves keeps its name, and must keep its type. A defined name of the lemma is unfolded,
or mapped to a name defined here as the instance of its definition. Quantified variables are renamed
apart (kernel-owned names) before anything is substituted, and a sum's binder is a de Bruijn index:
nothing is captured. `discharge_hypothesis` decides whether the citing context gives a hypothesis of
the instance: a quantified one only by the same quantified hypothesis (opened with the same fresh
variables) or by proving it for fresh variables, never by an instance found by matching.
"""

from __future__ import annotations

from symbolic.kernel.binders import abstract, instantiate, rename_dims, subst
from symbolic.kernel.show import text
from symbolic.kernel.statements import RELATIONS, ProofError, Theorem, theorem_terms
from symbolic.kernel.terms import (
    App,
    Family,
    Index,
    Matrix,
    Term,
    Var,
    Vector,
    free_vars,
    fresh_var,
    rename_type,
)


def instantiate_lemma(lem: Theorem, substitution, ctx):
    """The lemma's statement and hypotheses under a substitution of its variables, dimensions renamed, and
    the instances of its definitions (the caller discharges the side conditions of all of them).

    A defined name of the lemma is unfolded (replaced by its definition), or, when the substitution
    maps it to a name defined here, that name's definition must be the instance of the lemma's (so
    the instance is that name). Quantified variables are renamed apart first; binders of sums are
    the kernel's own, so nothing is captured."""
    sub = dict(substitution)
    if len(sub) != len(substitution):
        raise ProofError("a variable is instantiated twice")
    defined = [h.expr for h in lem.definitions]
    variables = {v for t in theorem_terms(lem) for v in free_vars(t) if "%" not in v.name}
    rho: dict = {}
    for var, value in sub.items():
        if not isinstance(var, Var) or var not in variables:
            raise ProofError(f"{text(var) if isinstance(var, Term) else var!r} is not a variable of the lemma: a lemma "
                             "instantiates its variables only (a compound term needs a proven equation)")
        if not isinstance(value, Term) or value.loose:
            raise ProofError(f"{var.name} is instantiated with something that is not a closed term")
        _unify(var.ty, value.ty, rho, var)
    R = lambda t: rename_dims(t, rho)  # noqa: E731
    env = {R(v): e for v, e in sub.items() if v not in defined}
    fam: dict = {}
    for v in variables - set(sub) - set(defined):
        new = R(v)
        for t in theorem_terms(ctx.th):
            for w in free_vars(t):
                if w.name == new.name and w.ty != new.ty:
                    raise ProofError(f"the instance is ill-typed: the lemma's {v.name} becomes a {new.ty}, but here "
                                     f"{w.name} is a {w.ty}")

    def tr(t: Term) -> Term:
        if isinstance(t, Var):
            return env.get(t, t)
        if isinstance(t, App):
            if t.op == "at" and t.args[0] in fam:
                target = fam[t.args[0]]
                i = tr(t.args[1])
                return App("at", (target, i)) if isinstance(target, Var) else instantiate(target, i)
            return App(t.op, tuple(tr(a) for a in t.args))
        if hasattr(t, "body"):
            return type(t)(tr(t.hi), tr(t.body))
        return t

    bodies = []  # every instantiated definition, a family's opened with a fresh index: the caller checks them
    for h in lem.definitions:
        v = R(h.expr)
        body = tr(R(abstract(h.rhs, h.binders[0]) if h.binders else h.rhs))
        bodies.append(instantiate(body, fresh_var(f"{h.binders[0].name}%b0", Index(v.ty.bound))) if h.binders
                      else body)
        target = sub.get(h.expr)
        if target is None:
            (fam if h.binders else env)[v] = body
            continue
        mine = ctx.families.get(target) if h.binders else ctx.defs.get(target)
        if not (mine == body or (not h.binders and ctx.equal(target, body))):
            raise ProofError(f"the lemma's {h.expr.name} is instantiated by {text(target)}, which is not defined "
                             "here as the instance of the lemma's definition")
        (fam if h.binders else env)[v] = target
    hyps = []
    for h in lem.assumptions:
        fresh = {b: fresh_var(f"{b.name}%q{i}", b.ty) for i, b in enumerate(h.binders)}
        hyps.append((h.kind, tuple(R(b) for b in fresh.values()),
                     *(tr(R(subst(e, fresh))) if e is not None else None for e in (h.expr, h.rhs))))
    return tr(R(lem.lhs)), tr(R(lem.rhs)), RELATIONS[lem.relation], hyps, bodies


def _unify(s, t, rho: dict, var) -> None:
    if type(s) is not type(t):
        raise ProofError(f"{var.name} is a {s} but is instantiated with a {t}")
    for a, b in zip(_dims(s), _dims(t), strict=True):
        if a is None or b is None:
            if a != b:
                raise ProofError(f"{var.name} is a {s} but is instantiated with a {t}")
        elif rho.setdefault(a, b) != b:
            raise ProofError(f"dimension {a} is instantiated as both {rho[a]} and {b} (at {var.name})")
    if rename_type(s, rho) != t:
        raise ProofError(f"{var.name} is a {s} but is instantiated with a {t}")


def _dims(t) -> tuple:
    if isinstance(t, Vector):
        return (t.dim,)
    if isinstance(t, Matrix):
        return (t.rows, t.cols)
    if isinstance(t, Index):
        return (t.bound,)
    if isinstance(t, Family):
        return (t.bound, *_dims(t.elem))
    return ()


def discharge_hypothesis(h, ctx, extra: tuple) -> str:
    """'' when discharged, else what is missing."""
    kind, binders, x, r = h
    shown = f"{text(x)} = {text(r)}" if kind == "equation" else f"{kind}({text(x)})"
    if binders:
        shown = f"for all {', '.join(b.name.split('%')[0] for b in binders)}: {shown}"
        fresh = {b: fresh_var(f"{b.name.split('%')[0]}%f{i}", b.ty) for i, b in enumerate(binders)}
        x, r = subst(x, fresh), subst(r, fresh) if r is not None else None
        if kind == "equation":
            for bs, lhs, rhs in ctx.foralls:
                if [b.ty for b in bs] == [b.ty for b in binders]:
                    mine = dict(zip(bs, fresh.values(), strict=True))
                    if ctx.equal(subst(lhs, mine), x) and ctx.equal(subst(rhs, mine), r):
                        return ""
            return "" if ctx.equal(x, r) else shown
    if kind == "equation":
        if ctx.equal(x, r, extra) or any(ctx.equal(a, x) and ctx.equal(b, r) for a, b in ctx.equations):
            return ""
        return shown
    need = {"nonzero": "vector" if isinstance(x.ty, Vector) else "coords", "coords": "coords",
            "positive": "positive"}[kind]
    return "" if ctx.discharge(need, x) else shown
