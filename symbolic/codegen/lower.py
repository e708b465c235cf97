r"""From a `Derivation` to straight-line kernel code: lowering, common subexpressions, ordering.

Four functions are generated per block, all batched over tokens:

- ``block_patches(params, u, u_ctx)``: the derivation's definitions ($z$, $z_C$, $a_C$, $h_C$,
  $f_C$, ...) and its patch formulas, exactly as derived, with the side conditions as checks;
- ``apply(params, patches, u)``: the block's own stages (`symbolic.model.Block`) with every
  patched parameter replaced by its factored form ($W + \ell r^\top$, $b + \Delta$, $s\gamma$); the
  algebra's linearity rules turn $(W + \ell r^\top) z$ into $W z + \ell\,(r^\top z)$, so no dense
  matrix is ever formed;
- ``forward(params, u)``: the same stages, unpatched;
- ``plain_products(params, u)`` (dense blocks): the products $W v$ of the no-context input that ``apply``
  computes before any patch enters ($W_\mathrm{gate} z$, $W_\mathrm{up} z$: `plain_products`), with
  ``apply``'s own statements; ``apply`` and ``block_patches`` accept them ready-made (``plain``), so a
  pass that computes a layer's patches and then applies them reads each of these matrices once, and
  ``apply`` gives the same bits with them as without;
- ``products(params, u_ctx)`` (dense blocks): the contextual products $W v_C$ of the patch formulas
  (`given_products`: $W_\mathrm{gate} z_C$, $W_\mathrm{down} a_C$, ...), which ``block_patches`` also
  accepts ready-made (``given``): the contextual run has already computed them.

Lowering rewrites what the printers cannot print: a top-k sum
$\sum_{j\le k} g(\ell, j)\, F(\mathrm{Sel}(\ell, j))$ becomes a sum over the expert axis with
routing weights that vanish off the top-k; `EMat`/`EVec` of the generic expert become the stacked
arrays; an activation of the registry becomes `Activation`, a call by name (`name_activations`).
Then `sympy.cse` shares subexpressions across all outputs of a function, the assignments are
ordered by dependency (depth first from the outputs, so each temporary sits just before its first
use), and a temporary is kept only for a subexpression the emitted code uses more than once.
`symbolic.codegen.layout` numbers the temporaries and fits the lines.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from functools import cache

import sympy as sp
from sympy.core.function import Application

from symbolic.activations import named
from symbolic.activations import x as act_var
from symbolic.algebra import Dot, EMat, EVec, ExpertGate, Gate, MatVec, Mean, Outer, Sel, Vec, normalize
from symbolic.codegen.printers import Activation, EMatVec, ExpertSum, KDot, KMean, RouteWeight, TopkMask
from symbolic.derivation import Derivation
from symbolic.model import Block, Params, expert
from symbolic.printing import pstr
from symbolic.spec import ACTIVATIONS, BlockSpec, dump_toml
from symbolic.terms import Mat


@dataclass(frozen=True)
class Assign:
    target: str
    expr: sp.Expr


@dataclass(frozen=True)
class PatchOut:
    """One factored patch: rank1 (left, right), bias/vector (delta), or scale (s)."""

    param: str
    kind: str
    fields: tuple[tuple[str, str], ...]  # (field name in the patch dict, variable)
    per_expert: bool


@dataclass(frozen=True)
class Check:
    var: str
    kind: str
    text: str
    per_expert: bool


@dataclass
class Function:
    body: list[Assign]
    per_expert: set[str] = field(default_factory=set)
    result: str = "y"  # the variable the function returns
    given: dict[str, str] = field(default_factory=dict)  # variable -> matrix: a product taken from ``given``
    plain: dict[str, str] = field(default_factory=dict)  # variable -> key: a product taken from ``plain``


@dataclass
class KernelIR:
    spec: BlockSpec
    derivation: Derivation
    constants: list[tuple[str, float]]
    params: list[tuple[str, str]]  # (variable, canonical parameter name)
    patch_fn: Function
    patches: list[PatchOut]
    checks: list[Check]
    apply_fn: Function
    forward_fn: Function
    products_fn: Function | None = None  # the contextual products `given` accepts (`products_function`)
    twins: dict[str, str] = field(default_factory=dict)  # matrix -> the plain key of its no-context twin (`twins`)

    @property
    def moe(self) -> bool:
        return self.spec.moe is not None

    @property
    def parallel(self) -> bool:
        return self.spec.residual == "parallel"

    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(dump_toml(self.spec).encode()).hexdigest()[:16]

    @property
    def formula_hash(self) -> str:
        """Hash of what the kernel computes: the lowered assignments of all its functions."""
        fns = (self.patch_fn, self.apply_fn, self.forward_fn) + tuple(f for f in (self.products_fn,) if f)
        text = "\n".join(f"{a.target}={sp.srepr(a.expr)}" for fn in fns for a in fn.body)
        text += "\n" + repr(sorted(self.patch_fn.given.items()))
        text += "\n" + repr(sorted(self.patch_fn.plain.items())) + repr(sorted(self.apply_fn.plain.items()))
        text += "\n" + repr(sorted(self.twins.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def ident(param: str) -> str:
    """A parameter's canonical name as a Python identifier: ``mlp_post_norm.scale`` -> ``mlp_post_norm_scale``."""
    return param.replace(".", "_")


