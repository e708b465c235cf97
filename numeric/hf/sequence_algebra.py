r"""The float64 linear algebra of the sequence patches: left inverses, Greville's update, the shared post-norm
scale, reduced-rank regression. Each refuses (`PatchConditionError`, naming the layer and the tokens) where its
side condition fails, never returns a patch outside its bound.
"""

from __future__ import annotations

import math

import torch

from symbolic.errors import PatchConditionError

RANK_TOL = 1e-12  # sigma_min / sigma_max below this: the columns are numerically dependent
NEWTON_STEPS = 60  # the shared-scale dual: Newton converges in about 8 where feasible
NEWTON_TOL = 1e-11  # relative residual of the shared-scale constraints (float64 sums of d terms)
ACCEPT_TOL = 1e-6  # a Newton residual below this is taken up by c_j (set from the w reached)
SCALE_FLOOR = 0.1  # a zero scale coordinate starts the projection at 0.1 RMS(gamma)
C_WINDOW = 2.0  # the post-norm construction keeps each token's pre-norm RMS within this factor of the context's
B_MIN = 1e-3  # the smallest mean(t_j^2 w) aimed at (c_j >= sqrt(eps / (1 - B_MIN)))


def left_inverse(X: torch.Tensor, what: str, layer: int) -> tuple[torch.Tensor, float]:
    r"""$(X^\top X)^{-1} X^\top$ of an (n, q) matrix by QR, and its condition number; refuses rank < q."""
    n, q = X.shape
    if q > n:
        raise PatchConditionError(f"q <= {what.split(':')[0]} size (q = {q} tokens, size {n})", list(range(q)),
                                  str(layer))
    s = torch.linalg.svdvals(X)
    cond = float(s[0] / s[-1]) if s[-1] > 0 else math.inf
    if not cond < 1 / RANK_TOL:
        raise PatchConditionError(f"rank {what} = q (the {q} columns are dependent: condition {cond:.3g})",
                                  list(range(q)), str(layer))
    Q, R = torch.linalg.qr(X)  # (n, q), (q, q)
    return torch.linalg.solve_triangular(R, Q.T, upper=True), cond  # (q, n)


