"""How a sequence patch (one LoRA patch per layer, numeric.hf.sequence) does beyond the tokens it was fitted on.

For one context and several queries (prompts continued by the model's own greedy tokens WITH the context,
`--fit` + `--ahead` tokens each), on HELD-OUT queries, against the contextual run, per position past the
first `fit` tokens: top-1 agreement and logit error (max|l - l_C| / max|l_C|) of
 (a) frozen: the exact sequence patch fitted on the query's first `fit` tokens (absorb_sequence), frozen;
 (b) grown: the same patch grown by one rank per token (Greville's update, GrowingSequence), scored on
     each token BEFORE it is absorbed (its next-token prediction; after absorbing it is exact);
 (c) shared: a token-independent rank-`--rank` patch fitted by least squares over all tokens of the
     TRAINING queries (shared_patch);
 and no patch.

Run: python benchmarks/sequence_study.py [--models smollm2-135m gemma3-270m] [--fit 16] [--ahead 12]
     [--rank 8] [--grown 2] [--json] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from numeric.hf.compat import cached, kv_cache  # noqa: E402
from numeric.hf.growing import GrowingSequence  # noqa: E402
from numeric.hf.sequence import absorb_sequence  # noqa: E402
from numeric.hf.shared_patch import shared_patch  # noqa: E402

#: Queries of the fact and story contexts of numeric.hf.hfcheck.REAL_PAIRS (0 and 2): the first `--train` fit
#: the shared patch, the rest are held out.
QUERIES = {
    0: (" The capital of Germany is", " The capital of Spain is", " Rome is the capital of",
        " The capital of Portugal is", " Question: what is the capital of Poland? Answer:",
        " Vienna is a city in", " The capital of France is", " Madrid is the capital of",
        " List the capitals: France,", " Which country has Warsaw as its capital?",
        " The capital of Italy is", " Lisbon is the capital of"),
    2: (" One morning, a storm came and Tomas", " The old fisherman", " Every evening Tomas",
        " The lighthouse", " Tomas rowed his boat", " His mother had taught him",
        " The village by the sea", " One day a stranger came to the village and", " The little blue boat",
        " When the storm ended, Tomas", " Tomas looked at the sea and", " The songs he sang"),
}


@torch.no_grad()
def greedy(model, ids: torch.Tensor, tokens: int) -> torch.Tensor:
    """(1, tokens): greedy continuation of `ids` by the model (key/value cache, no stop token)."""
    out, new = model(ids, use_cache=True), []
    for _ in range(tokens):
        new.append(out.logits[:, -1:].argmax(-1))
        out = model(new[-1], **cached(model, kv_cache(out, model)))
    return torch.cat(new, 1)


@torch.no_grad()
def frozen_study(model, context_ids: torch.Tensor, prompt_ids: torch.Tensor,
                 fit: int, ahead: int) -> dict:
    r"""How a sequence patch fitted on `fit` teacher-forced tokens does on the next `ahead` ones, frozen.

    The continuation is the model's own greedy generation WITH the context; the patch is fitted on its
    first `fit` tokens (the prompt, then generated ones), then the query-alone run with the patch
    continues along the same tokens (teacher-forced). Per position: top-1 agreement with the
    contextual run and the logit error $\max|\ell - \ell_C| / \max|\ell_C|$; the unpatched
    query-alone run is the baseline. Returns the figures as a dict (lists per position).
    """
    ids = torch.cat([prompt_ids, greedy(model, torch.cat([context_ids, prompt_ids], 1), fit + ahead)], 1)
    seq = ids[:, :fit + ahead]
    sp = absorb_sequence(model, context_ids, seq[:, :fit])
    want = model(torch.cat([context_ids, seq], 1)).logits[0, context_ids.shape[1]:].double()
    runs = {"patched": sp.logits(seq)[0].double(), "unpatched": model(seq).logits[0].double()}
    scale = want.abs().amax(-1)  # (T,)
    out = {"context_len": context_ids.shape[1], "fit": fit, "ahead": ahead, "rank": sp.rank}
    for name, got in runs.items():
        err = ((got - want).abs().amax(-1) / scale).tolist()
        agree = (got.argmax(-1) == want.argmax(-1)).tolist()
        out[name] = {"error": err, "agree": agree, "fit_error": max(err[:fit]),
                     "fit_agreement": sum(agree[:fit]) / fit, "ahead_agreement": sum(agree[fit:]) / ahead,
                     "ahead_median_error": sorted(err[fit:])[ahead // 2]}
    return out


def _scores(got: torch.Tensor, want: torch.Tensor) -> dict:
    """Per position: the logit error max|l - l_C| / max|l_C| and top-1 agreement."""
    got, want = got.double(), want.double()
    return {"error": ((got - want).abs().amax(-1) / want.abs().amax(-1)).tolist(),
            "agree": (got.argmax(-1) == want.argmax(-1)).tolist()}


@torch.no_grad()
def grown_study(model, context_ids: torch.Tensor, seq: torch.Tensor, fit: int, rescale: bool = True) -> dict:
    r"""(b): a `GrowingSequence` fitted on the first `fit` tokens of `seq`, then grown by one rank per token
    along the rest. Per later position k: ``before`` is the prediction of the patch grown through token
    k-1 (what it gives for token k before token k is absorbed; a frozen patch one token ahead),
    ``grown`` the logits once token k is absorbed (exact along the cached run); ``rerun``: the final
    patch run on the whole sequence at once (float32 rounding of the earlier tokens is no longer
    corrected by the layers above, unlike `absorb_sequence`'s induction). ``rescaled``: post-norm
    layers that needed a new shared scale (``rescale``), per token."""
    g = GrowingSequence(model, context_ids, seq[:, :fit], rescale=rescale)
    steps = [g.step(int(seq[0, k]), before=True) for k in range(fit, seq.shape[1])]
    want = torch.stack([s["contextual"] for s in steps])
    full = model(torch.cat([context_ids, seq], 1)).logits[0, context_ids.shape[1]:]
    return {"rank": g.patch.rank, "rescaled": len(g.rescaled),
            "before": _scores(torch.stack([s["before"] for s in steps]), want),
            "grown": _scores(torch.stack([s["grown"] for s in steps]), want),
            "rerun": _scores(g.patch.logits(seq)[0], full)}


@torch.no_grad()
def shared_study(model, context_ids: torch.Tensor, train: list[torch.Tensor], test: list[torch.Tensor],
                 fit: int, rank: int = 8) -> dict:
    r"""(c) against (a): a token-independent rank-`rank` patch (`shared_patch`) fitted on the `train` queries,
    on each HELD-OUT query of `test`, per position, against the contextual run; with the exact sequence
    patch fitted on that query's first `fit` tokens and frozen (`absorb_sequence`, as `frozen_study`) and
    no patch. Returns per test query {"shared", "frozen", "unpatched"} scores over all its positions."""
    sp = shared_patch(model, context_ids, train, rank=rank)
    rows = []
    for seq in test:
        want = model(torch.cat([context_ids, seq], 1)).logits[0, context_ids.shape[1]:]
        frozen = absorb_sequence(model, context_ids, seq[:, :fit])
        rows.append({"shared": _scores(sp.logits(seq)[0], want), "frozen": _scores(frozen.logits(seq)[0], want),
                     "unpatched": _scores(model(seq).logits[0], want)})
    return {"rank": sp.rank, "train_tokens": sum(q.shape[1] for q in train), "rows": rows,
            "train_residual": max(lp.residual for lp in sp.layers)}


def main(argv: list[str] | None = None) -> int:
    from numeric.hf import models
    from numeric.hf.hfcheck import REAL_PAIRS, greedy_with_context, pair_ids

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"], choices=sorted(models.MODELS))
    p.add_argument("--pairs", nargs="+", type=int, default=sorted(QUERIES), choices=sorted(QUERIES))
    p.add_argument("--fit", type=int, default=16)
    p.add_argument("--ahead", type=int, default=12)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--train", type=int, default=9, help="queries fitting the shared patch; the rest are held out")
    p.add_argument("--grown", type=int, default=2, help="held-out queries also grown token by token")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", help="write a PNG of agreement and error per position")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows, T = [], args.fit + args.ahead
    for name in args.models:
        model, tok = models.load(name, "float32")
        for i in args.pairs:
            t0 = time.perf_counter()
            ctx = pair_ids(tok, REAL_PAIRS[i][0], "")[0]
            seqs = []
            for text in QUERIES[i]:
                prompt = pair_ids(tok, REAL_PAIRS[i][0], text)[1]
                cont = greedy_with_context(model, torch.cat([ctx, prompt], 1), T)
                seqs.append(torch.cat([prompt, cont], 1)[:, :T])
            train, test = seqs[:args.train], seqs[args.train:]
            out = shared_study(model, ctx, train, test, args.fit, args.rank)
            grown = [grown_study(model, ctx, s, args.fit) for s in test[:args.grown]]
            row = {"model": name, "pair": i, "context_len": ctx.shape[1], "fit": args.fit, "ahead": args.ahead,
                   **out, "grown": grown, "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            if not args.json:
                print(summary_line(row), flush=True)
    if args.json:
        print(json.dumps({"rows": rows}, indent=1))
    else:
        print(table(rows))
    if args.plot:
        plot(rows, args.plot)
    return 0


def curves(row: dict) -> dict[str, tuple[list[float], list[float]]]:
    """Per approach, (agreement, median error) per position past the fitted tokens (held-out queries)."""
    fit, ahead = row["fit"], row["ahead"]
    out = {}
    for key in ("frozen", "shared", "unpatched"):
        agree = [sum(r[key]["agree"][fit + k] for r in row["rows"]) / len(row["rows"]) for k in range(ahead)]
        err = [statistics.median(r[key]["error"][fit + k] for r in row["rows"]) for k in range(ahead)]
        out[key] = (agree, err)
    if row["grown"]:
        g = [r["before"] for r in row["grown"]]
        out["grown"] = ([sum(s["agree"][k] for s in g) / len(g) for k in range(ahead)],
                        [statistics.median(s["error"][k] for s in g) for k in range(ahead)])
    return out


def summary(row: dict) -> dict[str, tuple[float, float]]:
    """Per approach: mean agreement and median error over all positions past the fitted tokens."""
    return {k: (sum(a) / len(a), statistics.median(e)) for k, (a, e) in curves(row).items()}


def summary_line(row: dict) -> str:
    s = summary(row)
    parts = ", ".join(f"{k} {a:.2f} / {e:.2f}" for k, (a, e) in s.items())
    g = row["grown"]
    extra = (f"; grown: exact after absorbing (max error {max(max(r['grown']['error']) for r in g):.1e}), rerun "
             f"at once {max(max(r['rerun']['error']) for r in g):.1e}, rescaled {sum(r['rescaled'] for r in g)}"
             if g else "")
    return (f"{row['model']} pair {row['pair']} (context {row['context_len']}, {len(row['rows'])} held-out queries): "
            f"agreement / median error {parts}; shared fitted on {row['train_tokens']} tokens{extra} "
            f"[{row['seconds']}s]")


def table(rows: list[dict]) -> str:
    lines = ["| model | pair (context) | frozen (a) | grown (b) | shared (c) | no patch |", "|---|---|---|---|---|---|"]
    for row in rows:
        s = summary(row)
        cell = {k: f"{a:.2f} / {e:.2f}" for k, (a, e) in s.items()}
        lines.append(f"| {row['model']} | {row['pair']} ({row['context_len']}) | {cell['frozen']} | "
                     f"{cell.get('grown', '-')} | {cell['shared']} | {cell['unpatched']} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 6.4), squeeze=False)
    style = {"frozen": "C0", "grown": "C1", "shared": "C2", "unpatched": "0.5"}
    for col, name in enumerate(names):
        sel = [r for r in rows if r["model"] == name]
        for key, color in style.items():
            cs = [curves(r)[key] for r in sel if key in curves(r)]
            if not cs:
                continue
            ahead = len(cs[0][0])
            agree = [sum(c[0][k] for c in cs) / len(cs) for k in range(ahead)]
            err = [statistics.median(c[1][k] for c in cs) for k in range(ahead)]
            axes[0][col].plot(range(1, ahead + 1), agree, marker=".", color=color, label=key)
            axes[1][col].semilogy(range(1, ahead + 1), err, marker=".", color=color, label=key)
        axes[0][col].set(title=name, ylabel="top-1 agreement (held-out queries)", ylim=(-0.05, 1.05))
        axes[1][col].set(xlabel=f"tokens past the first {sel[0]['fit']}", ylabel="logit error (median)")
        axes[0][col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
