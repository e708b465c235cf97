r"""Whether a computation reads other tokens: the hypotheses of the theorems on what follows a patched state.

A layer without an MLP branch after the last MLP layer must be position-wise for the output to be exact, and where
a layer goes on after the MLP's add, what follows must be position-wise for the state after it to stay exact
(docs/theory.md, "The theory's full reach"). Both are measured on the float64 copy of
a layer re-run on what it received in the probe: a change at the first position (of the layer's input, or of
the state right after the add) must leave every later position of the layer's output as it was. A causal
computation cannot move earlier positions, so the first position is the one that reveals every mixing.
"""

from __future__ import annotations

import torch

from numeric.hf.probe import Call, Float64Mode, SumRecorder, double, first_tensor, input_of

SHIFT = 1e-2  # the relative size of the change at the first position
SAME = 1e-12  # later positions that move by less (relative) have not read it


def _first_position(t: torch.Tensor) -> torch.Tensor:
    """t with its first token (axis -2) shifted by `SHIFT` of its size."""
    out = t.clone()
    out[..., 0, :] = out[..., 0, :] * (1 + SHIFT) + SHIFT * float(t[..., 0, :].abs().max().clamp_min(1e-3))
    return out


def _later_moved(before: torch.Tensor, after: torch.Tensor) -> bool:
    a, b = before[..., 1:, :], after[..., 1:, :]
    return float((a - b).norm()) > SAME * float(a.norm().clamp_min(1e-300))


@torch.no_grad()
def mixes_tokens(layer64, call: Call) -> bool:
    """Whether the layer's output at later positions reads its input at the first one (a token mixer)."""
    args, kwargs = double(call.args), double(call.kwargs)
    x = input_of(args, kwargs)
    if x is None or x.dim() < 2 or x.shape[-2] < 2:
        return True  # nothing to measure: counted as mixing (the conservative answer)
    with Float64Mode():
        before = first_tensor(layer64(*args, **kwargs))
        moved = _first_position(x)
        if args and args[0] is x:
            args = (moved,) + tuple(args[1:])
        else:
            kwargs = {**kwargs, **{k: moved for k, v in kwargs.items() if v is x}}
        after = first_tensor(layer64(*args, **kwargs))
    return _later_moved(before, after)


@torch.no_grad()
def after_add_mixes(layer64, call: Call, index: int) -> bool:
    """Whether what the layer computes after its ``index``-th addition (the state right after the MLP's add,
    `numeric.hf.probe.Record.sums`) reads other positions of that state."""
    args, kwargs = double(call.args), double(call.kwargs)
    with Float64Mode():
        before = first_tensor(layer64(*args, **kwargs))
        with SumRecorder({index: _first_position}):
            after = first_tensor(layer64(*args, **kwargs))
    return before.shape[-2] < 2 or _later_moved(before, after)
