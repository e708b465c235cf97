"""How a sequence patch (one LoRA patch per layer, numeric.sequence) does beyond the tokens it was fitted on.

(a) frozen: fitted on the first `fit` tokens of a teacher-forced continuation (the model's own greedy
tokens WITH the context), evaluated on the next `ahead` tokens without the context, against the
contextual run: top-1 agreement and logit error (max|l - l_C| / max|l_C| per position).

Run: python benchmarks/sequence_study.py [--models gemma3-270m smollm2-135m] [--fit 8 16 32] [--ahead 16]
     [--json] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    from numeric import models
    from numeric.hf import layout_for
    from numeric.hfcheck import REAL_PAIRS, pair_ids
    from numeric.sequence import frozen_study

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"], choices=sorted(models.MODELS))
    p.add_argument("--fit", nargs="+", type=int, default=[8, 16, 32])
    p.add_argument("--ahead", type=int, default=16)
    p.add_argument("--pairs", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", help="write a PNG of agreement and error per position")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in args.models:
        model, tok = models.load(name, "float32")
        layout = layout_for(model)
        for i in args.pairs:
            ctx, prompt = pair_ids(tok, *REAL_PAIRS[i])
            for fit in args.fit:
                t0 = time.perf_counter()
                r = frozen_study(model, layout, ctx, prompt, fit, args.ahead)
                rows.append({"model": name, "pair": i, **r, "seconds": round(time.perf_counter() - t0, 1)})
                if not args.json:
                    print(f"{name} pair {i} fit {fit}: fit error {r['patched']['fit_error']:.1e}, ahead agreement "
                          f"{r['patched']['ahead_agreement']:.2f} (unpatched {r['unpatched']['ahead_agreement']:.2f}), "
                          f"ahead median error {r['patched']['ahead_median_error']:.2f} "
                          f"(unpatched {r['unpatched']['ahead_median_error']:.2f})", flush=True)
    if args.json:
        print(json.dumps({"rows": rows}, indent=1))
    if args.plot:
        plot(rows, args.plot)
    return 0


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name in dict.fromkeys(r["model"] for r in rows):
        for fit in sorted({r["fit"] for r in rows}):
            sel = [r for r in rows if r["model"] == name and r["fit"] == fit]
            ahead = sel[0]["ahead"]
            agree = [sum(r["patched"]["agree"][fit + k] for r in sel) / len(sel) for k in range(ahead)]
            err = [sorted(r["patched"]["error"][fit + k] for r in sel)[len(sel) // 2] for k in range(ahead)]
            axes[0].plot(range(1, ahead + 1), agree, marker=".", label=f"{name}, fit {fit}")
            axes[1].semilogy(range(1, ahead + 1), err, marker=".", label=f"{name}, fit {fit}")
    axes[0].set(xlabel="tokens past the fitted ones", ylabel="top-1 agreement (mean over pairs)")
    axes[1].set(xlabel="tokens past the fitted ones", ylabel="logit error (median over pairs)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
