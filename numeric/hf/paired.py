r"""One generation step for both runs at once: a batch of two rows, the run with the context and the run without it.

Greedy generation without the context (`numeric.hf.generate`) advances two runs by one token per step: the run
with the context (cache of c + q + i tokens) gives every layer's target $u_C$, the patched run without it (cache of
q + i tokens) follows it. Both are one token through the same layers, so one forward of batch 2 reads every weight
once for both (a one-token step on a CPU is bound by memory): row 0 the contextual token at position c + q + i,
row 1 the patched token at position q + i, its cache left-padded by c masked entries so that both rows share one
cache length (`paired_cache`, `paired_mask`). Within that forward each patched layer's MLP branch meets both rows
(`numeric.hf.passes.paired_branches`) and `pair` computes row 1's patched sub-block from row 0's $u_C$ at the same
layer. `batch_refusal` decides where this is exact: otherwise the two one-token passes run as before.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from numeric.hf.amplification import x_kwarg
from numeric.hf.compat import zero_based_positions
from numeric.hf.patches import LayerPatches

#: Who computes row 0 (the run with the context) of each patched layer's MLP branch in a batched step: ``"model"``,
#: the model's own modules (on both rows; row 1 of the branch's output replaced, `paired_branches`), so row 0 is
#: the model's own run; ``"kernel"``, `pair` with ``contextual=True`` (the modules swapped out, `swapped_branches`
#: with ``sub_block``): the slot for a kernel that reads every MLP matrix once for both rows.
CONTEXT_ROW = "model"

#: The cache layers a batched step extends: attention keys and values, (1, heads, tokens, head dim), of every
#: position (`DynamicLayer`) or of the last sliding-window ones (`DynamicSlidingWindowLayer`); exact classes,
#: not subclasses (a linear-attention or quantized layer derives from them and keeps other state).
PADDABLE = ("DynamicLayer", "DynamicSlidingWindowLayer")


def pair(kernels: dict, params: dict, u_C: torch.Tensor, u: torch.Tensor, patches_for, x_C: torch.Tensor | None = None,
         x: torch.Tensor | None = None, given: dict | None = None, contextual: bool = False,
         twins: dict | None = None) -> tuple[torch.Tensor | None, torch.Tensor, LayerPatches]:
    r"""One layer's MLP sub-block for the same token in both runs: (y_C, y, patches).

    $y$ = the patched sub-block on the run without the context, its patches computed from ($u$, $u_C$) of this
    layer (``patches_for(u, u_C, x, given)`` -> `LayerPatches`: `Patcher.layer`, which chooses the strategy) and
    applied by the chosen strategy's kernel (``apply``, as `patch_pass` applies them); ``given``: the contextual
    products of $u_C$ the model's own modules computed (`Adapter.products`; the kernel computes what is missing).
    ``contextual``: $y_C$ too, the unpatched sub-block on $u_C$ by the kernel (``forward``); False (the
    default) where the model's own modules compute row 0 (`paired_branches`), $y_C$ is then None. ``kernels``:
    {strategy: kernel} of the layer's spec; u_C, u (1, d); x_C, x the MLP inputs of a parallel block.
    ``twins``: {matrix: (1, out)}, the products the same modules computed on the run without the context (the
    twins of ``given``: the same matrix times u's vector), taken as the kernels' no-context products (`plain`, by
    each kernel's ``TWINS``) by the patch formulas and ``apply``: with the model's modules on both rows, a step
    then reads each MLP matrix once, and the down projection once more for the patched row.
    The one place the per-layer arithmetic of a batched step happens."""
    known = plain(kernels, twins)
    patches = patches_for(u, u_C, x, given, known)
    kernel = kernels[patches.strategies[0]] if patches.strategies else next(iter(kernels.values()))
    factored = patches.factored or patches.token(0)
    y = kernel.apply(params, factored, u, **x_kwarg(x), **({"plain": known} if known and _same(factored, u) else {}))
    y_C = next(iter(kernels.values())).forward(params, u_C, **x_kwarg(x_C)) if contextual else None
    return y_C, y, patches


def plain(kernels: dict, twins: dict | None) -> dict | None:
    """{plain key: product}: the twins of the contextual products under the keys of every candidate kernel
    (``TWINS``: the matrix and the vector it multiplies), or None where there are none."""
    if not twins:
        return None
    out = {key: twins[m] for k in kernels.values() for m, key in getattr(k, "TWINS", {}).items() if m in twins}
    return out or None


def _same(patches: dict, u: torch.Tensor) -> bool:
    """Whether the patches are in u's dtype (not computed in a wider patch dtype, where the kernels' own products
    are taken)."""
    return all(v.dtype == u.dtype for fields in patches.values() for v in fields.values())


def batch_refusal(model, caches) -> str | None:
    """Why a generation step of `model` cannot be one forward of batch 2 (`paired_cache`), or None where it can.

    It can where the row without the context, left-padded, is exactly its own run: every cache (``caches``: the
    two runs' after their prefill) a plain ``DynamicCache`` whose every layer holds attention keys and values
    (`PADDABLE`: no recurrent, SSM or convolution state, which a padded row would carry through), the model's
    forward takes an ``attention_mask`` (the padding masked) and ``position_ids`` (each row at its own
    positions), and explicit 0-based positions are the model's own for a cached step (`zero_based_positions`:
    not a RoBERTa-family model, which counts from ``padding_idx + 1``)."""
    for cache in caches:
        kind = type(cache).__name__
        if kind != "DynamicCache":
            return f"its cache is a {kind}, not a DynamicCache of attention layers"
        layers = getattr(cache, "layers", None) or []
        odd = sorted({type(layer).__name__ for layer in layers} - set(PADDABLE))
        if not layers or odd:
            return f"its cache holds {', '.join(odd) or 'no layers'}, not only {' or '.join(PADDABLE)}"
        if any(getattr(layer, "record_past", False) or layer.keys.dim() != 4 or layer.keys.shape[0] != 1
               for layer in layers):
            return "its cache layers are not (1, heads, tokens, head dim) keys and values of one row"
    if len({len(cache.layers) for cache in caches}) != 1:
        return "the two runs' caches hold different numbers of layers"
    taken = inspect.signature(model.forward).parameters
    missing = [k for k in ("attention_mask", "position_ids") if k not in taken]
    if missing:
        return f"its forward takes no {' or '.join(missing)}"
    if not zero_based_positions(model):
        return "explicit 0-based positions are not its own positions for a cached step"
    return None


def paired_cache(cache_C, cache_P):
    """The two runs' caches as one of two rows: row 0 ``cache_C`` (c + q tokens), row 1 ``cache_P`` (q tokens)
    left-padded with zeros to row 0's length, layer by layer (a sliding-window layer keeps the last window of
    each, aligned at the end: the padding is at positions the mask hides, `paired_mask`, or outside the window).
    Row 0's bookkeeping (its token count) is the cache's. ``cache_C`` is extended in place and returned."""
    for mine, other in zip(cache_C.layers, cache_P.layers, strict=True):
        for name in ("keys", "values"):
            a, b = getattr(mine, name), getattr(other, name)
            b = F.pad(b, (0, 0, a.shape[-2] - b.shape[-2], 0))
            setattr(mine, name, torch.cat([a, b.to(a)], 0))
    return cache_C


def paired_mask(c: int, n: int, device=None) -> torch.Tensor:
    """(2, n): the attention mask of both rows over n cache positions (and the new token): row 0 sees every one,
    row 1 none of the c padding positions its cache starts with (`paired_cache`)."""
    mask = torch.ones(2, n, dtype=torch.long, device=device)
    mask[1, :c] = 0
    return mask
