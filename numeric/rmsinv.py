r"""The constrained RMSNorm inverse of the stable update (arXiv:2511.17864, Appendix B).

For a target $t$ and a scale $\gamma$ it finds

$$ y^\star = \arg\min_{y:\ \mathrm{mean}(y^2) = 1} \lVert \gamma \odot y - t \rVert^2 . $$

The derivation (`symbolic.derive`, strategy ``stable``) gives the stationarity condition
$y_k = \gamma_k t_k / (\gamma_k^2 - \mu)$; the multiplier $\mu < \min_k \gamma_k^2$ solves the
secular equation $\mathrm{mean}\big((\gamma_k t_k)^2 / (\gamma_k^2 - \mu)^2\big) = 1$, whose left
side increases in $\mu$, so bisection in float64 finds it. Hard case (missed by the paper, met
on real Gemma activations): when $\gamma_k t_k = 0$ on every coordinate of minimal
$\gamma_k^2$ and the secular function stays below 1 up to $\min \gamma^2$, take
$\mu = \min \gamma^2$, the regular formula elsewhere, and spread the missing norm evenly over
the minimal coordinates.
"""

from __future__ import annotations

import torch

ITERATIONS = 200


def rms_inverse(t: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Batched over leading axes: t (..., d), gamma broadcastable to it. Computed in float64."""
    out_dtype = t.dtype
    t64 = t.to(torch.float64)
    g = torch.broadcast_to(gamma.to(torch.float64), t64.shape)
    n = t64.shape[-1]
    c2 = (g * t64) ** 2  # (..., d)
    g2 = g**2
    g2min = g2.min(-1, keepdim=True).values  # (..., 1)
    minimal = g2 <= g2min
    regular = ~minimal

    def phi(mu):
        return (c2 / (g2 - mu) ** 2).where(regular | (c2 > 0), torch.zeros_like(c2)).mean(-1, keepdim=True)

    # Hard case: no pull on the minimal coordinates, and phi(min gamma^2) < 1 over the others.
    c2_min = (c2 * minimal).sum(-1, keepdim=True)
    at_min = (c2 / (g2 - g2min).where(regular, torch.ones_like(g2)) ** 2 * regular).mean(-1, keepdim=True)
    hard = (c2_min == 0) & (at_min < 1)
    lo = g2min - torch.sqrt(c2.mean(-1, keepdim=True)) - 1.0
    hi = g2min.clone()
    for _ in range(ITERATIONS):
        mid = (lo + hi) / 2
        big = phi(mid) > 1
        hi = torch.where(big, mid, hi)
        lo = torch.where(big, lo, mid)
    mu = torch.where(hard, g2min, lo)
    denom = (g2 - mu).where(regular | ~hard, torch.ones_like(g2))
    y = g * t64 / denom
    if hard.any():
        missing = (n * (1 - at_min)).clamp_min(0)  # sum of y_k^2 still to place
        count = minimal.sum(-1, keepdim=True)
        fill = torch.sqrt(missing / count)
        y = torch.where(hard & minimal, fill, torch.where(hard & regular, g * t64 / denom, y))
    return y.to(out_dtype)
