r"""The rank-1 lemma and its minimum-norm property (Dherin et al. 2025, arXiv:2507.16003).

For $W \in \mathbb{R}^{m \times d}$ and $z \ne 0$, the rank-1 patch
$\Delta W = W (z_C - z) z^\top / (z^\top z)$ makes $W + \Delta W$ map $z$ like $W$ maps $z_C$; every
other solution is $\Delta W + N$ with $N z = 0$, and it has the larger Frobenius norm.

Run: python -m proofs.rank1_lemma [--json]; exits 0 when every theorem is verified.
"""

from __future__ import annotations

from proofs.writing import script, step, theorem
from symbolic.kernel import Lit, Term, Theorem, dot, equation, frob, mat, matvec, nonzero, outer, vec

W = mat("W", "m", "d")
z, z_C = vec("z", "d"), vec("z_C", "d")
D, N = mat("D", "m", "d"), mat("N", "m", "d")
REFERENCE = "arXiv:2507.16003, Theorem 2.2"


def rank1_patch(Wm, z_, z2_):
    r"""$W + W(z' - z) z^\top / (z^\top z)$."""
    return Wm + outer(matvec(Wm, z2_ - z_) / dot(z_, z_), z_)


def rank1_lemma(W: Term = W) -> Theorem:
    """For any W (the mutation tests restate it for a square one)."""
    return theorem(
        "rank1_lemma", "The rank-1 patch maps z like z_C",
        given=(nonzero(z),),
        show=(matvec(rank1_patch(W, z, z_C), z), "=", matvec(W, z_C)),
        proof=[
            step(matvec(W, z) + matvec(W, z_C - z) / dot(z, z) * dot(z, z),
                 "definition of the outer product: (x z^T) z = x (z^T z)"),
            step(matvec(W, z) + matvec(W, z_C - z), "cancel z^T z (z != 0)"),
            step(matvec(W, z_C), "linearity of W"),
        ], reference=REFERENCE)


def rank1_min_norm_split() -> Theorem:
    dW = outer(matvec(W, z_C - z) / dot(z, z), z)
    return theorem(
        "rank1_min_norm_split", "Every other solution is the rank-1 patch plus a map that kills z",
        given=(nonzero(z), equation(matvec(D, z), matvec(W, z_C - z))),
        show=(matvec(D - dW, z), "=", Lit(0)),
        proof=[
            step(matvec(D, z) - matvec(W, z_C - z), "linearity and (x z^T) z = x (z^T z)"),
            step(Lit(0), "hypothesis: D solves D z = W (z_C - z)"),
        ], reference=REFERENCE)


def rank1_min_norm() -> Theorem:
    r = matvec(W, z_C - z)
    dW = outer(r / dot(z, z), z)
    return theorem(
        "rank1_min_norm", "The rank-1 patch has minimum Frobenius norm: |dW + N|^2 = |dW|^2 + |N|^2",
        given=(nonzero(z), equation(matvec(N, z), Lit(0))),
        show=(frob(dW + N, dW + N), "=", frob(dW, dW) + frob(N, N)),
        proof=[
            step(frob(dW, dW) + 2 * frob(dW, N) + frob(N, N), "bilinearity of the Frobenius product"),
            step(frob(dW, dW) + 2 * dot(r, matvec(N, z)) / dot(z, z) + frob(N, N), "<x z^T, N>_F = x^T N z"),
            step(frob(dW, dW) + frob(N, N), "hypothesis N z = 0"),
        ], reference="arXiv:2507.16003 (minimum-norm remark)")


THEOREMS = {"rank1_lemma": rank1_lemma, "rank1_min_norm_split": rank1_min_norm_split,
            "rank1_min_norm": rank1_min_norm}

if __name__ == "__main__":
    raise SystemExit(script(list(THEOREMS)))
