"""Apply a `Derivation` numerically, one token at a time, by lambdifying its SymPy formulas.

This is the slow, obviously-correct path: signals from `numeric.check.reference`, the derived
intermediates and patches from the formulas themselves, dense patched parameters. Tests use it
to check every derivation against the reference block; the generated kernels are the fast path.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp
import torch

from numeric.check.numeval import evaluate
from numeric.check.reference import forward, select
from symbolic.derivation import Derivation
from symbolic.model import Block
from symbolic.spec import BlockSpec


@dataclass
class Instance:
    """One token: MLP inputs and residual bases of both runs (parallel blocks share the MLP input)."""

    mlp_in: torch.Tensor  # (1, d)
    base: torch.Tensor  # (1, d): u
    mlp_in_C: torch.Tensor
    base_C: torch.Tensor  # (1, d): u_C


def random_instance(spec: BlockSpec, d: int, gen: torch.Generator) -> Instance:
    def rnd():
        return torch.randn(1, d, generator=gen, dtype=torch.float64)

    u, u_C = rnd(), rnd()
    if spec.residual == "parallel":
        x = rnd()
        return Instance(x, u, x, u_C)
    return Instance(u, u, u_C, u_C)


def atom_values(spec: BlockSpec, der: Derivation, params: dict, inst: Instance) -> dict[str, object]:
    """Numeric values of every name the derivation's formulas use."""
    block = Block(spec)
    tr, tr_C = forward(spec, params, inst.mlp_in, inst.base), forward(spec, params, inst.mlp_in_C, inst.base_C)
    vals: dict[str, object] = {
        "u": inst.base[0], "u_C": inst.base_C[0], "x": inst.mlp_in[0], "delta": (inst.base_C - inst.base)[0],
        "z": tr.z[0], "z_C": tr_C.z[0], "h_C": tr_C.h[0],
    }
    for name, p in block.params.items():
        vals[p.symbol.name] = params[name]
    for sym, value in block.constants:
        vals[sym.name] = value
    if spec.moe is None:
        vals["a_C"] = tr_C.hidden[""][0]
    else:
        _moe_atoms(spec, params, tr_C, vals)
    for name, expr in der.definitions:
        if name not in vals and "(" not in name and "[" not in name:
            vals[name] = _eval(expr, vals)
    return vals


def _moe_atoms(spec, params, tr_C, vals) -> None:
    E = params["W_router"].shape[0]
    m = params["experts.W_up"].shape[1]
    a = torch.zeros(E, m, dtype=torch.float64)
    for slot in range(spec.moe.top_k):
        a[int(tr_C.selected[0, slot])] = tr_C.hidden["experts"][0, slot]
    vals.update({"a_C": a, "ell_C": tr_C.logits[0], "k": spec.moe.top_k})
    bias = params.get("b_select")
    vals[ROUTER] = lambda ell: tuple(v[0] for v in select(spec, ell[None], bias))
    if "shared" in tr_C.hidden:
        vals["a_s_C"] = tr_C.hidden["shared"][0]
    if tr_C.shared_gate is not None:
        vals["sigma_sg_C"] = tr_C.shared_gate[0, 0]


ROUTER = "(router)"  # the key of the spec's router in the values (no symbol has this name)


def _eval(expr: sp.Expr, vals: dict[str, object]) -> torch.Tensor:
    return evaluate(expr, {s: vals[s.name] for s in expr.free_symbols}, router=vals.get(ROUTER))


def patched_params(spec: BlockSpec, der: Derivation, params: dict, inst: Instance) -> dict:
    """Dense parameters of the patched no-context run for this token."""
    vals = atom_values(spec, der, params, inst)
    out = dict(params)
    experts = []
    if spec.moe is not None:
        tr_C = forward(spec, params, inst.mlp_in_C, inst.base_C)
        experts = [int(e) for e in tr_C.selected[0]]
    for p in der.patches:
        if p.per_expert:
            W = out[p.param].clone()
            for e in experts:
                v = {**vals, "e": e}
                W[e] = W[e] + torch.outer(_eval(p.value, v), _eval(p.right, v))
            out[p.param] = W
        else:
            out[p.param] = _apply(spec, p, out[p.param], vals)
    return out


def _apply(spec: BlockSpec, p, current: torch.Tensor, vals: dict) -> torch.Tensor:
    value = _eval(p.value, vals)
    if p.kind == "rank1":
        right = _eval(p.right, vals)
        if current.dim() == 1:  # a 1 x d map stored as a vector (shared-expert gate)
            return current + value * right
        return current + torch.outer(value, right)
    if p.kind == "scale":
        norm = spec.norms[p.param.split(".")[0]]
        return value * (1 + current) - 1 if norm.scale == "one_plus" else value * current
    return current + value


def check_instance(spec: BlockSpec, der: Derivation, params: dict, inst: Instance) -> dict[str, float]:
    """Relative errors of the patched no-context run against the contextual run."""
    tr_C = forward(spec, params, inst.mlp_in_C, inst.base_C)
    tr_0 = forward(spec, params, inst.mlp_in, inst.base)
    tr_P = forward(spec, patched_params(spec, der, params, inst), inst.mlp_in, inst.base)

    def rel(a, b):
        # Relative error; when the reference is exactly zero (a ReLU layer with no active unit) the
        # absolute error is the only meaningful figure.
        ref = float(torch.linalg.vector_norm(b))
        diff = float(torch.linalg.vector_norm(a - b))
        return diff / ref if ref > 0 else diff

    hidden = max(rel(tr_P.hidden[g], tr_C.hidden[g]) for g in tr_C.hidden)
    return {"output": rel(tr_P.y, tr_C.y), "hidden": hidden, "unpatched": rel(tr_0.y, tr_C.y)}
