"""The constrained RMSNorm inverse of the stable update (arXiv:2511.17864, Appendix B): the regular case,
the trust-region hard case (no root below min gamma_k^2) and its neighbourhood, against a constrained
optimizer started from many points."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from numeric.kernels.runtime import rms_inverse

GAMMA = np.array([0.3, 1.0, 1.2, 0.3, 2.0, 1.5, 0.9, 1.1])


def _best_on_sphere(t: np.ndarray, g: np.ndarray, starts: int = 6) -> float:
    """min |g * y - t|^2 subject to mean(y^2) = 1, by SLSQP from random starts (seeded)."""
    rng, d, best = np.random.default_rng(0), len(t), np.inf
    cons = {"type": "eq", "fun": lambda y: np.mean(y**2) - 1}
    for _ in range(starts):
        y0 = rng.standard_normal(d)
        y0 /= np.sqrt(np.mean(y0**2))
        res = minimize(lambda y: np.sum((g * y - t) ** 2), y0, constraints=[cons], method="SLSQP",
                       options={"ftol": 1e-14, "maxiter": 500})
        best = min(best, res.fun)
    return best


@pytest.mark.parametrize("case", ["regular", "hard", "near_hard"])
def test_rms_inverse_is_the_constrained_minimizer(case):
    t = {"regular": np.array([0.5, -1.0, 2.0, 0.1, -0.3, 1.2, 0.7, -2.0]),
         "hard": np.array([0.0, 0.1, 0.1, 0.0, 0.2, 0.1, 0.05, 0.1]),  # no pull where gamma^2 is least
         "near_hard": np.array([1e-9, 0.1, 0.1, 0.0, 0.2, 0.1, 0.05, 0.1])}[case]
    y = rms_inverse(torch.tensor(t)[None], torch.tensor(GAMMA))[0].numpy()
    assert abs(np.mean(y**2) - 1) <= 1e-14  # on the sphere to round-off (the stable patch relies on it)
    obj = np.sum((GAMMA * y - t) ** 2)
    assert obj <= _best_on_sphere(t, GAMMA) + 1e-9
    if case == "hard":  # mu = min gamma^2: the minimal coordinates carry the missing norm, equally
        assert y[0] == pytest.approx(y[3]) and abs(y[0]) > 0.5


def test_rms_inverse_keeps_the_dtype_and_solves_in_float64():
    t = torch.randn(4, 16, dtype=torch.float32, generator=torch.Generator().manual_seed(1))
    y = rms_inverse(t, torch.rand(16, generator=torch.Generator().manual_seed(2)) + 0.5)
    assert y.dtype == torch.float32 and float((y.double() ** 2).mean(-1).sub(1).abs().max()) <= 1e-6
