r"""Cost against context and query length: the extraction and generation beside the honest floor, plotted.

    python benchmarks/scaling.py [--models gemma3-270m smollm2-135m] [--contexts 64 512 2048]
                                 [--queries 8 32 128] [--runs 3] [--out benchmarks/scaling] [--json]

For each model (real weights, float32, CPU) and each context length (query 32 tokens), then each query
length (context 512), side by side in one group per point (each repetition times every operation once, in
turn; medians): the honest floor's two forwards (`run.floor_forwards`: the output head on the query positions
only), `absorb_context` (default), and at each context also `generate_without_context` (default, 16 new
tokens) against `model.generate` with the context. The extraction's work beyond the floor does not depend on
the context (a fixed number of patched layers per query token), so extraction / floor should stay flat or fall
as the context grows and the contextual forward dominates; generation's per-token work grows with the
context only through attention, as `model.generate`'s does.

Writes ``scaling.json`` and ``scaling.png`` (seconds against context and query length, log-log, one panel per
model and sweep; and the ratios to the floor) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import NEW_TOKENS, floor_forwards, hf_generate, load, side_by_side  # noqa: E402

from numeric.hf import absorb_context, generate_without_context  # noqa: E402


@torch.no_grad()
def point(model, context_len: int, query_len: int, runs: int, generation: bool) -> dict:
    """Median seconds of the floor's forwards, the extraction and (``generation``) both generations at one
    (context, query) length, with the ratios to the floor and whether the greedy ids are identical."""
    gen = torch.Generator().manual_seed(1)
    ctx, q = (torch.randint(3, model.config.vocab_size, (1, n), generator=gen) for n in (context_len, query_len))
    full = torch.cat([ctx, q], 1)
    contextual, plain = floor_forwards(model, full, q)
    contextual()  # warm-up
    ops = {"contextual_forward": contextual, "plain_forward": plain,
           "extraction": lambda: absorb_context(model, ctx, q)}
    if generation:
        ops.update(generate=lambda: hf_generate(model, full, NEW_TOKENS),
                   generation=lambda: generate_without_context(model, ctx, q, NEW_TOKENS))
    t, out = side_by_side(ops, runs)
    floor = t["contextual_forward"] + t["plain_forward"]
    res = {"context_len": context_len, "query_len": query_len, "seconds": t, "floor_seconds": floor,
           "extraction_over_floor": t["extraction"] / floor}
    if generation:
        res["generation_over_generate"] = t["generation"] / t["generate"]
        res["generation_identical"] = bool(torch.equal(out["generation"], out["generate"]))
    return res


def plot(results: dict, path: Path) -> None:
    """Seconds against length (log-log) and the ratios to the floor, one column per model and sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, sweep) for name in results for sweep in ("context", "query") if results[name][sweep]]
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7), squeeze=False)
    for col, (name, sweep) in enumerate(panels):
        rows = results[name][sweep]
        x = [r[f"{sweep}_len"] for r in rows]
        top, bottom = axes[0][col], axes[1][col]
        top.plot(x, [r["floor_seconds"] for r in rows], "k--o", label="floor (contextual + plain, query logits)")
        top.plot(x, [r["seconds"]["contextual_forward"] for r in rows], "k:", label="contextual forward alone")
        top.plot(x, [r["seconds"]["extraction"] for r in rows], "C0-o", label="absorb_context")
        bottom.plot(x, [r["extraction_over_floor"] for r in rows], "C0-o", label="extraction / floor")
        if "generate" in rows[0]["seconds"]:
            top.plot(x, [r["seconds"]["generate"] for r in rows], "C1--s", label="model.generate (with context)")
            top.plot(x, [r["seconds"]["generation"] for r in rows], "C1-s", label="generate_without_context")
            bottom.plot(x, [r["generation_over_generate"] for r in rows], "C1-s", label="generation / generate")
        fixed = "query 32" if sweep == "context" else f"context {rows[0]['context_len']}"
        top.set(xscale="log", yscale="log", title=f"{name}: {sweep} length ({fixed})", ylabel="seconds (median)")
        bottom.axhline(1.0, color="grey", lw=0.8)
        bottom.set(xscale="log", xlabel=f"{sweep} tokens", ylabel="ratio of medians")
        for ax in (top, bottom):
            ax.set_xticks(x, [str(v) for v in x])
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gemma3-270m", "smollm2-135m"])
    parser.add_argument("--contexts", nargs="+", type=int, default=[64, 512, 2048])
    parser.add_argument("--queries", nargs="+", type=int, default=[8, 32, 128])
    parser.add_argument("--query-context", type=int, default=512, help="the context length of the query sweep")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-generation", action="store_true", help="the extraction only")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "scaling")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if min(args.contexts + args.queries) < 1 or args.runs < 1:
        parser.error("lengths and --runs must be at least 1")
    results: dict = {}
    for name in args.models:
        model = load(name, None)
        results[name] = {
            "context": [point(model, c, 32, args.runs, not args.no_generation) for c in args.contexts],
            "query": [point(model, args.query_context, n, args.runs, False) for n in args.queries]}
        for sweep in ("context", "query"):
            for r in results[name][sweep]:
                print(name, sweep, json.dumps(r), file=sys.stderr, flush=True)
        del model
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"models": results, "device": f"cpu, {torch.get_num_threads()} threads, torch {torch.__version__}"}
    (args.out / "scaling.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(results, args.out / "scaling.png")
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for name, sweeps in results.items():
            for rows in sweeps.values():
                for r in rows:
                    extra = f"  generation / generate {r['generation_over_generate']:.2f}" \
                        if "generation_over_generate" in r else ""
                    print(f"{name:14s} context {r['context_len']:5d} query {r['query_len']:4d}  "
                          f"extraction / floor {r['extraction_over_floor']:.2f}{extra}")
        print(f"wrote {args.out / 'scaling.json'} and {args.out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
