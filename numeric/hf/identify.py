r"""Identifying the parts of one layer from what its modules computed in the probe (`numeric.hf.probe`).

- the norms (`identify_norm`): RMSNorm or LayerNorm, scale $w$ or $1 + w$, with or without bias, the
  module's eps, evaluated on inputs of several magnitudes, small ones included where eps decides;
- the MLP module (`find_mlp`) and its activation (`activations`: the activation module's class, else the
  config's name);
- the MLP's maps (`dense_maps`, `moe_maps`, `expert_maps`): the linear submodules that received the MLP
  input (gate/up, or a fused gate_up) and the one whose output is the MLP output (down), stacked expert
  tensors, routers, shared experts; biases where the modules have them; storage (out, in) or transposed.
"""

from __future__ import annotations

import copy
import itertools
import math

import torch

from numeric.hf.equivalence import FLOAT32_INSIDE_BOUND
from numeric.hf.layout import Param
from numeric.hf.probe import Call, same_tensor
from symbolic.errors import ModelInputError
from symbolic.spec import ACTIVATIONS, Biases, MoESpec, NormSpec

#: transformers' activation classes and config names -> the spec's names.
ACTIVATION_CLASSES = {"SiLU": "silu", "SiLUActivation": "silu", "GELUActivation": "gelu", "GELU": "gelu",
                      "PytorchGELUTanh": "gelu_tanh", "GELUTanh": "gelu_tanh", "NewGELUActivation": "gelu_tanh",
                      "FastGELUActivation": "gelu_tanh", "GeluTanh": "gelu_tanh", "ReLU": "relu",
                      "ReLUSquaredActivation": "relu2", "Sigmoid": "sigmoid", "Tanh": "tanh",
                      # BLOOM's own tanh GELU rounds sqrt(2/pi) to 0.79788456: declared as it computes
                      "BloomGelu": "x*(1 + tanh(79788456/100000000*x*(1 + 44715/1000000*x*x)))/2"}
ACTIVATION_NAMES = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                    "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_python": "gelu", "relu": "relu",
                    "relu2": "relu2", "sigmoid": "sigmoid", "tanh": "tanh"}
#: the candidates when neither a module nor the config names the activation (``F.silu`` called as a function):
#: silu first, the gated MLPs' usual one; the equivalence check decides.
UNNAMED_ACTIVATIONS = ("silu", *(a for a in ACTIVATIONS if a not in ("identity", "silu")))

MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe", "mlp_block", "feedforward")
MLP_CLASS_MARKS = ("MLP", "MoE", "Moe", "FeedForward", "Ffn", "FFN")
EPS_ATTRS = ("eps", "variance_epsilon", "epsilon", "variance_eps")


def is_norm(module) -> bool:
    name = type(module).__name__
    return ("Norm" in name or "LayerNorm" in name) and "Group" not in name and "Batch" not in name


def _norm_value(v, kind, scale, w, b, eps):
    v = v.double()
    if kind == "layer":
        v = v - v.mean(-1, keepdim=True)
    out = v / torch.sqrt((v * v).mean(-1, keepdim=True) + eps)
    if scale == "plain":
        out = out * w
    elif scale == "one_plus":
        out = out * (1 + w)
    return out + b if b is not None else out


def _eps_candidates(module, cfg) -> list[float]:
    found = [float(getattr(module, a)) for a in EPS_ATTRS if isinstance(getattr(module, a, None), (int, float))]
    found += [float(getattr(cfg, k)) for k in ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps",
                                                "epsilon") if isinstance(getattr(cfg, k, None), (int, float))]
    return list(dict.fromkeys(found + [1e-5, 1e-6]))


