r"""The theorems of ctxpatch as statements with proofs for the kernel (`symbolic.proof`).

Statements are separate from the checker: this module only *states* and writes proof steps;
`symbolic.proof.check` discharges them. Block theorems are generated from a spec and its
derivation (`symbolic.derive`), never written by hand per architecture.

- `rank1_lemma`: $(W + W(z'-z)z^\top/z^\top z)\,z = W z'$ (Dherin et al. 2025, arXiv:2507.16003).
- `rank1_min_norm_split`, `rank1_min_norm`: every other solution is $\Delta W + N$ with $Nz = 0$,
  and $\lVert \Delta W + N\rVert_F^2 = \lVert\Delta W\rVert_F^2 + \lVert N\rVert_F^2$.
- `controllability`: input-controllable inner + output-controllable outer give a perfect patch
  (arXiv:2511.17864, Theorem 5).
- `block_<arch>[_<strategy>]`: the perfect-patch theorem of an architecture (Theorem 1 for gemma3).
- `multilayer_<arch>`: the layer-by-layer algorithm reproduces every layer (Theorem 2 / Algorithm 1),
  citing the block theorem under its side conditions at layer l.
- `negative_*`: the invariants behind the negative verdicts, with concrete bounds.

Block theorems are written as the paper's appendix writes them: named intermediates (z, z_C, a_C,
h_C, f_C, delta, the patched W', a', h', y') are conservative definitions, the statement is
$y' = y_C$, and $\sigma$ is an opaque elementwise function wherever the theorem holds for every $\sigma$.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from symbolic import catalog
from symbolic.activations import x as act_x
from symbolic.algebra import Dot, EMat, EVec, Frob, Mat, MatVec, Mean, Outer, Vec
from symbolic.controllability import check as check_spec
from symbolic.derive import Deriver
from symbolic.derive import Step as DeriveStep
from symbolic.instances import broadcast
from symbolic.model import Block, Params, expert
from symbolic.proof import Hypothesis, Step, Theorem, coords_nonzero, definition, equation, nonzero
from symbolic.spec import BlockSpec

W = T_W = Mat("W", "m", "d")
z, z2 = Vec("z", "d"), Vec("z_C", "d")


def rank1_patch(Wm: sp.Expr, z_: sp.Expr, z2_: sp.Expr) -> sp.Expr:
    r"""$W + W(z' - z) z^\top / (z^\top z)$."""
    return Wm + Outer(MatVec(Wm, z2_ - z_) / Dot(z_, z_), z_)


def rank1_lemma() -> Theorem:
    lhs = MatVec(rank1_patch(W, z, z2), z)
    mid1 = MatVec(W, z) + MatVec(W, z2 - z) / Dot(z, z) * Dot(z, z)
    mid2 = MatVec(W, z) + MatVec(W, z2 - z)
    steps = (
        Step(lhs, mid1, "definition of the outer product: (x z^T) z = x (z^T z)"),
        Step(mid1, mid2, "cancel z^T z (z != 0)"),
        Step(mid2, MatVec(W, z2), "linearity of W"),
    )
    return Theorem("rank1_lemma", "The rank-1 patch maps z like z_C", (nonzero(z),), lhs, MatVec(W, z2), steps,
                   reference="arXiv:2507.16003, Theorem 2.2")


def rank1_min_norm_split() -> Theorem:
    """Any D with D z = W(z_C - z) differs from the rank-1 patch by an N with N z = 0."""
    D = Mat("D", "m", "d")
    dW = Outer(MatVec(W, z2 - z) / Dot(z, z), z)
    lhs = MatVec(D - dW, z)
    mid = MatVec(D, z) - MatVec(W, z2 - z)
    steps = (Step(lhs, mid, "linearity and (x z^T) z = x (z^T z)"),
             Step(mid, sp.S.Zero, "hypothesis: D solves D z = W (z_C - z)"))
    return Theorem("rank1_min_norm_split", "Every other solution is the rank-1 patch plus a map that kills z",
                   (nonzero(z), equation(MatVec(D, z), MatVec(W, z2 - z))), lhs, sp.S.Zero, steps)


def rank1_min_norm() -> Theorem:
    N = Mat("N", "m", "d")
    r = MatVec(W, z2 - z)
    dW = Outer(r / Dot(z, z), z)
    lhs = Frob(dW + N, dW + N)
    s1 = Frob(dW, dW) + 2 * Frob(dW, N) + Frob(N, N)
    s2 = Frob(dW, dW) + 2 * Dot(r, MatVec(N, z)) / Dot(z, z) + Frob(N, N)
    s3 = Frob(dW, dW) + Frob(N, N)
    steps = (Step(lhs, s1, "bilinearity of the Frobenius product"),
             Step(s1, s2, "<x z^T, N>_F = x^T N z"),
             Step(s2, s3, "hypothesis N z = 0"))
    return Theorem("rank1_min_norm", "The rank-1 patch has minimum Frobenius norm: |dW + N|^2 = |dW|^2 + |N|^2",
                   (nonzero(z), equation(MatVec(N, z), sp.S.Zero)), lhs, s3, steps,
                   reference="arXiv:2507.16003 (minimum-norm remark)")


def controllability() -> Theorem:
    r"""Theorem 5 of arXiv:2511.17864 in abstract notation: F inner, G outer, patched parameters
    ThP(z, z') and PhP(a, delta) given by the two controllability properties.

    The instances interpret the opaque maps by a model of both properties:
    $F(z, \theta) = z + \theta$, $\mathrm{ThP}(z, z') = z' - z + \theta$, $G(a, \phi) = a + \phi$,
    $\mathrm{PhP}(a, \delta) = \phi + \delta$ (so the hypotheses are satisfiable: not vacuous).
    """
    F, G, ThP, PhP = (sp.Function(n) for n in ("F", "G", "ThP", "PhP"))
    th, ph = sp.symbols("theta phi")
    u, u_C = Vec("u", "d"), Vec("u_C", "d")
    Z1, Z2, A, Dl = (sp.Wild(n) for n in ("Z1", "Z2", "A", "Dl"))
    a_C = F(z2, th)
    lhs = u + G(F(z, ThP(z, z2)), PhP(a_C, u_C - u))
    s1 = u + G(a_C, PhP(a_C, u_C - u))
    s2 = u + G(a_C, ph) + (u_C - u)
    rhs = u_C + G(a_C, ph)
    hyps = (equation(F(Z1, ThP(Z1, Z2)), F(Z2, th)), equation(G(A, PhP(A, Dl)), G(A, ph) + Dl))
    steps = (Step(lhs, s1, "input controllability of F with z' = z_C"),
             Step(s1, s2, "output controllability of G at a = a_C with delta = u_C - u"),
             Step(s2, rhs, "algebra"))
    models = (("F", lambda inst, v, t: broadcast(lambda a, b: a + b, [v, t])),
              ("ThP", lambda inst, v, w: broadcast(lambda a, b, c: b - a + c, [v, w, inst.value(th)])),
              ("G", lambda inst, a, f: broadcast(lambda x, y: x + y, [a, f])),
              ("PhP", lambda inst, a, dl: broadcast(lambda x, y: x + y, [dl, inst.value(ph)])))
    return Theorem("controllability", "Input-controllable inner and output-controllable outer give a perfect patch",
                   hyps, lhs, rhs, steps, reference="arXiv:2511.17864, Theorem 5", models=models)


# --------------------------------------------------------------------------- negative results


def negative_rmsnorm_ball() -> Theorem:
    h, eps = Vec("h", "d"), sp.Symbol("epsilon", positive=True)
    lhs = Mean((h / sp.sqrt(Mean(h**2) + eps)) ** 2)
    mid = Mean(h**2) / (Mean(h**2) + eps)
    steps = (Step(lhs, mid, "mean is linear; the RMS is a scalar"),
             Step(mid, sp.S.One, "eps > 0 and mean(h^2) >= 0", relation="<"))
    return Theorem("negative_rmsnorm_ball", "Every RMSNorm output has mean((o / gamma)^2) < 1: W_down alone "
                   "cannot add a generic delta after an RMS post-norm", (), lhs, sp.S.One, steps, relation="<")


def negative_layernorm_mean() -> Theorem:
    h, eps = Vec("h", "d"), sp.Symbol("epsilon", positive=True)
    c = h - Mean(h)
    lhs = Mean(c / sp.sqrt(Mean(c**2) + eps))
    steps = (Step(lhs, (Mean(h) - Mean(h)) / sp.sqrt(Mean(c**2) + eps), "mean is linear"),
             Step((Mean(h) - Mean(h)) / sp.sqrt(Mean(c**2) + eps), sp.S.Zero, "algebra"))
    return Theorem("negative_layernorm_mean", "Every LayerNorm output without bias has mean(o / gamma) = 0, "
                   "whatever W_down and a scalar scale do", (), lhs, sp.S.Zero, steps)


def negative_scalar_ray() -> Theorem:
    f, gamma, s = Vec("f_C", "d"), Vec("gamma", "d"), sp.Symbol("s")
    lhs = (s * gamma * f) / (gamma * f)
    steps = (Step(lhs, s, "algebra"),)
    return Theorem("negative_scalar_ray", "A scalar scale patch alone moves the norm output along one ray: "
                   "o / (gamma f_C) is the same in every coordinate", (coords_nonzero(gamma * f),), lhs, s, steps)


def negative_bounded_activation() -> Theorem:
    r"""$\tanh(x) < 1$ for every real $x$: the exact range of tanh is $(-1, 1)$."""
    steps = (Step(sp.tanh(act_x), sp.S.One, "range of tanh on R (SymPy's function_range)", relation="<",
                  range_check=sp.tanh(act_x)),)
    return Theorem("negative_bounded_activation", "An outer function ending in tanh has outputs below 1: "
                   "targets >= 1 are unreachable", (), sp.tanh(act_x), sp.S.One, steps, relation="<")


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
                  name: str | None = None, mutate=None) -> Theorem:
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
        hyps += [equation(Mean(Vec("y", "d") ** 2), sp.S.One), Hypothesis("positive", gk**2 - mu)]
    steps = _input_steps(b, d, P2, ins, patches) + _hidden_steps(b, d, P2, ins) + _output_steps(der.steps, names)
    steps.append(Step(y_p, y_c, "the block output: hidden activations match, the output stage adds delta, "
                      "the rest is the contextual computation"))
    title = f"{spec.name}: perfect patch ({ins} / {outs})" + (", for every elementwise sigma"
                                                               if ins in SIGMA_FREE and ins != "none" else "")
    uses = ("rank1_lemma",) if any(st.lemma for st in steps) else ()
    return Theorem(name or f"block_{spec.name}", title, tuple(hyps), y_p, y_c, tuple(steps), chain=False,
                   reference=spec.reference, uses=uses)


