r"""Error against depth: how a patch written into the weights holds as more layers are patched.

For a query after a context, the patches of every layer are computed once (Algorithm 1 in the
model's arithmetic, `absorb_context`); then for $k = 1, \dots, L$ the query runs through the model's
own modules with the patches of the first $k$ layers written in (`PatchSet.materialized_logits`)
and the other layers unpatched. The reference for $k$ is the same query run alone with the outputs
of the first $k$ layers *replaced* by the contextual states at the query positions, and layers
$k+1..L$ unpatched: exact patches make the two runs equal, so

$$ e(k) = \max |\ell_k - \ell_k^{\mathrm{ref}}| \,/\, \max |\ell_k^{\mathrm{ref}}| $$

measures how the rounding of the patched run grows with depth. With it, per layer, the largest
`numeric.hf.amplification.amplification` over the query tokens. Theorem 1 (`norm_vector`) against the default,
float32 and float64, is the study of issue 13 (`depth_study`).

Run: python benchmarks/depth.py [--model gemma3-270m] [--dtypes float32 float64] [--pair 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from numeric.hf import absorb_context, layout_for  # noqa: E402
from numeric.hf.hfcheck import REAL_PAIRS, logit_error, pair_ids  # noqa: E402


def _layer_list(model):
    return model.get_submodule(layout_for(model).layers)


@torch.no_grad()
def contextual_layer_outputs(model, ctx: torch.Tensor, q: torch.Tensor) -> list[torch.Tensor]:
    """(1, q, d) per layer: each decoder layer's output at the query positions of the contextual run."""
    outs, handles = [], []
    for layer in _layer_list(model):
        def grab(_mod, _args, output):
            outs.append((output[0] if isinstance(output, tuple) else output)[:, ctx.shape[1]:].detach())
        handles.append(layer.register_forward_hook(grab))
    try:
        model(torch.cat([ctx, q], 1))
    finally:
        for h in handles:
            h.remove()
    return outs


@torch.no_grad()
def forced_logits(model, q: torch.Tensor, states: list[torch.Tensor], k: int) -> torch.Tensor:
    """(1, q, vocab): the query alone with layer k-1's output replaced by `states[k - 1]` (the
    contextual state; the layers below it then do not matter) and layers k.. unpatched."""
    layer = _layer_list(model)[k - 1]

    def force(_mod, _args, output):
        if isinstance(output, tuple):
            return (states[k - 1].to(output[0].dtype), *output[1:])
        return states[k - 1].to(output.dtype)

    handle = layer.register_forward_hook(force)
    try:
        return model(q).logits
    finally:
        handle.remove()


@torch.no_grad()
def error_vs_depth(model, ctx: torch.Tensor, q: torch.Tensor, strategy: str | None = None) -> dict:
    """``errors[k-1]`` = e(k) for k = 1..L (module docstring), ``amplification[n]`` per layer,
    ``strategies[n]`` {strategy: tokens} per layer."""
    ps = absorb_context(model, ctx, q, strategy=strategy)
    states = contextual_layer_outputs(model, ctx, q)
    errors = [logit_error(ps.materialized_logits(k)[0], forced_logits(model, q, states, k)[0])
              for k in range(1, len(states) + 1)]
    return {"errors": errors, "amplification": [max(lp.amplification) for lp in ps.layers],
            "strategies": [dict(Counter(lp.strategies)) for lp in ps.layers]}


def depth_study(name: str = "gemma3-270m", dtypes=("float32", "float64"), strategies=("norm_vector", None),
                pair: int = 0) -> dict:
    """`error_vs_depth` of a real model (`numeric.hf.models`) on one of `hfcheck.REAL_PAIRS`, for every
    dtype and strategy (``None``: the default). Returns {"runs": [{dtype, strategy, errors, ...}]}."""
    from numeric.hf import models

    runs, t0 = [], time.perf_counter()
    for dtype in dtypes:
        model, tokenizer = models.load(name, dtype)
        ctx, q = pair_ids(tokenizer, *REAL_PAIRS[pair])
        for strategy in strategies:
            runs.append({"dtype": dtype, "strategy": strategy or "default",
                         **error_vs_depth(model, ctx, q, strategy)})
    return {"model": name, "context_len": ctx.shape[1], "query_len": q.shape[1], "runs": runs,
            "torch_threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - t0, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    p.add_argument("--pair", type=int, default=0)
    args = p.parse_args(argv)
    print(json.dumps(depth_study(args.model, tuple(args.dtypes), pair=args.pair), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