@torch.no_grad()
def identify_norm(module, cfg, d: int) -> tuple[NormSpec, dict[str, str]]:
    """The norm's spec and its parameters ({'scale'|'bias': attribute}), from its outputs on random inputs
    of several magnitudes (evaluated in float64 on a copy)."""
    m = copy.deepcopy(module).double()
    params = dict(m.named_parameters(recurse=False))
    w = params.get("weight")
    b = params.get("bias")
    if w is not None and w.shape != (d,) or b is not None and b.shape != (d,):
        raise ModelInputError(f"{type(module).__name__}: parameters of shape "
                              f"{[tuple(p.shape) for p in params.values()]}, not ({d},)")
    gen = torch.Generator().manual_seed(11)
    tries = []
    for eps in _eps_candidates(module, cfg):
        xs = [torch.randn(3, d, generator=gen, dtype=torch.float64) * s
              for s in (1.0, 3.0, math.sqrt(eps) if eps > 0 else 1e-4)]
        xs[-1] = xs[-1] + 0.1 * xs[-1].mean()  # a mean, for LayerNorm vs RMSNorm at small scale
        outs = [m(x) for x in xs]
        for kind in ("rms", "layer"):
            for scale in (("plain", "one_plus") if w is not None else ("none",)):
                errs = [float((_norm_value(x, kind, scale, w, b, eps) - o).norm() / o.norm().clamp_min(1e-300))
                        for x, o in zip(xs, outs, strict=True)]
                tries.append((max(errs), kind, scale, eps))
    err, kind, scale, eps = min(tries)
    if err > FLOAT32_INSIDE_BOUND:
        raise ModelInputError(f"{type(module).__name__} is none of RMSNorm/LayerNorm with scale w or 1 + w "
                              f"(closest: {kind}, {scale}, eps={eps:g}, relative error {err:.1e})")
    names = {}
    if w is not None:
        names["scale"] = "weight"
    if b is not None:
        names["bias"] = "bias"
    return NormSpec(kind=kind, eps=eps, scale=scale, bias=b is not None), names


class NoMLPBranch(ModelInputError):
    """A layer with no MLP branch (a Mamba or attention-only layer of a hybrid stack)."""


def find_mlp(layer) -> str:
    for name, _child in layer.named_children():
        if name in MLP_NAMES:
            return name
    for name, child in layer.named_children():
        if any(mark in type(child).__name__ for mark in MLP_CLASS_MARKS):
            return name
    raise NoMLPBranch(f"{type(layer).__name__}: no MLP branch (no child named {'/'.join(MLP_NAMES)} or of an "
                          "MLP/MoE/FeedForward class, no up map -> activation module -> down map among its children, "
                          "no BERT-style intermediate/output pair)")


def _xielu(module) -> str:
    r"""xIELU (Apertus) with the module's own learned constants: $\alpha_p x^2 + \beta x$ for $x > 0$, else
    $\alpha_n(\exp(\min(x, \epsilon)) - 1 - x) + \beta x$, $\alpha_p = \mathrm{softplus}(a_p)$,
    $\alpha_n = \beta + \mathrm{softplus}(a_n)$ (transformers' ``XIELUActivation._xielu_python``)."""
    def num(t) -> str:
        return repr(float(torch.as_tensor(t).double().reshape(-1)[0]))

    with torch.no_grad():
        ap = torch.nn.functional.softplus(module.alpha_p.double())
        beta = module.beta.double()
        an = beta + torch.nn.functional.softplus(module.alpha_n.double())
    b, e = num(beta), num(module.eps)
    return (f"Piecewise(({num(ap)}*x**2 + {b}*x, x > 0), "
            f"({num(an)}*(exp(Min(x, {e})) - 1 - x) + {b}*x, True))")


#: Activation modules with learned constants: the spec's expression of the module's function, by class.
ACTIVATION_FORMULAS = {"XIELUActivation": _xielu}


