r"""Theorems of the sequence patch: one patch per layer for q query tokens at once (THEORY.md section 6).

States the identities behind `numeric.hf.sequence` for the proof kernel (`symbolic.proof`), with matrices of
symbolic sizes ($W \in \mathbb{R}^{m\times d}$, $Z \in \mathbb{R}^{d\times q}$, ...). The kernel has no
matrix product, so a low-rank patch $\Delta W = BA$ acts as $x \mapsto B(Ax)$, and a statement about the
q columns of $Z$ is stated for an arbitrary coefficient vector $c \in \mathbb{R}^q$ (column $j$ is $c = e_j$):

- `sequence_lemma`: if $A Z c = c$ and $B c = y - W Z c$ then $(W + BA) Z c = y$. With
  $A = (Z^\top Z)^{-1} Z^\top$ (which exists iff rank $Z = q$, so $q \le d$) $AZ = I_q$ holds for every c.
- `sequence_input_patch`: $B = W(Z_C - Z)$: $(W + BA) z_j = W z_{C,j}$ for every token (the lemma with
  $y = W Z_C c$). `sequence_output_patch`: the same on $W_\mathrm{down}$ with the hidden activations $H$
  ($q \le m$) and any targets $y^\star$ (a bias is constant per token and folds into $y^\star$).
- `sequence_min_norm`: the rows of $\Delta W = BA$ lie in the column space of $Z$ ($A^\top = Z (Z^\top Z)^{-1}$);
  any other solution adds rows $n$ with $n^\top Z = 0$, orthogonal to them, so
  $\lVert \rho + n\rVert^2 = \lVert\rho\rVert^2 + \lVert n\rVert^2$ row by row: minimum Frobenius norm.
- `sequence_postnorm_scale`: a shared scale $\gamma'$ (no zero coordinate) and $h' = c\, t / \gamma'$ give
  $\gamma' \odot h' / \sqrt{\mathrm{mean}(h'^2) + \epsilon} = t$ whenever $c > 0$ and
  $\epsilon = c^2 (1 - \mathrm{mean}((t/\gamma')^2))$, i.e. $\mathrm{mean}((t/\gamma')^2) < 1$ with $\epsilon > 0$:
  each token picks its own $c_j$ (its pre-norm RMS), the scale is shared.
- `sequence_dependent_tokens` (the bound): any linear map $L$ (the patched $W + \Delta W$, of any rank)
  sends $z_3 = a z_1 + b z_2$ to $a L z_1 + b L z_2$. With $q > d$ tokens the $z_j$ are dependent, and
  targets with $W z_{C,3} \ne a W z_{C,1} + b W z_{C,2}$ have no patch. Counterexample ($d = 1$, $W = 1$,
  $q = 2$): $z = (1, 2)$, $z_C = (1, 3)$: $L = 1$ from the first token, then $L \cdot 2 = 2 \ne 3$.

Imports only `symbolic`: no torch, no numeric.
"""

from __future__ import annotations

import sympy as sp

from symbolic.algebra import Dot, Mat, MatVec, Mean, Vec
from symbolic.proof import Step, Theorem, coords_nonzero, definition, equation, positive

REFERENCE = "ctxpatch, THEORY.md section 6 (beyond arXiv:2511.17864)"
W, Z, A, B = Mat("W", "m", "d"), Mat("Z", "d", "q"), Mat("A", "q", "d"), Mat("B", "m", "q")
c, y = Vec("c", "q"), Vec("y", "m")


def _patched(Wm, Bm, Am, x):
    r"""$(W + BA)\,x$ as the kernel writes it: $W x + B(Ax)$."""
    return MatVec(Wm, x) + MatVec(Bm, MatVec(Am, x))


def sequence_lemma() -> Theorem:
    Zc = MatVec(Z, c)
    lhs = _patched(W, B, A, Zc)
    mid = MatVec(W, Zc) + MatVec(B, c)
    hyps = (equation(MatVec(A, Zc), c), equation(MatVec(B, c), y - MatVec(W, Zc)))
    steps = (Step(lhs, mid, "A is a left inverse of Z: A Z c = c (A = (Z^T Z)^-1 Z^T, rank Z = q)"),
             Step(mid, y, "B c = y - W Z c"))
    return Theorem("sequence_lemma", "A rank-q patch B A maps every column of Z to its target", hyps, lhs, y, steps,
                   reference=REFERENCE)


def sequence_input_patch() -> Theorem:
    ZC = Mat("Z_C", "d", "q")
    Zc, target = MatVec(Z, c), MatVec(W, MatVec(ZC, c))
    lhs = _patched(W, B, A, Zc)
    hyps = (equation(MatVec(A, Zc), c), equation(MatVec(B, c), target - MatVec(W, Zc)))
    steps = (Step(lhs, target, "sequence_lemma with y = W Z_C c", lemma="sequence_lemma",
                  substitution=((y, target),)),)
    return Theorem("sequence_input_patch", "Input side: (W + W(Z_C - Z)(Z^T Z)^-1 Z^T) z_j = W z_C,j for every token",
                   hyps, lhs, target, steps, reference=REFERENCE, uses=("sequence_lemma",))


