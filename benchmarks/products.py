"""One layer's products with z and z_C, as the kernels computed them before and as they compute them now.

    python benchmarks/products.py [--d 1152] [--m 6912] [--rows 1 32] [--runs 20] [--threads 2] [--json]

The products a dense kernel's ``patched`` needs at one layer of a gated MLP (Gemma 3 1B's shapes by
default, float32): z and z_C through W_gate and W_up (m, d), a and a_C through W_down (d, m), each T rows
(1: a generation step; 32: the query). Three ways, timed in turn in each repetition (medians per call):
``separate``, six products ``v @ W.T`` (the kernels before `symbolic.codegen.lower.stack_products`);
``stacked``, three products of the 2T rows stacked, ``[v1; v2] @ W.T``; ``stacked_w_left``, the same with W
on the left, ``(W @ [v1; v2].T).T``, which `runtime.stacked_products` and the dense kernels' printed
products compute. On a CPU a product of a few rows is bound by reading the matrix, and the library's
kernel for W on the left reads it faster for such shapes.
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

from numeric.kernels.runtime import stacked_products  # noqa: E402


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
        ops = {"separate": lambda p=pairs: [v @ W.T for W, vs in p for v in vs],
               "stacked": lambda p=pairs: [torch.cat(vs) @ W.T for W, vs in p],
               "stacked_w_left": lambda p=pairs: [stacked_products(W, *vs) for W, vs in p]}
        times: dict = {k: [] for k in ops}
        for fn in ops.values():  # warm-up
            fn()
        for _ in range(args.runs):
            for key, fn in ops.items():
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        out["rows"][rows] = {"milliseconds": ms, "separate_over_stacked_w_left": ms["separate"] / ms["stacked_w_left"],
                             "stacked_over_stacked_w_left": ms["stacked"] / ms["stacked_w_left"]}
        if not args.json:
            print(f"{rows} rows, (d, m) = ({args.d}, {args.m}), {args.threads} threads: "
                  f"separate {ms['separate']:.1f} ms, stacked {ms['stacked']:.1f} ms, "
                  f"stacked with W on the left {ms['stacked_w_left']:.1f} ms "
                  f"(separate / that {ms['separate'] / ms['stacked_w_left']:.2f})")
    if args.json:
        print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