def _hyp(c):
    return {"vector": nonzero, "scalar": nonzero, "coords": coords_nonzero}[c.kind](c.expr)


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


def _input_steps(b: Block, d: Deriver, P2: Params, ins: str, patches) -> list[Step]:
    """One step per patched input map: W' z = W z_C, by the rank-1 lemma (or algebra for a bias)."""
    s = b.signals
    if ins == "none":
        return []
    if ins.startswith("pre_norm"):
        return [Step(b.pre(P2, s["u"]), s["z_C"], "the patched pre-norm outputs z_C")]
    rank1 = {p.param for p in patches if p.kind == "rank1" and p.param != "shared.w_gate"}
    steps = []
    for name in b.input_maps():
        lhs, rhs = b.preact(P2, name, s["z"]), b.preact(d.P, name, s["z_C"])
        if lhs == b.preact(d.P, name, s["z"]):
            continue  # this map is not patched (up_only / gate_only strategies)
        if name in rank1 and lhs.func == MatVec:
            W = d.block.expert_matrix(d.P, name.split(".")[1], expert) if name.startswith("experts.") else d.P[name]
            steps.append(Step(lhs, rhs, f"input map {name}: rank-1 lemma", lemma="rank1_lemma",
                              substitution=((T_W, W),)))
        else:
            steps.append(Step(lhs, rhs, f"input map {name}: the patch adds W (z_C - z)"))
    return steps


