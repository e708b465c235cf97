r"""Dense patched parameters: $P + U_j V_j^\top$ formed and written into a model's layers for one token.
"""

from __future__ import annotations

import torch

from numeric.hf import offload
from numeric.hf.layout import Layout, parameter_view
from numeric.hf.offload import get
from numeric.hf.patches import LayerPatches


def dense_parameters(layer, lp: LayerPatches, j: int) -> dict[str, torch.Tensor]:
    r"""Token j's patched parameters of one layer, dense: $P + U_j V_j^\top$ for every `rank1` entry
    (a stacked-expert slice ``name[e]`` included) and ``values[j]``; the sum is formed by `torch.addr`
    in at least float32 and rounded to the parameter's dtype (`DenseWriter` forms the same values)."""
    out = {}
    for name, (U, V) in lp.rank1.items():
        out[name] = _patched(parameter_view(layer, name), U[j], V[j])
    for name, value in lp.values.items():
        out[name] = value[j].to(parameter_view(layer, name).dtype)
    return out


def _patched(P: torch.Tensor, u: torch.Tensor, v: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """P + outer(u, v) by `torch.addr`, in at least float32, in P's dtype (into `out` when given)."""
    wide = torch.promote_types(P.dtype, torch.float32)
    if wide == P.dtype:
        u, v = u.to(wide), v.to(wide)
        return torch.addr(P, u, v) if out is None else torch.addr(P, u, v, out=out)
    value = torch.addr(P.to(wide), u.to(wide), v.to(wide)).to(P.dtype)
    return value if out is None else out.copy_(value)


class DenseWriter:
    r"""Writes token j's dense patched parameters into a model's layers and takes them out again.

    A resident parameter (the model is not dispatched by accelerate, the name is not a stacked-expert
    slice) is never overwritten: $P + U_j V_j^\top$ is formed into a buffer (`torch.addr`, one read of P
    and one write) and the parameter's ``.data`` is pointed at it; restoring points it back at its
    own storage, so the original is untouched, whatever happens. Buffers are reused across tokens
    and layers (a layer is restored before the next one is written): a few matrices of memory.
    Anything else goes through `offload.write` / `offload.restore` with `dense_parameters`.
    Both forms compute the same values.
    """

    def __init__(self, model, layout: Layout):
        self.layers = get(model, layout.layers)
        self.fast = not offload.dispatched(model)
        self.buffers: dict[tuple, list[torch.Tensor]] = {}  # (shape, dtype, device) -> free buffers

    def write(self, n: int, lp: LayerPatches, j: int) -> list:
        """Layer n computes with token j's patched parameters; returns what `restore` undoes."""
        layer, undo, slow = self.layers[n], [], LayerPatches()
        for name, (U, V) in lp.rank1.items():
            param = self._resident(layer, name)
            if param is None:
                slow.rank1[name] = (U, V)
                continue
            own = param.data
            free = self.buffers.setdefault((own.shape, own.dtype, own.device), [])
            buf = free.pop() if free else torch.empty(own.shape, dtype=own.dtype, device=own.device)
            _patched(own, U[j], V[j], out=buf)
            param.data = buf
            undo.append((param, own, buf))
        for name, value in lp.values.items():
            param = self._resident(layer, name)
            if param is None:
                slow.values[name] = value
                continue
            own = param.data
            param.data = value[j].to(own.dtype).reshape(own.shape)
            undo.append((param, own, None))
        saved = offload.write(layer, dense_parameters(layer, slow, j)) if slow.rank1 or slow.values else []
        return [undo, saved]

    def restore(self, saved: list) -> None:
        """Undo `write`: every parameter back on its own storage, the buffers free again."""
        if not saved:
            return
        undo, rest = saved
        offload.restore(rest)
        for param, own, buf in reversed(undo):
            param.data = own
            if buf is not None:
                self.buffers[(own.shape, own.dtype, own.device)].append(buf)

    def _resident(self, layer, name: str):
        if not self.fast or "[" in name:
            return None
        p = get(layer, name)
        return p if isinstance(p, torch.Tensor) and not p.is_meta else None
