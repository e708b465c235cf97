"""One layer's six MLP products, as the kernels computed them before and as they compute them now.

    python benchmarks/products.py [--d 1152] [--m 6912] [--rows 1 32] [--runs 20] [--threads 2] [--json]

The products a dense kernel's ``patched`` computes at one layer of a gated MLP (Gemma 3 1B's shapes by
default, float32): z and z_C through W_gate and W_up (m, d), a and a_C through W_down (d, m), each T rows
(1: a generation step; 32: the query). Two ways, timed in turn in each repetition (medians per call):
``right``, ``v @ W.T`` (what ``nn.Linear`` computes, and the kernels before); ``left``,
``(W @ v.T).T.contiguous()``, W on the left and the result stored row-major, as the dense kernels print a
product now (`symbolic.codegen.printers`). On a CPU a product of a few rows is bound by reading the
matrix, and the library's kernel for W on the left reads it faster for such shapes.
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



def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=1152)
    ap.add_argument("--m", type=int, default=6912)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    W_gate, W_up = (torch.randn(args.m, args.d, generator=gen) for _ in range(2))
    W_down = torch.randn(args.d, args.m, generator=gen)
    out = {"d": args.d, "m": args.m, "threads": args.threads, "runs": args.runs, "rows": {}}
    for rows in args.rows:
        z, z_C = (torch.randn(rows, args.d, generator=gen) for _ in range(2))
        a, a_C = (torch.randn(rows, args.m, generator=gen) for _ in range(2))
        pairs = ((W_gate, (z_C, z)), (W_up, (z_C, z)), (W_down, (a_C, a)))
        ops = {"right": lambda p=pairs: [v @ W.T for W, vs in p for v in vs],
               "left": lambda p=pairs: [(W @ v.T).T.contiguous() for W, vs in p for v in vs]}
        times: dict = {k: [] for k in ops}
        for fn in ops.values():  # warm-up
            fn()
        for _ in range(args.runs):
            for key, fn in ops.items():
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        out["rows"][rows] = {"milliseconds": ms, "right_over_left": ms["right"] / ms["left"]}
        if not args.json:
            print(f"{rows} rows, (d, m) = ({args.d}, {args.m}), {args.threads} threads: v @ W.T {ms['right']:.1f} ms, "
                  f"(W @ v.T).T {ms['left']:.1f} ms (ratio {ms['right'] / ms['left']:.2f})")
    if args.json:
        print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
