r"""One patch per layer for q query tokens at once (docs/theory.md, "Sequence patches").

`numeric.hf.sequence` computes it.

Matrices have symbolic sizes ($W \in \mathbb{R}^{m\times d}$, $Z \in \mathbb{R}^{d\times q}$, ...). The kernel
has no matrix product, so a low-rank patch $\Delta W = BA$ acts as $x \mapsto B(Ax)$, and a statement about
the q columns of $Z$ is stated for an arbitrary coefficient vector $c \in \mathbb{R}^q$ (column $j$: $c = e_j$).

- `sequence_lemma`: if $A Z c = c$ and $B c = y - W Z c$ then $(W + BA) Z c = y$. With
  $A = (Z^\top Z)^{-1} Z^\top$ (which exists iff rank $Z = q$, so $q \le d$) $AZ = I_q$ holds for every c.
- `sequence_input_patch`: $B = W(Z_C - Z)$: $(W + BA) z_j = W z_{C,j}$ for every token (the lemma with
  $y = W Z_C c$). `sequence_output_patch`: the same on $W_\mathrm{down}$ with the hidden activations $H$
  ($q \le m$) and any targets $y^\star$ (a bias is constant per token and folds into $y^\star$).
- `sequence_min_norm`: the rows of $\Delta W = BA$ lie in the column space of $Z$; any other solution adds
  rows $n$ with $n^\top Z = 0$, orthogonal to them, so
  $\lVert \rho + n\rVert^2 = \lVert\rho\rVert^2 + \lVert n\rVert^2$.
- `sequence_postnorm_scale`: a shared scale $\gamma'$ (no zero coordinate) and $h' = c\, t / \gamma'$ give
  $\gamma' \odot h' / \sqrt{\mathrm{mean}(h'^2) + \epsilon} = t$ whenever $c > 0$, $\epsilon > 0$ and
  $\epsilon = c^2 (1 - \mathrm{mean}((t/\gamma')^2))$: each token picks its own $c_j$, the scale is shared.
- `sequence_dependent_tokens` (the bound): any linear map $L$ sends $z_3 = a z_1 + b z_2$ to
  $a L z_1 + b L z_2$; with $q > d$ tokens the $z_j$ are dependent, and targets off that have no patch.

Run: python -m proofs.sequence_patch [--json]; exits 0 when every theorem is verified.
"""

from __future__ import annotations

from proofs.writing import script, step, theorem
from symbolic.kernel import (
    Lit,
    Theorem,
    coords_nonzero,
    definition,
    dot,
    equation,
    mat,
    matvec,
    mean,
    positive,
    scalar,
    sqrt,
    vec,
)

REFERENCE = "ctxpatch, docs/theory.md \"Sequence patches\" (beyond arXiv:2511.17864)"
W, Z, A, B = mat("W", "m", "d"), mat("Z", "d", "q"), mat("A", "q", "d"), mat("B", "m", "q")
c, y = vec("c", "q"), vec("y", "m")


def patched(Wm, Bm, Am, x):
    r"""$(W + BA)\,x$ as the kernel writes it: $W x + B(Ax)$."""
    return matvec(Wm, x) + matvec(Bm, matvec(Am, x))


def sequence_lemma() -> Theorem:
    Zc = matvec(Z, c)
    return theorem(
        "sequence_lemma", "A rank-q patch B A maps every column of Z to its target",
        given=(equation(matvec(A, Zc), c), equation(matvec(B, c), y - matvec(W, Zc))),
        show=(patched(W, B, A, Zc), "=", y),
        proof=[
            step(matvec(W, Zc) + matvec(B, c), "A is a left inverse of Z: A Z c = c (A = (Z^T Z)^-1 Z^T, rank Z = q)"),
            step(y, "B c = y - W Z c"),
        ], reference=REFERENCE)


def sequence_input_patch() -> Theorem:
    ZC = mat("Z_C", "d", "q")
    Zc, target = matvec(Z, c), matvec(W, matvec(ZC, c))
    return theorem(
        "sequence_input_patch", "Input side: (W + W(Z_C - Z)(Z^T Z)^-1 Z^T) z_j = W z_C,j for every token",
        given=(equation(matvec(A, Zc), c), equation(matvec(B, c), target - matvec(W, Zc))),
        show=(patched(W, B, A, Zc), "=", target),
        proof=[step(target, "sequence_lemma with y = W Z_C c", by="sequence_lemma", substitution=((y, target),))],
        reference=REFERENCE)