def shared_scale(T: torch.Tensor, c0: torch.Tensor, gamma: torch.Tensor, eps: float,
                 layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""$w > 0$ (d,) and $c$ (q,) with $\mathrm{mean}(t_j^2 w) = 1 - \epsilon/c_j^2$ for every row $t_j$ of T (q, d).

    Then $\gamma' = 1/\sqrt{w}$ and $h'_j = c_j\, t_j \odot \sqrt{w}$ give
    $\gamma' \odot h'_j / \sqrt{\mathrm{mean}(h_j'^2) + \epsilon} = t_j$ exactly (`proofs.sequence_patch`).
    $c_j$ stays within a factor `C_WINDOW` of the contextual RMS $c_{0,j}$ (so $W_\mathrm{down}$ need not
    cancel its own output): $b_j = 1 - \epsilon/c_j^2$ is $m_j = \mathrm{mean}(t_j^2 w_0)$ clipped to the
    window, so $w = w_0 = 1/\gamma^2$ (zero coordinates floored at `SCALE_FLOOR` RMS($\gamma$)) whenever it
    can be kept. Otherwise $w$ is the Itakura-Saito projection of $w_0$ onto the q constraints $M w = 1$,
    $M_j = t_j^2 / (d\, b_j)$: it minimizes $\sum_i w_i/w_{0,i} - \log(w_i/w_{0,i})$, which grows without
    bound as any $w_i \to 0$ or $\infty$ (so $\gamma'$ stays away from 0 and infinity, unlike a KL
    projection), and is $w = 1/(1/w_0 - M^\top\lambda)$, found by damped Newton steps on the concave dual.
    Raises PatchConditionError when no positive solution is found (the dual does not converge).
    """
    q, d = T.shape
    floor = SCALE_FLOOR * gamma.pow(2).mean().sqrt()
    w0 = 1 / torch.maximum(gamma.abs(), floor) ** 2  # (d,)
    m = (T**2 * w0).mean(-1)  # (q,)
    lo = (1 - eps * C_WINDOW**2 / c0**2).clamp_min(B_MIN)
    b = torch.minimum(torch.maximum(m, lo), 1 - eps / (C_WINDOW * c0) ** 2)  # (q,)
    M = T**2 / (d * b[:, None])  # (q, d): the constraints read M w = 1
    p = 1 / w0
    lam = torch.zeros(q, dtype=T.dtype)

    def dual(lam):  # the concave dual of the Itakura-Saito projection; -inf outside its domain
        s = p - M.T @ lam
        if not bool((s > 0).all()):
            return -math.inf
        return float((p / s).sum() - torch.log(p / s).sum() - lam @ (M @ (1 / s) - 1))

    for _ in range(NEWTON_STEPS):
        w = 1 / (p - M.T @ lam)  # (d,)
        r = 1 - M @ w  # (q,)
        if float(r.abs().max()) < NEWTON_TOL:
            break
        step = torch.linalg.lstsq((M * w**2) @ M.T, r[:, None]).solution[:, 0]
        t, now, miss = 1.0, dual(lam), float(r.norm())
        while not (dual(lam + t * step) >= now or _miss(M, p, lam + t * step) < miss) and t > 1e-12:
            t /= 2  # damped: the dual must rise (or, at its round-off, the constraints' miss fall)
        lam = lam + t * step
    w = 1 / (p - M.T @ lam)
    r = 1 - M @ w
    achieved = (T**2 * w).mean(-1)  # (q,): c_j is set from it, so the identity holds to round-off
    if not (float(r.abs().max()) < ACCEPT_TOL and bool((w > 0).all()) and bool((achieved < 1).all())):
        raise PatchConditionError("a positive shared scale with mean(t_j^2 w) = 1 - eps/c_j^2 for every token "
                                  f"(no convergence; residual {float(r.abs().max()):.3g})", list(range(q)),
                                  str(layer))
    return w, (eps / (1 - achieved)).sqrt()


def _miss(M: torch.Tensor, p: torch.Tensor, lam: torch.Tensor) -> float:
    s = p - M.T @ lam
    return float((1 - M @ (1 / s)).norm()) if bool((s > 0).all()) else math.inf


def greville(X: torch.Tensor, P: torch.Tensor, x: torch.Tensor, what: str, layer: int,
             token: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    r"""Greville's rank-one update of a left inverse: $X' = [X\ x]$ and $X'^{+} = [P - d\,b^\top;\ b^\top]$.

    $P = X^{+}$ (q, n), $d = P x$, $c = x - X d$ (the new column's part outside the old span; computed
    twice, Gram-Schmidt style, so that it is accurate when small), $b = c / c^\top c$. The old rows change
    by the rank-one correction $-d\,b^\top$ (with $b^\top X = 0$ they still invert the old columns), the new
    row $b^\top$ inverts the new one. Returns $(X', X'^{+}, \mathrm{cond}(X'))$; refuses (naming the layer
    and the token) when the new column depends on the old ones or the size is exhausted, as `left_inverse`.
    """
    n, q = X.shape
    if q + 1 > n:
        raise PatchConditionError(f"q <= {what.split(':')[0]} size (q = {q + 1} tokens, size {n})", [token],
                                  str(layer))
    d = P @ x
    c = x - X @ d
    e = P @ c  # the re-orthogonalisation: c loses what rounding left of the old span
    d, c = d + e, c - X @ e
    X2 = torch.cat([X, x[:, None]], 1)
    s = torch.linalg.svdvals(X2)
    cond = float(s[0] / s[-1]) if s[-1] > 0 else math.inf
    if not cond < 1 / RANK_TOL:
        raise PatchConditionError(f"rank {what} = q (token {token}'s column depends on the earlier ones: "
                                  f"condition {cond:.3g})", [token], str(layer))
    b = c / (c @ c)
    return X2, torch.cat([P - torch.outer(d, b), b[None]], 0), cond


def scale_for(t: torch.Tensor, w: torch.Tensor, eps: float, layer: int, token: int) -> torch.Tensor:
    r"""The new token's pre-norm RMS $c$ under a KEPT shared post-norm scale $\gamma' = \pm 1/\sqrt{w}$:
    $\mathrm{mean}(t^2 w) = 1 - \epsilon / c^2$ (`shared_scale`), so $c = \sqrt{\epsilon / (1 - \mathrm{mean}(t^2 w))}$.
    PatchConditionError (naming the layer) when $\mathrm{mean}(t^2 w) \ge 1$: no $c$ exists, the shared scale
    would have to change (and with it every earlier token's down output)."""
    m = float((t**2 * w).mean())
    if not m < 1:
        raise PatchConditionError(f"mean(t^2 w) < 1 under the kept shared post-norm scale (token {token}'s target "
                                  f"gives {m:.6g}; a new scale gamma' would change every earlier token's patch)",
                                  [token], str(layer))
    return torch.tensor(math.sqrt(eps / (1 - m)), dtype=t.dtype)


def reduced_rank(Y: torch.Tensor, X: torch.Tensor, rank: int, rcond: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""$(B, A)$, $B A$ of rank $\le$ `rank`, minimising $\lVert B A X - Y\rVert_F$ (reduced-rank regression).

    With $X = U S V^\top$ (singular values below ``rcond`` times the largest dropped: the least-squares
    solution $Y X^{+}$ is the minimum-norm one, and plain least squares where X has full row rank), the
    fitted values are $Y V V^\top$; their best rank-r approximation (Eckart-Young) is $U_r U_r^\top Y V V^\top$
    with $U_r$ the top left singular vectors of $M = Y V$, reached by $B = U_r$, $A = U_r^\top M S^{-1} U^\top$.
    (Truncating $Y X^{+}$ itself would not minimise the residual unless X were whitened.)"""
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    keep = S > rcond * S[0]
    U, S, Vh = U[:, keep], S[keep], Vh[keep]
    M = Y @ Vh.T  # (out, k)
    Um = torch.linalg.svd(M, full_matrices=False)[0][:, :rank]
    return Um, (Um.T @ M) / S @ U.T
