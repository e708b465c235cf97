r"""The mandatory equivalence check: a layer's spec must reproduce the layer's own modules before any patch.

`check_adapter`: the spec's generated kernel (`forward`) must reproduce the layer's own output on what the
layer was given in the probe run, and the composed modules on random inputs of several magnitudes, to
$10^{-12}$ relative in float64 (`FLOAT64_BOUND`); where the modules themselves compute in float32 (Gemma's
norms, float32 router softmaxes: seen by `numeric.hf.probe.Float64Mode`), to `FLOAT32_INSIDE_BOUND`, and the
result says so. `product_modules` finds the modules whose outputs are the kernel's contextual products;
`renorm_epsilon` names a renormalisation epsilon that the spec language does not model.
"""

from __future__ import annotations

import math

import torch

from numeric.hf.layout import Adapter, token_rows
from numeric.hf.offload import get
from numeric.hf.probe import Call, Float64Mode, first_tensor

FLOAT64_BOUND = 1e-12
FLOAT32_INSIDE_BOUND = 2e-5
PROBE_SCALES = (1.0, 1e-3)  # times sqrt(eps) too: where eps decides the norm


def _branch_modules(layer64, adapter: Adapter, u: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
    """The layer's own modules composed as the adapter says: y (sequential) from u, or y - u + u for a
    parallel block (the attention part is u itself)."""
    spec = adapter.spec
    if adapter.chain:
        return _chained(layer64, adapter, u)
    if adapter.mode == "parallel":
        z = get(layer64, adapter.u_module)(x)
    else:
        z = get(layer64, adapter.u_module)(u) if adapter.u_module not in adapter.skip and \
            adapter.u_module != adapter.branch_module else u
    mlp_path = adapter.skip[0] if adapter.skip else adapter.branch_module
    if adapter.adds_residual:
        return first_tensor(get(layer64, mlp_path)(z, u))
    h = first_tensor(get(layer64, mlp_path)(z))
    for part in adapter.parts:  # a branch over sibling modules: their outputs summed (`Adapter.parts`)
        h = h + first_tensor(get(layer64, part)(z))
    if adapter.skip:
        h = get(layer64, adapter.branch_module)(h)
    return u + spec.mlp.branch_scale * h  # the layer's multiplier, fitted from its own output


def _chained(layer64, adapter: Adapter, u: torch.Tensor) -> torch.Tensor:
    """y of a split branch (`Adapter.chain`): its modules in order, then the branch module."""
    h = u
    for path in adapter.chain:
        h = first_tensor(get(layer64, path)(h))
    end = get(layer64, adapter.branch_module)
    if adapter.adds_residual:  # BERT's output(h, u): u + W_down h, normalised after the add in a post-LN block
        return first_tensor(end(h, u))
    if adapter.mode == "post_ln":  # LN(u + h): the chain ended with the down map
        return end(u + h)
    return u + adapter.spec.mlp.branch_scale * end(h)


def _kernel_forward(adapter: Adapter, params: dict, u, x):
    from numeric import kernels

    kernel = kernels.load(adapter.spec, "torch")
    return kernel.forward(params, u, **({"x": x} if adapter.mode == "parallel" else {}))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@torch.no_grad()
def product_modules(layer64, adapter: Adapter, u: torch.Tensor, bound: float) -> tuple[tuple[str, str], ...]:
    """(matrix, module path) of every contextual product of the spec's kernel (its `GIVEN`) that a bias-free
    ``nn.Linear`` of the layer computes: the module holds the whole matrix as its weight, runs once in the
    branch, and its output equals the kernel's `products` on a random input of the probe's shape (to the
    adapter check's ``bound``). In the contextual run such a module's output *is* that product, which the
    patches then take from it (`numeric.hf.passes.contextual_bases`) instead of reading the matrix once more.
    Sequential and post-LN blocks (a parallel block's MLP input does not see the context)."""
    from numeric import kernels

    if adapter.mode == "parallel":
        return ()
    kernel = kernels.load(adapter.spec, "torch")
    modules = {}
    for canon in kernel.GIVEN:
        p = adapter.params.get(canon)
        if p is None or p.layout != "linear" or not p.path.endswith(".weight"):
            continue
        path = p.path[:-len(".weight")]
        module = get(layer64, path)
        if isinstance(module, torch.nn.Linear) and module.bias is None:
            modules[canon] = path
    if not modules:
        return ()
    ru = torch.randn(u[0].shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    seen: dict[str, list] = {c: [] for c in modules}
    handles = [get(layer64, path).register_forward_hook(lambda _m, _a, out, c=c: seen[c].append(token_rows(out)))
               for c, path in modules.items()]
    try:
        with Float64Mode():
            _branch_modules(layer64, adapter, ru[None], None)
    finally:
        for h in handles:
            h.remove()
    ours = kernel.products({canon: p.read(layer64) for canon, p in adapter.params.items()}, ru)
    return tuple((c, path) for c, path in modules.items() if len(seen[c]) == 1 and _rel(seen[c][0], ours[c]) <= bound)


@torch.no_grad()
def check_adapter(layer64, adapter: Adapter, u: torch.Tensor, x: torch.Tensor | None, y: torch.Tensor) -> dict:
    """The spec's kernel against the layer: on the probe run's own (u, x) -> y, and against the composed
    modules on random inputs of several magnitudes. Errors relative to the branch (y - u)."""
    gen = torch.Generator().manual_seed(5)
    branch = y - u
    try:
        params = {canon: p.read(layer64) for canon, p in adapter.params.items()}
        ours = _kernel_forward(adapter, params, u[0], None if x is None else x[0])
    except Exception as exc:  # noqa: BLE001 - a candidate that cannot even run is a failed candidate
        return {"error": float("inf"), "bound": FLOAT64_BOUND, "float32_inside": [], "why": f"{exc}"[:200]}
    errors = [_rel(ours - u[0], branch[0])]
    mode = Float64Mode()
    eps = min((n.eps for n in adapter.spec.norms.values() if n.eps > 0), default=1e-6)
    for s in PROBE_SCALES + (math.sqrt(eps),):
        ru = torch.randn(u[0].shape, generator=gen, dtype=torch.float64) * s
        rx = None if x is None else torch.randn(x[0].shape, generator=gen, dtype=torch.float64) * s
        try:
            with mode:
                theirs = _branch_modules(layer64, adapter, ru[None], None if rx is None else rx[None])[0]
        except Exception as exc:  # noqa: BLE001 - modules that cannot run composed so: a failed candidate
            return {"error": float("inf"), "bound": FLOAT64_BOUND, "float32_inside": [],
                    "why": f"its modules composed as the candidate says raise {type(exc).__name__}"}
        ours = _kernel_forward(adapter, params, ru, rx)
        errors.append(_rel(ours - ru, theirs - ru))
    narrow = sorted(mode.narrow)
    bound = FLOAT32_INSIDE_BOUND if narrow else FLOAT64_BOUND
    return {"error": max(errors), "bound": bound, "float32_inside": narrow, "widened": sorted(mode.widened)}


@torch.no_grad()
def renorm_epsilon(layer64, adapter: Adapter, record: dict[str, Call], x: torch.Tensor) -> float | None:
    r"""The $\epsilon$ of a renormalisation $s_j / (\sum_k s_k + \epsilon)$ that explains a failed MoE candidate, or
    None: on the probe run, the module's routed output must be, token by token, the candidate's times
    $S / (S + \epsilon)$ ($S$ the sum of the selected scores) with one $\epsilon > 0$ (LFM2-MoE adds 1e-6)."""
    from numeric.check import reference

    moe = adapter.spec.moe
    call = record.get(adapter.branch_module)
    if moe is None or not moe.renormalize or moe.shared_expert != "none" or adapter.mode != "sequential" or \
            adapter.skip or adapter.spec.mlp.post_norm is not None or call is None:
        return None
    params = {canon: p.read(layer64) for canon, p in adapter.params.items()}
    u = u_of(adapter, record, x)[0]
    ours = token_rows(_kernel_forward(adapter, params, u, None) - u) / adapter.spec.mlp.branch_scale  # (T, d)
    theirs, z = token_rows(call.out), token_rows(call.inp)
    r = (theirs * ours).sum(-1) / (ours * ours).sum(-1).clamp_min(1e-300)  # (T,) per-token factor
    if float((theirs - r[:, None] * ours).norm()) > 1e-10 * float(theirs.norm()):
        return None
    logits = z @ params["W_router"].T + params.get("b_router", 0.0)
    total = reference.select(adapter.spec, logits, params.get("b_select"))[1].sum(-1)  # (T,) S
    eps = total * (1 / r - 1)
    lo, hi = float(eps.min()), float(eps.max())
    return hi if lo > 0 and hi - lo <= 1e-2 * hi else None


def u_of(adapter: Adapter, record: dict[str, Call], x: torch.Tensor) -> torch.Tensor:
    """u of the probe run, (1, T, d): the u module's input (sequential), x + attention (parallel)."""
    if adapter.mode == "parallel":
        return x + record[adapter.attn_module].out
    u = record[adapter.u_module].inp  # OPT's MLP sees (tokens, d) rows; Gemma 3n's layer input holds 4 streams
    return u.reshape(1, -1, u.shape[-1])


def state_of(adapter: Adapter, record: dict[str, Call], x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    r"""(The state the spec's kernel must reproduce in the probe run, the index of the addition that gave it):
    the layer's output (index -1), or, for a layer that goes on after the MLP's add or scales it
    (`Adapter.after_add`, `Adapter.outer_scale` $\alpha$), the recorded addition closest to
    $\alpha\,(u + c\,b)$ divided by $\alpha$ (`numeric.hf.probe.Record.sums`). The composed modules say what
    $u + c\,b$ is; the recorded addition is what the layer computed."""
    if not adapter.after_add and adapter.outer_scale == 1.0:
        return y, -1
    u = u_of(adapter, record, x)
    b = record[adapter.branch_module].out + sum(record[p].out for p in adapter.parts)
    want = adapter.outer_scale * (u + adapter.spec.mlp.branch_scale * b.reshape(u.shape))
    found = [(k, r) for k, r in enumerate(getattr(record, "sums", [])) if r.numel() == want.numel()]
    found.append((-1, y))
    k, r = min(found, key=lambda kr: _rel(kr[1].reshape(want.shape), want) if kr[1].numel() == want.numel()
               else float("inf"))
    return r.reshape(want.shape) / adapter.outer_scale, k
