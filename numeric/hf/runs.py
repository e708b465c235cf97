r"""The query passes of Algorithm 1: each layer's patches computed in a hook from the state the run produces.

`patch_pass`: one pass with the kernels applying the patches factored; `materialized_pass`: one token through
the model's own modules with the dense patches of the layers below written in.
"""

from __future__ import annotations

import torch

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
    ``given``: {layer: the contextual products of its tokens} (`Patcher.layer`). Where the kernel computed a
    layer's branch output together with its patches, the pass takes it as it is (`FusedApply`)."""
    stored = [LayerPatches() for _ in get(model, patcher.layout.layers)]
    outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (u, the patched branch's y on u)
    given = given or {}

    def compute(n, u, x):
        outputs.pop(n, None)
        stored[n], y = patcher.layer(n, u, targets[n], x, given.get(n), with_output=True)
        if y is not None:
            outputs[n] = (u, y)
        return stored[n]

    ps = PatchSet(model, ids, stored, patcher.layout, kernels=patcher.kernels, patch_dtype=patcher.patch_dtype)
    with swapped_branches(model, patcher.layout, lambda n: FusedApply(outputs, LayerKernel(ps, n), n), compute), \
            offload.located(model, patcher.layout.layers):
        out = trunk(model, head)(ids, **kwargs)
    return stored, out


class FusedApply:
    """`LayerKernel.apply`, except that the output `patch_pass` holds for exactly this u (the same object: the
    kernel's `patched` computed it with the patches) is returned instead of recomputed."""

    def __init__(self, outputs: dict, inner: LayerKernel, n: int):
        self.outputs, self.inner, self.n = outputs, inner, n

    def apply(self, params, which, u, **extra):
        found = self.outputs.pop(self.n, None)
        if found is not None and found[0] is u:
            return found[1]
        return self.inner.apply(params, which, u, **extra)


def materialized_pass(model, patcher: Patcher, ids, targets, head: bool = True, given: dict | None = None,
                      writer: DenseWriter | None = None, **kwargs) -> tuple[list[LayerPatches], object]:
    """One token through the model's own modules: layer n's patches computed from the u they produce
    with the dense patches of the layers below written in, then written into layer n itself (by ``writer``:
    pass the same one to every token's pass, its buffers are reused). ``head=False``: no logits (`trunk`).
    ``given`` as in `patch_pass`."""
    stored = [LayerPatches() for _ in patcher.layout]
    given = given or {}

    def dense(n, u, x):
        stored[n], _ = patcher.layer(n, u, targets[n], x, given.get(n))
        return stored[n], 0

    out = token_pass(model, patcher.layout, ids, dense, writer, head=head, **kwargs)
    return stored, out
