r"""Concrete counterexamples for negative controllability verdicts, and their numeric check.

`witness` turns a `Restriction` of the symbolic checker into numbers (d = 3, m = 4, seed 0):
random parameters, a contextual input and a no-context input chosen so that the contextual
output lies outside what any allowed patch can reach (for instance a target with
mean((t / gamma)^2) = 4 for an RMSNorm whose outputs all have mean((o / gamma)^2) < 1).

`best_residual` is the independent check: it frees every allowed parameter on the restricted
side (whole tensors, a superset of rank-1 patches; a scalar where only a scale patch is
allowed), fixes the other side to its contextual values, and minimizes the distance to the
contextual output with random draws and Adam. A true counterexample keeps that distance away
from zero; the same search drives it to zero on a controllable block.
"""

from __future__ import annotations

import torch

from numeric.check.reference import forward, random_params
from symbolic.spec import BlockSpec, allowed_kinds, allowed_parameters

D, M, SEED = 3, 4, 0


def _inputs(spec: BlockSpec, gen: torch.Generator) -> dict[str, torch.Tensor]:
    base_C = torch.randn(1, D, generator=gen, dtype=torch.float64)
    mlp_in_C = torch.randn(1, D, generator=gen, dtype=torch.float64) if spec.residual == "parallel" else base_C
    return {"u_C": base_C, "mlp_in_C": mlp_in_C}


def witness(spec: BlockSpec, r) -> dict:
    """Numbers for restriction `r` (a `symbolic.derive.Restriction`)."""
    gen = torch.Generator().manual_seed(SEED)
    n_exp = spec.moe.top_k + 1 if spec.moe else None
    params = random_params(spec, D, M, gen, n_experts=n_exp)
    ins = _inputs(spec, gen)
    tr_C = forward(spec, params, ins["mlp_in_C"], ins["u_C"])
    delta, note = _delta(spec, r, params, tr_C, gen)
    u = ins["u_C"] - delta
    if r.side == "input" and spec.residual != "parallel":
        u, note = _input_witness(spec, r, params, tr_C, gen)
    mlp_in = ins["mlp_in_C"] if spec.residual == "parallel" else u
    values = {k: v.tolist() for k, v in params.items()}
    out = {
        "dims": {"d": D, "m": M} | ({"n_E": n_exp} if n_exp else {}),
        "seed": SEED,
        "params": values,
        "u": u[0].tolist(),
        "u_C": ins["u_C"][0].tolist(),
        "y_C": tr_C.y[0].tolist(),
        "note": note,
    }
    if spec.residual == "parallel":
        out["x"] = mlp_in[0].tolist()
    return out


def _delta(spec, r, params, tr_C, gen) -> tuple[torch.Tensor, str]:
    e0 = torch.zeros(1, D, dtype=torch.float64)
    e0[0, 0] = 1.0
    if r.reason == "range" and r.stage == "mlp_post_norm":
        norm = spec.mlp.post_norm
        gamma = _gamma(spec, params, "mlp_post_norm")
        beta = params.get("mlp_post_norm.bias", torch.zeros(D, dtype=torch.float64))
        target = 2 * gamma + beta  # (t - beta) / gamma = 2 everywhere
        if norm.kind == "rms":
            note = ("target t = 2 gamma + beta has mean(((t - beta) / gamma)^2) = 4, but every RMSNorm output has "
                    f"mean(((o - beta) / gamma)^2) {'< 1' if norm.eps > 0 else '= 1'}")
        else:
            note = "target t = 2 gamma + beta has mean((t - beta) / gamma) = 2, but every LayerNorm output has 0"
        return (target - tr_C.o), note
    if r.reason == "range" and r.stage == "out_activation":
        rng = r.details["range"]
        bound = rng.outside(1.0)
        delta = (bound - tr_C.o[0, 0]) * e0
        return delta, f"the first coordinate of the branch target is {bound:.4g}, outside the range {rng.text()} of phi"
    if r.side == "input":
        return e0, f"u and u_C drawn independently: {r.stage} z differs from {r.stage} z_C"
    return e0, ("delta = e_1: " + {
        "scalar": "the scalar patch only moves the output along one ray, which misses the target",
        "fixed": "no allowed parameter can add it, so the output stays where the unpatched run puts it",
        "undecided": "a generic target; undecided, not a proven witness (whether the strategy reaches it is not known)",
    }.get(r.reason, "the strategy cannot reach a generic target"))


