r"""The data flow around one layer's MLP branch, and the candidate `Adapter`\ s (with their specs) it allows.

The residual: $y = u + c\,b$ (sequential; $u$ the pre-norm's input) or $y = x + a + c\,b$ (parallel; $x$ the
layer input, $a$ the attention output), the branch multiplier $c$ fitted and recognised in the config
(granite's ``residual_multiplier``); a branch split over modules (BERT's ``intermediate``/``output``, an MLP
written on the layer itself: OPT, BioGPT, TrOCR); post-LN blocks (GPT-1, BERT). `layer_adapters` combines the
flow with the parts `numeric.hf.identify` found into every candidate, most likely first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from numeric.hf.identify import (
    ACTIVATION_CLASSES,
    MLP_CLASS_MARKS,
    MLP_NAMES,
    UNNAMED_ACTIVATIONS,
    activations,
    dense_maps,
    expert_activations,
    find_mlp,
    flat_experts,
    identify_norm,
    is_norm,
    linears,
    matrix_param,
    moe_maps,
)
from numeric.hf.layout import Adapter, Param, has_module_activation, token_rows
from numeric.hf.offload import get
from numeric.hf.probe import Call, same_tensor
from symbolic.activations import MODULE, MODULE_PARAM
from symbolic.errors import ModelInputError, SpecError
from symbolic.spec import Biases, BlockSpec, MLPSpec, NormSpec

ATTENTION_MARKS = ("attn", "attention", "self_attention")
MULTIPLIER_KEYS = ("residual_multiplier", "residual_scale", "mlp_residual_multiplier")


@dataclass
class Flow:
    """The data flow around the MLP branch of one layer (paths relative to the layer)."""

    mlp: str
    pre: str | None
    post: str | None
    mode: str
    scale: float
    attn: str = ""
    shared_pre_norm: bool = False
    adds_residual: bool = False
    chain: tuple[str, ...] = ()  # a split branch (`Adapter.chain`); ``mlp`` is then the branch module
    act: str = ""  # the activation module of a chain, when it is one of its own (it runs; the others are skipped)
    maps: tuple[str, str] = ()  # a chain's up and down maps (linear modules)
    parts: tuple[str, ...] = ()  # sibling modules whose outputs the layer adds to the MLP's (`Adapter.parts`)
    outer: float = 1.0  # the state after the add is outer * (u + scale * branch) (`Adapter.outer_scale`)
    after_add: bool = False  # the layer goes on after the add (`Adapter.after_add`)
    add_index: int = -1  # which of the layer's additions (`Record.sums`) gives the state after the add


def _fit(r: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(c, relative residual) of r ≈ c b."""
    c = float((r * b).sum() / (b * b).sum().clamp_min(1e-300))
    return c, float((r - c * b).norm() / r.norm().clamp_min(1e-300))


def _recognise(c: float, cfg) -> float:
    if abs(c - 1.0) <= 1e-9:
        return 1.0
    for key in MULTIPLIER_KEYS:
        v = getattr(cfg, key, None)
        if isinstance(v, (int, float)) and abs(v - c) <= 1e-9 * max(1.0, abs(v)):
            return float(v)
    return c


def _same_rows(a, b) -> bool:
    return a is not None and b is not None and same_tensor(token_rows(a), token_rows(b))


def _split_flow(layer64, record: dict[str, Call], y: torch.Tensor) -> Flow | None:
    """BERT's split MLP: ``intermediate`` (up map, activation) and ``output`` (down map, the add of the residual),
    the layer's output being ``output``'s. Post-LN: y = LN(u + W_down a), the LayerNorm inside ``output``;
    pre-LN: y = u + W_down a with a norm before the up map, a child of the layer (Megatron-BERT, XLM-RoBERTa-XL)
    or the first of ``intermediate`` (RoBERTa-PreLayerNorm)."""
    inter, out = getattr(layer64, "intermediate", None), getattr(layer64, "output", None)
    if inter is None or out is None or not hasattr(inter, "dense") or not hasattr(out, "dense"):
        return None
    if "intermediate" not in record or "output" not in record or not same_tensor(record["output"].out, y):
        return None
    maps = ("intermediate.dense", "output.dense")
    post = next((f"output.{n}" for n, m in out.named_children() if is_norm(m)), None)
    if post is not None:
        return Flow("output", None, post, "post_ln", 1.0, adds_residual=True, chain=("intermediate",), maps=maps)
    none = Call(None, None)
    inner = next((f"intermediate.{n}" for n, m in inter.named_children() if is_norm(m) and
                  same_tensor(record.get(f"intermediate.{n}", none).out, record.get(maps[0], none).inp)), None)
    if inner is not None:
        return Flow("output", inner, None, "sequential", 1.0, adds_residual=True, chain=("intermediate",), maps=maps)
    pre = next((n for n, m in layer64.named_children() if is_norm(m) and n in record and
                same_tensor(record[n].out, record["intermediate"].inp)), None)
    if pre is None:
        return None
    return Flow("output", pre, None, "sequential", 1.0, adds_residual=True, chain=(pre, "intermediate"), maps=maps)


