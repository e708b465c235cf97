r"""How far a patched run may be from the run with the context, per dtype: the one place the bounds live.

The measure is $\max|\Delta\ell| / \max|\ell|$ over the query tokens' logits (`numeric.hf.accuracy`). In exact
arithmetic the patched query-alone run *is* the contextual run (the block theorems, Algorithm 1); in a dtype
each run is $E$ from the exact run, so the two may differ by $2E$ (`RUNS`), and a patch that amplifies
rounding (Theorem 1 on real Gemma: ~500x per layer) shows up as a larger figure.

The forward error $E$ of a transformers run has three sources (`forward_error`):

- the activations each module hands on are rounded to the dtype: `ROUNDING` $\epsilon_d$;
- matrix products accumulate in float32 on CPU for float32, bfloat16 and float16 alike (float64 in float64):
  `ACCUMULATION` $\epsilon_a$, $\epsilon_a = \epsilon_{32}$ (float64: $\epsilon_{64}$);
- transformers computes norms, rotary tables and attention softmaxes in float32 in every dtype, float64
  included: `FLOAT32_STEPS` $\epsilon_{32}$ (the whole error of a float64 run; it grows with the position,
  the rotary angles being float32).

Each constant is the largest $E$ measured, times `MARGIN` = 1.25, rounded up (`MEASURED`). The measurement:
``python benchmarks/forward_error.py``, the contextual run in each dtype against the exact run (float64
throughout, `Float64Throughout`) on Gemma 3 270M and SmolLM2-135M, 8 pairs of different kinds of text, contexts
of 24, 48 and 200 tokens: 48 runs per dtype (24 in float16, whose range Gemma's own run overflows). In units of
the dtype's epsilon (float32's for float64), median / 90th percentile / largest:

| dtype | median | 90% | largest | where |
|---|---|---|---|---|
| float64 | 3.8 | 8.5 | 10.5 | Gemma, 200 tokens (24 tokens: 6.2; 48: 8.0) |
| float32 | 13.0 | 18.6 | 28.9 | Gemma, code pair, 48 tokens |
| bfloat16 | 2.3 | 3.5 | 6.3 | SmolLM2, JSON pair, 48 tokens (next: 4.3) |
| float16 | 2.7 | 3.6 | 4.1 | SmolLM2, 200 tokens |

So `ROUNDING` = ceil(1.25 x 6.3) = 8 (the half dtypes' largest), `FLOAT32_STEPS` = ceil(1.25 x 10.5) = 14
(float64), `ACCUMULATION` = ceil(1.25 x 28.9) - 8 - 14 = 15 (float32, the other two taken), and the bound
is the two runs' $2E$ (`logit_bound`; the margin is in the constants):

| dtype | $E$ | bound | before (4 $\epsilon_s$ + 20 $\epsilon_{32}$, twice 2E) |
|---|---|---|---|
| float64 | 1.7e-6 | 3.3e-6 | 1.9e-6, below the float64 run's own 2E (2.5e-6 at 200 tokens) |
| float32 | 4.4e-6 | 8.8e-6 | 1.1e-5 |
| bfloat16 | 6.3e-2 | 1.3e-1 | 1.3e-1 |
| float16 | 7.8e-3 | 1.6e-2 | 1.6e-2 |

The patched runs sit well inside: Algorithm 1 re-targets every layer, so their figure is the rounding of the
last layers, not of the whole depth (Gemma float64, default strategy, 20 runs: 5e-8 to 2e-7 against 3.3e-6;
bfloat16, one pass: 5e-3 against 0.13).
`tests/test_real_models.py::test_forward_error_is_within_the_model_of_the_bounds` re-measures $E$ on the
suite's three pairs at 24 and 48 tokens.
"""

from __future__ import annotations

import math

import torch
from torch.overrides import TorchFunctionMode

MARGIN = 1.25  # over the largest forward error measured
#: The largest forward error measured (`benchmarks/forward_error.py`), in units of the dtype's epsilon (float32's
#: for float64): what the constants below are derived from.
MEASURED = {"float64": 10.48, "float32": 28.92, "bfloat16": 6.28, "float16": 4.12}
ROUNDING = math.ceil(MARGIN * max(MEASURED["bfloat16"], MEASURED["float16"]))  # 8: activations in the dtype
FLOAT32_STEPS = math.ceil(MARGIN * MEASURED["float64"])  # 14: transformers' float32 norms, rotary tables, softmaxes
ACCUMULATION = math.ceil(MARGIN * MEASURED["float32"]) - ROUNDING - FLOAT32_STEPS  # 15: float32 matrix products
RUNS = 2  # the patched and the contextual run each carry the forward error

F32 = torch.finfo(torch.float32).eps


def storage_eps(dtype: torch.dtype) -> float:
    """The unit the activations are rounded to: the dtype's epsilon (float32's for float64, the unit its
    error is measured in: `FLOAT32_STEPS`)."""
    return torch.finfo(torch.float32 if dtype == torch.float64 else dtype).eps


def accumulation_eps(dtype: torch.dtype) -> float:
    """The unit matrix products accumulate in: float64's for float64, float32's otherwise."""
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps


def forward_error(dtype: torch.dtype) -> float:
    r"""The model's own forward error in `dtype`, relative to its largest logit (see the module docstring):
    `ROUNDING` $\epsilon_d$ + `ACCUMULATION` $\epsilon_a$ + `FLOAT32_STEPS` $\epsilon_{32}$."""
    return ROUNDING * torch.finfo(dtype).eps + ACCUMULATION * accumulation_eps(dtype) + FLOAT32_STEPS * F32


def logit_bound(dtype: torch.dtype | str) -> float:
    r"""The largest $\max|\Delta\ell| / \max|\ell|$ a patched run in `dtype` may show against the run with the
    context: `RUNS` x `forward_error`."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return RUNS * forward_error(dtype)


class Float64Throughout(TorchFunctionMode):
    """The exact run the constants are measured against: inside the block, every cast to float32
    (``.float()``, ``.to(torch.float32)``, ``dtype=torch.float32``: transformers' norms, rotary tables and
    attention softmaxes) is a cast to float64 instead, so a float64 model runs in float64 throughout. ``left``
    counts the float32 (or half) tensors that still come out: 0 on both real models."""

    def __init__(self):
        super().__init__()
        self.left = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.float:
            func = torch.Tensor.double
        if kwargs.get("dtype") is torch.float32:
            kwargs["dtype"] = torch.float64
        if func is torch.Tensor.to:
            args = tuple(torch.float64 if a is torch.float32 else a for a in args)
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.dtype in (torch.float32, torch.bfloat16, torch.float16):
            self.left += 1
        return out
