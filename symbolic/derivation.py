r"""What a derivation produces, and how it reads: patch formulas, the equations solved, the verdicts.

`symbolic.derive` writes and solves each strategy's equations (`solve_for`) and returns a `Derivation`:
its patches (`PatchFormula`: rank-1 factors, an added vector or bias, or a scale factor), the steps
solved in order, the side conditions, and whether SymPy found the patched run equal to the contextual
one. A strategy that does not apply raises `Unavailable`; one that would restrict the target raises
`Restriction`, which `symbolic.controllability` turns into a counterexample. The functions at the end
print formulas as text, LaTeX and JSON (the `derive` command's keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from symbolic.algebra import Condition, Outer, Vec, is_scalar, normalize, side_conditions, tidy
from symbolic.printing import pstr


class Unavailable(Exception):
    """The strategy needs a parameter the block lacks or the user does not allow."""


@dataclass
class Restriction(Exception):
    """The strategy can match the contextual run only for special targets: not controllable."""

    side: str  # input | output
    reason: str  # range | scalar | fixed | unsolvable | undecided
    stage: str
    invariant: str
    strategy: str
    details: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.side} side, {self.stage}: {self.invariant}"


@dataclass(frozen=True)
class PatchFormula:
    r"""The patch of one parameter: $\Delta W = \mathrm{left}\,\mathrm{right}^\top$ (rank1),
    $\Delta = \mathrm{value}$ (vector, bias), or $\gamma \to s\gamma$ with $s = \mathrm{value}$ (scale)."""

    param: str
    kind: str
    value: sp.Expr
    right: sp.Expr | None = None
    per_expert: bool = False

    @property
    def delta(self) -> sp.Expr:
        return Outer(self.value, self.right) if self.kind == "rank1" else self.value

    @property
    def conditions(self) -> list[Condition]:
        return side_conditions(self.value)


@dataclass(frozen=True)
class Step:
    """One equation solved during a derivation: `lhs = rhs` for `unknowns`, giving `solution`."""

    what: str
    lhs: sp.Expr
    rhs: sp.Expr
    unknowns: tuple[sp.Symbol, ...]
    solution: tuple[sp.Expr, ...]
    side: str = ""


@dataclass(frozen=True)
class Derivation:
    arch: str
    input_strategy: str
    output_strategy: str
    patches: tuple[PatchFormula, ...]
    steps: tuple[Step, ...]
    conditions: tuple[Condition, ...]
    hidden_match: bool | None
    output_match: bool | None
    definitions: tuple[tuple[str, sp.Expr], ...]
    symbols: tuple[tuple[str, sp.Symbol], ...] = ()

    @property
    def verified(self) -> bool:
        return self.hidden_match is True and self.output_match is True

    def formula(self, param: str) -> PatchFormula:
        return next(p for p in self.patches if p.param == param)


# --------------------------------------------------------------------------- solving


def solve_for(what: str, lhs: sp.Expr, rhs: sp.Expr, unknown: sp.Symbol, steps: list[Step],
              side: str, stage: str, strategy: str) -> sp.Expr:
    """Solve `lhs = rhs` for one unknown with SymPy; a scalar unknown must get a scalar solution."""
    eq = normalize(sp.expand(normalize(lhs - rhs)))
    solutions = sp.solve(eq, unknown, dict=True)
    if not solutions:
        raise Restriction(side, "unsolvable", stage, f"no {unknown} solves {lhs} = {rhs}", strategy)
    value = normalize(solutions[0][unknown])
    if sp.count_ops(value) < 60:  # full simplification only where it is cheap; correctness never needs it
        value = sp.simplify(value)
    if not isinstance(unknown, Vec) and not is_scalar(value):
        raise Restriction(side, "scalar", stage,
                          f"the scalar {unknown} would have to equal the vector {pstr(value)} in every coordinate",
                          strategy, {"unknown": unknown, "solution": value})
    steps.append(Step(what, lhs, rhs, (unknown,), (value,), side))
    return value


def interval_text(rng: sp.Set) -> str:
    """'(-1, 1)' for an open interval, '[0, oo)' for a half-open one, str() otherwise."""
    if isinstance(rng, sp.Interval):
        return f"{'(' if rng.left_open else '['}{rng.inf}, {rng.sup}{')' if rng.right_open else ']'}"
    return str(rng)


# --------------------------------------------------------------------------- presentation


def _delta_name(p: PatchFormula) -> str:
    return f"{p.param} -> s * gamma" if p.kind == "scale" else f"Delta {p.param}"


def formula_text(p: PatchFormula) -> str:
    """The patch as plain text: rank-1 factors, the added vector, or the scale factor s."""
    each = " (for each selected expert e)" if p.per_expert else ""
    value = pstr(tidy(p.value))
    if p.kind == "rank1":
        return f"outer({value}, {pstr(p.right)}){each}"
    if p.kind == "scale":
        return f"gamma -> s * gamma with s = {value}"
    return value + each


def formula_latex(p: PatchFormula, symbol: sp.Symbol | None = None) -> str:
    """The patch as LaTeX, named by the parameter's symbol (W_gate, gamma_post, w_post, ...)."""
    from symbolic.printing import latex

    name = latex(symbol) if symbol is not None else rf"\mathrm{{{p.param}}}"
    if p.per_expert:
        name += r"^{(e)}"
    value = latex(tidy(p.value))
    if p.kind == "rank1":
        return rf"\Delta {name} = \left({value}\right) {{{latex(p.right)}}}^{{\top}}"
    if p.kind == "scale":
        return rf"{name}: \ \gamma \to s\,\gamma, \quad s = {value}"
    return rf"\Delta {name} = {value}"


def derivation_json(der: Derivation, latex: bool = False) -> dict:
    from symbolic.printing import latex as to_latex

    out = {
        "arch": der.arch,
        "input_strategy": der.input_strategy,
        "strategy": der.output_strategy,
        "formulas": {p.param: formula_text(p) for p in der.patches},
        "patches": [{"param": p.param, "kind": p.kind, "value": pstr(tidy(p.value)),
                     "right": pstr(p.right) if p.right is not None else None, "per_expert": p.per_expert}
                    for p in der.patches],
        "definitions": {name: pstr(expr) for name, expr in der.definitions},
        "conditions": [c.text() for c in der.conditions],
        "steps": [{"what": s.what, "equation": f"{pstr(s.lhs)} = {pstr(s.rhs)}",
                   "unknowns": [str(u) for u in s.unknowns], "solution": [pstr(v) for v in s.solution]}
                  for s in der.steps],
        "verified": der.verified,
    }
    if latex:
        symbols = dict(der.symbols)
        out["latex"] = {p.param: formula_latex(p, symbols.get(p.param)) for p in der.patches}
        out["definitions_latex"] = {name: to_latex(expr) for name, expr in der.definitions}
        out["conditions_latex"] = [c.latex() for c in der.conditions]
    return out
