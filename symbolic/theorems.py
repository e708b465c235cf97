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
- `multilayer_<arch>`: the layer-by-layer algorithm reproduces every layer (Theorem 2 / Algorithm 1).
- `negative_*`: the invariants behind the negative verdicts.
"""

from __future__ import annotations

import sympy as sp

from symbolic.algebra import Dot, EVec, Frob, Mat, MatVec, Mean, Outer, Vec
from symbolic.derive import Deriver
from symbolic.derive import Step as DeriveStep
from symbolic.proof import Hypothesis, Step, Theorem, coords_nonzero, definition, equation, nonzero
from symbolic.spec import BlockSpec

W = Mat("W", "m", "d")
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
    ThP(z, z') and PhP(a, delta) given by the two controllability properties."""
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
    return Theorem("controllability", "Input-controllable inner and output-controllable outer give a perfect patch",
                   hyps, lhs, rhs, steps, reference="arXiv:2511.17864, Theorem 5")


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
    from symbolic.activations import x

    sup = sp.Symbol("sup_phi")
    steps = (Step(sp.tanh(x), sup, "range analysis: continuous with finite limits", relation="<=",
                  range_check=sp.tanh(x)),)
    return Theorem("negative_bounded_activation", "An outer function ending in tanh has bounded outputs: "
                   "targets outside (-1, 1) are unreachable", (), sp.tanh(x), sup, steps, relation="<=")


# --------------------------------------------------------------------------- block theorems


def block_theorem(spec: BlockSpec, input_strategy: str | None = None, output_strategy: str | None = None,
                  name: str | None = None, mutate=None) -> Theorem:
    """The perfect-patch theorem of `spec`, generated from its derivation.

    `mutate(patches, hypotheses) -> (patches, hypotheses)` alters the formulas before the statement
    is built; the mutation tests use it to show that wrong formulas are rejected.
    """
    from symbolic.controllability import check

    verdict = check(spec, output_strategy, input_strategy)
    ins, outs = verdict.input_strategy, verdict.output_strategy
    if ins is None or outs is None:
        raise ValueError(f"{spec.name} has no perfect patch; see `ctxpatch check`")
    d = Deriver(spec)
    der = d.derive(ins, outs)
    b, s = d.block, d.block.signals
    P = d.P
    patches = list(der.patches)
    hyps = [_hyp(c) for c in der.conditions] + _definitions(d, der, spec, ins.startswith("pre_norm"))
    if mutate is not None:
        patches, hyps = mutate(patches, hyps)
    P2 = P.replace({p.param: _patched_value(d, p) for p in patches})
    parallel = spec.residual == "parallel"
    zz, zc = (s["z"], s["z"]) if parallel else (s["z"], s["z_C"])
    pre_strategy = ins.startswith("pre_norm")
    u, delta = s["u"], s["delta"]

    def run(Pv, z_in, base, pre_from=None):
        zin = b.pre(Pv, pre_from) if pre_from is not None else z_in
        hidden = {g: b.hidden(Pv, zin, g) for g in b.hidden_groups()}
        ell = b.logits(Pv, zin) if spec.moe else None
        sg = b.shared_gate(Pv, zin) if spec.moe else sp.S.One
        return b.final(Pv, b.residual(base, b.branch_out(Pv, b.outer(Pv, hidden, ell, sg))))

    if pre_strategy:
        lhs, rhs = run(P2, None, u, pre_from=u), run(P, None, u + delta, pre_from=u + delta)
    else:
        lhs, rhs = run(P2, zz, u), run(P, zc, u + delta)
    if outs == "stable":
        gk, mu = sp.symbols("gamma_k mu", real=True)
        hyps += [equation(Mean(Vec("y", "d") ** 2), sp.S.One), Hypothesis("positive", gk**2 - mu)]
    steps = _input_steps(d, P2, ins, zz, zc, pre_strategy) + _output_steps(der.steps)
    steps.append(Step(lhs, rhs, "the block output: hidden activations match, the output stage adds delta, "
                      "the rest is the contextual computation"))
    title = f"{spec.name}: perfect patch ({ins} / {outs})"
    return Theorem(name or f"block_{spec.name}", title, tuple(hyps), lhs, rhs, tuple(steps), chain=False,
                   reference=spec.reference)


def _patched_value(d: Deriver, p) -> sp.Expr:
    from symbolic.model import expert

    sym = d.P[p.param]
    if p.kind == "rank1":
        if p.param == "shared.w_gate":
            return sym + p.value * p.right
        base = d.block.expert_matrix(d.P, p.param.split(".")[1], expert) if p.per_expert else sym
        return base + Outer(p.value, p.right)
    if p.kind == "scale":
        from symbolic.derive import _scaled

        return _scaled(d.block, d.P, p.value)
    return sym + p.value


def _hyp(c):
    return {"vector": nonzero, "scalar": nonzero, "coords": coords_nonzero}[c.kind](c.expr)