# --------------------------------------------------------------------------- lowering


def _lower_sum(s: sp.Sum, route: tuple[sp.Expr, ...]) -> sp.Expr:
    """A top-k sum as a sum over the expert axis: the routing weights vanish off the top-k; a sum without
    them (input weighting, Llama 4) is masked to the top-k explicitly."""
    (j, _lo, _hi), = s.limits
    logits = {e.args[0] for e in s.function.atoms(Sel) if e.args[1] == j}
    f = s.function.replace(lambda e: isinstance(e, Sel) and e.args[1] == j, lambda e: expert)
    if not any(g.args[1] == j for g in f.atoms(Gate)) and logits:
        f = TopkMask(next(iter(logits)), *route) * f
    f = f.replace(lambda e: isinstance(e, Gate) and e.args[1] == j, lambda e: RouteWeight(e.args[0], *route))
    return ExpertSum(f)


def route_args(spec: BlockSpec) -> tuple[sp.Expr, ...]:
    """What the router reads besides its logits: the selection bias, when the spec has one."""
    return (Block(spec).params["b_select"].symbol,) if spec.moe is not None and spec.moe.selection_bias else ()


def lower(expr: sp.Expr, route: tuple[sp.Expr, ...] = ()) -> sp.Expr:
    """Rewrite an expression of the algebra into printable batched form (see the module docstring).

    `route`: the router's arguments besides the logits (`route_args`), passed on to `RouteWeight`.
    """
    expr = expr.replace(lambda e: isinstance(e, sp.Sum), lambda e: _lower_sum(e, route))
    expr = expr.replace(lambda e: isinstance(e, ExpertGate) and e.args[1] == expert,
                        lambda e: RouteWeight(e.args[0], *route))
    expr = normalize(expr)
    expr = expr.replace(lambda e: isinstance(e, MatVec) and isinstance(e.args[0], EMat),
                        lambda e: EMatVec(e.args[0].args[0], e.args[1]))
    expr = expr.replace(lambda e: isinstance(e, EVec) and e.args[1] == expert, lambda e: e.args[0])
    expr = expr.replace(lambda e: isinstance(e, Dot), lambda e: KDot(*e.args))
    expr = expr.replace(lambda e: isinstance(e, Mean), lambda e: KMean(*e.args))
    expr = name_activations(expr)
    leftover = [a for a in sp.preorder_traversal(expr) if isinstance(a, (Sel, Gate, ExpertGate, EMat, EVec, sp.Sum))]
    if leftover or expert in expr.free_symbols:
        raise ValueError(f"cannot lower {pstr(expr)}: {leftover or 'a free expert index'} left")
    return expr


