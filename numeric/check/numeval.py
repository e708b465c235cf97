"""Evaluate expressions of the vector algebra numerically (torch, float64), one token at a time.

`evaluate(expr, values)` lambdifies `expr` (SymPy's PyTorch printer, as the reference block does:
`numeric.check.reference.torch_function`) with an implementation of every opaque function of
`symbolic.algebra` (MatVec as ``W @ z``, Dot, Mean, Outer, the expert and top-k functions, the
RMSNorm inverse: the kernels' own, `numeric.kernels.runtime.rms_inverse`, written once for both back
ends). Used by tests and by counterexample checks; the generated kernels are the
batched, fast path.
"""

from __future__ import annotations

import sympy as sp
import torch

from numeric.check.reference import torch_function
from numeric.kernels.runtime import rms_inverse


def _rank_order(ell: torch.Tensor) -> torch.Tensor:
    return torch.argsort(ell, descending=True, stable=True)


def _expert_weight(routed: tuple[torch.Tensor, torch.Tensor], e: int) -> torch.Tensor:
    """Expert e's routing weight: its score if it is among the selected, else 0."""
    idx, scores = routed
    return (scores * (idx == e)).sum()


def namespace(router=None) -> dict:
    """Implementations of the algebra's functions. `router`: ell -> (indices, scores) of the selected
    experts in rank order (default: softmax scores of the top logits, which is what a plain router does)."""
    ns = {
        "MatVec": lambda W, z: W @ z,
        "Dot": lambda a, b: (a * b).sum(),
        "Mean": lambda v: v.mean() if isinstance(v, torch.Tensor) else v,
        "Outer": torch.outer,
        "EMat": lambda W, e: W[int(e)],
        "EVec": lambda v, e: v[int(e)],
        "Sel": lambda ell, j: _rank_order(ell)[int(j) - 1],
        "Gate": lambda ell, j: torch.softmax(ell, -1)[_rank_order(ell)[int(j) - 1]],
        "ExpertGate": lambda ell, e: torch.softmax(ell, -1)[int(e)],
        "RmsInverse": lambda t, g: rms_inverse(t[None], torch.as_tensor(g))[0],  # solved in float64, in t's dtype
    }
    if router is not None:
        ns["Sel"] = lambda ell, j: router(ell)[0][int(j) - 1]
        ns["Gate"] = lambda ell, j: router(ell)[1][int(j) - 1]
        ns["ExpertGate"] = lambda ell, e: _expert_weight(router(ell), int(e))
    return ns


def evaluate(expr: sp.Expr, values: dict[sp.Symbol, object], router=None) -> torch.Tensor:
    """The value of `expr` given numeric values (tensors or numbers) of its free symbols (`router`: see
    `namespace`)."""
    symbols = sorted(expr.free_symbols, key=sp.default_sort_key)
    missing = [s for s in symbols if s not in values]
    if missing:
        raise KeyError(f"no numeric value for {missing} in {expr}")
    fn = torch_function(symbols, expr, namespace(router))
    out = fn(*(values[s] for s in symbols))
    return out if isinstance(out, torch.Tensor) else torch.tensor(float(out), dtype=torch.float64)