def activations(mlp, cfg) -> list[str]:
    """Candidate activations: the MLP's activation modules' (by class; with its own constants where the class
    has learned ones, `ACTIVATION_FORMULAS`), the config's; every named one if neither names one (each
    candidate costs a derivation, so the list stays short)."""
    # an activation held as a module attribute is a registered submodule: the scan by class finds it
    learned = [ACTIVATION_FORMULAS[type(m).__name__](m) for m in mlp.modules()
               if type(m).__name__ in ACTIVATION_FORMULAS]
    if learned:
        return list(dict.fromkeys(learned))
    found = [ACTIVATION_CLASSES[type(m).__name__] for m in mlp.modules() if type(m).__name__ in ACTIVATION_CLASSES]
    for key in ("hidden_activation", "hidden_act", "activation_function", "activation", "hidden_activation_fn",
                "mlp_hidden_act"):
        name = getattr(cfg, key, None)
        if isinstance(name, str) and name in ACTIVATION_NAMES:
            found.append(ACTIVATION_NAMES[name])
    if found:  # what the module or the config names; every named activation only when neither does
        return list(dict.fromkeys(found))
    return list(UNNAMED_ACTIVATIONS)


def linears(mlp, mlp_path: str, record: dict[str, Call]) -> list[tuple[str, torch.nn.Module, Call]]:
    out = []
    for name, module in mlp.named_modules():
        w = getattr(module, "weight", None)
        if name and isinstance(w, torch.Tensor) and w.dim() == 2 and not is_norm(module):
            call = record.get(f"{mlp_path}.{name}")
            if call is not None:
                out.append((name, module, call))
    return out


def matrix_param(path: str, module, call: Call) -> Param:
    w = module.weight
    d_in, d_out = call.inp.shape[-1], call.out.shape[-1]
    if "Conv1D" in type(module).__name__ or (w.shape == (d_in, d_out) and d_in != d_out):
        return Param(f"{path}.weight", "conv1d")
    return Param(f"{path}.weight")


def dense_maps(mlp, mlp_path: str, record: dict[str, Call],
               residual: torch.Tensor | None = None) -> list[tuple[str, dict[str, Param], Biases]]:
    """Candidate (kind, parameter map, biases) of a dense or gated MLP, the gate/up order both ways."""
    mcall = record[mlp_path]
    lin = linears(mlp, mlp_path, record)
    ins = [x for x in lin if same_tensor(x[2].inp, mcall.inp)]
    outs = [x for x in lin if same_tensor(x[2].out, mcall.out)]
    if not outs and residual is not None:  # MLP(z, u) = u + down(...): the down map's output is the difference
        outs = [x for x in lin if x[2].out is not None and x[2].out.shape == mcall.out.shape and
                float((mcall.out - residual - x[2].out).norm()) <= 1e-12 * float(mcall.out.norm())]
    called = {id(mod.weight) for _n, mod, _c in lin}
    raw = [f"{n} {tuple(p.shape)}" for n, p in mlp.named_parameters() if p.dim() >= 2 and id(p) not in called]
    if not ins and not outs and raw:  # matrices its forward uses directly (DBRX's experts: flat (E*m, d) w1/v1/w2)
        raise ModelInputError(f"{mlp_path} ({type(mlp).__name__}): no linear module reads its input or gives its "
                              f"output; the matrices {', '.join(raw)} are used by its forward directly, a layout not "
                              "modelled")
    if len(outs) != 1 or not ins:
        raise ModelInputError(f"{mlp_path} ({type(mlp).__name__}): expected linear maps fed by its input and one whose "
                              f"output is its output; found {len(ins)} input and {len(outs)} output maps")
    down_name, down, dcall = outs[0]
    m = dcall.inp.shape[-1]
    base = {"W_down": matrix_param(f"{mlp_path}.{down_name}", down, dcall)}
    mid = next((n for n, mod in mlp.named_modules() if n and is_norm(mod) and
                same_tensor(record.get(f"{mlp_path}.{n}", Call(None, None)).out, dcall.inp)), None)
    if mid is not None:  # a norm on the hidden activations before W_down (BitNet's ffn_sub_norm)
        base["__mid__"] = Param(f"{mlp_path}.{mid}")
    bias = {"down": getattr(down, "bias", None) is not None}
    if bias["down"]:
        base["b_down"] = Param(f"{mlp_path}.{down_name}.bias")
    candidates = []
    if len(ins) == 1:
        name, mod, call = ins[0]
        width = call.out.shape[-1]
        if width == m:
            params = {**base, "W_up": matrix_param(f"{mlp_path}.{name}", mod, call)}
            if mod.bias is not None:
                params["b_up"] = Param(f"{mlp_path}.{name}.bias")
            return [("dense", params, Biases(up=mod.bias is not None, down=bias["down"]))]
        if width == 2 * m and mod.bias is None:  # fused gate_up
            for gate, up in (("rows0", "rows1"), ("rows1", "rows0")):
                params = {**base, "W_gate": Param(f"{mlp_path}.{name}.weight", gate),
                          "W_up": Param(f"{mlp_path}.{name}.weight", up)}
                candidates.append(("gated", params, Biases(down=bias["down"])))
            return candidates
        raise ModelInputError(f"{mlp_path}.{name}: output width {width}, neither the hidden width {m} nor twice it")
    if len(ins) == 2:
        ordered = sorted(ins, key=lambda x: 0 if any(k in x[0] for k in ("gate", "w1", "wi_0")) else 1)
        for g, u in (ordered, ordered[::-1]):
            params = {**base, "W_gate": matrix_param(f"{mlp_path}.{g[0]}", g[1], g[2]),
                      "W_up": matrix_param(f"{mlp_path}.{u[0]}", u[1], u[2])}
            if g[1].bias is not None:
                params["b_gate"] = Param(f"{mlp_path}.{g[0]}.bias")
            if u[1].bias is not None:
                params["b_up"] = Param(f"{mlp_path}.{u[0]}.bias")
            candidates.append(("gated", params, Biases(gate=g[1].bias is not None, up=u[1].bias is not None,
                                                       down=bias["down"])))
        return candidates
    raise ModelInputError(f"{mlp_path}: {len(ins)} linear maps read the MLP input; 1 (dense or fused) or 2 (gated) "
                          "are modelled")


