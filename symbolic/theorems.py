r"""The generator of the per-architecture theorems, from the SymPy derivation (an untrusted proposer).

- `block_<arch>[_<strategy>]`: the perfect-patch theorem of an architecture (Theorem 1 for gemma3),
  generated from its spec and its derivation (`symbolic.derive`), never written by hand.
- `multilayer_<arch>`: the layer-by-layer algorithm reproduces every layer (Theorem 2 / Algorithm 1),
  citing the block theorem under its side conditions at layer l.

Block theorems are written as the paper's appendix writes them: named intermediates (z, z_C, a_C,
h_C, f_C, delta, the patched W', a', h', y') are conservative definitions, the statement is
$y' = y_C$, and $\sigma$ is an opaque elementwise function wherever the theorem holds for every $\sigma$.
The SymPy expressions are translated into the kernel's closed language by `symbolic.bridge`: the
statement the kernel checks is the derivation's own, and the kernel trusts neither SymPy nor the
translation. The general theorems (rank-1 lemma, controllability, negative results, sequence patch)
are written by hand in proofs/.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from symbolic import catalog
from symbolic import kernel as K
from symbolic.activations import x as act_x
from symbolic.bridge import family_of, index_var, to_kernel
from symbolic.controllability import check as check_spec
from symbolic.derivation import Step as DeriveStep
from symbolic.derive import Deriver
from symbolic.model import Block, Params, expert
from symbolic.spec import BlockSpec
from symbolic.terms import EMat, EVec, Mat, MatVec, Mean, Outer, Vec

#: The rank-1 lemma's matrix variable (proofs/rank1_lemma.py states the lemma over W, z, z_C).
T_W = Mat("W", "m", "d")


@dataclass(frozen=True)
class SHyp:
    """A hypothesis on the SymPy side, before translation: kind, expression, right side."""

    kind: str
    expr: sp.Expr
    rhs: sp.Expr | None = None


@dataclass(frozen=True)
class SStep:
    lhs: sp.Expr
    rhs: sp.Expr
    justification: str
    lemma: str | None = None
    substitution: tuple = ()


def definition(atom, value) -> SHyp:
    return SHyp("definition", atom, value)


def equation(lhs, rhs) -> SHyp:
    return SHyp("equation", lhs, rhs)


# --------------------------------------------------------------------------- block theorems

#: The opaque elementwise activation of the block theorems that hold for every sigma.
SIGMA = sp.Function("sigma")
#: Input strategies whose patches never look at sigma (the pre-activations are matched exactly).
SIGMA_FREE = ("rank1", "bias", "none", "pre_norm_bias", "pre_norm_vector")


@dataclass
class _Names:
    """Named intermediates of a block theorem, in definition order (the paper's notation)."""

    hyps: list = field(default_factory=list)
    fold: dict = field(default_factory=dict)  # expression -> its name, to print with names

    def define(self, atom: sp.Expr, value: sp.Expr) -> sp.Expr:
        self.hyps.append(definition(atom, value.xreplace(self.fold)))
        self.fold[value] = atom
        return atom


def block_theorem(spec: BlockSpec, input_strategy: str | None = None, output_strategy: str | None = None,
                  name: str | None = None, mutate=None) -> K.Theorem:
    r"""The perfect-patch theorem of `spec`, generated from its derivation, written with named
    intermediates: $y' = y_C$ where $y'$ is the patched no-context output and $y_C$ the contextual one.

    $\sigma$ stays opaque (the theorem holds for every elementwise $\sigma$) whenever the input
    patches match the pre-activations themselves. `mutate(patches, hypotheses) -> (patches,
    hypotheses)` alters the formulas first; the mutation tests use it to show that wrong formulas
    are rejected.
    """
    verdict = check_spec(spec)  # cached: the strategies that give exact patches
    ins = input_strategy or verdict.input_strategy
    outs = output_strategy or verdict.output_strategy
    if ins not in verdict.input.ok or outs not in verdict.output.ok:
        raise ValueError(f"{spec.name} has no perfect patch with strategies {ins} / {outs}; see `ctxpatch check`")
    d = Deriver(spec)
    der = d.derive(ins, outs)
    b = Block(spec)
    if ins in SIGMA_FREE:
        b.sigma = SIGMA(act_x)
    names = _Names()
    _contextual_definitions(names, b, d, spec, ins)
    conditions = [_hyp(c) for c in der.conditions]
    patches = list(der.patches)
    if mutate is not None:
        patches, mutated_defs = mutate(patches, names.hyps + conditions)
        names.hyps = [h for h in mutated_defs if h.kind == "definition"]
        conditions = [h for h in mutated_defs if h.kind != "definition"]
    P2 = _patched_parameters(names, b, d, patches)
    y_p, y_c = _outputs(names, b, d, spec, P2, ins)
    hyps = names.hyps + conditions
    if outs == "stable":
        gk, mu = sp.symbols("gamma_k mu", real=True)
        hyps += [equation(Mean(Vec("y", "d") ** 2), sp.S.One), SHyp("positive", gk**2 - mu)]
    steps = _input_steps(b, d, P2, ins, patches) + _hidden_steps(b, d, P2, ins) + _output_steps(der.steps, names)
    steps.append(SStep(y_p, y_c, "the block output: hidden activations match, the output stage adds delta, "
                      "the rest is the contextual computation"))
    title = f"{spec.name}: perfect patch ({ins} / {outs})" + (", for every elementwise sigma"
                                                               if ins in SIGMA_FREE and ins != "none" else "")
    uses = ("rank1_lemma",) if any(st.lemma for st in steps) else ()
    return translate(name or f"block_{spec.name}", title, hyps, y_p, y_c, steps, chain=False,
                     reference=spec.reference, uses=uses)


def _hyp(c) -> SHyp:
    return SHyp("coords" if c.kind == "coords" else "nonzero", c.expr)


def _runs_in(spec: BlockSpec) -> tuple[sp.Expr, sp.Expr]:
    """The MLP inputs z (no context) and z_C (context): one z for a parallel block."""
    s = Block(spec).signals
    return (s["z"], s["z"]) if spec.residual == "parallel" else (s["z"], s["z_C"])


def _contextual_definitions(names: _Names, b: Block, d: Deriver, spec: BlockSpec, ins: str) -> None:
    """z, z_C (pre-norm strategies), a_C (per group; a family a_C^(e) for experts), ell_C, the
    shared gate, and the derivation's own atoms h_C, f_C, t, v, ... (z, z_C are otherwise inputs)."""
    s = b.signals
    if ins.startswith("pre_norm"):
        names.define(s["z"], b.pre(d.P, s["u"]))
        names.define(s["z_C"], b.pre(d.P, s["u"] + s["delta"]))
    zc = _runs_in(spec)[1]
    for g in b.hidden_groups():
        value = b.hidden(d.P, zc, g)
        atom = b.hidden_atom(g)
        if g == "experts":
            names.hyps.append(definition(atom, value))
        else:
            names.define(atom, value)
    if spec.moe is not None:
        names.define(s["ell_C"], b.logits(d.P, zc))
        if spec.moe.shared_expert == "gated":
            names.define(sp.Symbol("sigma_sg_C", positive=True), b.shared_gate(d.P, zc))
    keep = (Vec("y", "d"),)
    for atom, expr in d.defs.items():
        if atom not in keep:
            names.define(atom, expr)


def _prime(sym: sp.Symbol) -> sp.Symbol:
    r"""The patched parameter's name: $W_\mathrm{gate} \to W'_\mathrm{gate}$."""
    head, _, sub = sym.name.partition("_")
    new = head + "'" + ("_" + sub if sub else "")
    if isinstance(sym, Mat):
        return Mat(new, sym.rows, sym.cols)
    return Vec(new, sym.dim) if isinstance(sym, Vec) else sp.Symbol(new)


def _patched_parameters(names: _Names, b: Block, d: Deriver, patches) -> Params:
    """Each patched parameter defined once by name (W' := W + x z^T, w' := ..., a family per expert)."""
    changes = {}
    for p in patches:
        sym = d.P[p.param]
        atom = _prime(sym)
        if p.per_expert:
            names.hyps.append(definition(EMat(atom, expert), EMat(sym, expert) + Outer(p.value, p.right)))
            changes[p.param] = EMat(atom, expert)
            continue
        names.define(atom, _patched_value(b, d, p))
        changes[p.param] = atom
    return d.P.replace(changes)


def _patched_value(b: Block, d: Deriver, p) -> sp.Expr:
    sym = d.P[p.param]
    if p.kind == "rank1":
        return sym + p.value * p.right if p.param == "shared.w_gate" else sym + Outer(p.value, p.right)
    if p.kind == "scale":
        return b.scaled_norm_weight(d.P, p.value)
    return sym + p.value


def _outputs(names: _Names, b: Block, d: Deriver, spec: BlockSpec, P2: Params, ins: str) -> tuple:
    """y' (the patched run without context) and y_C (the contextual run), each named."""
    s = b.signals
    zz, zc = _runs_in(spec)
    u, delta = s["u"], s["delta"]
    z_in = b.pre(P2, u) if ins.startswith("pre_norm") else zz
    hidden = {}
    for g in b.hidden_groups():
        atom = _prime(b.hidden_atom(g, ctx=False)) if g != "experts" else _prime(s["a"])
        if g == "experts":
            names.hyps.append(definition(EVec(atom, expert), b.hidden(P2, z_in, g)))
            hidden[g] = EVec(atom, expert)
        else:
            hidden[g] = names.define(atom, b.hidden(P2, z_in, g))
    ell = b.logits(P2, z_in) if spec.moe else None
    sg = b.shared_gate(P2, z_in) if spec.moe else sp.S.One
    h_p = names.define(Vec("h'", "d"), b.outer(P2, hidden, ell, sg))
    y_p = names.define(Vec("y'", "d"), b.final(P2, b.residual(u, b.branch_out(P2, h_p))))
    h_c = Vec("h_C", "d")
    y_c = b.final(d.P, b.residual(u + delta, b.branch_out(d.P, h_c)))
    return y_p, names.define(Vec("y_C", "d"), y_c)


def _input_steps(b: Block, d: Deriver, P2: Params, ins: str, patches) -> list[SStep]:
    """One step per patched input map: W' z = W z_C, by the rank-1 lemma (or algebra for a bias)."""
    s = b.signals
    if ins == "none":
        return []
    if ins.startswith("pre_norm"):
        return [SStep(b.pre(P2, s["u"]), s["z_C"], "the patched pre-norm outputs z_C")]
    rank1 = {p.param for p in patches if p.kind == "rank1" and p.param != "shared.w_gate"}
    steps = []
    for name in b.input_maps():
        lhs, rhs = b.preact(P2, name, s["z"]), b.preact(d.P, name, s["z_C"])
        if lhs == b.preact(d.P, name, s["z"]):
            continue  # this map is not patched (up_only / gate_only strategies)
        if name in rank1 and lhs.func == MatVec:
            W = d.block.expert_matrix(d.P, name.split(".")[1], expert) if name.startswith("experts.") else d.P[name]
            steps.append(SStep(lhs, rhs, f"input map {name}: rank-1 lemma", lemma="rank1_lemma",
                               substitution=((T_W, W),)))
        else:
            steps.append(SStep(lhs, rhs, f"input map {name}: the patch adds W (z_C - z)"))
    return steps


def _hidden_steps(b: Block, d: Deriver, P2: Params, ins: str) -> list[SStep]:
    s = b.signals
    out = []
    for g in b.hidden_groups():
        if ins == "none":
            break
        mine = _prime(b.hidden_atom(g, ctx=False)) if g != "experts" else EVec(_prime(s["a"]), expert)
        out.append(SStep(mine, b.hidden_atom(g), f"hidden activations{' of ' + g if g else ''} follow from the "
                        "input maps" + (", whatever sigma is" if ins in SIGMA_FREE else "")))
    return out


def _output_steps(dsteps: tuple[DeriveStep, ...], names: _Names) -> list[SStep]:
    """The output-side equations the derivation solved, with their solutions substituted."""
    out = []
    for st in dsteps:
        if st.side != "output":
            continue
        sub = dict(zip(st.unknowns, st.solution, strict=True))
        out.append(SStep(st.lhs.subs(sub), st.rhs.subs(sub), st.what))
    return out


# --------------------------------------------------------------------------- translation


def _expert_family(h: SHyp):
    """A per-expert definition a[e] := ... or condition on a[e]: the family and its index."""
    if h.kind == "definition" and isinstance(h.expr, (EVec, EMat)) and h.expr.args[1] == expert:
        return family_of(h.expr.args[0])
    return None


def _declared(hyps: list[SHyp], lhs, rhs, steps: list[SStep]) -> list:
    """What the derivation assumes of its constants, stated as hypotheses: a norm's eps > 0, a
    branch or routed scale != 0 (SymPy's assumptions on those symbols; the kernel has none)."""
    exprs = [lhs, rhs] + [x for h in hyps for x in (h.expr, h.rhs) if x is not None] + [
        x for st in steps for x in (st.lhs, st.rhs)]
    defined = {h.expr for h in hyps if h.kind == "definition"}
    symbols = sorted({s for x in exprs for s in sp.sympify(x).free_symbols
                      if not isinstance(s, (Vec, Mat)) and not s.is_integer and s not in defined}, key=str)
    out = [K.positive(K.scalar(s.name)) for s in symbols if s.is_positive]
    return out + [K.nonzero(K.scalar(s.name)) for s in symbols if s.is_nonzero and not s.is_positive]


def translate(name: str, title: str, hyps: list[SHyp], lhs, rhs, steps: list[SStep], **kw) -> K.Theorem:
    """The kernel theorem of a SymPy-side statement: definitions of a per-expert atom become families
    over the experts, a condition that mentions the expert index holds for every expert."""
    e = index_var(expert)
    out = []
    declared = _declared(hyps, lhs, rhs, steps)  # stated after the definitions, before the conditions
    for h in hyps:
        if declared and h.kind != "definition":
            out, declared = out + declared, []
        fam = _expert_family(h)
        if fam is not None:
            out.append(K.definition(fam, to_kernel(h.rhs), index=e))
        elif h.kind == "definition":
            out.append(K.definition(to_kernel(h.expr), to_kernel(h.rhs)))
        elif h.kind == "equation":
            out.append(K.equation(to_kernel(h.expr), to_kernel(h.rhs)))
        else:
            over = (e,) if expert in h.expr.free_symbols else ()
            make = {"nonzero": K.nonzero, "coords": K.coords_nonzero}.get(h.kind)
            out.append(make(to_kernel(h.expr), over) if make else K.positive(to_kernel(h.expr)))
    ksteps = tuple(K.Step(to_kernel(st.lhs), to_kernel(st.rhs), st.justification, lemma=st.lemma,
                          substitution=tuple((to_kernel(a), to_kernel(b)) for a, b in st.substitution))
                   for st in steps)
    return K.Theorem(name, title, tuple(out + declared), to_kernel(lhs), to_kernel(rhs), ksteps, **kw)


# --------------------------------------------------------------------------- multi-layer

#: The attention sub-layers of layer l, without and with the context: vector-valued maps of (l, state).
ATTN = K.Fn.map("A", (K.SCALAR, K.Vector("d")), K.Vector("d"))
ATTN_C = K.Fn.map("A_C", (K.SCALAR, K.Vector("d")), K.Vector("d"))


def multilayer_theorem(arch, block: K.Theorem | None = None, attention_c=None) -> K.Theorem:
    r"""Theorem 2 / Algorithm 1 of arXiv:2511.17864 at a generic layer l (so at every layer).

    The reduced run enters layer l with state $s_{l-1}$, the contextual run with $c_{l-1}$; their
    MLP inputs are $u_l = A(l, s_{l-1})$ and $u_{C,l} = A_C(l, c_{l-1})$. The patch of layer l is
    computed from these actual inputs, so the block theorem at $u := u_l$, $\delta := u_{C,l} - u_l$
    gives $s_l = c_l$, under the block's side conditions at layer l (which the theorem lists). A
    parallel block's MLP sees the layer input itself: there the induction hypothesis
    $s_{l-1} = c_{l-1}$ is a hypothesis. `attention_c(l, c_prev)` replaces $A_C(l, c_{l-1})$ in the
    patched parameters (the mutation tests use it).
    """
    spec = catalog.resolve(arch) if not isinstance(arch, BlockSpec) else arch
    block = block or block_theorem(spec)
    lyr = K.scalar("l")
    s_prev, c_prev = K.vec("s_prev", "d"), K.vec("c_prev", "d")
    b = Block(spec)
    sig = {k: to_kernel(v) for k, v in b.signals.items()}
    parallel = spec.residual == "parallel"
    hyps = [K.equation(s_prev, c_prev)] if parallel else []
    stated = {h.expr for h in block.hypotheses if h.kind == "positive"}
    extra = [K.positive(K.scalar(e.name)) for e in b.eps.values() if e != 0 and K.scalar(e.name) not in stated]
    u_l, uc_l = K.vec("u_l", "d"), K.vec("u_C_l", "d")
    hyps += [K.definition(u_l, (s_prev + K.apply(ATTN, lyr, s_prev)) if parallel else K.apply(ATTN, lyr, s_prev)),
             K.definition(uc_l, (c_prev + K.apply(ATTN_C, lyr, c_prev)) if parallel else
                          K.apply(ATTN_C, lyr, c_prev))]
    free = set().union(*(K.free_vars(t) for h in block.hypotheses for t in (h.expr, h.rhs) if t is not None),
                       K.free_vars(block.lhs))
    defined = {h.expr for h in block.definitions}
    # u_C is the contextual MLP input u + delta: at layer l it is u_C_l (a norm with eps = 0 needs u_C != 0)
    sub = {sig["u"]: u_l, sig["delta"]: uc_l - u_l, sig["u_C"]: uc_l}
    norm_conds: list = []  # the pre-norm's side conditions at layer l, where the layer defines z_l, z_C_l
    if sig["z"] in free and sig["z"] not in defined:
        z_l = K.vec("z_l", "d")
        z_in = Vec("s_prev" if parallel else "u_l", "d")
        hyps.append(K.definition(z_l, to_kernel(b.pre(b.unpatched(), z_in))))
        norm_conds = _pre_norm_condition(spec, b, z_in)
        sub[sig["z"]] = z_l
    if sig["z_C"] in free and sig["z_C"] not in defined:
        zc_l = K.vec("z_C_l", "d")
        hyps.append(K.definition(zc_l, to_kernel(b.pre(b.unpatched(), Vec("u_C_l", "d")))))
        norm_conds += _pre_norm_condition(spec, b, Vec("u_C_l", "d"))
        sub[sig["z_C"]] = zc_l
    sub = {k: v for k, v in sub.items() if k in free}  # a block without skip has no residual u
    rename = {a: K.Var(a.name + "_l", a.ty) for a in defined}
    rename.update({block.lhs: K.vec("s_l", "d"), block.rhs: K.vec("c_l", "d")})
    layered = {**sub, **rename}
    wrong = {uc_l: attention_c(lyr, c_prev)} if attention_c is not None else {}
    for h in block.hypotheses:
        if extra and h.kind != "definition":  # the layer's own eps > 0 beside the block's
            hyps, extra = hyps + extra, []
        rhs = K.subst(h.rhs, layered) if h.rhs is not None else None
        if wrong and h.kind == "definition" and "'" in h.expr.name:
            rhs = K.subst(rhs, wrong)
        hyps.append(K.Hypothesis(h.kind, K.subst(h.expr, layered), rhs, h.binders))
    hyps += extra + [c for c in norm_conds if c not in hyps]
    lhs, rhs = rename[block.lhs], rename[block.rhs]
    steps = (K.Step(lhs, rhs, f"block theorem block_{spec.name} at u = u_l, delta = u_C,l - u_l",
                    lemma=block.name, substitution=tuple(layered.items())),)
    return K.Theorem(f"multilayer_{spec.name}", f"{spec.name}: the layer-by-layer algorithm reproduces every layer "
                     "(generic layer l, under the block's side conditions at that layer)",
                     tuple(hyps), lhs, rhs, steps, reference="arXiv:2511.17864, Theorem 2 and Algorithm 1",
                     uses=(block.name,))


def _pre_norm_condition(spec: BlockSpec, b: Block, v: Vec) -> list:
    """A pre-norm with eps = 0 divides by the RMS of its input v (RMSNorm) or of v - mean(v) (LayerNorm): at layer l
    that input must not vanish (be constant), a side condition of the layer like the block's own."""
    norm = spec.norms.get("mlp_pre_norm")
    if norm is None or b.eps.get("mlp_pre_norm") != 0:
        return []
    return [K.nonzero(to_kernel(v - Mean(v) if norm.kind == "layer" else v))]