def _is_linear(module) -> bool:
    w = getattr(module, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() == 2 and not is_norm(module)


def _virtual_flow(layer64, record: dict[str, Call], y: torch.Tensor, cfg) -> Flow | None:
    """An MLP written on the layer itself (OPT, BioGPT, TrOCR): children up map -> activation module -> down map,
    no MLP module. Pre-LN: y = u + c fc2(σ(fc1(norm(u)))), the branch module ``fc2``; post-LN (OPT with
    ``do_layer_norm_before=False``, TrOCR): y = LN(u + fc2(σ(fc1(u)))), the branch module the LayerNorm."""
    kids = {n: m for n, m in layer64.named_children() if n in record}
    norms = [n for n, m in kids.items() if is_norm(m)]
    for act, module in kids.items():
        if type(module).__name__ not in ACTIVATION_CLASSES:
            continue
        up = next((n for n, m in kids.items() if _is_linear(m) and same_tensor(record[n].out, record[act].inp)), None)
        down = next((n for n, m in kids.items() if _is_linear(m) and same_tensor(record[n].inp, record[act].out)), None)
        if up is None or down is None:
            continue
        z, h = record[up].inp, token_rows(record[down].out)
        pre = next((n for n in norms if same_tensor(record[n].out, z)), None)
        if pre is not None:
            c, err = _fit(token_rows(y) - token_rows(record[pre].inp), h)
            if err <= 1e-12:
                return Flow(down, pre, None, "sequential", _recognise(c, cfg), chain=(pre, up, act), act=act,
                            maps=(up, down))
        for post in norms:  # the norm that gives y from u + h
            c, err = _fit(token_rows(record[post].inp) - token_rows(z), h)
            if _same_rows(record[post].out, y) and err <= 1e-12 and abs(c - 1) <= 1e-12:
                return Flow(post, None, post, "post_ln", 1.0, chain=(up, act, down), act=act, maps=(up, down))
    return None


def _post_ln_flow(layer64, record: dict[str, Call], mlp: str, y: torch.Tensor) -> Flow | None:
    """A post-LN block around an MLP module (GPT-1): y = LN(u + MLP(u)), u the MLP's input, the norm a child of
    the layer; the MLP's maps one up map fed by its input and one down map giving its output. The chain is the
    MLP module, the branch module the LayerNorm."""
    mcall = record[mlp]
    for name, module in layer64.named_children():
        if not is_norm(module) or name not in record or not _same_rows(record[name].out, y):
            continue
        c, err = _fit(token_rows(record[name].inp) - token_rows(mcall.inp), token_rows(mcall.out))
        if err > 1e-12 or abs(c - 1) > 1e-12:
            continue
        lin = linears(get(layer64, mlp), mlp, record)
        ups = [n for n, _m, call in lin if same_tensor(call.inp, mcall.inp)]
        downs = [n for n, _m, call in lin if same_tensor(call.out, mcall.out)]
        if len(ups) == 1 and len(downs) == 1:
            return Flow(name, None, name, "post_ln", 1.0, chain=(mlp,), maps=(f"{mlp}.{ups[0]}", f"{mlp}.{downs[0]}"))
    return None


def flow(layer64, record: dict[str, Call], x: torch.Tensor, y: torch.Tensor, cfg) -> Flow:
    split = _split_flow(layer64, record, y)
    if split is not None:
        return split
    try:
        mlp = find_mlp(layer64)
    except ModelInputError:
        virtual = _virtual_flow(layer64, record, y, cfg)
        if virtual is None:
            raise
        return virtual
    mcall = record.get(mlp)
    if mcall is None or mcall.inp is None or mcall.out is None:
        raise ModelInputError(f"{mlp} was not called with a tensor in the layer's forward")
    norms = {n: c for n, c in record.items() if is_norm(get(layer64, n)) and not n.startswith(mlp + ".")}
    pre = next((n for n, c in norms.items() if same_tensor(c.out, mcall.inp)), None)
    post = next((n for n, c in norms.items() if same_tensor(c.inp, mcall.out)), None)
    b = norms[post].out if post else mcall.out
    u = norms[pre].inp if pre else mcall.inp
    c, err = _fit(y - u, b) if y.shape == u.shape else (0.0, float("inf"))
    if err <= 1e-12 and abs(c) > 1e-12:
        return Flow(mlp, pre, post, "sequential", _recognise(c, cfg))
    if post is None and same_tensor(mcall.out, y):  # the MLP adds the residual itself: MLP(z, u) = u + branch
        c, err = _fit(y - u, mcall.out - u)
        if err <= 1e-12 and abs(c - 1) <= 1e-12:
            return Flow(mlp, pre, post, "sequential", 1.0, adds_residual=True)
    post_ln = _post_ln_flow(layer64, record, mlp, y) if post is None else None
    if post_ln is not None:
        return post_ln
    if same_tensor(u, x):
        attn = [n for n in record if "." not in n and any(k in n.lower() for k in ATTENTION_MARKS)]
        for a in attn:
            c, err = _fit(y - x - record[a].out, b)
            if err <= 1e-12:
                shared = pre is not None and same_tensor(record[a].inp, mcall.inp)
                return Flow(mlp, pre, post, "parallel", _recognise(c, cfg), a, shared)
    found = _state_after_add(layer64, record, mlp, pre, post, y, cfg)
    if found is not None:
        return found
    raise ModelInputError(f"the output of {mlp} is not added to the residual stream as y = u + c * branch (sequential) "
                          f"or y = x + attention + c * branch (parallel): relative residual {err:.1e}")


def _siblings(layer64, record: dict[str, Call], mlp: str) -> list[str]:
    """The layer's other MLP-like children (by name or class, `find_mlp`'s marks) that read what the MLP reads."""
    mcall = record[mlp]
    return [n for n, child in layer64.named_children() if n != mlp and n in record and record[n].out is not None
            and (n in MLP_NAMES or any(k in type(child).__name__ for k in MLP_CLASS_MARKS))
            and same_tensor(record[n].inp, mcall.inp) and record[n].out.shape == mcall.out.shape]


def _fit2(r: torch.Tensor, v: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """(alpha, beta, relative residual) of r ≈ alpha v + beta b, least squares."""
    A = torch.stack([v.reshape(-1), b.reshape(-1)], 1)
    sol = torch.linalg.lstsq(A, r.reshape(-1, 1)).solution[:, 0]
    res = r.reshape(-1) - A @ sol
    return float(sol[0]), float(sol[1]), float(res.norm() / r.norm().clamp_min(1e-300))


def _state_after_add(layer64, record, mlp: str, pre: str | None, post: str | None, y: torch.Tensor,
                     cfg) -> Flow | None:
    r"""The state right after the MLP's add, where the layer's output is not it: among the layer's additions
    (`numeric.hf.probe.Record.sums`, then its output), the first $r = \alpha v + \beta b$ with $v$ the MLP's
    residual u (or the MLP's own input z = pre(u): MiniMax's $\alpha\,\mathrm{norm}(u) + \beta\,\mathrm{MoE}$)
    and $b$ the branch output (the MLP's, or with its sibling MLPs' summed in: Granite 4 hybrid's MoE and shared
    MLP). Then the spec's branch scale is $\beta / \alpha$ and the kernel's output $r / \alpha$."""
    mcall = record[mlp]
    parts = tuple(_siblings(layer64, record, mlp)) if post is None else ()
    b1 = record[post].out if post else mcall.out
    branches = [((), b1)] + ([(parts, b1 + sum(record[p].out for p in parts))] if parts else [])
    frames = [(pre, record[pre].inp if pre else mcall.inp)] + ([(None, mcall.inp)] if pre else [])
    candidates = list(enumerate(getattr(record, "sums", []))) + [(-1, y)]
    for k, r in candidates:
        for pre_used, v in frames:
            if r.numel() != v.numel() or r.shape[-1] != v.shape[-1]:
                continue
            for used, b in branches:
                alpha, beta, err = _fit2(r, v, b)
                if err <= 1e-12 and abs(alpha) > 1e-12 and abs(beta) > 1e-12:
                    scale = _recognise(beta / alpha, cfg)
                    outer = 1.0 if abs(alpha - 1) <= 1e-12 else alpha
                    return Flow(mlp, pre_used, post, "sequential", scale, parts=used, outer=outer,
                                after_add=k >= 0 and not same_tensor(r, y), add_index=k)
    return None


def layer_adapters(layer64, record, x, y, cfg, model_type: str, name: str) -> tuple[Flow, list[Adapter]]:
    """Every candidate Adapter (with its spec) of one layer, most likely first."""
    fl = flow(layer64, record, x, y, cfg)
    d = x.shape[-1]
    norm_params: dict[str, Param] = {}
    pre_spec = post_spec = None
    if fl.pre:
        pre_spec, names = identify_norm(get(layer64, fl.pre), cfg, d)
        norm_params.update({f"mlp_pre_norm.{k}": Param(f"{fl.pre}.{v}") for k, v in names.items()})
    if fl.post:
        post_spec, names = identify_norm(get(layer64, fl.post), cfg, d)
        canon = "post_ln" if fl.mode == "post_ln" else "mlp_post_norm"
        norm_params.update({f"{canon}.{k}": Param(f"{fl.post}.{v}") for k, v in names.items()})
    if fl.chain:
        return fl, _split_adapters(layer64, record, fl, pre_spec, post_spec, norm_params, cfg, model_type, name)
    mlp = get(layer64, fl.mlp)
    acts = activations(mlp, cfg)
    is_moe = any(p.dim() == 3 for p in mlp.parameters()) or flat_experts(mlp) is not None
    attention = dataclasses.replace(BlockSpec.__dataclass_fields__["attention"].default_factory(),
                                    pre_norm=pre_spec if fl.shared_pre_norm else None)
    out = []
    if is_moe:  # the named activation only (a derivation per candidate); every one, silu first, if none is named
        maps = [m for shared in _shared_parts(layer64, record, fl) for m in moe_maps(mlp, fl.mlp, record, cfg, shared)]
        for base in (acts if tuple(acts) == UNNAMED_ACTIVATIONS else acts[:1]):
            for act, up_act in expert_activations(mlp, cfg, base):
                for moe, params in maps:
                    mspec = MLPSpec(kind="moe", activation=act, up_activation=up_act, pre_norm=pre_spec,
                                    post_norm=post_spec, branch_scale=fl.scale, bias=Biases(down="b_down" in params))
                    spec = BlockSpec(name=name, mlp=mspec, residual=fl.mode, shared_pre_norm=fl.shared_pre_norm,
                                     attention=attention, moe=moe, hf_model_types=(model_type,))
                    out.append(adapter_for(spec, fl, {**params, **norm_params}))
        return fl, out
    if fl.parts:
        raise ModelInputError(f"{fl.mlp} and {', '.join(fl.parts)}: dense MLPs summed into one branch; a second "
                              "module is modelled as the shared expert of a mixture of experts")
    residual = None
    if fl.adds_residual:
        residual = record[fl.pre].inp if fl.pre else record[fl.mlp].inp
    for kind, params, biases in dense_maps(mlp, fl.mlp, record, residual):
        mid_spec, mid = None, params.pop("__mid__", None)
        if mid is not None:
            mid_spec, names = identify_norm(get(layer64, mid.path), cfg, record[mid.path].inp.shape[-1])
            params.update({f"mlp_mid_norm.{k}": Param(f"{mid.path}.{v}") for k, v in names.items()})
        opaque = [MODULE] if kind == "gated" and has_module_activation(mlp) else []  # the module's own map, last
        for act in acts + opaque:
            mspec = MLPSpec(kind=kind, activation=act, bias=biases, pre_norm=pre_spec, post_norm=post_spec,
                            branch_scale=fl.scale, mid_norm=mid_spec)
            spec = BlockSpec(name=name, mlp=mspec, residual=fl.mode, shared_pre_norm=fl.shared_pre_norm,
                             attention=attention, hf_model_types=(model_type,))
            own = {MODULE_PARAM: Param(fl.mlp, "activation")} if act == MODULE else {}
            out.append(adapter_for(spec, fl, {**params, **norm_params, **own}))
    # most likely first: the named activation with each map order before the other activations, the module's own
    # map (formula-less: fewer strategies) after them
    first = [a for a in out if a.spec.mlp.activation == acts[0]]
    return fl, first + [a for a in out if a.spec.mlp.activation != acts[0]]


def _shared_parts(layer64, record: dict[str, Call], fl: Flow) -> list[dict[str, Param]]:
    """The shared expert a mixture's sibling module holds (`Flow.parts`): its candidate parameter maps
    (``shared.W_gate|W_up|W_down``: a gated MLP without biases), or [{}] without a sibling."""
    if not fl.parts:
        return [{}]
    if len(fl.parts) > 1:
        raise ModelInputError(f"{', '.join(fl.parts)}: several modules summed with the mixture {fl.mlp}; one shared "
                              "expert is modelled")
    part = fl.parts[0]
    out = [{f"shared.{k}": v for k, v in params.items()}
           for kind, params, biases in dense_maps(get(layer64, part), part, record)
           if kind == "gated" and biases == Biases() and "__mid__" not in params]
    if not out:
        raise ModelInputError(f"{part} ({type(get(layer64, part)).__name__}), summed with the mixture {fl.mlp}: not a "
                              "gated MLP without biases, which a shared expert is")
    return out


def _split_adapters(layer64, record: dict[str, Call], fl: Flow, pre: NormSpec | None, post: NormSpec | None,
                    norm_params: dict[str, Param], cfg, model_type: str, name: str) -> list[Adapter]:
    """A branch split over modules (`Flow.chain`): one up map, the activation, one down map, a pre-LN or a
    post-LN after the add."""
    params = dict(norm_params)
    biases = {}
    for canon, path in zip(("up", "down"), fl.maps, strict=True):
        module = get(layer64, path)
        params[f"W_{canon}"] = matrix_param(path, module, record[path])
        biases[canon] = getattr(module, "bias", None) is not None
        if biases[canon]:
            params[f"b_{canon}"] = Param(f"{path}.bias")
    acts = activations(get(layer64, fl.act or fl.maps[0].rpartition(".")[0]), cfg)
    ln = post if fl.mode == "post_ln" else None
    out = []
    for act in acts:
        mspec = MLPSpec(kind="dense", activation=act, bias=Biases(**biases), pre_norm=pre, post_ln=ln,
                        branch_scale=fl.scale)
        spec = BlockSpec(name=name, mlp=mspec, hf_model_types=(model_type,))
        out.append(adapter_for(spec, fl, params))
    return out


def adapter_for(spec: BlockSpec, fl: Flow, params: dict[str, Param]) -> Adapter:
    if fl.chain:  # the chain's modules but its activation are skipped in the factored run: the branch module computes
        return Adapter(spec, fl.mode, fl.chain[0], fl.mlp, params, skip=tuple(p for p in fl.chain if p != fl.act),
                       adds_residual=fl.adds_residual, chain=fl.chain)
    if fl.mode == "parallel":
        return Adapter(spec, "parallel", fl.pre, fl.post or fl.mlp, params, attn_module=fl.attn,
                       skip=(fl.mlp,) if fl.post else ())
    u_module = fl.pre or fl.mlp
    return Adapter(spec, "sequential", u_module, fl.post or fl.mlp, params, skip=(fl.mlp,) if fl.post else (),
                   adds_residual=fl.adds_residual, parts=fl.parts, outer_scale=fl.outer, after_add=fl.after_add)


def user_adapter(spec: BlockSpec, fl: Flow, params: dict[str, str] | None) -> Adapter:
    if not params:
        raise SpecError("a spec for a Hugging Face model needs params={canonical name: parameter path in the layer}")
    from symbolic.spec import patchable_parameters

    allowed = set(patchable_parameters(spec))
    unknown = sorted(set(params) - allowed)
    missing = sorted(allowed - set(params))
    if unknown or missing:
        raise SpecError(f"params: unknown canonical names {unknown}, missing {missing}; the spec's names: "
                        f"{', '.join(sorted(allowed))}")
    layouts = {}
    for canon, where in params.items():
        path, _, layout = where.partition(":")
        layouts[canon] = Param(path, layout or "linear")
    return adapter_for(spec, fl, layouts)
