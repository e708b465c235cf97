"""How the scripts in proofs/ write a theorem: the statement first, then the chain of steps.

``theorem(name, title, given=(...), show=(lhs, "=", rhs), proof=[step(...), ...])``: each
`step(term, why, ...)` is the next link of the chain, from the statement's left side to its right
side; ``by=`` cites a lemma (with its substitution), ``rewrite=`` instantiates equation hypotheses
(their numbers, 1-based, in `given`) or the kernel's axioms, exactly as written.
"""

from __future__ import annotations

from dataclasses import dataclass

from symbolic.kernel import Step, Term, Theorem


@dataclass(frozen=True)
class Link:
    term: Term
    why: str
    relation: str = "="
    by: str | None = None
    substitution: tuple = ()
    rewrite: tuple = ()


def step(term: Term, why: str, relation: str = "=", by: str | None = None, substitution: tuple = (),
         rewrite: tuple = ()) -> Link:
    return Link(term, why, relation, by, tuple(substitution), tuple(rewrite))


def theorem(name: str, title: str, *, given: tuple = (), show: tuple, proof: list[Link], reference: str = "",
            models: tuple = ()) -> Theorem:
    """The theorem `show` = (lhs, relation, rhs) under `given`, proved by the chain `proof`."""
    lhs, relation, rhs = show
    steps, here = [], lhs
    for link in proof:
        steps.append(Step(here, link.term, link.why, link.relation, link.by, link.substitution, link.rewrite))
        here = link.term
    uses = tuple(dict.fromkeys(link.by for link in proof if link.by))
    return Theorem(name, title, tuple(given), lhs, rhs, tuple(steps), relation, reference, uses=uses, models=models)


def script(names: list[str]) -> int:
    """Entry point of the scripts: check the named theorems (and their lemmas), print them."""
    import sys

    from proofs.registry import script_main

    return script_main(names, sys.argv[1:])