lower_expr = lower


# --------------------------------------------------------------------------- named activations

_ARG = sp.Wild("w")


@cache
def _registry() -> tuple[tuple[str, sp.Expr, sp.Expr], ...]:
    r"""(name, expression in x, anchor) of the registry's activations that the back ends do not name already
    (not x itself, nor one function of x such as tanh), the largest first: silu $x\,\sigma(x)$ is found before
    the sigmoid inside it. The anchor is the activation's outermost function of x ($e^{-x}$ in silu)."""
    out = []
    for name in ACTIVATIONS:
        expr = named(name)
        anchor = next((n for n in sp.preorder_traversal(expr) if isinstance(n, Application) and n.has(act_var)), None)
        if anchor is not None and not (anchor == expr and expr.args == (act_var,)):
            out.append((name, expr, anchor))
    return tuple(sorted(out, key=lambda t: -len(list(sp.preorder_traversal(t[1])))))


def _split(e: sp.Expr) -> tuple[sp.Expr, Counter]:
    """A product as (numeric coefficient, multiset of its other factors)."""
    coeff, rest = e.as_coeff_Mul()
    return coeff, Counter(sp.Mul.make_args(rest))


def name_activations(expr: sp.Expr) -> sp.Expr:
    r"""`expr` with every activation of the registry in it written as `Activation` (printed by name).

    An occurrence $S(w)$ of an activation $S(x)$ is found exactly: $w$ is read off the anchor by matching
    ($e^{-x}$ against $e^{-W z - b}$ gives $w = W z + b$), and every factor of $S(w)$ must be a factor of
    one product of `expr`, with the same numeric coefficient where $S$ has one ($\tfrac12$ in GELU): the
    rewrite $S(w)\,r \to \mathrm{Activation}(w)\,r$ is an identity of expressions and needs no new constant.
    A custom activation stays an expression, with the registry's pieces in it named (a sigmoid)."""
    for name, S, anchor in _registry():
        pattern = anchor.subs(act_var, _ARG)
        for node in sorted(expr.atoms(type(anchor)), key=sp.default_sort_key):
            found = node.match(pattern)
            if found and _ARG in found:
                expr = _name_products(expr, Activation.of(name, found[_ARG]), S.subs(act_var, found[_ARG]))
    return expr


def _name_products(expr: sp.Expr, act: Activation, value: sp.Expr) -> sp.Expr:
    """Every product of `expr` that has the factors of `value` written with `act` in their place."""
    coeff, factors = _split(value)

    def has(e: sp.Basic) -> bool:
        if not isinstance(e, sp.Expr):  # a Piecewise condition, a Str
            return False
        c, f = _split(e)
        return not factors - f and (coeff == 1 or c == coeff)

    def named_in(e: sp.Expr) -> sp.Expr:
        c, f = _split(e)
        return (c / coeff) * act * sp.Mul(*(f - factors).elements())

    return expr.replace(has, named_in)


def depends_on(expr: sp.Expr, names: set[str]) -> bool:
    """Whether `expr` is an array over the expert axis (an expert sum removes that axis)."""
    if isinstance(expr, ExpertSum):
        return False
    if isinstance(expr, (RouteWeight, EMatVec, TopkMask)):
        return True
    if isinstance(expr, sp.Symbol):
        return expr.name in names
    return any(depends_on(a, names) for a in expr.args)


