r"""The controllability checker: does a perfect patch exist for the allowed parameters?

For each side it tries every strategy of `symbolic.derive` (in preference order) and keeps
those SymPy solves with only *generic* side conditions ($z \neq 0$, coordinates nonzero):

- the inner function is **input controllable** (arXiv:2511.17864, Definition 3) when some input
  strategy makes the patched pre-activations at $z$ equal the contextual ones at $z_C$;
- the outer function is **output controllable** (Definition 4) when some output strategy adds
  any $\delta$ on top of the contextual branch output.

A perfect patch (block output AND hidden activations match) exists when both hold and the
default derivation verifies symbolically. Otherwise the verdict carries a counterexample: an
invariant every allowed patch preserves and concrete numbers whose target violates it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from symbolic.derivation import Derivation, Restriction, Unavailable
from symbolic.derive import STRATEGIES, Deriver
from symbolic.errors import SpecError
from symbolic.spec import BlockSpec, allowed_parameters

DEFAULT_REASON = (
    "Input side: rank-1 on every input map (the papers' lemma; bias patches as fall-back). "
    "Output side: a bias patch when the block has one (exact with no side condition); otherwise the "
    "elementwise post-norm scale (arXiv:2511.17864 Theorem 1: W_down untouched, d numbers per token); "
    "otherwise rank-1 on W_down (each selected expert's share for MoE). Combined strategies "
    "(rank-1 + scalar scale, the stable bfloat16 update) on request with --strategy."
)


@dataclass
class SideResult:
    ok: list[str] = field(default_factory=list)
    restrictions: dict[str, Restriction] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def controllable(self) -> bool:
        return bool(self.ok)

    def strongest_restriction(self, side: str) -> Restriction | None:
        """The restriction of the strategy with the most freedom: its invariant binds every allowed patch."""
        for name in STRATEGIES.counter_order(side):
            if name in self.restrictions:
                return self.restrictions[name]
        return next(iter(self.restrictions.values()), None)


@dataclass
class Verdict:
    spec: BlockSpec
    input: SideResult
    output: SideResult
    input_strategy: str | None
    output_strategy: str | None
    derivation: Derivation | None
    restriction: Restriction | None  # the invariant that rules out a perfect patch, when none exists
    witness: dict | None = None  # concrete numbers for the counterexample (added by `ctxpatch.check`)

    @property
    def counterexample(self) -> dict | None:
        """The counterexample: invariant, stage, strategy, and the numeric witness when attached."""
        if self.restriction is None:
            return None
        return counterexample(self.restriction) | (self.witness or {})

    @property
    def input_controllable(self) -> bool:
        return self.input.controllable

    @property
    def output_controllable(self) -> bool:
        return self.output.controllable

    @property
    def perfect_patch(self) -> bool:
        return self.derivation is not None and self.derivation.verified

    def derivation_for(self, strategy: str | None, input_strategy: str | None) -> Derivation:
        """The derivation for explicit strategies (None: the defaults). Raises SpecError if unavailable."""
        ins = _pick(self.spec, "input", self.input, input_strategy) if input_strategy else self.input_strategy
        outs = _pick(self.spec, "output", self.output, strategy) if strategy else self.output_strategy
        if ins is None or outs is None:
            raise SpecError(self.absence())
        if (ins, outs) == (self.input_strategy, self.output_strategy) and self.derivation is not None:
            return self.derivation
        return Deriver(self.spec).derive(ins, outs)

    def absence(self) -> str:
        """Why the block has no perfect patch, claiming no more than was shown: a restriction other than
        'undecided' proves that none exists; an undecided one, or a derivation that did not verify, does not."""
        name, params = self.spec.name, ", ".join(allowed_parameters(self.spec))
        blocking = [r for side, res in (("input", self.input), ("output", self.output)) if not res.controllable
                    for r in (res.strongest_restriction(side),) if r is not None]
        if blocking and all(r.reason == "undecided" for r in blocking):
            return (f"{name}: no perfect patch was found for the allowed parameters ({params}), and none is ruled "
                    f"out: undecided ({blocking[0]}).")
        if not blocking and self.derivation is not None and not self.derivation.verified:
            return (f"{name}: the derived patch ({self.input_strategy} / {self.output_strategy}) did not verify "
                    "symbolically, so no perfect patch is established; none is ruled out either.")
        return (f"{name}: no perfect patch exists for the allowed parameters ({params}); `ctxpatch check` shows the "
                "counterexample.")

    def to_json(self) -> dict:
        d = self.derivation
        return {
            "arch": self.spec.name,
            "perfect_patch": self.perfect_patch,
            "input_controllable": self.input_controllable,
            "output_controllable": self.output_controllable,
            "input_strategy": self.input_strategy,
            "output_strategy": self.output_strategy,
            "strategies": {"input": self.input.ok, "output": self.output.ok},
            "patches": [{"param": p.param, "kind": p.kind} for p in d.patches] if d else [],
            "conditions": [c.text() for c in d.conditions] if d else [],
            "hidden_match_verified": bool(d and d.hidden_match),
            "output_match_verified": bool(d and d.output_match),
            "default_reason": DEFAULT_REASON,
            "counterexample": self.counterexample,
        }


def _try_side(spec: BlockSpec, side: str) -> SideResult:
    res = SideResult()
    for name in STRATEGIES.names(side):
        deriver, steps = Deriver(spec), []
        try:
            deriver.input_side(name, steps) if side == "input" else deriver.output_side(name, steps)
        except Unavailable as exc:
            res.unavailable[name] = str(exc)
        except Restriction as exc:
            res.restrictions[name] = exc
        else:
            res.ok.append(name)
    return res


def _pick(spec: BlockSpec, side: str, res: SideResult, wanted: str | None) -> str | None:
    if wanted is None:
        return res.ok[0] if res.ok else None
    if wanted in res.ok:
        return wanted
    STRATEGIES.get(side, wanted, spec.name)  # an unknown name: a SpecError listing the known ones
    why = res.restrictions.get(wanted) or res.unavailable.get(wanted)
    raise SpecError(
        f"{spec.name}: the {side} strategy {wanted!r} does not give an exact patch here ({why}). "
        f"Strategies that do: {', '.join(res.ok) or 'none'}."
    )


@cache
def check(spec: BlockSpec, strategy: str | None = None, input_strategy: str | None = None) -> Verdict:
    """Decide controllability of `spec` and derive the default (or requested) patches."""
    inp, out = _try_side(spec, "input"), _try_side(spec, "output")
    ins = _pick(spec, "input", inp, input_strategy or spec.patch.input_strategy)
    outs = _pick(spec, "output", out, strategy or spec.patch.strategy)
    derivation = Deriver(spec).derive(ins, outs) if ins and outs else None
    restriction = None
    if not inp.controllable:
        restriction = inp.strongest_restriction("input") or _fixed("input", spec)
    elif not out.controllable:
        restriction = out.strongest_restriction("output") or _fixed("output", spec)
        _refuse_undecided(spec, restriction)
        _refuse_mid_norm_only(spec, restriction)
    return Verdict(spec, inp, out, ins, outs, derivation, restriction)


def _refuse_undecided(spec: BlockSpec, r: Restriction) -> None:
    """A range restriction inside the branch does not prove a negative when a LayerNorm follows the add.

    The output strategies aim at the single branch target o_C + delta. A post-LN after the residual
    add is invariant to shifts and positive scalings of its input, so the patched branch only has
    to reach o_C + delta + (a - 1) r_C + b (any a > 0, b): a bounded stage may miss the point yet hit
    that family. Found by spec fuzzing; ctxpatch does not decide this case rather than claim it.
    """
    if spec.mlp.post_ln is not None and r.reason == "range":
        raise SpecError(
            f"{spec.name}: undecided. The branch output is range-restricted at {r.stage} ({r.invariant}), but "
            "mlp.post_ln after the residual add accepts any positive rescaling and shift of its input, so the "
            "restriction does not prove that no patch exists. Allow a parameter that controls the branch output "
            "(e.g. the post-norm's scale or bias, or post_ln's), or drop one of the two norms.")


def _refuse_mid_norm_only(spec: BlockSpec, r: Restriction) -> None:
    r"""An allowed mid-norm parameter is the only thing after the hidden activations: not decided.

    With $\hat a_C = N_\mathrm{mid}(a_C)$ fixed, a mid-norm scale patch moves the output map's result by
    $W_\mathrm{down}\,\mathrm{diag}(\hat a_C/\gamma)\,\Delta\gamma$ (a bias patch by $W_\mathrm{down}\Delta\beta$):
    every delta is reachable iff that d x m matrix has rank d, which needs m >= d and depends on the
    weights. No strategy solves it symbolically, and "not controllable" would be false for m >= d.
    """
    allowed = [p for p in allowed_parameters(spec) if p.startswith("mlp_mid_norm.")]
    if allowed and r.reason == "fixed":
        raise SpecError(
            f"{spec.name}: undecided. After the hidden activations only {', '.join(allowed)} may be patched; it "
            "reaches every delta exactly when W_down diag(mid(a_C)) has full row rank (needs mlp width >= model "
            "width; depends on the weights), which ctxpatch does not decide. Allow W_down (rank-1 on the "
            "mid-normed hidden activations) or b_down, or a post-norm parameter.")


def _fixed(side: str, spec: BlockSpec) -> Restriction:
    if side == "input":
        return Restriction("input", "fixed", "inner", "no allowed parameter acts before the hidden activations, "
                           "so they stay sigma(W z) while the contextual run has sigma(W z_C)", "rank1")
    return Restriction(
        "output", "fixed", "outer",
        "no allowed parameter acts after the hidden activations: with them fixed to a_C the branch output "
        "stays o_C, so the block outputs post_ln(u + o_C) instead of post_ln(u_C + o_C)", "down_rank1")


# --------------------------------------------------------------------------- counterexamples


def counterexample(r: Restriction) -> dict:
    """The invariant that every allowed patch preserves, and the strategy whose restriction it is.

    The numeric witness (concrete numbers whose target violates the invariant) is added by
    `numeric.check.counterexample.witness`; the symbolic verdict stands without it.
    """
    doc = STRATEGIES.get(r.side, r.strategy).doc
    return {"side": r.side, "reason": r.reason, "stage": r.stage, "strategy": r.strategy,
            "invariant": r.invariant, "strategy_doc": doc}


def strategies_table(v: Verdict, every: bool = False) -> list[tuple[str, str, str]]:
    """(side, strategy, status) rows, in registry order: the strategies that are exact or restricted
    here, and with `every` also those that do not apply to the block ("not applicable")."""
    rows = []
    for side, res in (("input", v.input), ("output", v.output)):
        for name in STRATEGIES.names(side):
            if name in res.ok:
                rows.append((side, name, "exact"))
            elif name in res.restrictions:
                rows.append((side, name, f"not generic: {res.restrictions[name].reason}"))
            elif every:
                rows.append((side, name, "not applicable"))
    return rows


def derive(spec: BlockSpec, strategy: str | None = None, input_strategy: str | None = None) -> Derivation:
    """Derive the patches of `spec` for the given (or default) strategies.

    Raises `SpecError` for an unknown or inapplicable strategy name (or a block without a perfect patch).
    """
    return check(spec).derivation_for(strategy, input_strategy)


__all__ = ["check", "derive", "Verdict", "counterexample", "strategies_table"]
