r"""How far a patched run may be from the run with the context, per dtype: the one place the bounds live.

The measure is $\max|\Delta\ell| / \max|\ell|$ over the query tokens' logits (`numeric.hf.accuracy`). In exact
arithmetic the patched query-alone run *is* the contextual run (the block theorems, Algorithm 1); in a dtype
both runs carry the model's own forward error $E$, so they may differ by $2E$, and a patch that amplifies
rounding (Theorem 1 on real Gemma: ~500x per layer) shows up as a larger figure.

The forward error of a transformers run has two sources (`forward_error`):

- the activations each module hands on are rounded to the *storage* unit $\epsilon_s$: the dtype's own
  epsilon, except float64, whose norms transformers computes in float32 (Gemma, Llama RMSNorm, some router
  softmaxes), so that a float64 run is rounded to float32 there;
- long reductions (matrix products, norms) accumulate in float32 on CPU for float32, bfloat16 and float16
  alike: $\epsilon_a = \epsilon_{32}$ (float64 accumulates in float64: $\epsilon_a = \epsilon_{64}$).

$E \approx$ `ROUNDING` $\epsilon_s$ + `ACCUMULATION` $\epsilon_a$, with the constants measured on the two real
models (Gemma 3 270M, SmolLM2-135M; contextual run in each dtype against float64, fact/code/story pairs;
``tests/test_real_models.py::test_forward_error_is_within_the_model_of_the_bounds`` re-measures them): float32
8-22 $\epsilon_{32}$, bfloat16 1.4-3.2 $\epsilon_\mathrm{bf16}$, float16 2.4-2.9 $\epsilon_\mathrm{f16}$ (SmolLM2;
Gemma overflows float16 in its own run). So `ROUNDING` = 4 and `ACCUMULATION` = 20, and the bound is
$2E$ (two runs) times a margin of 2 (`logit_bound`):

| dtype | $E$ | bound |
|---|---|---|
| float64 | 4.8e-7 | 1.9e-6 |
| float32 | 2.9e-6 | 1.1e-5 |
| bfloat16 | 3.1e-2 | 1.3e-1 |
| float16 | 3.9e-3 | 1.6e-2 |
"""

from __future__ import annotations

import torch

ROUNDING = 4  # stored activations: units of the storage epsilon
ACCUMULATION = 20  # float32 (or float64) accumulation of long reductions: units of its epsilon
RUNS = 2  # the patched and the contextual run each carry the forward error
MARGIN = 2


def storage_eps(dtype: torch.dtype) -> float:
    """The unit the activations are rounded to: the dtype's epsilon; float32's for float64 (transformers
    computes norms in float32 there)."""
    return torch.finfo(torch.float32 if dtype == torch.float64 else dtype).eps


def accumulation_eps(dtype: torch.dtype) -> float:
    """The unit long reductions accumulate in: float64's for float64, float32's otherwise."""
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps


def forward_error(dtype: torch.dtype) -> float:
    """The model's own forward error in `dtype`, relative to its largest logit (see the module docstring)."""
    return ROUNDING * storage_eps(dtype) + ACCUMULATION * accumulation_eps(dtype)


def logit_bound(dtype: torch.dtype | str) -> float:
    r"""The largest $\max|\Delta\ell| / \max|\ell|$ a patched run in `dtype` may show against the run with the
    context: `RUNS` x `MARGIN` x `forward_error`."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return RUNS * MARGIN * forward_error(dtype)