def straight_line(outputs: list[Assign], expert_names: set[str], temps=None,
                  roots: list[str] | None = None) -> Function:
    """CSE over all outputs, then assignments ordered depth-first from `roots` (default: every output).

    An output no root needs is dropped, so the generated code has no unused variable. A temporary stands
    for real repetition only: one that is an output's whole value takes the output's name, and one that the
    emitted code uses once is written where it is used.
    """
    targets = [a.target for a in outputs]
    temps = temps if temps is not None else sp.numbered_symbols("t")
    replacements, reduced = sp.cse([a.expr for a in outputs], symbols=temps, order="none")
    # A constant shared by several outputs stays inline: printed where it is used, as it would be in a
    # function without the others (each function rounds as it would alone).
    constants = {s: e for s, e in replacements if not e.free_symbols}
    replacements = [(s, e.xreplace(constants)) for s, e in replacements if s not in constants]
    reduced = [e.xreplace(constants) for e in reduced]
    assigns = {s.name: e for s, e in replacements}
    assigns.update(dict(zip(targets, reduced, strict=True)))
    _name_temporaries(assigns, targets, {s.name for s, _ in replacements})
    order: list[str] = []

    def emit(name: str) -> None:
        if name in order or name not in assigns:
            return
        for dep in sorted((s.name for s in assigns[name].free_symbols), key=_natural):
            if dep != name:
                emit(dep)
        order.append(name)

    for t in roots if roots is not None else targets:
        emit(t)
    body = _inline_single_use([Assign(n, assigns[n]) for n in order], set(assigns) - set(targets))
    fn = Function(body, set(expert_names))
    for a in fn.body:
        if depends_on(a.expr, fn.per_expert):
            fn.per_expert.add(a.target)
    return fn


def _name_temporaries(assigns: dict[str, sp.Expr], targets: list[str], temps: set[str]) -> None:
    """A temporary that is the whole value of an output (``ell_C = t3``) becomes that output, in place."""
    for target in targets:
        value = assigns[target]
        if isinstance(value, sp.Symbol) and value.name in temps and value.name in assigns:
            named_as = next((s for e in assigns.values() for s in e.free_symbols if s.name == target),
                            sp.Symbol(target))
            assigns[target] = assigns.pop(value.name)
            for k, e in assigns.items():
                assigns[k] = e.xreplace({value: named_as})


def _inline_single_use(body: list[Assign], temps: set[str]) -> list[Assign]:
    """`body` with every temporary that is used once written where it is used (CSE over outputs that are
    not all emitted, or whose repetition the named activations absorbed, leaves such temporaries)."""
    while True:
        uses = {t: 0 for t in temps}
        for a in body:
            for s in a.expr.free_symbols:
                if s.name in uses:
                    uses[s.name] += a.expr.count(s)
        once = next((a for a in body if uses.get(a.target) == 1), None)
        if once is None:
            return body
        sym = next(s for b in body for s in b.expr.free_symbols if s.name == once.target)
        body = [Assign(b.target, b.expr.xreplace({sym: once.expr})) for b in body if b is not once]


def _natural(name: str) -> tuple:
    return (name.rstrip("0123456789"), int(name[len(name.rstrip("0123456789")):] or -1))


# --------------------------------------------------------------------------- the three functions


def _def_target(name: str) -> str:
    return name.replace("[e]", "")


@dataclass(frozen=True)
class PatchOutputs:
    """The patch function's assignments before CSE (`patch_outputs`), shared by the functions built on them."""

    outputs: list[Assign]
    patches: list[PatchOut]
    conditions: list  # (variable, condition) pairs
    roots: list[str]  # the order the outputs are emitted in
    given: dict[str, str]  # variable -> matrix: the contextual products (`given_products`)
    plain: dict[str, str]  # variable -> key: the products of the no-context input (`plain_products`)


def patch_function(spec: BlockSpec, po: PatchOutputs) -> tuple[Function, list[PatchOut], list[Check]]:
    per_expert_atoms = {"a_C"} if spec.moe is not None else set()
    fn = _with_given(straight_line(po.outputs, per_expert_atoms, roots=po.roots), po.given)
    fn.plain = {a.target: po.plain[a.target] for a in fn.body if a.target in po.plain}
    checks = [Check(var, c.kind, c.text(), var in fn.per_expert) for var, c in po.conditions]
    return fn, po.patches, checks