def sequence_output_patch() -> Theorem:
    Wd, H = mat("W_down", "d", "m"), mat("H", "m", "q")
    AH, BH, ys = mat("A_H", "q", "m"), mat("B_H", "d", "q"), vec("y_star", "d")
    Hc = matvec(H, c)
    return theorem(
        "sequence_output_patch", "Output side: W_down + (Y* - W_down H)(H^T H)^-1 H^T maps every token's hidden "
        "activation to its target (q <= m)",
        given=(equation(matvec(AH, Hc), c), equation(matvec(BH, c), ys - matvec(Wd, Hc))),
        show=(patched(Wd, BH, AH, Hc), "=", ys),
        proof=[step(ys, "sequence_lemma on W_down and the hidden activations H", by="sequence_lemma",
                    substitution=((W, Wd), (Z, H), (A, AH), (B, BH), (y, ys)))],
        reference=REFERENCE)


def sequence_min_norm() -> Theorem:
    g, n, rho = vec("g", "q"), vec("n", "d"), vec("rho", "d")
    return theorem(
        "sequence_min_norm", "Row by row, every other solution adds an orthogonal part: the rank-q patch has "
        "minimum Frobenius norm",
        given=(definition(rho, matvec(Z, g)), equation(dot(n, matvec(Z, g)), Lit(0))),
        show=(dot(rho + n, rho + n), "=", dot(rho, rho) + dot(n, n)),
        proof=[
            step(dot(rho, rho) + 2 * dot(rho, n) + dot(n, n), "bilinearity of the dot product"),
            step(dot(rho, rho) + dot(n, n), "a row of the patch is Z g; a row n of another solution's excess has "
                 "n^T Z = 0"),
        ], reference=REFERENCE)


def sequence_postnorm_scale() -> Theorem:
    t, gam, h = vec("t", "d"), vec("gamma'", "d"), vec("h'", "d")
    cs, eps = scalar("c"), scalar("epsilon")
    return theorem(
        "sequence_postnorm_scale", "Post-norm: a shared scale gamma' and h'_j = c_j t_j / gamma' give every target "
        "t_j exactly (eps > 0 fixes each token's scale c_j)",
        given=(positive(cs), positive(eps), coords_nonzero(gam), definition(h, cs * t / gam),
               positive(mean(h**2) + eps), equation(eps, cs**2 * (1 - mean(t**2 / gam**2)))),
        show=(gam * h / sqrt(mean(h**2) + eps), "=", t),
        proof=[
            step(cs * t / sqrt(mean((cs * t / gam) ** 2) + eps), "h' = c t / gamma' (gamma' has no zero coordinate)"),
            step(cs * t / sqrt(cs**2), "mean is linear; the RMS condition eps = c^2 (1 - mean((t / gamma')^2))"),
            step(t, "sqrt(c^2) = c for c > 0", rewrite=(("sqrt_of_square", ((scalar("x"), cs),)),)),
        ], reference=REFERENCE)


def sequence_dependent_tokens() -> Theorem:
    L = mat("L", "m", "d")
    z1, z2, z3 = vec("z_1", "d"), vec("z_2", "d"), vec("z_3", "d")
    y1, y2 = vec("y_1", "m"), vec("y_2", "m")
    a, b = scalar("a"), scalar("b")
    return theorem(
        "sequence_dependent_tokens", "Beyond q = d: dependent inputs force dependent outputs, so a target off "
        "a y_1 + b y_2 has no patch of any rank",
        given=(definition(z3, a * z1 + b * z2), equation(matvec(L, z1), y1), equation(matvec(L, z2), y2)),
        show=(matvec(L, z3), "=", a * y1 + b * y2),
        proof=[
            step(a * matvec(L, z1) + b * matvec(L, z2), "linearity of L"),
            step(a * y1 + b * y2, "L reaches the first two targets"),
        ], reference=REFERENCE)


THEOREMS = {"sequence_lemma": sequence_lemma, "sequence_input_patch": sequence_input_patch,
            "sequence_output_patch": sequence_output_patch, "sequence_min_norm": sequence_min_norm,
            "sequence_postnorm_scale": sequence_postnorm_scale,
            "sequence_dependent_tokens": sequence_dependent_tokens}

if __name__ == "__main__":
    raise SystemExit(script(list(THEOREMS)))