def _definitions(d: Deriver, der, spec: BlockSpec, pre_strategy: bool) -> list:
    """Atoms of the formulas, defined from the block's inputs (z, z_C stay the inputs of the statement)."""
    from symbolic.model import expert

    b, s = d.block, d.block.signals
    zc = s["z"] if spec.residual == "parallel" else s["z_C"]
    out = []
    if pre_strategy:
        out += [definition(s["z"], b.pre(d.P, s["u"])), definition(s["z_C"], b.pre(d.P, s["u"] + s["delta"]))]
    for g in b.hidden_groups():
        atom = b.hidden_atom(g)
        value = b.hidden(d.P, zc, g)
        if g == "experts":
            w = sp.Wild("w_e")
            out.append(equation(EVec(s["a_C"], w), value.subs(expert, w)))
        else:
            out.append(definition(atom, value))
    if spec.moe is not None:
        out.append(definition(s["ell_C"], b.logits(d.P, zc)))
        if spec.moe.shared_expert == "gated":
            out.append(definition(sp.Symbol("sigma_sg_C", positive=True), b.shared_gate(d.P, zc)))
    keep = (Vec("y", "d"),)
    out += [definition(atom, expr) for atom, expr in d.defs.items() if atom not in keep]
    return out


def _input_steps(d: Deriver, P2, ins: str, zz, zc, pre_strategy: bool) -> list[Step]:
    b = d.block
    if ins == "none":
        return []
    if pre_strategy:
        u, delta = b.signals["u"], b.signals["delta"]
        return [Step(b.pre(P2, u), b.pre(d.P, u + delta), "the patched pre-norm outputs z_C")]
    steps = []
    for name in b.input_maps():
        lhs, rhs = b.preact(P2, name, zz), b.preact(d.P, name, zc)
        if lhs == b.preact(d.P, name, zz):
            continue  # this map is not patched (up_only / gate_only strategies)
        steps.append(Step(lhs, rhs, f"input map {name}: rank-1 lemma (or bias patch)"))
    for g in b.hidden_groups():
        steps.append(Step(b.hidden(P2, zz, g), b.hidden(d.P, zc, g),
                          f"hidden activations{' of ' + g if g else ''} follow from the input maps"))
    return steps


def _output_steps(dsteps: tuple[DeriveStep, ...]) -> list[Step]:
    """The output-side equations the derivation solved, with their solutions substituted."""
    out = []
    for st in dsteps:
        if st.side != "output":
            continue
        sub = dict(zip(st.unknowns, st.solution, strict=True))
        out.append(Step(st.lhs.subs(sub), st.rhs.subs(sub), st.what))
    return out


# --------------------------------------------------------------------------- multi-layer


def multilayer_theorem(arch: str) -> Theorem:
    r"""Theorem 2 / Algorithm 1 of arXiv:2511.17864, one generic layer l (so every layer, by induction).

    s_l is the reduced (no-context, patched) state of a query token after layer l, c_l the
    contextual one; A and A_C are the attention sub-layers without and with context; Mlp(l, theta, u)
    is the block's MLP sub-block (with residual) and Patch(l, u, u_C) its patched parameters.
    """
    Mlp, Patch, A, AC, Th = (sp.Function(n) for n in ("Mlp", "Patch", "A", "A_C", "Theta"))
    lyr = sp.Symbol("l", integer=True, positive=True)
    s_prev, c_prev = Vec("s_prev", "d"), Vec("c_prev", "d")
    s_l, c_l = Vec("s_l", "d"), Vec("c_l", "d")
    algo = Mlp(lyr, Patch(lyr, A(lyr, s_prev), AC(lyr, c_prev)), A(lyr, s_prev))
    ctx = Mlp(lyr, Th(lyr), AC(lyr, c_prev))
    L, U, UC = sp.Wild("L"), sp.Wild("U"), sp.Wild("UC")
    block = equation(Mlp(L, Patch(L, U, UC), U), Mlp(L, Th(L), UC))  # the block theorem, abstractly
    hyps = (block, definition(s_l, algo), definition(c_l, ctx))
    steps = (
        Step(s_l, algo, "definition: the layer-by-layer algorithm patches layer l from the actual reduced state"),
        Step(algo, ctx, f"lemma block_{arch} with u = A(l, s_(l-1)), u_C = A_C(l, c_(l-1))",
             lemma=f"block_{arch}", abstracts=True),
        Step(ctx, c_l, "definition: the contextual run"),
    )
    return Theorem(f"multilayer_{arch}", f"{arch}: the layer-by-layer algorithm reproduces every layer "
                   "(induction step for a generic layer l; the base case is the same step at l = 1)",
                   hyps, s_l, c_l, steps, reference="arXiv:2511.17864, Theorem 2 and Algorithm 1",
                   uses=(f"block_{arch}",))
