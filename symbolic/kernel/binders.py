r"""Substitution and binders of the kernel's terms, defined here once and used everywhere.

`subst` (simultaneous substitution of closed terms for free variables), `rename_dims` (dimension
renaming in every type), `abstract` (a named index becomes a binder's bound variable), `instantiate`
(opening a binder) and `shift` (moving a term under or out of binders), and `rebuild` (a node over new
children, through its typed constructor). All are capture-avoiding: `subst` substitutes closed terms
only, and `abstract` / `instantiate` shift the loose bound variables they carry across a binder, so no
binder of the kernel ever captures a variable that was not its own.
"""

from __future__ import annotations

from symbolic.kernel.signature import Fn, TypeError_, rename_type
from symbolic.kernel.terms import App, BVar, Sum, Term, Var, children, fresh_var


def rebuild(t: Term, kids: tuple) -> Term:
    """The same node over new children, through the typed constructor."""
    if isinstance(t, App):
        return App(t.op, kids)
    if isinstance(t, Sum):
        return Sum(*kids)
    return t


def subst(t: Term, sub: dict) -> Term:
    """Replace free variables simultaneously (types must agree). Only closed terms are substituted and
    binders are de Bruijn indices, so no variable of a substituted term can be captured."""
    if not sub:
        return t
    for v, e in sub.items():
        if not isinstance(v, Var) or not isinstance(e, Term) or v.ty != e.ty:
            raise TypeError_(f"substituting a {getattr(e, 'ty', e)} for the {getattr(v, 'ty', v)} {v!r}")
        if e.loose:
            raise TypeError_("a substituted term has no loose bound variable")
    return _subst(t, sub, {})


def _subst(t, sub, memo):
    if t in memo:
        return memo[t]
    if isinstance(t, Var):
        out = sub.get(t, t)
    elif isinstance(t, (App, Sum)):
        kids = children(t)
        new = tuple(_subst(c, sub, memo) for c in kids)
        out = t if all(a is b for a, b in zip(new, kids, strict=True)) else rebuild(t, new)
    else:
        out = t
    memo[t] = out
    return out


def rename_dims(t: Term, rho: dict[str, str]) -> Term:
    """Rename dimension names in every type of `t` (variables, bound indices, map signatures)."""
    if not rho:
        return t
    if isinstance(t, Var):
        return fresh_var(t.name, rename_type(t.ty, rho)) if "%" in t.name else Var(t.name, rename_type(t.ty, rho))
    if isinstance(t, BVar):
        return BVar(t.level, rename_type(t.ty, rho))
    if isinstance(t, App):
        op = t.op.renamed(rho) if isinstance(t.op, Fn) else t.op
        return App(op, tuple(rename_dims(a, rho) for a in t.args))
    if isinstance(t, Sum):
        return Sum(rename_dims(t.hi, rho), rename_dims(t.body, rho))
    return t


def shift(t: Term, by: int, cutoff: int = 0) -> Term:
    r"""$\uparrow^{by}_{cutoff}$: every loose bound variable of level >= `cutoff` moves `by` levels out (the
    term is carried under `by` more binders, or out of -by binders it does not use). Levels below the
    cutoff are bound inside the part of the term being moved and stay."""
    if by == 0 or not any(level >= cutoff for level, _ in t.loose):
        return t
    if isinstance(t, BVar):
        if t.level + by < 0:
            raise TypeError_("a bound variable shifted out of its binder")
        return BVar(t.level + by, t.ty)
    if isinstance(t, App):
        return App(t.op, tuple(shift(a, by, cutoff) for a in t.args))
    if isinstance(t, Sum):
        return Sum(shift(t.hi, by, cutoff), shift(t.body, by, cutoff + 1))
    return t


def abstract(t: Term, v: Var, level: int = 0) -> Term:
    r"""Close over the variable `v`: it becomes the bound variable of a new binder `level` levels up.

    Capture-avoiding: the new binder sits between `t`'s own binders below `level` and the ones its loose
    bound variables refer to, so every loose bound variable of level >= `level` moves one level out
    (`instantiate(abstract(t, v), v) == t` for every t, closed or not)."""
    if t == v:
        return BVar(level, v.ty)
    if isinstance(t, BVar):
        return BVar(t.level + 1, t.ty) if t.level >= level else t
    if isinstance(t, App):
        return App(t.op, tuple(abstract(a, v, level) for a in t.args))
    if isinstance(t, Sum):
        return Sum(abstract(t.hi, v, level), abstract(t.body, v, level + 1))
    return t


def instantiate(body: Term, e: Term, level: int = 0) -> Term:
    r"""Open a binder: $\mathrm{body}[\mathrm{BVar}(level) := e]$, capture-avoiding.

    `e` may itself have loose bound variables (the index of an enclosing sum, when a family is unfolded
    under that sum): at depth k below the opened binder it is shifted k levels out, so the binders of
    `body` never capture them. The opened binder disappears, so the body's loose bound variables of
    level > `level` move one level in."""
    if not body.loose:
        return body
    if isinstance(body, BVar):
        if body.level == level:
            if e.ty != body.ty:
                raise TypeError_(f"a binder over a {body.ty} opened with a {e.ty}")
            return shift(e, level)
        return BVar(body.level - 1, body.ty) if body.level > level else body
    if isinstance(body, App):
        return App(body.op, tuple(instantiate(a, e, level) for a in body.args))
    if isinstance(body, Sum):
        return Sum(instantiate(body.hi, e, level), instantiate(body.body, e, level + 1))
    return body
