r"""ctxpatch: exact context-to-parameter patches for transformer blocks.

A prompt changes what a transformer block computes for the next token; that change is exactly a
token-dependent patch of the MLP's parameters (Dherin et al. 2025, arXiv:2507.16003; Goldwaser,
Munn, Gonzalvo, Dherin 2025, arXiv:2511.17864). This package is the face of the pipeline

    spec -> symbolic (check, derive, prove, codegen) -> numeric (validate, Hugging Face) -> reports

>>> from ctxpatch import check, derive, prove, codegen, validate, absorb_context, report

Names are loaded on first use, so ``import ctxpatch`` stays light (no torch until a numeric
function is asked for).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "check": "ctxpatch.api", "derive": "ctxpatch.api", "prove": "ctxpatch.api", "codegen": "ctxpatch.api",
    "validate": "ctxpatch.api", "report": "ctxpatch.api", "load_spec": "ctxpatch.api",
    "absorb_context": "numeric.hf", "generate_without_context": "numeric.hf", "PatchSet": "numeric.hf",
    "BlockSpec": "symbolic.spec", "SpecError": "symbolic.errors", "PatchConditionError": "symbolic.errors",
    "CtxpatchInputError": "symbolic.errors", "ModelInputError": "symbolic.errors", "Options": "numeric.hf",
    "absorb_sequence": "numeric.hf", "SequencePatch": "numeric.hf",
    "STRATEGIES": "symbolic.derive", "Verdict": "symbolic.controllability", "Derivation": "symbolic.derivation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ctxpatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
