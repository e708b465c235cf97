r"""The Python face of ctxpatch: one function per stage of the pipeline, for a spec given by name.

Every function takes a block as a `BlockSpec`, a catalog name (``"gemma3"``) or the path of a TOML
spec, so the README's commands translate one to one:

>>> import ctxpatch
>>> v = ctxpatch.check("gemma3")                # the controllability verdict, with its derivation
>>> v.perfect_patch, v.output_strategy
(True, 'norm_vector')
>>> der = ctxpatch.derive("gemma3", strategy="stable")  # formulas of another exact strategy
>>> ctxpatch.prove("rank1_lemma")["failed"]
0

The Hugging Face functions (`absorb_context`, `generate_without_context`, `PatchSet`) are those of
`numeric.hf`, re-exported. This module orchestrates; it computes nothing itself.
"""

from __future__ import annotations

import dataclasses
import time
from functools import cache
from pathlib import Path

from symbolic import catalog
from symbolic.controllability import Verdict
from symbolic.derivation import Derivation
from symbolic.spec import BlockSpec
from symbolic.specfile import check_reference

SpecLike = BlockSpec | str | Path


def load_spec(spec: SpecLike) -> BlockSpec:
    """A `BlockSpec` from itself, a catalog name, or a TOML path (`SpecError` for anything else)."""
    return spec if isinstance(spec, BlockSpec) else catalog.resolve(check_reference(spec, "spec"))


def check(spec: SpecLike, strategy: str | None = None, input_strategy: str | None = None) -> Verdict:
    """The controllability verdict (arXiv:2511.17864, Definitions 3 and 4) of a block.

    A negative verdict carries a counterexample: the invariant that every allowed patch preserves
    (decided symbolically) and concrete numbers whose contextual target violates it (numeric).
    """
    return _check(load_spec(spec), strategy, input_strategy)


@cache
def _check(spec: BlockSpec, strategy: str | None, input_strategy: str | None) -> Verdict:
    from numeric.check.counterexample import witness
    from symbolic.controllability import check as symbolic_check

    verdict = symbolic_check(spec, strategy, input_strategy)
    if verdict.restriction is None:
        return verdict
    return dataclasses.replace(verdict, witness=witness(spec, verdict.restriction))


def derive(spec: SpecLike, strategy: str | None = None, input_strategy: str | None = None) -> Derivation:
    """The patch formulas of a block for the default (or the named) strategies."""
    from symbolic.controllability import derive as symbolic_derive

    return symbolic_derive(load_spec(spec), strategy, input_strategy)


def prove(target: str = "all", instances: bool = True) -> dict:
    """Check theorems (a theorem name, a catalog architecture, a TOML spec, or ``all``).

    Returns the JSON object of ``ctxpatch prove --json``: ``theorems``, ``verified``, ``failed``,
    ``seconds``.
    """
    from proofs import registry as prover

    t0 = time.perf_counter()
    results = prover.run(prover.theorems_for(check_reference(target, "target")), instances=instances)
    return prover.summary(results, time.perf_counter() - t0)


def codegen(spec: SpecLike, backend: str = "torch", strategy: str | None = None,
            input_strategy: str | None = None) -> str:
    """The source of the generated kernel of a block (``numpy`` or ``torch``), rendered in memory."""
    from symbolic import codegen as symbolic_codegen
    from symbolic.errors import CtxpatchInputError, bad_value

    block = load_spec(spec)
    if not isinstance(backend, str) or backend not in symbolic_codegen.BACKENDS:
        raise bad_value("codegen", "backend", backend, symbolic_codegen.BACKENDS, kind=CtxpatchInputError)
    return symbolic_codegen.render(block, backend, derive(block, strategy, input_strategy))


def validate(spec: SpecLike, trials: int = 3, seed: int = 0, **setup) -> dict:
    """Random-instance validation of Algorithm 1 on stacks of random layers (see `numeric.check.validate.Setup`).

    Every size, the dtype, `trials` and `seed` are checked against their bounds (`symbolic.limits`) and the run
    against the memory available before anything is allocated; a value outside them is a `CtxpatchInputError`.
    """
    from numeric.check.validate import Setup
    from numeric.check.validate import validate as numeric_validate
    from symbolic.errors import CtxpatchInputError, bad_value

    known = [f.name for f in dataclasses.fields(Setup)]
    for key in setup:
        if key not in known:
            raise bad_value("validate", "option", key, known, kind=CtxpatchInputError)
    return numeric_validate(load_spec(spec), Setup(**setup), trials=trials, seed=seed)


def report(spec: SpecLike, fmt: str = "html", out_dir: str | Path = "reports", quick: bool = False) -> list[Path]:
    """Render the proof report of a block (``latex``, ``pdf`` or ``html``) into `out_dir`; the files written.

    Nothing is written outside `out_dir` (a folder, created if missing; `CtxpatchInputError` if it is a file)."""
    from ctxpatch import reporting
    from symbolic.errors import CtxpatchInputError

    folder = Path(check_reference(out_dir, "out_dir", "a folder"))
    if folder.exists() and not folder.is_dir():
        raise CtxpatchInputError(f"out_dir {folder} exists and is not a folder; name a folder (it is created if "
                                 "missing).")
    return reporting.render(load_spec(spec), fmt, folder, quick=quick)
