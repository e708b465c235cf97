r"""The proof kernel: a closed typed term language and a small trusted core that trusts nothing else.

- `symbolic.kernel.signature`: the types, the operations with their typing rules, opaque functions.
- `symbolic.kernel.terms`: the terms, built only through typed constructors; `symbolic.kernel.binders`:
  substitution, dimension renaming and binders owned by the kernel, all capture-avoiding.
- `symbolic.kernel.normal`: normal forms (rational functions over typed atoms, exact coefficients).
- `symbolic.kernel.facts`: the table of proven facts, intervals and side conditions.
- `symbolic.kernel.statements`: relations, hypotheses, steps, theorems (data).
- `symbolic.kernel.boundary`: the kernel's own exact copy of a theorem (`canonical`), made before anything
  is read: no subclass, no lying container, every term rebuilt through its constructors.
- `symbolic.kernel.core`: the rules and `check`, the only maker of results; `symbolic.kernel.context`: a
  theorem's hypotheses and the decision procedures over them (equal, discharge); `symbolic.kernel.lemmas`
  builds the instance of a cited lemma.
- `symbolic.kernel.instances`: the independent second check on random exact models (`interpret`: a model and
  evaluation in it; `numbers`: exact and 60-digit arithmetic; `satisfy`: making the hypotheses true).
- `symbolic.kernel.build`: constructors to write theorems with; `symbolic.kernel.show`: text and LaTeX of
  terms; `symbolic.kernel.coq`: the Coq statements (none of these is trusted).

SymPy is not imported here: it proposes (the derivation in `symbolic.derive`, translated by
`symbolic.bridge`), the kernel decides.
"""

from symbolic.kernel.binders import subst
from symbolic.kernel.build import (
    apply,
    at,
    dot,
    exp,
    expert_gate,
    family,
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
    sum_over,
    tanh,
    vec,
    vmax,
    vmin,
)
from symbolic.kernel.core import Result, check, genuine, side_conditions
from symbolic.kernel.show import latex, text
from symbolic.kernel.statements import (
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
    Step,
    StepResult,
    Theorem,
    compose,
    coords_nonzero,
    definition,
    equation,
    nonzero,
    positive,
)
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
    free_vars,
)

__all__ = ["AXIOMS", "App", "FAILED", "Family", "Fn", "Hypothesis", "ILit", "Index", "KINDS", "Lit", "Matrix",
           "ProofError", "REFUTED", "RELATIONS", "Relation", "Result", "SCALAR", "Step", "StepResult", "Sum",
           "Term", "Theorem", "TypeError_", "UNCHECKED", "VACUOUS", "VERIFIED", "Var", "Vector", "apply",
           "at", "check", "compose", "coords_nonzero", "definition", "dot", "equation", "exp", "expert_gate",
           "family", "free_vars", "frob", "gate", "genuine", "heaviside", "index", "latex", "mat", "matvec",
           "mean", "nonzero", "num", "outer", "positive", "scalar", "sel", "side_conditions", "sigmoid",
           "sqrt", "subst", "sum_over", "tanh", "text", "vec", "vmax", "vmin"]
