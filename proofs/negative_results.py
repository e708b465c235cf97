r"""The invariants behind the negative verdicts of `ctxpatch check`: what no patch of the allowed
parameters can change.

- RMSNorm outputs lie in a ball: $\mathrm{mean}((h / \sqrt{\mathrm{mean}(h^2) + \epsilon})^2) < 1$ for $\epsilon > 0$.
- Bias-free LayerNorm outputs have mean zero.
- A scalar scale moves a norm output along one ray: $(s \gamma f) / (\gamma f) = s$ in every coordinate.
- tanh is bounded: $\tanh(x) < 1$ (the kernel's table of proven facts).

Run: python -m proofs.negative_results [--json]; exits 0 when every theorem is verified.
"""

from __future__ import annotations

from proofs.writing import script, step, theorem
from symbolic.kernel import Lit, Theorem, coords_nonzero, mean, positive, scalar, sqrt, tanh, vec

h, eps = vec("h", "d"), scalar("epsilon")


def negative_rmsnorm_ball() -> Theorem:
    return theorem(
        "negative_rmsnorm_ball", "Every RMSNorm output has mean((o / gamma)^2) < 1: W_down alone cannot add a "
        "generic delta after an RMS post-norm",
        given=(positive(eps),),
        show=(mean((h / sqrt(mean(h**2) + eps)) ** 2), "<", Lit(1)),
        proof=[
            step(mean(h**2) / (mean(h**2) + eps), "mean is linear; the RMS is a scalar"),
            step(Lit(1), "eps > 0 and mean(h^2) >= 0", "<"),
        ])


def negative_layernorm_mean() -> Theorem:
    c = h - mean(h)
    rms = sqrt(mean(c**2) + eps)
    return theorem(
        "negative_layernorm_mean", "Every LayerNorm output without bias has mean(o / gamma) = 0, whatever W_down "
        "and a scalar scale do",
        given=(positive(eps),),
        show=(mean(c / rms), "=", Lit(0)),
        proof=[
            step((mean(h) - mean(h)) / rms, "mean is linear"),
            step(Lit(0), "algebra"),
        ])


def negative_scalar_ray() -> Theorem:
    f, gamma, s = vec("f_C", "d"), vec("gamma", "d"), scalar("s")
    return theorem(
        "negative_scalar_ray", "A scalar scale patch alone moves the norm output along one ray: o / (gamma f_C) is "
        "the same in every coordinate",
        given=(coords_nonzero(gamma * f),),
        show=((s * (gamma * f)) / (gamma * f), "=", s),
        proof=[step(s, "algebra")])


def negative_bounded_activation() -> Theorem:
    x = scalar("x")
    return theorem(
        "negative_bounded_activation", "An outer function ending in tanh has outputs below 1: targets >= 1 are "
        "unreachable",
        show=(tanh(x), "<", Lit(1)),
        proof=[step(Lit(1), "tanh(x) in (-1, 1) (table of proven facts)", "<")])


THEOREMS = {"negative_rmsnorm_ball": negative_rmsnorm_ball, "negative_layernorm_mean": negative_layernorm_mean,
            "negative_scalar_ray": negative_scalar_ray, "negative_bounded_activation": negative_bounded_activation}

if __name__ == "__main__":
    raise SystemExit(script(list(THEOREMS)))