def _with_given(fn: Function, given: dict[str, str]) -> Function:
    """`fn` with the given products it computes recorded (``Function.given``)."""
    fn.given = {a.target: given[a.target] for a in fn.body if a.target in given}
    return fn


def given_products(spec: BlockSpec, outputs: list[Assign]) -> tuple[list[Assign], dict[str, str]]:
    r"""Every contextual product $W v_C$ of the patch formulas as an assignment of its own, and which matrix
    each one multiplies: ({variable: canonical matrix name}).

    A vector is contextual when it is made of $u_C$ (and parameters) alone, never of $u$ or $x$; a matrix whose
    formulas multiply exactly one contextual vector gets its product named (the definition itself where one is
    that product, $h_C = W_\mathrm{down} a_C$; else ``<W>_<v>``). The contextual run computes these products
    anyway, and a kernel can take them from it (``given``) instead of reading the matrix again. Dense blocks
    only: a mixture's expert products are per expert, its router's are not worth the bookkeeping."""
    if spec.moe is not None:
        return outputs, {}
    matrices = {p.symbol.name: canon for canon, p in Block(spec).params.items() if isinstance(p.symbol, Mat)}
    contextual, plain = {"u_C"}, {"u", "x"}
    for a in outputs:
        names = _vec_names(a.expr)
        if names & plain:
            plain.add(a.target)
        elif names & contextual:
            contextual.add(a.target)
    products = _single_products(outputs, matrices, lambda v: bool(_vec_names(v) & contextual)
                                and not _vec_names(v) & plain)
    targets = {a.expr: a.target for a in outputs if a.expr in products}
    targets.update(_product_names([e for e in products if e not in targets], {a.target for a in outputs}, "C"))
    new = [Assign(targets[e], e) for e in products if not any(a.target == targets[e] for a in outputs)]
    swap = {e: Vec(targets[e], e.args[0].rows) for e in products}
    outputs = new + [a if a.expr in products else Assign(a.target, a.expr.xreplace(swap)) for a in outputs]
    return outputs, {targets[e]: matrices[W] for e, W in products.items()}


def _vec_names(expr: sp.Expr) -> set[str]:
    return {s.name for s in expr.free_symbols if isinstance(s, Vec)}


def _single_products(outputs: list[Assign], matrices: dict[str, str], keep) -> dict[sp.Expr, str]:
    """{W v: W} of every matrix that the outputs multiply by exactly one vector v with ``keep(v)``."""
    found: dict[str, set] = {}
    for a in outputs:
        for e in sorted(a.expr.atoms(MatVec), key=sp.default_sort_key):  # (a set: its order follows the hash seed)
            W, v = e.args
            if isinstance(W, Mat) and W.name in matrices and keep(v):
                found.setdefault(W.name, set()).add(e)
    return {next(iter(es)): W for W, es in found.items() if len(es) == 1}


def _product_names(products: list[sp.Expr], taken: set[str], suffix: str) -> dict[sp.Expr, str]:
    """A fresh variable per product W v: ``<W>_<v>``, or ``<W>_<suffix>`` where v is not a named vector."""
    names = {}
    for e in products:
        W, v = e.args
        name = f"{W.name}_{v.name}" if isinstance(v, Vec) else f"{W.name}_{suffix}"
        while name in taken:
            name += "_"
        names[e] = name
        taken.add(name)
    return names


def products_function(po: PatchOutputs, used: dict[str, str]) -> Function | None:
    """The given products that the patch function uses (``used``: its `Function.given`), computed from u_ctx
    alone: what a kernel accepts as ``given``. None where there are none."""
    if not used:
        return None
    return _with_given(straight_line(po.outputs, set(), roots=list(used)), po.given)


