"""The router's top-k margin: `runtime.router_roundoff` bounds how far each run's computed router logits lie from
the kernel's, from the magnitudes of the products (not of the logits), and `runtime.require_topk_margin` refuses
exactly the choices that bound can change.

Float32 throughout: where the round-off is large enough to matter. The runs are computed the ways the
pipeline computes them: the kernel's own formulas, the model's modules (`torch.nn.functional.rms_norm`,
`linear`), the patches written into a dense matrix, another summation order.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from numeric import kernels
from numeric.check.reference import random_params, small_expert_count
from numeric.kernels import runtime
from symbolic import catalog
from symbolic.errors import PatchConditionError

SPEC = catalog.load("mixtral")  # pre-RMSNorm, softmax router, top-2, rank-1 router patch
K = SPEC.moe.top_k
E = small_expert_count(SPEC)
T, M = 16, 8


def _params(n: int, scale: float, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    params = random_params(SPEC, n, M, gen, n_experts=E, dtype=torch.float32)
    params["W_router"] = params["W_router"] * scale
    params["mlp_pre_norm.scale"] = 1 + 0.1 * torch.randn(n, generator=gen)
    return params


def _inputs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 1)
    size = torch.exp(2 * torch.randn(T, 1, generator=gen))  # residual streams of very different sizes
    return (size * torch.randn(T, n, generator=gen), torch.exp(torch.randn(T, 1, generator=gen))
            * torch.randn(T, n, generator=gen))


def _adversarial(n: int, seed: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Equal positive products: every partial sum rounds the same way, so a sequential sum's error grows
    like n (not sqrt(n)); the worst case the dimension factor is there for."""
    gen = torch.Generator().manual_seed(seed)
    params = _params(n, 1.0, seed)
    params["W_router"] = 0.1 * (1 + 1e-2 * torch.arange(E, dtype=torch.float32))[:, None] * torch.ones(E, n)
    params["mlp_pre_norm.scale"] = torch.ones(n)
    return params, 1 + 1e-3 * torch.rand(T, n, generator=gen), 1 + 1e-3 * torch.rand(T, n, generator=gen)


