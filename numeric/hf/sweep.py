r"""Every strategy x dtype x protocol on a real model: the patched run against the run with the context.

``python -m numeric.hf.sweep gemma3-270m smollm2-135m`` prints, per configuration, the figures measured from
outside (max|Δlogit| / max|logit| of ``ps.logits()`` and ``ps.materialized_logits()`` against the contextual
logits in the same dtype, and the top-1 agreement), what the patch set says of itself (`PatchSet.accuracy`),
and what the call said: its warnings by kind, or the error it raised. A row is *silent* when a figure is
above its bound (`numeric.hf.bounds.logit_bound`) and the call neither warned nor raised about it. The
context is short (the fact pair's first 24 tokens, a 6-token query) to keep it cheap.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
import warnings
from collections import Counter

import torch

from numeric.hf.absorb import absorb_context
from numeric.hf.accuracy import PatchAccuracyWarning
from numeric.hf.bounds import logit_bound
from numeric.hf.hfcheck import REAL_PAIRS, logit_error, pair_ids
from symbolic.errors import CtxpatchInputError, PatchConditionError

DTYPES = ("float64", "float32", "bfloat16", "float16")
#: (computed_in, keep_positions): the four query protocols of `absorb_context`.
PROTOCOLS = (("kernel", False), ("kernel", True), ("model", False), ("model", True))


@dataclasses.dataclass
class Row:
    """One configuration's figures (None where the call raised) and what the call said."""

    model: str
    dtype: str
    strategy: str
    patch_dtype: str
    computed_in: str
    keep_positions: bool
    factored: float | None = None
    materialized: float | None = None
    top1_factored: float | None = None
    top1_materialized: float | None = None
    reported: dict | None = None  # PatchSet.accuracy as a dict, as absorb_context measured it
    replayed: dict | None = None  # the same after the replays, which measure themselves
    warnings: dict = dataclasses.field(default_factory=dict)  # category name -> count
    error: str = ""
    bound: float = float("nan")
    seconds: float = 0.0

    named: bool = True  # the error (if any) is a refusal by name (`CtxpatchInputError`, `PatchConditionError`)

    @property
    def silent(self) -> bool:
        """A figure above its bound that no `PatchAccuracyWarning` and no refusal named, or a failure that is
        not a refusal by name (a traceback)."""
        return not self.named or not self.error and PatchAccuracyWarning.__name__ not in self.warnings \
            and not worst_of(self.factored, self.materialized) <= self.bound


def worst_of(*figures) -> float:
    """The largest figure measured (None: not measured); NaN when one is NaN."""
    values = [f for f in figures if f is not None]
    return float("nan") if any(v != v for v in values) else max(values, default=0.0)


def strategies_of(model) -> list[str]:
    """``default`` and every exact output strategy of the model's blocks."""
    from numeric.hf.selection import resolve
    from symbolic.controllability import check

    names = set.intersection(*(set(check(s).output.ok) for s in resolve(model)[0].specs))
    return ["default", *sorted(names)]


def short_pair(tokenizer, context_tokens: int = 24, query: str = " The capital of Germany is Berlin") -> tuple:
    ctx, q = pair_ids(tokenizer, REAL_PAIRS[0][0], query)
    return ctx[:, :context_tokens], q


@torch.no_grad()
def measure(model, ctx, q, **options) -> dict:
    """The figures of one configuration, measured from outside; warnings counted by kind."""
    want = model(torch.cat([ctx, q], 1)).logits[0, ctx.shape[1]:].double()
    top = want.argmax(-1)
    out: dict = {"warnings": Counter()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ps = absorb_context(model, ctx, q, **options)
            out["reported"] = ps.accuracy.as_dict()  # what the call measured of itself, before any replay
            for how, run in (("factored", ps.logits), ("materialized", ps.materialized_logits)):
                got = run()[0].double()
                out[how] = logit_error(got, want)
                out[f"top1_{how}"] = float((got.argmax(-1) == top).double().mean())
            out["replayed"] = ps.accuracy.as_dict()  # what the replays measured of themselves
        except Exception as exc:  # noqa: BLE001 - recorded: a refusal by name, or a failure that is not one
            out["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:160]
            out["named"] = isinstance(exc, (CtxpatchInputError, PatchConditionError))
    for w in caught:
        out["warnings"][w.category.__name__] += 1
    out["warnings"] = dict(out["warnings"])
    return out


def sweep(name: str, dtypes=DTYPES, protocols=PROTOCOLS, strategies: list[str] | None = None,
          wide: bool = True, progress=None) -> list[Row]:
    """Every configuration of a real model (`numeric.hf.models`); ``wide``: also float32 patches for the
    half-precision dtypes."""
    from numeric.hf import models

    rows = []
    for dtype in dtypes:
        model, tokenizer = models.load(name, dtype)
        ctx, q = short_pair(tokenizer)
        names = strategies or strategies_of(model)
        patch_dtypes = [None] + (["float32"] if wide and dtype in ("bfloat16", "float16") else [])
        for strategy, pd, (computed_in, keep) in itertools.product(names, patch_dtypes, protocols):
            t0 = time.perf_counter()
            figures = measure(model, ctx, q, strategy=None if strategy == "default" else strategy,
                              patch_dtype=getattr(torch, pd) if pd else None, computed_in=computed_in,
                              keep_positions=keep)
            row = Row(name, dtype, strategy, pd or dtype, computed_in, keep, bound=logit_bound(getattr(torch, dtype)),
                      seconds=round(time.perf_counter() - t0, 1), **figures)
            rows.append(row)
            if progress is not None:
                progress(row)
        del model
    return rows


def _label(computed_in: str, keep_positions: bool) -> str:
    return computed_in + ("+pos" if keep_positions else "")


def line(r: Row) -> str:
    """One row as a Markdown table line."""
    def num(v):
        return "-" if v is None else f"{v:.1e}"

    def pct(v):
        return "-" if v is None else f"{v:.0%}"
    said = r.error or ", ".join(f"{k} x{v}" for k, v in r.warnings.items()) or "-"
    return (f"| {r.model} | {r.dtype} | {r.strategy} | {r.patch_dtype} | {r.computed_in}"
            f"{'+pos' if r.keep_positions else ''} | {num(r.factored)} | {num(r.materialized)} | "
            f"{pct(r.top1_factored)} / {pct(r.top1_materialized)} | {r.bound:.0e} | "
            f"{'SILENT' if r.silent else ''} | {said[:110]} |")


HEADER = ("| model | dtype | strategy | patches in | protocol | factored | materialized | top-1 f / m | bound | "
          "silent | what the call said |\n|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    p.add_argument("--strategies", nargs="+")
    p.add_argument("--protocols", nargs="+", choices=[_label(c, k) for c, k in PROTOCOLS],
                   help="computed_in, '+pos' for keep_positions (default: all four)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)
    print(HEADER, flush=True)
    rows = []
    for name in args.models:
        protocols = [p for p in PROTOCOLS if args.protocols is None or _label(*p) in args.protocols]
        rows += sweep(name, args.dtypes, protocols, args.strategies, progress=lambda r: print(line(r), flush=True))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([dataclasses.asdict(r) | {"silent": r.silent} for r in rows], f, indent=1)
    print(f"{sum(r.silent for r in rows)} silent of {len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