def patch_outputs(spec: BlockSpec, der: Derivation) -> PatchOutputs:
    """The patch function's assignments before CSE, its patches, its (variable, condition) pairs, the
    order its outputs are emitted in and its given products (`given_products`)."""
    s = Block(spec).signals
    route = route_args(spec)

    def lower(expr: sp.Expr) -> sp.Expr:
        return lower_expr(expr, route)

    outputs: list[Assign] = []
    for name, expr in der.definitions:
        if name == "delta":  # delta = u_C - u: the contextual residual base minus the plain one
            expr = s["u_C"] - s["u"]
        outputs.append(Assign(_def_target(name), lower(expr)))
    patches = []
    for p in der.patches:
        i = ident(p.param)
        if p.kind == "rank1":
            fields = (("left", f"{i}_left"), ("right", f"{i}_right"))
            outputs += [Assign(f"{i}_left", lower(p.value)), Assign(f"{i}_right", lower(p.right))]
        else:
            key = {"scale": "scale"}.get(p.kind, "delta")
            fields = ((key, f"{i}_{key}"),)
            outputs.append(Assign(f"{i}_{key}", lower(p.value)))
        patches.append(PatchOut(p.param, p.kind, fields, p.per_expert))
    conditions = [(f"condition_{n}", c) for n, c in enumerate(der.conditions)]
    outputs += [Assign(var, lower(c.expr)) for var, c in conditions]
    # Router logits first (per-expert checks need the top-k mask), then each condition, so that the
    # kernel checks it before any formula divides by it; then the patches.
    roots = (["ell_C"] if spec.moe is not None else []) + [var for var, _ in conditions]
    roots += [v for p in patches for _, v in p.fields]
    outputs, given = given_products(spec, outputs)
    outputs, plain = plain_products(spec, outputs)
    return PatchOutputs(outputs, patches, conditions, roots, given, plain)


def plain_products(spec: BlockSpec, outputs: list[Assign], inputs: set[str] = frozenset({"u", "x"}),
                   patch_vars: frozenset[str] = frozenset()) -> tuple[list[Assign], dict[str, str]]:
    r"""Every product $W v$ of a matrix and a *plain* vector (made of the no-context inputs u, x and the
    parameters alone, free of the patches ``patch_vars``) as an assignment of its own, placed just before the
    first assignment that uses it, and the key each one is known by: ({variable: key}).

    The key is the matrix's canonical name and a hash of $v$ written out in u, x and parameters
    (``W_gate@1a2b3c4d``), so a product is taken ready-made (``plain``) only where it is the very product the
    function would compute: the patch function's $W z$ and `apply`'s are the same key when both define z as
    the same expression. A matrix with several plain products gets none. Dense blocks only."""
    if spec.moe is not None:
        return outputs, {}
    block = Block(spec)
    matrices = {p.symbol.name: canon for canon, p in block.params.items() if isinstance(p.symbol, Mat)}
    params = {p.symbol.name for p in block.params.values()}
    defs = {a.target: a.expr for a in outputs}
    plain = set(inputs)
    changed = True
    while changed:  # the plain assignments, in any order (the patch function's are not yet ordered)
        changed = False
        for a in outputs:
            if a.target not in plain and _is_plain(a.expr, plain, params, patch_vars):
                plain.add(a.target)
                changed = True
    products = _single_products(outputs, matrices, lambda v: _is_plain(v, plain, params, patch_vars))
    if not products:
        return outputs, {}
    names = _product_names(list(products), set(defs), "p")
    swap = {e: Vec(names[e], e.args[0].rows) for e in products}
    out, placed = [], set()
    for a in outputs:
        for e in sorted(a.expr.atoms(MatVec) & set(products), key=sp.default_sort_key):
            if e not in placed:
                out.append(Assign(names[e], e))
                placed.add(e)
        out.append(Assign(a.target, a.expr.xreplace(swap)))
    keys = {names[e]: f"{matrices[W]}@{_vector_key(e.args[1], defs)}" for e, W in products.items()}
    return out, keys