def _hidden_steps(b: Block, d: Deriver, P2: Params, ins: str) -> list[Step]:
    s = b.signals
    out = []
    for g in b.hidden_groups():
        if ins == "none":
            break
        mine = _prime(b.hidden_atom(g, ctx=False)) if g != "experts" else EVec(_prime(s["a"]), expert)
        out.append(Step(mine, b.hidden_atom(g), f"hidden activations{' of ' + g if g else ''} follow from the "
                        "input maps" + (", whatever sigma is" if ins in SIGMA_FREE else "")))
    return out


def _output_steps(dsteps: tuple[DeriveStep, ...], names: _Names) -> list[Step]:
    """The output-side equations the derivation solved, with their solutions substituted."""
    out = []
    for st in dsteps:
        if st.side != "output":
            continue
        sub = dict(zip(st.unknowns, st.solution, strict=True))
        out.append(Step(st.lhs.subs(sub), st.rhs.subs(sub), st.what))
    return out


# --------------------------------------------------------------------------- multi-layer

#: The attention sub-layers of layer l, without and with the context (vector-valued opaque maps).
ATTN, ATTN_C = sp.Function("A", dim="d"), sp.Function("A_C", dim="d")


def multilayer_theorem(arch: str, block: Theorem | None = None) -> Theorem:
    r"""Theorem 2 / Algorithm 1 of arXiv:2511.17864 at a generic layer l (so at every layer).

    The reduced run enters layer l with state $s_{l-1}$, the contextual run with $c_{l-1}$; their
    MLP inputs are $u_l = A(l, s_{l-1})$ and $u_{C,l} = A_C(l, c_{l-1})$. The patch of layer l is
    computed from these actual inputs, so the block theorem at $u := u_l$, $\delta := u_{C,l} - u_l$
    gives $s_l = c_l$, under the block's side conditions at layer l (which the theorem lists). A
    parallel block's MLP sees the layer input itself: there the induction hypothesis
    $s_{l-1} = c_{l-1}$ is a hypothesis.
    """
    spec = catalog.resolve(arch) if not isinstance(arch, BlockSpec) else arch
    block = block or block_theorem(spec)
    lyr = sp.Symbol("l", integer=True, positive=True)
    s_prev, c_prev = Vec("s_prev", "d"), Vec("c_prev", "d")
    b = Block(spec)
    sig = b.signals
    parallel = spec.residual == "parallel"
    hyps = [equation(s_prev, c_prev)] if parallel else []
    u_l, uc_l = Vec("u_l", "d"), Vec("u_C_l", "d")
    hyps += [definition(u_l, (s_prev if parallel else 0) + ATTN(lyr, s_prev)),
             definition(uc_l, (c_prev if parallel else 0) + ATTN_C(lyr, c_prev))]
    sub = {sig["u"]: u_l, sig["delta"]: uc_l - u_l}
    free = set().union(*(h.expr.free_symbols | (h.rhs.free_symbols if h.rhs is not None else set())
                         for h in block.hypotheses), block.lhs.free_symbols)
    defined = {h.expr.args[0] if isinstance(h.expr, (EVec, EMat)) else h.expr for h in block.definitions}
    if sig["z"] in free and sig["z"] not in defined:
        z_l = Vec("z_l", "d")
        hyps.append(definition(z_l, b.pre(b.unpatched(), s_prev if parallel else u_l)))
        sub[sig["z"]] = z_l
    if sig["z_C"] in free and sig["z_C"] not in defined:
        zc_l = Vec("z_C_l", "d")
        hyps.append(definition(zc_l, b.pre(b.unpatched(), uc_l)))
        sub[sig["z_C"]] = zc_l
    sub = {k: v for k, v in sub.items() if k in free}  # a block without skip has no residual u
    rename = {a: _layer(a) for a in defined}
    rename.update({block.lhs: Vec("s_l", "d"), block.rhs: Vec("c_l", "d")})  # the states after layer l
    for h in block.hypotheses:
        hyps.append(_layered(h, sub, rename))
    lhs, rhs = rename[block.lhs], rename[block.rhs]
    steps = (Step(lhs, rhs, f"block theorem block_{spec.name} at u = u_l, delta = u_C,l - u_l",
                  lemma=block.name, substitution=tuple(sub.items())),)
    return Theorem(f"multilayer_{spec.name}", f"{spec.name}: the layer-by-layer algorithm reproduces every layer "
                   "(generic layer l, under the block's side conditions at that layer)",
                   tuple(hyps), lhs, rhs, steps, reference="arXiv:2511.17864, Theorem 2 and Algorithm 1",
                   uses=(block.name,))


def _layer(atom: sp.Symbol) -> sp.Symbol:
    """a_C -> a_C_l: the same intermediate at layer l."""
    name = atom.name + "_l"
    if isinstance(atom, Mat):
        return Mat(name, atom.rows, atom.cols)
    if isinstance(atom, Vec):
        return Vec(name, atom.dim)
    return sp.Symbol(name, **atom.assumptions0)


def _layered(h: Hypothesis, sub: dict, rename: dict) -> Hypothesis:
    full = {**sub, **rename}

    def tr(e):
        return e.xreplace(full) if e is not None else None

    return Hypothesis(h.kind, tr(h.expr), tr(h.rhs))