def moe_maps(mlp, mlp_path: str, record: dict[str, Call], cfg,
             beside: dict[str, Param] | None = None) -> list[tuple[MoESpec, dict[str, Param]]]:
    """Candidate (MoE spec, parameter map) of a mixture of experts with stacked expert tensors. ``beside``: a
    shared expert in a module of its own (``shared.W_*``, summed with the mixture by the layer)."""
    experts = next(((n, m) for n, m in mlp.named_children()
                    if any(p.dim() == 3 for p in m.parameters(recurse=False))), None)
    d = record[mlp_path].inp.shape[-1]  # the model width
    flat, split = flat_experts(mlp), split_experts(mlp)
    if experts is None and flat is None:
        raise ModelInputError(f"{mlp_path}: a mixture of experts without stacked expert tensors is not modelled")
    if split is not None:
        held, E, expert_params = _split_maps(mlp, mlp_path, split, d)
    elif experts is not None:
        ename, emod = experts
        held = (ename,)
        E, expert_params = expert_maps(emod, f"{mlp_path}.{ename}", d)
    else:
        ename, E, expert_params = _flat_maps(mlp, mlp_path, flat, d)
        held = (ename,)
    router = next(((n, m) for n, m in mlp.named_modules() if n and n.split(".")[0] not in held and
                   isinstance(getattr(m, "weight", None), torch.Tensor) and tuple(m.weight.shape) == (E, d)), None)
    if router is None:
        raise ModelInputError(f"{mlp_path}: no router of shape ({E}, {d}) found")
    rname, rmod = router
    own = {n: t for n, t in [*rmod.named_parameters(recurse=False), *rmod.named_buffers(recurse=False)]}
    extra = sorted(set(own) - {"weight", "bias", "e_score_correction_bias"})
    if extra:
        raise ModelInputError(f"{mlp_path}.{rname}: router parameters/buffers {extra} are not modelled")
    router_params = {}
    if own.get("bias") is not None:
        router_params["b_router"] = Param(f"{mlp_path}.{rname}.bias")
    if own.get("e_score_correction_bias") is not None:
        router_params["b_select"] = Param(f"{mlp_path}.{rname}.e_score_correction_bias")
    block_bias = getattr(mlp, "expert_bias", None)  # LFM2-MoE: the selection bias a buffer of the block, not the router
    if isinstance(block_bias, torch.Tensor) and tuple(block_bias.shape) == (E,) and "b_select" not in router_params:
        router_params["b_select"] = Param(f"{mlp_path}.expert_bias")
    params = {**expert_params, "W_router": Param(f"{mlp_path}.{rname}.weight"), **router_params,
              **_output_bias(mlp, mlp_path, d)}
    for n, m in mlp.named_children():
        if n in held or n == rname:
            continue
        if rname.startswith(n + "."):  # the router sits inside this child: nothing else may
            if sum(p.numel() for p in m.parameters()) != sum(p.numel() for p in rmod.parameters()):
                raise ModelInputError(f"{mlp_path}.{n}: parameters besides the router {rname} are not modelled")
            continue
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and tuple(w.shape) == (1, d):
            params["shared.w_gate"] = Param(f"{mlp_path}.{n}.weight", "row")
            continue
        sub = {k: v for k, v in m.named_modules() if isinstance(getattr(v, "weight", None), torch.Tensor)}
        names = {k.split(".")[-1] for k in sub if k}
        if {"up_proj", "down_proj"} <= names and names <= {"gate_proj", "up_proj", "down_proj"}:
            for canon, key in (("shared.W_gate", "gate_proj"), ("shared.W_up", "up_proj"),
                               ("shared.W_down", "down_proj")):
                if key not in sub:  # a dense shared expert (Nemotron-H): no gate map
                    continue
                if getattr(sub[key], "bias", None) is not None:
                    raise ModelInputError(f"{mlp_path}.{n}.{key}: a shared-expert bias is not modelled")
                params[canon] = Param(f"{mlp_path}.{n}.{key}.weight")
        elif list(m.parameters()):
            raise ModelInputError(f"{mlp_path}.{n} ({type(m).__name__}): a part of the mixture that is not modelled")
    if beside and any(k.startswith("shared.") for k in params):
        raise ModelInputError(f"{mlp_path}: a shared expert inside the mixture and another beside it")
    params.update(beside or {})
    if "shared.w_gate" in params and "shared.W_down" not in params:
        raise ModelInputError(f"{mlp_path}: a shared-expert gate without a shared expert")
    shared = "none" if "shared.W_down" not in params else "gated" if "shared.w_gate" in params else "plain"
    shared_kind = "gated" if "shared.W_gate" in params or shared == "none" else "dense"
    expert_kind = "gated" if "experts.W_gate" in params else "dense"
    top_k = getattr(mlp, "top_k", None) or getattr(cfg, "num_experts_per_tok", None) or \
        getattr(cfg, "moe_topk", None) or getattr(cfg, "top_k", None)
    if not isinstance(top_k, int):
        raise ModelInputError(f"{mlp_path}: the config names no top-k (num_experts_per_tok)")
    renorm = bool(getattr(cfg, "norm_topk_prob", False))
    sigmoid = "b_select" in params or getattr(cfg, "scoring_func", "") == "sigmoid"
    groups = (getattr(cfg, "n_group", None) or 1, getattr(cfg, "topk_group", None) or 1)
    scale = float(getattr(cfg, "routed_scaling_factor", None) or 1.0)
    routings = [("sigmoid" if sigmoid else "softmax", "before_topk", renorm),
                ("sigmoid" if sigmoid else "softmax", "before_topk", not renorm)]
    if not sigmoid:
        routings.append(("softmax", "after_topk", False))
    weightings = ("output", "input") if getattr(cfg, "model_type", "").startswith("llama4") else ("output",)
    routings += [("softmax" if sigmoid else "sigmoid", "before_topk", r) for r in (renorm, not renorm)]
    jitter = getattr(cfg, "router_jitter_noise", None)  # PhiMoE's sparsemixer masks by 2 x this: tried last
    jitters = {("sparsemixer", "before_topk", False): float(jitter)} if isinstance(jitter, (int, float)) and \
        not isinstance(jitter, bool) and 0 < jitter <= 1 else {}
    routings += list(jitters)
    out = []
    for g in dict.fromkeys([groups, (1, 1)]):
        for rs in dict.fromkeys([scale, 1.0]):
            for (scoring, softmax, rn), weighting in itertools.product(routings, weightings):
                try:
                    moe = MoESpec(experts=E, top_k=top_k, softmax=softmax, renormalize=rn, shared_expert=shared,
                                  expert=expert_kind, shared_kind=shared_kind, scoring=scoring,
                                  selection_bias="b_select" in params,
                                  groups=g[0], topk_groups=g[1], routed_scale=rs, router_bias="b_router" in params,
                                  weighting=weighting, expert_bias="experts.b_down" in params,
                                  jitter_eps=jitters.get((scoring, softmax, rn), 0.0))
                except ValueError:
                    continue
                out.append((moe, params))
    out.sort(key=lambda c: c[0].weighting != weightings[-1])  # a type that names input weighting: it first
    return out


