"""Which theorems exist, and running them: the registry behind `ctxpatch prove` and the scripts.

It reads both sources of theorems: the hand-written families of proofs/ (`GENERAL`) and the
per-architecture theorems the generator `symbolic.theorems` derives (`arch_builders`).
`theorems_for(target)` resolves a theorem name, an alias, a catalog architecture, a TOML spec or
"all" to an ordered list of theorem builders (lemmas before the theorems that cite them);
`run` checks them with the kernel (`symbolic.kernel.check`) and `report` prints the steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

from rich.console import Console
from rich.table import Table

from proofs import controllability, negative_results, rank1_lemma, sequence_patch
from symbolic import catalog
from symbolic import theorems as T
from symbolic.bridge import TranslationError
from symbolic.controllability import check as check_spec
from symbolic.errors import SpecError, suggest
from symbolic.kernel import VERIFIED, Result, Theorem, TypeError_, check, text
from symbolic.spec import BlockSpec

Builder = Callable[[], Theorem]

GENERAL: dict[str, Builder] = {**rank1_lemma.THEOREMS, **controllability.THEOREMS, **negative_results.THEOREMS,
                               **sequence_patch.THEOREMS}
ALIASES = {"dherin_vanilla": "block_vanilla", "dherin_vanilla_skip": "block_vanilla_skip",
           "gemma_theorem1": "block_gemma3"}
#: Corollaries of the controllability theorem, each checked on the catalog block that has the feature.
COROLLARIES = controllability.COROLLARIES


#: Architectures whose every exact output strategy gets its own theorem in `prove all` (the
#: Gemma-style blocks of the seed paper); elsewhere `prove block_ARCH_STRATEGY` asks for one.
ALL_STRATEGIES = ("gemma2", "gemma3")


def arch_builders(spec: BlockSpec, every_strategy: bool | None = None) -> dict[str, Builder]:
    """Block theorems of `spec` (default strategies; with `every_strategy` also every other exact
    output strategy) and its multi-layer theorem."""
    verdict = check_spec(spec)
    if not verdict.perfect_patch:
        return {}
    if every_strategy is None:
        every_strategy = spec.name in ALL_STRATEGIES
    block = cache(lambda: T.block_theorem(spec))
    out: dict[str, Builder] = {"rank1_lemma": rank1_lemma.rank1_lemma, f"block_{spec.name}": block}
    for outs in verdict.output.ok if every_strategy else ():
        if outs != verdict.output_strategy:
            out[f"block_{spec.name}_{outs}"] = lambda o=outs: T.block_theorem(spec, output_strategy=o,
                                                                                name=f"block_{spec.name}_{o}")
    out[f"multilayer_{spec.name}"] = lambda: T.multilayer_theorem(spec, block())
    return out


def theorems_for(target: str) -> dict[str, Builder]:
    if target == "all":
        out = dict(GENERAL)
        for name in catalog.names():
            out.update(arch_builders(catalog.load(name)))
        return out
    target = ALIASES.get(target, target)
    if target in GENERAL:
        return {target: GENERAL[target]}
    if target.startswith(("block_", "multilayer_")):
        arch = target.split("_", 1)[1]
        for name in catalog.names():
            if arch == name or arch.startswith(name + "_"):
                builders = arch_builders(catalog.load(name), every_strategy=True)
                if target in builders:
                    return _with_lemmas(builders, target)
    if target.endswith(".toml") or Path(target).exists() or target in catalog.names():
        spec = catalog.resolve(target)
        builders = arch_builders(spec)
        if not builders:
            raise SpecError(f"{target}: there is no block theorem to prove: {check_spec(spec).absence()}")
        return builders
    known = list(GENERAL) + list(ALIASES) + catalog.names()
    raise SpecError(f"unknown theorem or architecture {target!r}.{suggest(target, known)} "
                    f"Theorems: {', '.join(list(GENERAL) + list(ALIASES))}; block_ARCH, multilayer_ARCH; "
                    "an architecture, a .toml spec, or 'all'.")


def _with_lemmas(builders: dict[str, Builder], target: str) -> dict[str, Builder]:
    """The target and the lemmas it cites, lemmas first."""
    out = {"rank1_lemma": builders["rank1_lemma"]}
    if target.startswith("multilayer_"):
        block = "block_" + target[len("multilayer_"):]
        out[block] = builders[block]
    out[target] = builders[target]
    return out


def run(builders: dict[str, Builder], instances: bool = True) -> list[Result]:
    """Check the theorems in order; each may cite the results of those before it."""
    results: dict[str, Result] = {}
    for name, build in builders.items():
        try:
            th = build()
        except TranslationError as exc:  # a derived formula the kernel's language has no term for
            raise SpecError(f"{name}: the derived patch cannot be stated in the kernel's language ({exc}), so this "
                            "theorem is neither stated nor checked") from None
        results[name] = check(th, results, instances)
    return list(results.values())


def summary(results: list[Result], seconds: float) -> dict:
    return {"theorems": [r.to_json() for r in results],
            "verified": sum(r.status == VERIFIED for r in results),
            "failed": sum(r.status != VERIFIED for r in results),
            "seconds": round(seconds, 3)}


def report(results: list[Result], console: Console, steps: bool = True) -> None:
    """Print each theorem with its hypotheses and checked steps."""
    for res in results:
        th = res.theorem
        mark = "[green]verified[/green]" if res.status == VERIFIED else f"[red]{res.status}[/red]"
        console.print(f"\n[bold]{th.name}[/bold]: {th.title} — {mark}"
                      + (f" ({th.reference})" if th.reference else ""))
        if res.message:
            console.print(f"  [red]{res.message}[/red]", markup=True)
        if not steps:
            continue
        if th.definitions:
            console.print("  where " + "; ".join(_short(h.text(), 110) for h in th.definitions), markup=False)
        if th.assumptions:
            console.print("  hypotheses: " + "; ".join(h.text() for h in th.assumptions), markup=False)
        table = Table("#", "claim", "justification", "status", "instances", show_lines=False)
        for i, (st, sr) in enumerate(zip(th.steps, res.steps, strict=True), 1):
            claim = f"{_short(text(st.lhs))} {st.relation} {_short(text(st.rhs))}"
            table.add_row(str(i), claim, st.justification, sr.status, sr.instances)
        console.print(table)


def _short(s: str, n: int = 70) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def script_main(names: list[str], argv: list[str] | None = None) -> int:
    """Entry point of the scripts in proofs/: check the named theorems (and their lemmas), print the
    steps, exit 0 if all are verified. `--mutate NAME` checks a deliberately wrong variant instead."""
    import argparse

    from proofs.mutations import MUTATIONS, mutated

    parser = argparse.ArgumentParser()
    parser.add_argument("--mutate", choices=sorted(MUTATIONS), help="check a deliberately wrong variant")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    console = Console(highlight=False)
    t0 = time.perf_counter()
    builders: dict[str, Builder] = {}
    for n in names:
        builders.update(theorems_for(n))
    if args.mutate:
        try:
            th = mutated(args.mutate)
        except TypeError_ as exc:
            console.print(f"{args.mutate}: rejected: the kernel's constructors refuse the mutated term: {exc}",
                          markup=False)
            return 1
        builders = {k: b for lemma in th.uses for k, b in theorems_for(lemma).items()}
        builders[th.name] = lambda: th
    results = run(builders)
    if args.json:
        import json

        print(json.dumps(summary(results, time.perf_counter() - t0), indent=2))
    else:
        report(results, console)
        ok = sum(r.status == VERIFIED for r in results)
        console.print(f"\n{ok}/{len(results)} theorems verified in {time.perf_counter() - t0:.1f} s")
    return 0 if all(r.status == VERIFIED for r in results) else 1
