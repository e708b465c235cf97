"""The proof kernel's public face: `symbolic.kernel` is the kernel (closed typed terms, a small trusted
core, instances); this module re-exports the names the rest of the project uses."""

from symbolic.kernel import (
    FAILED,
    KINDS,
    REFUTED,
    RELATIONS,
    UNCHECKED,
    VACUOUS,
    VERIFIED,
    Hypothesis,
    ProofError,
    Result,
    Step,
    StepResult,
    Theorem,
    check,
    coords_nonzero,
    definition,
    equation,
    genuine,
    latex,
    nonzero,
    positive,
    text,
)

__all__ = ["FAILED", "KINDS", "REFUTED", "RELATIONS", "UNCHECKED", "VACUOUS", "VERIFIED", "Hypothesis", "ProofError",
           "Result", "Step", "StepResult", "Theorem", "check", "coords_nonzero", "definition", "equation", "genuine",
           "latex", "nonzero", "positive", "text"]