def _is_plain(expr: sp.Expr, plain: set[str], params: set[str], patch_vars: frozenset[str]) -> bool:
    names = {s.name for s in expr.free_symbols}
    vectors = {s.name for s in expr.free_symbols if isinstance(s, Vec)} - params
    return vectors <= plain and not names & patch_vars


def _written_out(v: sp.Expr, defs: dict[str, sp.Expr]) -> sp.Expr:
    """`v` in the inputs and parameters: every assignment it names substituted, recursively."""
    for _ in range(len(defs) + 1):
        subs = {s: defs[s.name] for s in v.free_symbols if isinstance(s, Vec) and s.name in defs}
        if not subs:
            break
        v = v.xreplace(subs)
    return v


def _vector_key(v: sp.Expr, defs: dict[str, sp.Expr]) -> str:
    """A short hash of `v` written out in the inputs and parameters (`_written_out`)."""
    return hashlib.sha256(sp.srepr(_written_out(v, defs)).encode()).hexdigest()[:8]


def _patched_params(spec: BlockSpec, der: Derivation) -> Params:
    """The block's parameters with every patched one in factored symbolic form."""
    b = Block(spec)
    P = b.unpatched()
    changes = {}
    for p in der.patches:
        param, i = b.params[p.param], ident(p.param)
        sym = param.symbol
        if p.kind == "rank1" and p.per_expert:
            left, right = Vec(f"{i}_left", sym.rows), Vec(f"{i}_right", sym.cols)
            changes[p.param] = EMat(sym, expert) + Outer(EVec(left, expert), EVec(right, expert))
        elif p.kind == "rank1" and isinstance(sym, Vec):  # a 1 x d map stored as a vector (shared gate)
            changes[p.param] = sym + sp.Symbol(f"{i}_left", real=True) * Vec(f"{i}_right", sym.dim)
        elif p.kind == "rank1":
            changes[p.param] = sym + Outer(Vec(f"{i}_left", sym.rows), Vec(f"{i}_right", sym.cols))
        elif p.kind == "scale":
            s_ = sp.Symbol(f"{i}_scale", real=True)
            one_plus = spec.norms[p.param.split(".")[0]].scale == "one_plus"
            changes[p.param] = s_ * (1 + sym) - 1 if one_plus else s_ * sym
        else:
            changes[p.param] = sym + Vec(f"{i}_delta", sym.dim)
    return P.replace(changes)


def stage_function(spec: BlockSpec, P: Params, per_expert_patch: set[str],
                   patch_vars: frozenset[str] | None = None) -> Function:
    """z, a, (ell, sigma_sg), h, o, r, y of one run with parameters P, one assignment per stage. ``patch_vars``
    (`apply`): the patch fields; the products of plain vectors are then assignments of their own, which
    ``plain`` may give (`plain_products`)."""
    per_expert = set(per_expert_patch) | ({"a"} if spec.moe is not None else set())
    out, plain = _stage_outputs(spec, P), {}
    if patch_vars is not None:
        out, plain = plain_products(spec, out, patch_vars=patch_vars)
    fn = _stages(out, per_expert)
    fn.plain = plain
    return fn


