r"""A plain PyTorch reference of the MLP sub-block a spec declares (float64 by default).

This is the numeric ground truth the symbolic layer is checked against: written directly
from the architecture (nanoGPT style), not from the derived formulas. Tokens are batched on
the leading axis: ``u`` has shape (T, d). Parameters are a dict keyed by the canonical names
of `symbolic.spec.patchable_parameters` (norm scales stored as the model stores them:
$\gamma = w$ or $\gamma = 1 + w$).

It must not import the derivation: tests compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import sympy as sp
import torch
from sympy.printing.pytorch import TorchPrinter

from symbolic.activations import activation
from symbolic.activations import x as act_var
from symbolic.spec import BlockSpec, NormSpec


def _unary(f):
    """A torch function that also accepts plain numbers (the printer prints sqrt(2) as a call)."""
    return lambda v: f(v if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=torch.float64))


#: The torch functions behind what SymPy's PyTorch printer writes (``lambdify(..., modules=[TORCH_FUNCS, "torch"])``:
#: Piecewise as nested ``where``, its conditions as ``gt``/``logical_and``), where the printed call needs a version
#: that takes plain numbers too (``max(0, x)``, ``sqrt(2)``, ``heaviside(x, 1/2)``). Both names of a function are
#: kept: the printer's (``max``, ``abs``, ``heaviside``) and SymPy's (``Max``, ``Abs``, ``Heaviside``).
TORCH_FUNCS = {
    **{name: _unary(getattr(torch, tname)) for name, tname in (
        ("exp", "exp"), ("log", "log"), ("tanh", "tanh"), ("sinh", "sinh"), ("cosh", "cosh"), ("sin", "sin"),
        ("cos", "cos"), ("atan", "atan"), ("erf", "erf"), ("sqrt", "sqrt"), ("Abs", "abs"), ("abs", "abs"),
        ("sign", "sign"))},
    "pi": torch.pi, "E": torch.e,
    **{name: (lambda *a, op=op: _fold(op, a)) for name, op in (
        ("Max", torch.maximum), ("max", torch.maximum), ("Min", torch.minimum), ("min", torch.minimum))},
    **{name: (lambda v, h0=0.5: torch.heaviside(v, torch.as_tensor(h0, dtype=v.dtype))) for name in (
        "Heaviside", "heaviside")},
}


def _fold(op, args):
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    like = tensors[0]
    out = torch.as_tensor(args[0], dtype=like.dtype)
    for a in args[1:]:
        out = op(out, torch.as_tensor(a, dtype=like.dtype))
    return out


class _Printer(TorchPrinter):
    """SymPy's PyTorch printer, which prints a function it has no torch name for (the algebra's ``MatVec``,
    ``Mean``, ...) as a call by its own name, for the namespace of `torch_function` to implement."""

    def _print_Function(self, expr):
        if type(expr) in self.mapping or not isinstance(expr, sp.Function):
            return super()._print_Function(expr)
        return f"{type(expr).__name__}({', '.join(self._print(a) for a in expr.args)})"


def torch_function(variables, expr: sp.Expr, namespace: dict | None = None):
    """`expr` as a function of `variables` on torch tensors (SymPy's PyTorch printer; `namespace` adds the
    implementations of functions of its own)."""
    ns = {**TORCH_FUNCS, **(namespace or {})}
    printer = _Printer({"fully_qualified_modules": False, "inline": True, "allow_unknown_functions": True,
                        "user_functions": {k: k for k in ns}})  # the settings lambdify gives its own printers
    return sp.lambdify(variables, expr, modules=[ns, "torch"], printer=printer)


@cache
def elementwise(name_or_expr: str):
    """A torch function for an activation of a spec (SymPy expression lambdified once)."""
    expr = activation(name_or_expr)
    if expr == act_var:
        return lambda v: v
    fn = torch_function(act_var, expr)

    def apply(v: torch.Tensor) -> torch.Tensor:
        r = fn(v)
        return r if isinstance(r, torch.Tensor) else torch.full_like(v, float(r))

    return apply


def norm(spec: NormSpec | None, scale: torch.Tensor | None, bias: torch.Tensor | None,
         v: torch.Tensor) -> torch.Tensor:
    r"""$\gamma \odot c / \sqrt{\mathrm{mean}(c^2) + \epsilon} + \beta$, $c = v$ (RMS) or $v - \mathrm{mean}(v)$."""
    if spec is None:
        return v
    c = v - v.mean(-1, keepdim=True) if spec.kind == "layer" else v
    f = c / torch.sqrt((c * c).mean(-1, keepdim=True) + spec.eps)
    gamma = 1.0 if spec.scale == "none" else (1 + scale if spec.scale == "one_plus" else scale)
    return gamma * f + (bias if bias is not None else 0.0)


@dataclass
class Trace:
    """Signals of one run, each (T, ...)."""

    z: torch.Tensor
    hidden: dict[str, torch.Tensor]
    h: torch.Tensor
    o: torch.Tensor
    y: torch.Tensor
    logits: torch.Tensor | None = None
    selected: torch.Tensor | None = None  # (T, k) expert indices
    gates: torch.Tensor | None = None  # (T, k) routing weights
    shared_gate: torch.Tensor | None = None  # (T, 1)


def _norm_of(spec: BlockSpec, params: dict, name: str, v: torch.Tensor) -> torch.Tensor:
    n = spec.norms.get(name)
    return norm(n, params.get(f"{name}.scale"), params.get(f"{name}.bias"), v)


def hidden_of(spec: BlockSpec, params: dict, z: torch.Tensor, prefix: str = "") -> torch.Tensor:
    """a = sigma(W_gate z + b_gate) * psi(W_up z + b_up), or sigma(W_up z + b_up)."""
    sigma, psi = elementwise(spec.mlp.activation), elementwise(spec.mlp.up_activation)
    kind = spec.mlp.kind if not prefix else (spec.moe.expert if prefix == "experts." else "gated")
    up = z @ params[prefix + "W_up"].transpose(-1, -2) + params.get(prefix + "b_up", 0.0)
    if kind == "gated":
        return sigma(z @ params[prefix + "W_gate"].transpose(-1, -2) + params.get(prefix + "b_gate", 0.0)) * psi(up)
    return sigma(up)


def select(spec: BlockSpec, logits: torch.Tensor, selection_bias: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, k) indices of the chosen experts and (T, k) their scores (before renormalization and scale).

    DeepSeek-V3 style (transformers' DeepseekV3TopkRouter): sigmoid scores, the correction bias
    for the choice only, the best `topk_groups` of `groups` groups (a group scores the sum of its
    top-2); the scores returned are the uncorrected ones.
    """
    moe = spec.moe
    if moe.scoring == "sparsemixer":
        return sparsemixer(logits, moe.top_k, moe.jitter_eps)
    scores = torch.sigmoid(logits) if moe.scoring == "sigmoid" else torch.softmax(logits, dim=-1)
    choice = scores + selection_bias if selection_bias is not None else scores
    if moe.groups > 1:
        T, E = choice.shape
        group_scores = choice.view(T, moe.groups, E // moe.groups).topk(2, dim=-1)[0].sum(-1)  # (T, G)
        group_idx = group_scores.topk(moe.topk_groups, dim=-1)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1).bool()
        expert_mask = group_mask[:, :, None].expand(T, moe.groups, E // moe.groups).reshape(T, E)
        choice = choice.masked_fill(~expert_mask, float("-inf"))
    idx = choice.topk(moe.top_k, dim=-1)[1]
    return idx, scores.gather(1, idx)


def sparsemixer(logits: torch.Tensor, k: int, jitter_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, k) experts and weights of PhiMoE's sparsemixer at inference, written as transformers' ``sparsemixer``
    (``training=False``) for k picks: the largest logit not yet chosen, weighted by the softmax over the logits
    not yet chosen and not masked, ``(max - l) / max(|l|, max) > 2 jitter_eps``."""
    left, idx, weights = logits.clone(), [], []
    for _ in range(k):
        top, e = left.max(dim=-1, keepdim=True)
        masked = (top - logits) / logits.abs().clamp(min=top) > 2 * jitter_eps
        weights.append(torch.softmax(left.masked_fill(masked, float("-inf")), dim=-1).gather(-1, e))
        idx.append(e)
        left = left.scatter(-1, e, float("-inf"))
    return torch.cat(idx, -1), torch.cat(weights, -1)


def route(spec: BlockSpec, logits: torch.Tensor, selection_bias: torch.Tensor | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k expert indices and routing weights (renormalized if the spec says so, s / (sum s + renormalize_eps),
    times `routed_scale`)."""
    moe = spec.moe
    idx, w = select(spec, logits, selection_bias)
    if moe.softmax == "after_topk":
        w = torch.softmax(logits.gather(1, idx), dim=-1)
    elif moe.renormalize:
        w = w / (w.sum(-1, keepdim=True) + moe.renormalize_eps)
    return idx, w * moe.routed_scale


def small_expert_count(spec: BlockSpec) -> int:
    """The fewest experts that keep the spec's routing a real choice (tests and validation use it)."""
    moe = spec.moe
    if moe.groups == 1:
        return moe.top_k + 2
    per_group = max(2, -(-moe.top_k // moe.topk_groups) + 1)
    return moe.groups * per_group


def forward(spec: BlockSpec, params: dict, u: torch.Tensor, base: torch.Tensor,
            hidden_override: dict[str, torch.Tensor] | None = None) -> Trace:
    """The MLP sub-block on MLP input `u` (T, d) with residual base `base` (T, d)."""
    z = _norm_of(spec, params, "mlp_pre_norm", u)
    tr = Trace(z=z, hidden={}, h=None, o=None, y=None)
    if spec.moe is None:
        tr.hidden[""] = hidden_of(spec, params, z) if hidden_override is None else hidden_override[""]
        a_hat = _norm_of(spec, params, "mlp_mid_norm", tr.hidden[""])  # (T, m): BitNet's ffn_sub_norm, or a itself
        h = a_hat @ params["W_down"].T + params.get("b_down", 0.0)
    else:
        h = _moe(spec, params, z, tr)
    phi = elementwise(spec.mlp.out_activation)
    tr.h = h
    tr.o = spec.mlp.branch_scale * _norm_of(spec, params, "mlp_post_norm", phi(h))
    r = base + tr.o if spec.skip else tr.o
    tr.y = _norm_of(spec, params, "post_ln", r)
    return tr


def _moe(spec: BlockSpec, params: dict, z: torch.Tensor, tr: Trace) -> torch.Tensor:
    tr.logits = z @ params["W_router"].T + params.get("b_router", 0.0)  # (T, E)
    tr.selected, tr.gates = route(spec, tr.logits, params.get("b_select"))
    experts = {k[len("experts."):]: v for k, v in params.items() if k.startswith("experts.")}
    h = torch.zeros_like(z)
    hidden = []
    for slot in range(spec.moe.top_k):
        e = tr.selected[:, slot]  # (T,)
        sub = {name: w[e] for name, w in experts.items()}  # (T, rows, cols)
        weight = tr.gates[:, slot, None]  # (T, 1)
        inputs = weight * z if spec.moe.weighting == "input" else z  # Llama 4 scales the expert's input
        a = _batched_hidden(spec, sub, inputs)  # (T, m)
        hidden.append(a)
        out = torch.einsum("tdm,tm->td", sub["W_down"], a) + sub.get("b_down", 0.0)  # (T, d): expert e's output
        h = h + (out if spec.moe.weighting == "input" else weight * out)
    tr.hidden["experts"] = torch.stack(hidden, 1)  # (T, k, m)
    if spec.moe.shared_expert != "none":
        a_s = hidden_of(spec, params, z, "shared.")
        tr.hidden["shared"] = a_s
        g = torch.sigmoid(z @ params["shared.w_gate"])[:, None] if spec.moe.shared_expert == "gated" else 1.0
        tr.shared_gate = g if isinstance(g, torch.Tensor) else None
        h = h + g * (a_s @ params["shared.W_down"].T)
    return h + params.get("b_down", 0.0)  # the mixture's own output bias (JetMoE)


def _batched_hidden(spec: BlockSpec, sub: dict, z: torch.Tensor) -> torch.Tensor:
    """Each token's selected expert: sub holds (T, m, d) matrices and (T, m) biases (gpt-oss)."""
    sigma, psi = elementwise(spec.mlp.activation), elementwise(spec.mlp.up_activation)
    up = torch.einsum("tmd,td->tm", sub["W_up"], z) + sub.get("b_up", 0.0)
    if spec.moe.expert == "gated":
        return sigma(torch.einsum("tmd,td->tm", sub["W_gate"], z) + sub.get("b_gate", 0.0)) * psi(up)
    return sigma(up)


def random_params(spec: BlockSpec, d: int, m: int, generator: torch.Generator,
                  n_experts: int | None = None, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Random parameters for every patchable parameter (norm weights and biases randomized too)."""
    from symbolic.spec import patchable_parameters

    E = n_experts or (spec.moe.experts if spec.moe else 0)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=generator, dtype=dtype) * scale

    shapes = {
        "W_gate": (m, d), "W_up": (m, d), "W_down": (d, m), "b_gate": (m,), "b_up": (m,), "b_down": (d,),
        "W_router": (E, d), "b_router": (E,), "b_select": (E,),
        "experts.W_gate": (E, m, d), "experts.W_up": (E, m, d), "experts.W_down": (E, d, m),
        "experts.b_gate": (E, m), "experts.b_up": (E, m), "experts.b_down": (E, d),
        "shared.W_gate": (m, d), "shared.W_up": (m, d), "shared.W_down": (d, m), "shared.w_gate": (d,),
    }
    out = {}
    for name in patchable_parameters(spec):
        width = m if name.startswith("mlp_mid_norm.") else d
        if name.endswith(".scale"):
            out[name] = 1 + 0.3 * rnd(width) if not _one_plus(spec, name) else 0.3 * rnd(width)
        elif name.endswith(".bias"):
            out[name] = 0.3 * rnd(width)
        else:
            shape = shapes[name]
            fan_in = shape[-1]
            out[name] = rnd(*shape, scale=fan_in**-0.5)
    return out


def _one_plus(spec: BlockSpec, name: str) -> bool:
    return spec.norms[name.split(".")[0]].scale == "one_plus"