def _input_witness(spec, r, params, tr_C, gen) -> tuple[torch.Tensor, str]:
    """A no-context input u for an input-side restriction (for a range restriction: one whose
    hidden target needs an activation value outside the activation's range)."""
    if r.reason != "range":
        u = torch.randn(1, D, generator=gen, dtype=torch.float64)
        return u, f"u and u_C drawn independently: {r.stage} z differs from {r.stage} z_C"
    rng = r.details["range"]
    for _ in range(10_000):
        u = 3 * torch.randn(1, D, generator=gen, dtype=torch.float64)
        z = forward(spec, params, u, u).z
        p = z @ params["W_up"].T + params.get("b_up", 0.0)
        need = tr_C.hidden[""] / p  # the activation values the gate would have to produce
        low = rng.below is not None and float(need.min()) < rng.below - 0.5
        high = rng.above is not None and float(need.max()) > rng.above + 0.5
        if low or high:
            k = int(need.argmin()) if low else int(need.argmax())
            return u, (f"hidden coordinate {k} needs sigma(g) = {float(need[0, k]):.4g}, outside the range "
                       f"{rng.text()} of the activation")
    raise RuntimeError("no witness found for the range restriction")


def _gamma(spec, params, name):
    n = spec.norms[name]
    if n.scale == "none":
        return torch.ones(D, dtype=torch.float64)
    w = params[f"{name}.scale"]
    return 1 + w if n.scale == "one_plus" else w


# --------------------------------------------------------------------------- numeric check

INPUT_STAGE = ("mlp_pre_norm.", "W_gate", "W_up", "b_gate", "b_up", "W_router", "experts.W_gate",
               "experts.W_up", "shared.W_gate", "shared.W_up", "shared.w_gate")


def free_parameters(spec: BlockSpec, side: str) -> dict[str, str]:
    """Allowed parameters of one side, each 'tensor' (free whole tensor) or 'scale' (free scalar only)."""
    out = {}
    for name in allowed_parameters(spec):
        on_input = name.startswith(INPUT_STAGE)
        if on_input != (side == "input"):
            continue
        kinds = allowed_kinds(spec, name)
        out[name] = "scale" if kinds == {"scale"} else "tensor"
    return out


def best_residual(spec: BlockSpec, wit: dict, side: str, draws: int = 300, steps: int = 400,
                  starts: int = 4) -> float:
    """Smallest distance to the contextual target found over the side's allowed parameters.

    Output side: hidden activations fixed to the contextual ones, distance to y_C.
    Input side: distance of the no-context hidden activations to the contextual ones.
    """
    params = {k: torch.tensor(v, dtype=torch.float64) for k, v in wit["params"].items()}
    u = torch.tensor([wit["u"]], dtype=torch.float64)
    u_C = torch.tensor([wit["u_C"]], dtype=torch.float64)
    mlp_in = torch.tensor([wit["x"]], dtype=torch.float64) if "x" in wit else u
    mlp_in_C = torch.tensor([wit["x"]], dtype=torch.float64) if "x" in wit else u_C
    tr_C = forward(spec, params, mlp_in_C, u_C)
    free = free_parameters(spec, side)

    def residual(values: dict[str, torch.Tensor]) -> torch.Tensor:
        p = dict(params)
        for name, how in free.items():
            if how == "tensor":
                p[name] = values[name]
            else:  # gamma -> s * gamma, in the stored parameterization
                w = params[name]
                p[name] = values[name] * (1 + w) - 1 if _one_plus(spec, name) else values[name] * w
        if side == "output":
            tr = forward(spec, p, mlp_in, u, hidden_override=tr_C.hidden)
            return torch.linalg.vector_norm(tr.y - tr_C.y)
        tr = forward(spec, p, mlp_in, u)
        return sum(torch.linalg.vector_norm(tr.hidden[g] - tr_C.hidden[g]) for g in tr_C.hidden)

    if not free:  # nothing may be patched on this side: the distance is what it is
        with torch.no_grad():
            return float(residual({}))
    gen = torch.Generator().manual_seed(1)
    best = float("inf")
    for i in range(draws + starts):
        spread = 3.0 if i < draws else 0.3  # wide random draws, then local descents from near the model
        values = {n: (1 + torch.randn((), generator=gen, dtype=torch.float64) * spread if how == "scale"
                      else params[n] + torch.randn(params[n].shape, generator=gen, dtype=torch.float64) * spread)
                  for n, how in free.items()}
        if i < draws:
            with torch.no_grad():
                best = min(best, float(residual(values)))
            continue
        best = min(best, _descend(residual, values, steps))
    return best


def _descend(residual, values, steps) -> float:
    """Adam, then L-BFGS, on the squared residual; returns the best residual seen."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in values.items()}
    best = float("inf")
    opt = torch.optim.Adam(leaves.values(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = residual(leaves)
        best = min(best, loss.item())
        if not loss.requires_grad:  # no free parameter reaches the target (e.g. a router, for the hidden
            return best  # activations): the distance is what it is
        (loss**2).backward()
        opt.step()
    lbfgs = torch.optim.LBFGS(leaves.values(), max_iter=steps, line_search_fn="strong_wolfe",
                              tolerance_grad=1e-14, tolerance_change=1e-16)

    def closure():
        lbfgs.zero_grad()
        loss = residual(leaves) ** 2
        loss.backward()
        return loss

    lbfgs.step(closure)
    with torch.no_grad():
        return min(best, residual(leaves).item())


def _one_plus(spec, name):
    return spec.norms[name.split(".")[0]].scale == "one_plus"