def _stage_outputs(spec: BlockSpec, P: Params) -> list[Assign]:
    """The stages of `stage_function`, one assignment each, before CSE."""
    b, s = Block(spec), Block(spec).signals
    route = route_args(spec)

    def lower(expr: sp.Expr) -> sp.Expr:
        return lower_expr(expr, route)

    z = Vec("z", "d")
    mlp_in = s["x"] if spec.residual == "parallel" else s["u"]
    out = [Assign("z", lower(b.pre(P, mlp_in)))]
    ell, sg = None, sp.S.One
    if b.input_weighted():  # the experts read the routing weights: the logits come first
        ell = Vec("ell", "n_E")
        out.append(Assign("ell", lower(b.logits(P, z))))
    atoms = {}
    for g in b.hidden_groups():
        name = {"": "a", "experts": "a", "shared": "a_s"}[g]
        dim = "m_s" if g == "shared" else "m"
        out.append(Assign(name, lower(b.hidden(P, z, g, ell=ell))))
        atoms[g] = EVec(Vec(name, dim), expert) if g == "experts" else Vec(name, dim)
    if spec.moe is not None:
        if ell is None:
            ell = Vec("ell", "n_E")
            out.append(Assign("ell", lower(b.logits(P, z))))
        if spec.moe.shared_expert == "gated":
            out.append(Assign("sigma_sg", lower(b.shared_gate(P, z))))
            sg = sp.Symbol("sigma_sg", positive=True)
    out.append(Assign("h", lower(b.outer(P, atoms, ell, sg))))
    out.append(Assign("o", lower(b.branch_out(P, Vec("h", "d")))))
    out.append(Assign("y", lower(b.final(P, b.residual(s["u"], Vec("o", "d"))))))
    return out


def _stages(out: list[Assign], per_expert: set[str]) -> Function:
    """Stages in order, each with its own common subexpressions (stage names stay readable)."""
    fn = Function([], set(per_expert))
    temps = sp.numbered_symbols("t")
    for a in out:
        sub = straight_line([a], fn.per_expert, temps)
        fn.body += sub.body
        fn.per_expert |= sub.per_expert
    return fn


def build(spec: BlockSpec, der: Derivation) -> KernelIR:
    """The kernel of one derivation, ready for the templates."""
    b = Block(spec)
    constants = sorted((str(sym), value) for sym, value in b.constants)
    params = [(p.symbol.name, name) for name, p in b.params.items()]
    po = patch_outputs(spec, der)  # lowered once, for the patch and products functions
    patch_fn, patches, checks = patch_function(spec, po)
    per_expert_patch = {f"{ident(p.param)}_{k}" for p in der.patches if p.per_expert for k in ("left", "right")}
    patch_vars = frozenset(var for p in patches for _, var in p.fields)  # the fields apply reads (W_gate_left, ...)
    apply_fn = stage_function(spec, _patched_params(spec, der), per_expert_patch, patch_vars)
    # the patch function takes only the plain products `apply` computes (`plain_products` gives those)
    patch_fn.plain = {v: k for v, k in patch_fn.plain.items() if k in set(apply_fn.plain.values())}
    forward_fn = stage_function(spec, b.unpatched(), set())
    return KernelIR(spec, der, constants, params, patch_fn, patches, checks, apply_fn, forward_fn,
                    products_function(po, patch_fn.given), twins(po, set(apply_fn.plain.values())))


def twins(po: PatchOutputs, plain: set[str]) -> dict[str, str]:
    r"""{matrix: plain key}: the contextual products (`given_products`) whose no-context twin `apply` takes as
    ``plain``: the same matrix times the same vector written in $u$ instead of $u_C$ ($W_\mathrm{gate} z_C$ and
    $W_\mathrm{gate} z$). A module that computes a contextual product on the run with the context computes its
    twin on the run without it: a batched step takes both from the one read of the matrix."""
    defs = {a.target: a.expr for a in po.outputs}
    out = {}
    for var, matrix in po.given.items():
        if not isinstance(defs.get(var), MatVec):
            continue
        v = _written_out(defs[var].args[1], defs)
        swapped = v.xreplace({s_: Vec("u", s_.dim) for s_ in v.free_symbols
                              if isinstance(s_, Vec) and s_.name == "u_C"})
        key = f"{matrix}@{_vector_key(swapped, {})}"
        if key in plain:
            out[matrix] = key
    return out