def _reversed(w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(T, E) w z by sequential summation from the last column down, in float32 (NumPy, no BLAS)."""
    w, z = w.numpy(), z.numpy()
    acc = np.zeros((z.shape[0], w.shape[0]), dtype=np.float32)
    for j in reversed(range(z.shape[1])):
        acc = acc + np.float32(z[:, j:j + 1] * w[None, :, j])
    return torch.from_numpy(acc)


class _Spy:
    """What the kernel hands `require_topk_margin`: its logits ell_C and the round-off bound."""

    def __init__(self, monkeypatch):
        self.seen: list[tuple] = []
        real = runtime.require_topk_margin

        def spy(ell, k, layer="", routing=runtime.PLAIN, bias=None, *, roundoff):
            self.seen.append((ell, roundoff))
            real(ell, k, layer, routing, bias, roundoff=roundoff)

        monkeypatch.setattr(runtime, "require_topk_margin", spy)


def _runs(params: dict, u: torch.Tensor, u_ctx: torch.Tensor, patches: dict) -> dict[str, torch.Tensor]:
    """(T, E) router logits of the contextual run and of the patched run, each computed several ways."""
    w, gamma = params["W_router"], params["mlp_pre_norm.scale"]
    eps = float(kernels.load("mixtral", "torch").epsilon_pre)
    n = u.shape[-1]
    z_C, z = (F.rms_norm(v, (n,), gamma, eps) for v in (u_ctx, u))  # the model's own norm module
    left, right = patches["W_router"]["left"], patches["W_router"]["right"]
    dense = w[None] + left[:, :, None] * right[:, None, :]  # the patch written into the weights, float32
    return {
        "contextual, the model's modules": F.linear(z_C, w),
        "contextual, reversed order": _reversed(w, z_C),
        "patched, factored": left * (right * z).sum(-1, keepdim=True) + F.linear(z, w),
        "patched, written into the weights": torch.einsum("ted,td->te", dense, z),
        "patched, written, reversed order": torch.stack([_reversed(dense[t], z[t:t + 1])[0] for t in range(T)]),
    }


def _instances(sizes, scales, seeds):
    for n in sizes:
        for seed in seeds:
            yield _adversarial(n, seed)
            for scale in scales:
                yield (_params(n, scale, seed), *_inputs(n, seed))


def router_sweep(monkeypatch, sizes=(16, 64, 256), scales=(1e-3, 2e-2, 1.0), seeds=(0, 1, 2)) -> dict:
    """{run: the largest |logit - kernel's logit| / bound over every expert, token and instance}, and how many
    instances the margin refused (their patches do not exist). Random instances (router weights at each
    scale) and an adversarial one (`_adversarial`) per width and seed."""
    worst: dict[str, float] = {}
    refused, spy = 0, _Spy(monkeypatch)
    for params, u, u_ctx in _instances(sizes, scales, seeds):
        try:
            patches = kernels.load("mixtral", "torch").block_patches(params, u, u_ctx)
        except PatchConditionError:
            refused += 1
            continue
        ell, bound = (v[:, 0, :] for v in spy.seen[-1])
        for name, logits in _runs(params, u, u_ctx, patches).items():
            worst[name] = max(worst.get(name, 0.0), float(((logits - ell).abs() / bound).max()))
    return {"worst": worst, "refused": refused}


def test_every_run_stays_within_the_bound_on_random_instances(monkeypatch):
    """Sound: on float32 instances (widths 16..256; random, router weights 1e-3..1 and streams of very different
    sizes; adversarial, equal positive products) no run's router logits leave the bound; the worst ratio says by
    how much they stay inside. A bound without the dimension factor fails here (the adversarial sums)."""
    result = router_sweep(monkeypatch)
    assert result["refused"] <= 2  # a random instance is rarely a near-tie
    assert len(result["worst"]) == 5 and all(0 < r < 1 for r in result["worst"].values()), result


def test_a_choice_that_round_off_decides_is_refused():
    """Two experts whose logits differ by less than the round-off of their products: two legitimate float32
    computations (BLAS, and sequential summation in reverse) choose different experts for some instance, and
    every such instance is refused."""
    n, flips = 64, 0
    gen = torch.Generator().manual_seed(7)
    for _ in range(400):
        w = torch.randn(E, n, generator=gen)
        z_C = torch.randn(1, n, generator=gen)
        w[0], w[3] = 3 * z_C[0], -3 * z_C[0]  # expert 0 clearly first, expert 3 clearly last
        w[2] = w[1]
        w[2, 0] += float(torch.randn(1, generator=gen)) * 1e-6 / float(z_C[0, 0])  # 1 and 2 tie to ~1e-6
        blas, other = F.linear(z_C, w), _reversed(w, z_C)
        if torch.equal(blas.topk(K).indices.sort().values, other.topk(K).indices.sort().values):
            continue
        flips += 1
        ell = blas[:, None, :]
        with pytest.raises(PatchConditionError):
            runtime.require_topk_margin(ell, K, roundoff=runtime.router_roundoff(w, z_C[:, None], z_C[:, None], ell))
    assert flips >= 5  # such instances exist: the test has refused some


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_the_kernel_refuses_exactly_the_tokens_whose_tie_decides(backend):
    """Two experts with the same router row tie exactly at every token; the generated kernel refuses the tokens
    where one of them is chosen and the other not, and only those."""
    params = _params(32, 1.0, 3)
    params["W_router"][2] = params["W_router"][1]
    u, u_ctx = _inputs(32, 3)
    z_C = F.rms_norm(u_ctx, (32,), params["mlp_pre_norm.scale"], 1e-5)
    chosen = F.linear(z_C, params["W_router"]).topk(K).indices
    straddle = [t for t in range(T) if (1 in chosen[t]) != (2 in chosen[t])]
    assert 0 < len(straddle) < T
    as_ = (lambda v: v.numpy()) if backend == "numpy" else (lambda v: v)
    with pytest.raises(PatchConditionError) as exc:
        kernels.load("mixtral", backend).block_patches({k: as_(v) for k, v in params.items()}, as_(u), as_(u_ctx))
    assert exc.value.tokens == straddle


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_tiny_router_logits_with_a_clear_relative_margin_are_accepted(backend, monkeypatch):
    """Router weights at 3e-5: logits ~1e-4 whose top-2 is decided by >= 2% of their size. The round-off of
    their products is ~1e-9; a floor of 1e3 ulps of (max|logit| + 1) (1.2e-4) would refuse every token."""
    params = _params(48, 3e-5, 5)
    u, u_ctx = _inputs(48, 5)
    as_ = (lambda v: v.numpy()) if backend == "numpy" else (lambda v: v)
    spy = _Spy(monkeypatch)
    kernels.load("mixtral", backend).block_patches({k: as_(v) for k, v in params.items()}, as_(u), as_(u_ctx))
    ell, bound = (torch.as_tensor(v)[:, 0, :] for v in spy.seen[-1])
    top = ell.sort(-1, descending=True).values
    gap, size = top[:, K - 1] - top[:, K], ell.abs().max(-1).values
    assert torch.all(gap >= 0.02 * size) and torch.all(gap < 1e3 * torch.finfo(torch.float32).eps * (1 + size))
    assert torch.all(2 * bound.max(-1).values < 0.01 * gap)  # accepted, by over 100x


@pytest.mark.parametrize("variant", ["pre_norm_vector", "parallel"])
def test_kernels_that_read_no_plain_z_or_no_z_C_check_their_margin(variant, monkeypatch):
    """The margin check reads what the router reads in each kernel: a patched pre-norm (no plain z: the
    patched run reproduces z_C) and a parallel block (no z_C: both runs' MLP reads the same x)."""
    spec = dataclasses.replace(SPEC, residual="parallel") if variant == "parallel" else SPEC
    kernel = kernels.load(spec, "torch", input_strategy="pre_norm_vector" if variant == "pre_norm_vector" else None)
    gen = torch.Generator().manual_seed(11)
    params = random_params(spec, 24, M, gen, n_experts=E)
    u, u_ctx, x = (torch.randn(T, 24, generator=gen, dtype=torch.float64) for _ in range(3))
    spy = _Spy(monkeypatch)
    kernel.block_patches(params, u, u_ctx, **({"x": x} if variant == "parallel" else {}))
    ell, bound = spy.seen[-1]
    assert bound.shape == ell.shape == (T, 1, E) and torch.all(torch.isfinite(bound)) and torch.all(bound > 0)
