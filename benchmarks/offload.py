"""absorb_context on a model dispatched by accelerate (layers offloaded to disk) against the same model in memory.

    python benchmarks/offload.py [--model smollm2-135m] [--runs 3] [--cpu-memory 150MB] [--gpu-memory 200MB] [--json]

The real model (`numeric.hf.models`, float32, eager attention) is saved as safetensors to a temporary
folder and loaded back with ``device_map="auto"`` under ``max_memory``: ``{"cpu": --cpu-memory}``
(the layers that do not fit are offloaded to disk and loaded just in time by accelerate's hooks),
or, with ``--gpu-memory`` on a CUDA machine, ``{0: --gpu-memory, "cpu": --cpu-memory}`` (layers split
between the GPU and the CPU, the rest on disk; the reference model is then the whole model on the
GPU). Both models absorb the first `REAL_PAIRS` pair; the medians of ``--runs`` runs of
`absorb_context` (default: Algorithm 1 in the model's arithmetic), `PatchSet.logits` (factored) and
`PatchSet.materialized_logits` are reported with the errors against the run with the context.
On a shared machine the figures vary by tens of percent from run to run: compare them within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from numeric.hf import (  # noqa: E402
    absorb_context,  # noqa: E402
    models,
    offload,
)
from numeric.hf.hfcheck import REAL_PAIRS, logit_error, pair_ids  # noqa: E402


def _median(fn, runs: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def measure(model, ctx, q, want, runs: int) -> dict:
    """Median seconds of absorb_context, the factored and the materialized run, and their errors
    (after one untimed absorb_context: the kernels are loaded, the caches warm)."""
    absorb_context(model, ctx, q)
    t_abs, ps = _median(lambda: absorb_context(model, ctx, q), runs)
    t_fac, fac = _median(ps.logits, runs)
    t_mat, mat = _median(ps.materialized_logits, runs)
    return {"absorb_s": round(t_abs, 3), "logits_s": round(t_fac, 3), "materialized_s": round(t_mat, 3),
            "factored_error": logit_error(fac[0].cpu(), want), "materialized_error": logit_error(mat[0].cpu(), want)}


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", choices=sorted(models.MODELS))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cpu-memory", default="150MB")
    ap.add_argument("--gpu-memory", default=None, help="split layers between GPU 0 and the CPU (CUDA only)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.gpu_memory and not torch.cuda.is_available():
        ap.error("--gpu-memory needs a CUDA device")
    ref, tokenizer = models.load(args.model, "float32")
    ctx, q = pair_ids(tokenizer, *REAL_PAIRS[0])
    cap = {"cpu": args.cpu_memory} | ({0: args.gpu_memory} if args.gpu_memory else {})
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        model = offload.reload_dispatched(ref, folder, dict(cap))  # (transformers rewrites the dict)
        reload_s = time.perf_counter() - t0
        if args.gpu_memory:
            ref = ref.to("cuda:0")
        want = ref(torch.cat([ctx, q], 1).to(ref.device)).logits[0, ctx.shape[1]:].cpu()
        out = {"model": args.model, "max_memory": {str(k): v for k, v in cap.items()}, "runs": args.runs,
               "context_len": ctx.shape[1], "query_len": q.shape[1], "torch_threads": torch.get_num_threads(),
               "device_map": sorted(set(model.hf_device_map.values()), key=str),
               "modules_per_device": {str(d): list(model.hf_device_map.values()).count(d)
                                      for d in set(model.hf_device_map.values())},
               "reload_s": round(reload_s, 3),
               "in_memory": measure(ref, ctx.to(ref.device), q.to(ref.device), want, args.runs),
               "dispatched": measure(model, ctx, q, want, args.runs)}
    out["absorb_dispatched_over_in_memory"] = round(out["dispatched"]["absorb_s"] / out["in_memory"]["absorb_s"], 2)
    print(json.dumps(out, indent=1) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    return out


if __name__ == "__main__":
    main()
