r"""The second, independent check: random exact models of a theorem, evaluated.

INSTANCES models of the theorem are drawn: one with every dimension 1, one with dimensions 1..4 and a
*wide* one (every dimension 5..9, an index at least 5 three times in four, so that a claim false only at an index
>= 5, such as a polynomial in the index that vanishes on 1..4, can be refuted). A model
(`symbolic.kernel.interpret`) interprets every dimension, variable, family member and opaque function and evaluates
terms in the numbers of `symbolic.kernel.numbers` (exact `Fraction`s while they can, 60-digit `mpmath` numbers once
roots, exp or tanh appear); `symbolic.kernel.satisfy` makes the hypotheses true or has the draw redone. The models
evaluate a copy of the theorem of their own (a theorem's `models` are user code). Then:

- a step or the statement false at a model of the hypotheses: **refuted**;
- a division by zero, a square root of a negative number or any other undefined value at a model
  of the hypotheses (in a definition, a step or the statement): **refuted** (the kernel discharged
  a side condition that does not hold);
- no draw satisfies the hypotheses: **vacuous**;
- a value that cannot be evaluated or decided: the theorem is **not verified**.
"""

from __future__ import annotations

import random

from symbolic.kernel.interpret import Model, ModelContext
from symbolic.kernel.numbers import Cannot, Undefined, agree, aligned, sign, sub
from symbolic.kernel.satisfy import Degenerate, draw
from symbolic.kernel.statements import FAILED, REFUTED, VACUOUS, StepResult, theorem_terms
from symbolic.kernel.terms import Family, subterms

INSTANCES = 3
REDRAWS = 30


# --------------------------------------------------------------------------- the verdict


def models(th, seed: int = 0):
    """INSTANCES models of the hypotheses (dimensions 1 first, wide last), and the number of redraws."""
    ctx = ModelContext(th)
    rng = random.Random(f"{th.name}:{seed}")
    found, redrawn = [], 0
    for k in range(INSTANCES):
        for _ in range(REDRAWS):
            sizes = {} if k else {d: 1 for d in _dims(th)}
            try:
                found.append(draw(ctx, sizes, rng, wide=k == INSTANCES - 1))
                break
            except Degenerate:
                redrawn += 1
    return found, redrawn


def _dims(th) -> set:
    out = set()
    for t in theorem_terms(th):
        for s in subterms(t):
            ty = s.ty
            while isinstance(ty, Family):
                out.add(ty.bound)
                ty = ty.elem
            out |= {x for x in (getattr(ty, "dim", None), getattr(ty, "rows", None), getattr(ty, "cols", None),
                                getattr(ty, "bound", None)) if x}
    return out


def _holds(rel: str, a, b) -> bool:
    a, b = aligned(a, b)
    if rel == "=":
        return agree(a, b)
    s = sign(sub(b, a))
    return {"<": s > 0, "<=": s >= 0, ">": s < 0, ">=": s <= 0}[rel]


def _where(m: Model) -> str:
    """The model's dimensions, read when it refutes (they are drawn as the evaluation meets them)."""
    return f"at dimensions {dict(sorted(m.sizes.items()))}"


def evaluate(th, results: list):
    """Check the steps, the statement and the definitions on the models; returns (step results,
    None or (status, why) for the whole theorem)."""
    try:
        found, redrawn = models(th)
    except (Cannot, TypeError, ValueError, ZeroDivisionError) as exc:
        return results, (FAILED, f"rule instances: the hypotheses cannot be evaluated ({exc})")
    if not found:
        return ([StepResult(r.status, r.message, r.residual, "n/a: vacuous") for r in results],
                (VACUOUS, f"rule instances: vacuous: no draw in {REDRAWS * INSTANCES} satisfies the hypotheses"))
    out = list(results)
    for m in found:
        try:
            for v in list(m.ctx.defs):
                m.var(v)
            for fam in m.ctx.families:
                for i in range(1, m.size(fam.ty.bound) + 1):
                    m.member(fam, i)
            for i, st in enumerate(th.steps):
                if not _holds(st.relation, m.ev(st.lhs, ()), m.ev(st.rhs, ())):
                    why = ("an exact instance contradicts the step the kernel verified"
                           if results[i].status == "verified" else
                           f"{results[i].message}; an exact instance contradicts the step")
                    out[i] = StepResult(REFUTED, why, results[i].residual, f"refuted {_where(m)}")
                    return out, (REFUTED, f"rule instances: step {i + 1} ({st.justification}) is false {_where(m)}")
            if not _holds(th.relation, m.ev(th.lhs, ()), m.ev(th.rhs, ())):
                return out, (REFUTED, f"rule instances: the statement is false {_where(m)}")
        except Undefined as exc:
            return out, (REFUTED, f"rule instances: {exc} {_where(m)}, where the hypotheses hold")
        except (Cannot, TypeError, ValueError, ZeroDivisionError) as exc:
            return out, (FAILED, f"rule instances: cannot evaluate {_where(m)}: {exc}")
    note = f"{len(found)}/{INSTANCES} models" + (f" ({redrawn} draws redone)" if redrawn else "")
    return [StepResult(r.status, r.message, r.residual, note) for r in out], None