def sequence_output_patch() -> Theorem:
    Wd, H = Mat("W_down", "d", "m"), Mat("H", "m", "q")
    AH, BH, ys = Mat("A_H", "q", "m"), Mat("B_H", "d", "q"), Vec("y_star", "d")
    Hc = MatVec(H, c)
    lhs = _patched(Wd, BH, AH, Hc)
    hyps = (equation(MatVec(AH, Hc), c), equation(MatVec(BH, c), ys - MatVec(Wd, Hc)))
    sub = ((W, Wd), (Z, H), (A, AH), (B, BH), (y, ys))
    steps = (Step(lhs, ys, "sequence_lemma on W_down and the hidden activations H", lemma="sequence_lemma",
                  substitution=sub),)
    return Theorem("sequence_output_patch", "Output side: W_down + (Y* - W_down H)(H^T H)^-1 H^T maps every "
                   "token's hidden activation to its target (q <= m)", hyps, lhs, ys, steps, reference=REFERENCE,
                   uses=("sequence_lemma",))


def sequence_min_norm() -> Theorem:
    g, n = Vec("g", "q"), Vec("n", "d")
    rho = Vec("rho", "d")
    lhs = Dot(rho + n, rho + n)
    s1 = Dot(rho, rho) + 2 * Dot(rho, n) + Dot(n, n)
    s2 = Dot(rho, rho) + Dot(n, n)
    hyps = (definition(rho, MatVec(Z, g)), equation(Dot(n, MatVec(Z, g)), sp.S.Zero))
    steps = (Step(lhs, s1, "bilinearity of the dot product"),
             Step(s1, s2, "a row of the patch is Z g; a row n of another solution's excess has n^T Z = 0"))
    return Theorem("sequence_min_norm", "Row by row, every other solution adds an orthogonal part: the rank-q "
                   "patch has minimum Frobenius norm", hyps, lhs, s2, steps, reference=REFERENCE)


def sequence_postnorm_scale() -> Theorem:
    t, gam, h = Vec("t", "d"), Vec("gamma'", "d"), Vec("h'", "d")
    cs, eps = sp.Symbol("c", positive=True), sp.Symbol("epsilon", positive=True)
    lhs = gam * h / sp.sqrt(Mean(h**2) + eps)
    s1 = cs * t / sp.sqrt(Mean((cs * t / gam) ** 2) + eps)
    s2 = cs * t / sp.sqrt(cs**2)
    hyps = (coords_nonzero(gam), definition(h, cs * t / gam), positive(Mean(h**2) + eps),
            equation(eps, cs**2 * (1 - Mean(t**2 / gam**2))))
    steps = (Step(lhs, s1, "h' = c t / gamma' (gamma' has no zero coordinate)"),
             Step(s1, s2, "mean is linear; the RMS condition eps = c^2 (1 - mean((t / gamma')^2))"),
             Step(s2, t, "c > 0"))
    return Theorem("sequence_postnorm_scale", "Post-norm: a shared scale gamma' and h'_j = c_j t_j / gamma' give "
                   "every target t_j exactly (eps > 0 fixes each token's scale c_j)", hyps, lhs, t, steps,
                   reference=REFERENCE)


def sequence_dependent_tokens() -> Theorem:
    L = Mat("L", "m", "d")
    z1, z2, z3 = Vec("z_1", "d"), Vec("z_2", "d"), Vec("z_3", "d")
    y1, y2 = Vec("y_1", "m"), Vec("y_2", "m")
    a, b = sp.symbols("a b", real=True)
    hyps = (definition(z3, a * z1 + b * z2), equation(MatVec(L, z1), y1), equation(MatVec(L, z2), y2))
    lhs = MatVec(L, z3)
    steps = (Step(lhs, a * MatVec(L, z1) + b * MatVec(L, z2), "linearity of L"),
             Step(a * MatVec(L, z1) + b * MatVec(L, z2), a * y1 + b * y2, "L reaches the first two targets"))
    return Theorem("sequence_dependent_tokens", "Beyond q = d: dependent inputs force dependent outputs, so a "
                   "target off a y_1 + b y_2 has no patch of any rank", hyps, lhs, a * y1 + b * y2, steps,
                   reference=REFERENCE)


#: The sequence theorems in `prove all` order (the lemma before the theorems citing it).
THEOREMS = {"sequence_lemma": sequence_lemma, "sequence_input_patch": sequence_input_patch,
            "sequence_output_patch": sequence_output_patch, "sequence_min_norm": sequence_min_norm,
            "sequence_postnorm_scale": sequence_postnorm_scale,
            "sequence_dependent_tokens": sequence_dependent_tokens}
