r"""The proof kernel: a closed typed term language and a small trusted core that trusts nothing else.

- `symbolic.kernel.terms`: types and terms, built only through typed constructors; substitution,
  dimension renaming and binders owned by the kernel.
- `symbolic.kernel.normal`: normal forms (rational functions over typed atoms, exact coefficients).
- `symbolic.kernel.facts`: the table of proven facts, intervals and side conditions.
- `symbolic.kernel.core`: theorems, rules and `check`, the only maker of results.
- `symbolic.kernel.instances`: the independent second check on random exact models.
- `symbolic.kernel.show`: text and LaTeX of terms (untrusted).

SymPy is not imported here: it proposes (the derivation in `symbolic.derive`, translated by
`symbolic.bridge`), the kernel decides.
"""

from symbolic.kernel.core import (
    AXIOMS,
    FAILED,
    KINDS,
    REFUTED,
    RELATIONS,
    UNCHECKED,
    VACUOUS,
    VERIFIED,
    Hypothesis,
    ProofError,
    Relation,
    Result,
    Step,
    StepResult,
    Theorem,
    check,
    compose,
    coords_nonzero,
    definition,
    equation,
    genuine,
    nonzero,
    positive,
    side_conditions,
)
from symbolic.kernel.show import latex, text
from symbolic.kernel.terms import (
    SCALAR,
    App,
    Family,
    Fn,
    ILit,
    Index,
    Lit,
    Matrix,
    Sum,
    Term,
    TypeError_,
    Var,
    Vector,
    apply,
    at,
    dot,
    exp,
    expert_gate,
    family,
    free_vars,
    frob,
    gate,
    heaviside,
    index,
    mat,
    matvec,
    mean,
    num,
    outer,
    scalar,
    sel,
    sigmoid,
    sqrt,
    subst,
    sum_over,
    tanh,
    vec,
    vmax,
    vmin,
)

__all__ = ["AXIOMS", "FAILED", "KINDS", "REFUTED", "RELATIONS", "SCALAR", "UNCHECKED", "VACUOUS", "VERIFIED", "App",
           "Family", "Fn", "Hypothesis", "ILit", "Index", "Lit", "Matrix", "ProofError", "Relation", "Result", "Step",
           "StepResult", "Sum", "Term", "Theorem", "TypeError_", "Var", "Vector", "apply", "at", "check", "compose",
           "coords_nonzero", "definition", "dot", "equation", "exp", "expert_gate", "family", "free_vars", "frob", "gate", "genuine",
           "heaviside", "index", "latex", "mat", "matvec", "mean", "nonzero", "num", "outer", "positive", "scalar",
           "sel", "side_conditions", "sigmoid", "sqrt", "subst", "sum_over", "tanh", "text", "vec", "vmax", "vmin"]