#: Experts stored flat, (E m, d) each, by the names of their gate, up and down matrices (DBRX's w1, v1, w2, the
#: down matrix stored (in, out) per expert).
FLAT_EXPERTS = {("w1", "v1", "w2"): ("W_gate", "W_up", "W_down")}


def flat_experts(mlp) -> tuple[str, tuple[str, str, str]] | None:
    """(path in the mixture, names) of a module holding flat expert matrices (`FLAT_EXPERTS`), or None."""
    for path, module in mlp.named_modules():
        own = dict(module.named_parameters(recurse=False))
        for names in FLAT_EXPERTS:
            if set(own) == set(names) and len({tuple(own[n].shape) for n in names}) == 1 and own[names[0]].dim() == 2:
                return path, names
    return None


def _flat_maps(mlp, mlp_path: str, flat: tuple[str, tuple[str, str, str]], d: int) -> tuple[str, int, dict]:
    """(the mixture's child holding them, E, the canonical expert parameters) of flat experts (`FLAT_EXPERTS`):
    E from the router, a linear map (E, d) with E dividing the flat rows."""
    path, names = flat
    rows = dict(get_module(mlp, path).named_parameters(recurse=False))[names[0]].shape[0]
    routers = [m.weight.shape[0] for n, m in mlp.named_modules() if n and not (n + ".").startswith(path + ".")
               and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2
               and m.weight.shape[1] == d and rows % m.weight.shape[0] == 0]
    if len(routers) != 1:
        raise ModelInputError(f"{mlp_path}.{path}: flat expert matrices ({rows}, {d}) and {len(routers)} candidate "
                              "routers (a linear map (E, d) with E dividing the rows); one is modelled")
    E = routers[0]
    where = f"{mlp_path}.{path}" if path else mlp_path
    canon = FLAT_EXPERTS[names]
    params = {f"experts.{c}": Param(f"{where}.{n}", "t" if c == "W_down" else "linear", rows // E)
              for n, c in zip(names, canon, strict=True)}
    return path.split(".")[0], E, params


#: Experts stored in two sibling modules of the mixture, one 3-D ``weight`` each (JetMoE's ParallelExperts), by
#: their names: the input maps (E, 2m, d) (gate the first half of the rows, up the second: JetMoE applies the
#: activation to the first chunk) and the output maps (E, d, m), both stored (out, in) per expert.
SPLIT_EXPERTS = (("input_linear", "output_linear"),)


def split_experts(mlp) -> tuple[str, str] | None:
    """The names of the (input, output) expert modules of a mixture laid out as `SPLIT_EXPERTS`, or None."""
    children = dict(mlp.named_children())
    for names in SPLIT_EXPERTS:
        mods = [children.get(n) for n in names]
        if all(m is not None and {k for k, _ in m.named_parameters(recurse=False)} == {"weight"}
               and m.weight.dim() == 3 for m in mods):
            return names
    return None


def _split_maps(mlp, mlp_path: str, names: tuple[str, str], d: int) -> tuple[tuple[str, str], int, dict]:
    """(the two modules, E, the canonical expert parameters) of experts split over two modules (`SPLIT_EXPERTS`):
    (E, 2m, d) gated (gate the first half) or (E, m, d) dense input maps, (E, d, m) output maps."""
    inp, out = (get_module(mlp, n).weight for n in names)
    E, rows, cols = inp.shape
    m = out.shape[-1]
    if cols != d or tuple(out.shape) != (E, d, m) or rows not in (m, 2 * m):
        raise ModelInputError(f"{mlp_path}.{names[0]} {tuple(inp.shape)} and {mlp_path}.{names[1]} "
                              f"{tuple(out.shape)}: modelled as (E, 2m, {d}) or (E, m, {d}) input maps with (E, {d}, "
                              "m) output maps, stored (out, in) per expert")
    where = [f"{mlp_path}.{n}.weight" for n in names]
    params = {"experts.W_up": Param(where[0]), "experts.W_down": Param(where[1])}
    if rows == 2 * m:
        params.update({"experts.W_gate": Param(where[0], "rows0"), "experts.W_up": Param(where[0], "rows1")})
    return names, E, params


def _output_bias(mlp, mlp_path: str, d: int) -> dict[str, Param]:
    """``b_down``: a bias (d,) of the mixture module itself, added once to its output (JetMoE's ``bias``)."""
    own = dict(mlp.named_parameters(recurse=False))
    bias = own.get("bias")
    return {"b_down": Param(f"{mlp_path}.bias")} if isinstance(bias, torch.Tensor) and tuple(bias.shape) == (d,) \
        else {}


def get_module(root, path: str):
    return root.get_submodule(path) if path else root


def expert_maps(emod, path: str, d: int) -> tuple[int, dict[str, Param]]:
    r"""(E, the canonical expert parameters) of stacked experts: ``gate_up_proj`` and ``down_proj``, with their
    biases ``gate_up_proj_bias`` (E, 2m) and ``down_proj_bias`` (E, d) where the module has them.

    Storage as transformers' experts declare it (``use_experts_implementation``: ``is_transposed``,
    ``is_concatenated``), else read from the shapes: (E, 2m, d) and (E, d, m) stored (out, in), (E, d, 2m) and
    (E, m, d) stored (in, out); gate and up the two halves of the fused dimension, or its even and odd entries
    (interleaved, gpt-oss).
    """
    stacked = {n: p for n, p in emod.named_parameters(recurse=False)}
    if set(stacked) == {"up_proj", "down_proj"}:
        return _dense_experts(emod, path, d, stacked)
    names = {"gate_up_proj", "down_proj"}
    biased = names | {"gate_up_proj_bias", "down_proj_bias"}
    if set(stacked) not in (names, biased):
        raise ModelInputError(f"{path}: expert tensors {sorted(stacked)}; modelled: gate_up_proj, down_proj, with or "
                              "without their biases gate_up_proj_bias, down_proj_bias")
    if getattr(emod, "has_post_expert_norm", False) is True:
        raise ModelInputError(f"{path}: a norm after each expert (has_post_expert_norm) is not modelled")
    E = stacked["gate_up_proj"].shape[0]
    gu, dn = tuple(stacked["gate_up_proj"].shape[1:]), tuple(stacked["down_proj"].shape[1:])
    plain = gu[1] == d and dn[0] == d and gu[0] == 2 * dn[1]  # (E, 2m, d) and (E, d, m)
    transposed = gu[0] == d and dn[1] == d and gu[1] == 2 * dn[0]  # (E, d, 2m) and (E, m, d)
    declared = getattr(emod, "is_transposed", None)
    if isinstance(declared, bool) and plain and transposed:
        plain = not declared  # square shapes: the declaration decides
    if not (plain or transposed) or isinstance(declared, bool) and declared == plain:
        raise ModelInputError(f"{path}: gate_up_proj {gu} and down_proj {dn} per expert fit neither (2m, {d}) with "
                              f"({d}, m) nor ({d}, 2m) with (m, {d})"
                              + ("" if not isinstance(declared, bool) else f" as declared (is_transposed={declared})"))
    halves = ("_even", "_odd") if getattr(emod, "is_concatenated", True) is False else ("0", "1")
    fused = "rows" if plain else "tcols"
    params = {"experts.W_gate": Param(f"{path}.gate_up_proj", fused + halves[0]),
              "experts.W_up": Param(f"{path}.gate_up_proj", fused + halves[1]),
              "experts.W_down": Param(f"{path}.down_proj", "linear" if plain else "t")}
    if "down_proj_bias" in stacked:
        bias = ("even", "odd") if halves[0] == "_even" else ("half0", "half1")
        params.update({"experts.b_gate": Param(f"{path}.gate_up_proj_bias", bias[0]),
                       "experts.b_up": Param(f"{path}.gate_up_proj_bias", bias[1]),
                       "experts.b_down": Param(f"{path}.down_proj_bias")})
    return E, params


def _dense_experts(emod, path: str, d: int, stacked: dict) -> tuple[int, dict[str, Param]]:
    r"""(E, the canonical parameters) of stacked dense experts $W_\mathrm{down}\,\sigma(W_\mathrm{up} z)$
    (Nemotron-H): ``up_proj`` (E, m, d) or (E, d, m), ``down_proj`` (E, d, m) or (E, m, d)."""
    up, down = tuple(stacked["up_proj"].shape[1:]), tuple(stacked["down_proj"].shape[1:])
    plain = up[1] == d and down == (d, up[0])
    transposed = up[0] == d and down == (up[1], d)
    declared = getattr(emod, "is_transposed", None)
    if isinstance(declared, bool) and plain and transposed:
        plain = not declared
    if not (plain or transposed):
        raise ModelInputError(f"{path}: up_proj {up} and down_proj {down} per expert fit neither (m, {d}) with ({d}, "
                              f"m) nor ({d}, m) with (m, {d})")
    layout = "linear" if plain else "t"
    return stacked["up_proj"].shape[0], {"experts.W_up": Param(f"{path}.up_proj", layout),
                                         "experts.W_down": Param(f"{path}.down_proj", layout)}


def expert_activations(mlp, cfg, act: str) -> list[tuple[str, str]]:
    r"""Candidate (σ, ψ) of the experts' gate $a = σ(\mathrm{gate}) \odot ψ(\mathrm{up})$: the clamped GLU of
    gpt-oss first where the experts (``limit``, ``alpha``) or the config (``swiglu_limit``, ``swiglu_alpha``)
    declare one, $σ(x) = \min(x, L)\,\mathrm{sigmoid}(α \min(x, L))$, $ψ(x) = \max(-L, \min(x, L)) + 1$;
    then ``act`` with ψ the identity. The equivalence check decides."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    declared = [(getattr(m, "limit", None), getattr(m, "alpha", None)) for m in mlp.modules()]
    declared.append((getattr(cfg, "swiglu_limit", None), getattr(cfg, "swiglu_alpha", None)))
    out = [(act, "identity")]
    limit, alpha = next(((lim, a) for lim, a in declared if number(lim) and number(a)), (None, None))
    if limit is not None:
        g = f"Min(x, {float(limit)!r})"
        out.insert(0, (f"{g}*sigmoid({float(alpha)!r}*{g})", f"Max({-float(limit)!r}, {g}) + 1"))
    return out
