"""Block specs: the declaration of a transformer block's MLP sub-block, loaded from TOML. The one import path.

A spec says how the block is wired (sequential or parallel residual, with or without skip), which norms exist and
how they are parameterized, what the MLP is (dense, gated, mixture of experts), which linear maps carry biases, and
which parameters the user allows to be patched. It is pure data, in four modules by job:

- `symbolic.spec_data`: the frozen dataclasses (`BlockSpec`, `MLPSpec`, `MoESpec`, `NormSpec`, ...), validated at
  construction (every number against its bound in `symbolic.limits`, all failures a `SpecError`);
- `symbolic.spec_params`: the canonical parameter names (`patchable_parameters`) and which a patch may change
  (`allowed_parameters`, `allowed_kinds`);
- `symbolic.spec_read`: TOML in (`load_toml`, `loads_toml`, `parse_spec`), through `symbolic.specfile`;
- `symbolic.spec_write`: TOML out (`dump_toml`, so that ``loads_toml(dump_toml(s)) == s``).

This module re-exports their public names; the symbolic meaning of a spec lives in `symbolic.model`. None of them
imports SymPy.
"""

from __future__ import annotations

from symbolic.spec_data import (
    AttentionSpec,
    Biases,
    BlockSpec,
    ExpertKind,
    MLPKind,
    MLPSpec,
    MoESpec,
    NormKind,
    NormSpec,
    PatchSpec,
    Residual,
    ScaleParam,
    Scoring,
    SharedExpert,
    SoftmaxOrder,
    Weighting,
)
from symbolic.spec_params import (
    PATCH_KINDS,
    allowed_kinds,
    allowed_parameters,
    check_allow,
    patchable_parameters,
    split_pattern,
)
from symbolic.spec_read import MLP_FIELDS, MOE_FIELDS, NORM_FIELDS, TOP_FIELDS, load_toml, loads_toml, parse_spec
from symbolic.spec_write import dump_toml
from symbolic.specfile import ACTIVATIONS, read_text  # the named activations, part of the spec's vocabulary

__all__ = [
    "ACTIVATIONS", "MLP_FIELDS", "MOE_FIELDS", "NORM_FIELDS", "PATCH_KINDS", "TOP_FIELDS",
    "AttentionSpec", "Biases", "BlockSpec", "ExpertKind", "MLPKind", "MLPSpec", "MoESpec", "NormKind", "NormSpec",
    "PatchSpec", "Residual", "ScaleParam", "Scoring", "SharedExpert", "SoftmaxOrder", "Weighting",
    "allowed_kinds", "allowed_parameters", "check_allow", "dump_toml", "load_toml", "loads_toml", "parse_spec",
    "patchable_parameters", "read_text", "split_pattern",
]
