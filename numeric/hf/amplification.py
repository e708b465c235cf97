r"""How much a patched MLP branch amplifies a perturbation of its input, against the unpatched branch.
"""

from __future__ import annotations

import torch

PROBES = 2  # random input directions of the amplification measure
FD_STEP = 1e-3  # relative step of the central differences of `amplification`


def amplification(kernel, params: dict, patches: dict, u: torch.Tensor, x: torch.Tensor | None,
                  mode: str, reference: torch.Tensor | None = None) -> torch.Tensor:
    r"""(T,): how much more the patched MLP branch amplifies a perturbation of its input than the original.

    $$ A = \max_k \frac{\lVert J_{\theta+\Delta\theta}(u)\,\eta_k \rVert}{\lVert J_\theta(u)\,\eta_k \rVert} $$
    with $J_\theta$ the Jacobian of the branch (the sub-block minus the skip; w.r.t. x for a parallel
    block) and $\eta_k$ fixed random directions, by central differences with a step of $10^{-3}$ of
    the input's norm (all probes in one batched call; no Jacobian is formed). In Algorithm 1 an error
    $e_\ell$ of layer $\ell$'s input reaches layer $\ell+1$ as about $(I + J_{\theta+\Delta\theta}) e_\ell$:
    a patch with a large $A$ (Theorem 1 where $f(h_C)$ has tiny coordinates:
    $A \approx \max_i |\gamma_i + \Delta\gamma_i| / \max_i|\gamma_i|$) multiplies every rounding
    difference below it; the default strategy minimizes $A$. ``reference``: the unpatched
    differences (`branch_response`), shared by every candidate strategy; without it they come from
    the same call of ``kernel.apply`` as the patched ones (zero patches: one read of the weights).
    """
    return measure_amplification(kernel, params, patches, u, x, mode, reference)[0]


def measure_amplification(kernel, params, patches, u, x, mode, reference=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`amplification` and the unpatched differences it measured against."""
    reps = 2 * PROBES
    if reference is None:  # one call of apply: the patched rows, then the unpatched ones (zero patches)
        both = {k: {f: torch.cat([v] * reps + [unpatched(f, v)] * reps) for f, v in fs.items()}
                for k, fs in patches.items()}
        new, reference = branch_response(kernel.apply, (params, both), u, x, mode, copies=2).unbind(0)
    else:
        rep = {k: {f: torch.cat([v] * reps) for f, v in fs.items()} for k, fs in patches.items()}
        new = branch_response(kernel.apply, (params, rep), u, x, mode)
    amp = (new.double().norm(dim=-1) / reference.double().norm(dim=-1).clamp_min(1e-300)).max(0).values  # (T,)
    return amp, reference


def unpatched(name: str, v: torch.Tensor) -> torch.Tensor:
    """A patch field that changes nothing: a unit scale, zero factors and deltas."""
    return torch.ones_like(v) if name == "scale" else torch.zeros_like(v)


def branch_response(fn, args, u: torch.Tensor, x: torch.Tensor | None, mode: str, copies: int = 1) -> torch.Tensor:
    """(K, T, d): central differences of the branch `fn(*args, ...)` along K fixed random directions.
    ``copies`` > 1: ``fn`` takes that many stacked copies of the probes (rows of its patches that
    differ); returns (copies, K, T, d)."""
    base = x if mode == "parallel" else u  # (T, d)
    T, reps = base.shape[0], 2 * PROBES * copies
    gen = torch.Generator(device="cpu").manual_seed(0)
    eta = torch.randn((PROBES, *base.shape), generator=gen, dtype=torch.float64).to(base)  # (K, T, d)
    eta = eta / eta.norm(dim=-1, keepdim=True) * (FD_STEP * base.norm(dim=-1, keepdim=True))
    probes = torch.cat([base + eta, base - eta]).reshape(-1, base.shape[-1])  # (2K T, d)
    others = torch.cat([u] * reps) if mode == "parallel" else (None if x is None else torch.cat([x] * reps))
    probes = torch.cat([probes] * copies) if copies > 1 else probes
    out = _branch(fn, args, others, probes, mode).reshape(copies, 2, PROBES, T, -1)
    out = out[:, 0] - out[:, 1]
    return out if copies > 1 else out[0]


def _branch(fn, args, other, v, mode: str) -> torch.Tensor:
    """The MLP branch as a function of its perturbed input v (u for sequential blocks, x for parallel)."""
    if mode == "parallel":
        return fn(*args, other, x=v)
    y = fn(*args, v, **x_kwarg(other))
    return y if mode == "post_ln" else y - v


def x_kwarg(x) -> dict:
    """The ``x`` keyword of a parallel block's kernel call, where there is one."""
    return {} if x is None else {"x": x}
