r"""The forward error of the real models in each dtype, measured: what `numeric/hf/bounds.py`'s constants stand on.

``python benchmarks/forward_error.py [--patched] [--json FILE]`` runs, on Gemma 3 270M and SmolLM2-135M
(`numeric.hf.models`), 8 (context, query) pairs of different kinds of text (`PAIRS`) with the context cut to
24, 48 and 200 tokens (`LENGTHS`: the suite's short pair, its 48-token checks, a long context), and measures

- $E$: the contextual run in each dtype (float64, float32, bfloat16, float16) against an *exact* run,
  max|Δlogit| / max|logit| over the query tokens (the patch sets' measure, `numeric.hf.accuracy`). The exact
  run is float64 throughout: transformers computes norms, rotary tables and attention softmaxes in float32
  even in a float64 model, and `numeric.hf.bounds.Float64Throughout` turns each of those casts into float64
  (it counts any float32 result that is left: none); so the float64 row measures what those casts cost;
- with ``--patched``: the figure a default `absorb_context` (one pass, computed by the kernels) measures of
  itself, which its replay reproduces bit for bit, against its dtype's bound (`numeric.hf.bounds.logit_bound`).

$E$ is printed in units of the dtype's storage epsilon (`numeric.hf.bounds.storage_eps`: float32's for
float64), the unit ``ROUNDING`` counts; the table gives min / median / max per model, dtype and length. One
process, one thread; about 10 minutes (20 with ``--patched``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch

from numeric.hf import models
from numeric.hf.bounds import Float64Throughout, logit_bound, storage_eps
from numeric.hf.hfcheck import REAL_PAIRS, logit_error

NAMES = ("gemma3-270m", "smollm2-135m")
DTYPES = ("float64", "float32", "bfloat16", "float16")
LENGTHS = (24, 48, 200)
#: (context, query): eight kinds of text. A context shorter than a length is continued by the next pairs' contexts.
PAIRS = REAL_PAIRS + (  # hf-check's fact, code and story pairs, then five more kinds
    ("Customer: Hi, I ordered a pair of running shoes last week and they still have not arrived.\nAgent: I am "
     "sorry to hear that. Could you give me your order number?\nCustomer: Sure, it is 48213.\nAgent: Thank you.",
     "\nAgent: I can see that your order"),
    ("Theorem. For every natural number n, the sum 1 + 2 + ... + n equals n(n + 1)/2. Proof. By induction on n. "
     "For n = 1 both sides equal 1. Assume the claim for n; adding n + 1 to both sides gives",
     " (n + 1)(n + 2)/2, which"),
    ('{"name": "Ada Lovelace", "born": 1815, "died": 1852, "known_for": ["Analytical Engine", "first program"], '
     '"father": "Lord Byron", "mother": "Anne Isabella Milbanke", "country": "United Kingdom"}\n'
     '{"name": "Alan Turing", "born": 1912,', ' "died": 1954, "known_for": ['),
    ("Ingredients: 200 g flour, 100 g sugar, 2 eggs, 100 ml milk, a pinch of salt. Whisk the eggs with the sugar "
     "until pale, then fold in the flour and the salt, and add the milk slowly while stirring.",
     " Pour the batter into a buttered tin and bake"),
    ("Photosynthesis converts light energy into chemical energy. In the chloroplasts, chlorophyll absorbs mostly "
     "blue and red light; water is split, oxygen is released, and carbon dioxide is fixed into sugars by the",
     " Calvin cycle, which takes place in the"),
)


def inputs(tokenizer) -> list[tuple[int, int, torch.Tensor, int]]:
    """(pair, length, ids of [context cut to length; query], query length) for every pair and length."""
    out = []
    for i, (_, query) in enumerate(PAIRS):
        text = "".join(PAIRS[(i + k) % len(PAIRS)][0] + "\n\n" for k in range(len(PAIRS)))
        ctx = tokenizer(text, return_tensors="pt").input_ids
        q = tokenizer(query, return_tensors="pt", add_special_tokens=False).input_ids
        for n in LENGTHS:
            assert ctx.shape[1] >= n, (i, ctx.shape[1])
            out.append((i, n, torch.cat([ctx[:, :n], q], 1), q.shape[1]))
    return out


@torch.no_grad()
def exact_logits(name: str) -> tuple[dict, int]:
    """{(pair, length): the query rows' logits of the float64-throughout run}, and the float32 results left."""
    model, tokenizer = models.load(name, "float64")
    out, left = {}, 0
    for i, n, ids, q in inputs(tokenizer):
        with Float64Throughout() as mode:
            out[i, n] = model(ids).logits[0, -q:].clone()
        left += mode.left
    del model
    return out, left


@torch.no_grad()
def measure(name: str, dtypes, patched: bool, progress=print) -> list[dict]:
    """One row per dtype, pair and length: E (relative, and in storage epsilons), and the patched figure."""
    from numeric.hf import absorb_context
    from symbolic.errors import CtxpatchInputError

    exact, left = exact_logits(name)
    progress(f"{name}: exact float64 runs done ({left} float32 results left)")
    rows = []
    for dtype in dtypes:
        model, tokenizer = models.load(name, dtype)
        eps = storage_eps(model.dtype)
        for i, n, ids, q in inputs(tokenizer):
            t0 = time.perf_counter()
            got = model(ids).logits[0, -q:]
            e = logit_error(got, exact[i, n])
            row = {"model": name, "dtype": dtype, "pair": i, "length": n, "E": e, "E_eps": e / eps,
                   "finite": bool(torch.isfinite(got).all()), "bound": logit_bound(model.dtype)}
            if patched and row["finite"]:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        ps = absorb_context(model, ids[:, :-q], ids[:, -q:])
                        row["patched"] = ps.accuracy.error("factored")
                    except CtxpatchInputError as exc:  # SmolLM2 in float16: its residual squares overflow
                        row["refused"] = str(exc).split(":")[0]
                        ps = absorb_context(model, ids[:, :-q], ids[:, -q:], patch_dtype=torch.float32)
                        row["patched"] = ps.accuracy.error("factored")
                row["warned"] = len(caught)
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
            progress(json.dumps(row))
        del model
    return rows


def summary(rows: list[dict]) -> str:
    """min / median / max of E in storage epsilons (and of the patched figure over its bound) per model, dtype
    and length, as a Markdown table."""
    lines = ["| model | dtype | context | E / ε_s: min / median / max | patched / bound: max |",
             "|---|---|---|---|---|"]
    keys = sorted({(r["model"], DTYPES.index(r["dtype"]), r["length"]) for r in rows})
    for model, d, n in keys:
        group = [r for r in rows if (r["model"], r["dtype"], r["length"]) == (model, DTYPES[d], n)]
        finite = [r["E_eps"] for r in group if r["finite"]]
        e = "overflow" if not finite else \
            f"{min(finite):.2f} / {statistics.median(finite):.2f} / {max(finite):.2f}"
        p = [r["patched"] / r["bound"] for r in group if "patched" in r]
        lines.append(f"| {model} | {DTYPES[d]} | {n} | {e} | {max(p):.2f} |" if p else
                     f"| {model} | {DTYPES[d]} | {n} | {e} | - |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(NAMES), choices=NAMES)
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    p.add_argument("--patched", action="store_true", help="also the figure of a default absorb_context")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = [r for name in args.models for r in measure(name, args.dtypes, args.patched)]
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    print(summary(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
