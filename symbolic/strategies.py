r"""The registry of patch strategies: one declaration per strategy, read by every stage.

A *strategy* says which parameters absorb the context on one side of the MLP sub-block, and with
which ansatz. Its declaration (`Strategy`) holds everything the rest of ctxpatch needs to know:
its name, its side, where it comes from, a one-line description, its place in the preference
order (the default on each side is the first exact one), its place in the counterexample order
(when no strategy is exact, the restriction of the one with the most freedom binds every allowed
patch), and the ansatz itself: the function of `symbolic.derive.Deriver` that writes and solves
its equations. `symbolic.derive` builds the one `Registry`; `symbolic.controllability`,
`symbolic.codegen`, the reports and the command line read it. Adding a strategy is adding one
entry there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from symbolic.errors import bad_value

Side = Literal["input", "output"]
SIDES: tuple[Side, ...] = ("input", "output")


@dataclass(frozen=True)
class Strategy:
    r"""One way of patching one side of the MLP sub-block.

    Arguments:
        name: the name users pass (``--strategy``, ``--input-strategy``, ``patch.strategy``).
        side: ``input`` (make the inner function see $z_C$) or ``output`` (add $\delta$).
        doc: one line, with the formula in plain text.
        ansatz: ``(deriver, steps) -> (patches, patched params)``; raises ``Unavailable`` when
            the block lacks the parameters, ``Restriction`` when the solution is not generic.
        source: the paper and result it comes from, or ``""`` for ctxpatch's own.
        counter: rank among the restrictions used for a counterexample (lower: more freedom,
            so its invariant binds every allowed patch); ``None``: never used for one.
    """

    name: str
    side: Side
    doc: str
    ansatz: Callable
    source: str = ""
    counter: int | None = None


class Registry:
    """The strategies in preference order, per side (declaration order is preference order)."""

    def __init__(self, strategies: tuple[Strategy, ...]):
        names = [(s.side, s.name) for s in strategies]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate strategy declarations: {names}")
        self._all = strategies

    def side(self, side: Side) -> tuple[Strategy, ...]:
        return tuple(s for s in self._all if s.side == side)

    def names(self, side: Side) -> tuple[str, ...]:
        return tuple(s.name for s in self.side(side))

    def get(self, side: Side, name: str, source: str = "command line") -> Strategy:
        """The strategy `name` of `side`; a `SpecError` naming the allowed ones otherwise."""
        for s in self.side(side):
            if s.name == name:
                return s
        raise bad_value(source, f"{side} strategy", name, self.names(side))

    def counter_order(self, side: Side) -> tuple[str, ...]:
        ranked = [s for s in self.side(side) if s.counter is not None]
        return tuple(s.name for s in sorted(ranked, key=lambda s: s.counter))

    def __iter__(self) -> Iterator[Strategy]:
        return iter(self._all)
