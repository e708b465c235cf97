r"""The query passes of Algorithm 1: each layer's patches computed in a hook from the state the run produces.

`patch_pass`: one pass with the kernels applying the patches factored; `materialized_pass`: one token through
the model's own modules with the dense patches of the layers below written in.
"""

from __future__ import annotations

from numeric.hf import offload
from numeric.hf.dense import DenseWriter
from numeric.hf.offload import get
from numeric.hf.passes import swapped_branches, token_pass, trunk
from numeric.hf.patches import LayerPatches
from numeric.hf.patchset import LayerKernel, PatchSet
from numeric.hf.selection import Patcher


def patch_pass(model, patcher: Patcher, ids, targets, head: bool = True, given: dict | None = None,
               **kwargs) -> tuple[list[LayerPatches], object]:
    """One pass with the kernels applying the patches factored; layer n's from the u this run produces.
    ``given``: {layer: the contextual products of its tokens} (`Patcher.layer`). Each branch applies the
    stored patches with `LayerKernel`, the code `PatchSet.logits` replays them with, so that the replay is
    this run, bit for bit; the no-context products of each layer's input (`LayerKernel.plain`) are computed
    once, for the patch formulas and `apply` both, by `apply`'s own statements, so they change no bit of it.
    (A fused output whose sums came in another order than `apply`'s was withdrawn: a last-place difference
    that Algorithm 1 then fitted the next layers' patches to; in bfloat16 on Gemma 3 the replay of a run
    measured at 5e-3 was 2e-2.)"""
    stored = [LayerPatches() for _ in get(model, patcher.layout.layers)]
    given = given or {}

    def compute(n, u, x, plain):
        stored[n] = patcher.layer(n, u, targets[n], x, given.get(n), plain)
        return stored[n]

    ps = PatchSet(model, ids, stored, patcher.layout, kernels=patcher.kernels, patch_dtype=patcher.patch_dtype)
    with swapped_branches(model, patcher.layout, lambda n: LayerKernel(ps, n), compute), \
            offload.located(model, patcher.layout.layers):
        out = trunk(model, head)(ids, **kwargs)
    return stored, out


def materialized_pass(model, patcher: Patcher, ids, targets, head: bool = True, given: dict | None = None,
                      writer: DenseWriter | None = None, **kwargs) -> tuple[list[LayerPatches], object]:
    """One token through the model's own modules: layer n's patches computed from the u they produce
    with the dense patches of the layers below written in, then written into layer n itself (by ``writer``:
    pass the same one to every token's pass, its buffers are reused). ``head=False``: no logits (`trunk`).
    ``given`` as in `patch_pass`."""
    stored = [LayerPatches() for _ in patcher.layout]
    given = given or {}

    def dense(n, u, x):
        stored[n] = patcher.layer(n, u, targets[n], x, given.get(n))
        return stored[n], 0

    out = token_pass(model, patcher.layout, ids, dense, writer, head=head, **kwargs)
    return stored, out
