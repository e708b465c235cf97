r"""What a Hugging Face model's layers are, inferred: a `Layout` of per-layer `Adapter`\ s and `BlockSpec`\ s.

No table of model families: the layout is read from the model itself.

1. **The decoder layers and their calls** (`numeric.hf.probe`): the list of decoder layers, what each layer
   received and returned in one run on random token ids, re-run in float64 with hooks on every submodule.
2. **The layer's parts** (`numeric.hf.flow`, `numeric.hf.identify`): the MLP branch and how it meets the
   residual stream, the norms around it, its maps, biases, storage and activation: candidate specs.
3. **The mandatory equivalence check** (`numeric.hf.equivalence.check_adapter`): the spec's generated kernel
   must reproduce the layer's own output at every layer, to $10^{-12}$ relative in float64 (or the float32
   bound where the modules compute in float32, reported). Where candidates remain (which input map is the
   gate, MoE routing options), the check picks the one that reproduces the module. Nothing else is accepted:
   a failure names the layer, what differs and the closest spec tried.

A user's spec (``spec=``) with a parameter map (``params={canonical name: path in the layer}``) replaces step
2's spec and map; the check runs all the same. `layout_for` caches the result on the model.
"""

from __future__ import annotations

import dataclasses
import weakref

import torch

from numeric.hf.compat import vocab_size
from numeric.hf.equivalence import check_adapter, product_modules, renorm_epsilon, state_of, u_of
from numeric.hf.flow import flow, layer_adapters, user_adapter
from numeric.hf.identify import NoMLPBranch, find_mlp
from numeric.hf.layout import Adapter, Layout
from numeric.hf.mixing import after_add_mixes, mixes_tokens
from numeric.hf.offload import get
from numeric.hf.probe import decoder_layers, float64_copy, layer_calls, trace
from symbolic import catalog
from symbolic.errors import CtxpatchInputError, ModelInputError, SpecError
from symbolic.spec import BlockSpec

PROBE_TOKENS = 6
MAX_CANDIDATES = 16  # specs tried per layer kind before refusing (each new one costs a derivation)


def layout_for(model, spec: BlockSpec | str | None = None, params: dict[str, str] | None = None) -> Layout:
    """The model's `Layout`: inferred and checked layer by layer (`numeric.hf.infer.infer`), or the user's
    ``spec`` (a catalog name, TOML path or `BlockSpec`) with its parameter map ``params``, checked the same
    way. Cached on the model until its modules change (a swapped module is checked again)."""
    if isinstance(spec, str):
        spec = catalog.resolve(spec)
    key = (spec, tuple(sorted((params or {}).items())), _module_ids(model))
    cached = _LAYOUTS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    layout = infer(model, spec, params)
    _LAYOUTS[model] = (key, layout)
    return layout


_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _module_ids(model) -> tuple:
    """Every module and any forward set on it (not the class's): what a swapped module or forward changes."""
    return tuple((id(m), id(m.__dict__.get("forward"))) for m in model.modules())


def spec_name(model_type: str) -> str:
    name = "".join(ch if ch.isalnum() else "_" for ch in model_type)
    return name if name[:1].isalpha() else "m_" + name


@torch.no_grad()
def infer(model, spec: BlockSpec | None = None, params: dict[str, str] | None = None, seed: int = 0) -> Layout:
    """The model's `Layout`, every layer checked (`check_adapter`). Refused: a `ModelInputError` for a model whose
    structure no spec reproduces, a `SpecError` where the user's ``spec`` does not reproduce it."""
    cfg = model.config
    model_type = cfg.model_type
    path = decoder_layers(model)
    vocab = vocab_size(cfg)
    if vocab < 2:
        raise ModelInputError(f"model type {model_type!r}: no vocabulary size in the config")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (1, PROBE_TOKENS), generator=gen)
    device = next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
    calls = layer_calls(model, path, ids.to(device))
    layers = get(model, path)
    kinds, checks, seen = [], [], {}
    for n, call in enumerate(calls):
        layer64 = float64_copy(layers[n])
        record, x, y = trace(layer64, call, f"{path}.{n}")
        signature = _signature(layers[n])
        fresh = signature not in seen
        if fresh:
            seen[signature] = _candidates(layer64, record, x, y, cfg, spec, params)
        if not seen[signature]:  # no MLP branch: the next MLP layer absorbs what this one changes
            kinds.append(None)
            checks.append({"layer": n, "mlp": False, "mixes_tokens": mixes_tokens(layer64, call)})
            continue
        try:
            cand, result = _chosen(n, path, layer64, record, x, y, seen[signature], spec)
        except CtxpatchInputError:
            if fresh:
                raise
            # the same modules with other constants (an activation's learned ones, Apertus): its own candidates
            seen[signature] = _candidates(layer64, record, x, y, cfg, spec, params)
            cand, result = _chosen(n, path, layer64, record, x, y, seen[signature], spec)
        if cand.after_add and after_add_mixes(layer64, call, state_of(cand, record, x, y)[1]):
            raise ModelInputError(f"layer {n} ({path}.{n}): after the MLP's add the layer reads other tokens' states "
                                  "(a change of the first position's state moves later positions' outputs): only "
                                  "position-wise computation may follow the patched state (theorem after_add)")
        arity = record[cand.branch_module].arity
        if arity != cand.arity:
            cand = dataclasses.replace(cand, arity=arity)
        seen[signature] = [cand] + [c for c in seen[signature] if c is not cand]
        products = product_modules(layer64, cand, u_of(cand, record, x), result["bound"])
        if products != cand.products:
            cand = dataclasses.replace(cand, products=products)
        kinds.append(cand)
        checks.append({"layer": n, **result})
        del layer64
    _reach(kinds, checks, path, model_type, layers)
    kinds = _named(kinds, model_type)
    can_generate = getattr(model, "can_generate", lambda: False)()
    encoder = not (can_generate or getattr(cfg, "is_decoder", False))  # every token sees the later ones
    return Layout(model_type, path, tuple(kinds), encoder=encoder, checks=tuple(checks))


def _candidates(layer64, record, x, y, cfg, spec: BlockSpec | None, params) -> list[Adapter]:
    """The layer's candidate adapters, most likely first; [] for a layer without an MLP branch."""
    try:
        if spec is not None:
            return [user_adapter(spec, flow(layer64, record, x, y, cfg), params)]
        return layer_adapters(layer64, record, x, y, cfg, cfg.model_type, spec_name(cfg.model_type))[1]
    except NoMLPBranch:
        return []
    except ModelInputError:
        streams = _streams(layer64, record, x)
        if streams > 1:
            raise ModelInputError(_several_streams(x, streams)) from None
        raise
    except ValueError as exc:  # a spec the layer's figures would build is invalid (a zero branch scale)
        if isinstance(exc, CtxpatchInputError):
            raise
        raise ModelInputError(f"the layer's MLP branch reads as an invalid block: {exc}") from None


def _chosen(n: int, path: str, layer64, record, x, y, candidates: list[Adapter], spec) -> tuple[Adapter, dict]:
    """The first candidate whose kernel reproduces the layer (`check_adapter`), with its check; refused with the
    closest one otherwise."""
    tried = []
    for cand in candidates[:MAX_CANDIDATES]:
        u = u_of(cand, record, x)
        state = state_of(cand, record, x, y)[0]
        result = check_adapter(layer64, cand, u, x if cand.mode == "parallel" else None, state)
        tried.append((result["error"], cand, result))
        if result["error"] <= result["bound"]:
            return cand, result
    err, cand, result = min(tried, key=lambda t: t[0])
    eps = renorm_epsilon(layer64, cand, record, x) if spec is None else None
    guarded = None if eps is None else _with_renorm_eps(cand, eps)
    if guarded is not None:  # s / (sum s + eps): the closest spec with the epsilon it measured (LFM2-MoE)
        u = u_of(guarded, record, x)
        checked = check_adapter(layer64, guarded, u, x if guarded.mode == "parallel" else None,
                                state_of(guarded, record, x, y)[0])
        if checked["error"] <= checked["bound"]:
            return guarded, checked
        err, cand, result = min([(err, cand, result), (checked["error"], guarded, checked)], key=lambda t: t[0])
    refused = SpecError if spec is not None else ModelInputError  # the user's spec, or the model itself
    raise refused(f"layer {n} ({path}.{n}): no spec reproduces the module's MLP branch; closest: "
                  f"{describe(cand.spec)}, relative error {err:.1e} > {result['bound']:.0e}"
                  + (f" ({result['why']})" if result.get("why") else ""))


def _with_renorm_eps(cand: Adapter, eps: float) -> Adapter | None:
    """`cand` with the top-k renormalisation s / (sum s + eps), eps as measured to three significant digits
    (modules write a round constant, LFM2-MoE's 1e-6; the check decides); None for an epsilon the spec
    language refuses (`symbolic.limits.RENORM_EPS`)."""
    try:
        moe = dataclasses.replace(cand.spec.moe, renormalize_eps=float(f"{eps:.2e}"))
    except SpecError:
        return None
    return dataclasses.replace(cand, spec=dataclasses.replace(cand.spec, moe=moe))


def _reach(kinds: list[Adapter | None], checks: list[dict], path: str, model_type: str, layers) -> None:
    """Refuse a stack the patches cannot make exact at the head: no MLP branch in any layer (Mamba), or a token
    mixer after the last MLP layer (theorem multilayer_mlpless: exact iff none stands there)."""
    patched = [n for n, k in enumerate(kinds) if k is not None]
    if not patched:
        nested = sorted({f"{name} ({type(m).__name__})" for layer in layers for name, m in layer.named_modules()
                         if "." in name and any(k in type(m).__name__ for k in ("MLP", "FeedForward", "Ffn"))})
        raise ModelInputError(f"model type {model_type!r}: no layer of {path} adds an MLP branch to its residual "
                              "stream" + (f" (an MLP nested in a layer, {nested[0]}, feeds the layer's other modules, "
                                          "a token mixer among them, before the residual stream)" if nested else
                                          " (no MLP at all: a state-space or attention-only stack)")
                              + ": the patches act on MLP parameters, and an exact patch needs an MLP whose output "
                              "reaches the residual stream with no token mixer between it and the head (theorem "
                              "multilayer_mlpless: exact iff no token mixer stands between the last MLP layer and "
                              "the head)")
    late = [c["layer"] for c in checks if c["layer"] > patched[-1] and c.get("mixes_tokens")]
    if late:
        raise ModelInputError(f"layer {late[0]} ({path}.{late[0]}) mixes tokens and has no MLP branch, and no MLP "
                              f"layer follows it (the last is layer {patched[-1]}): its output at the query reads "
                              "the query's own history without the context, which no patch of the MLP layers below "
                              "can reach; the output is exact iff no token mixer stands between the last MLP layer "
                              "and the head (theorem multilayer_mlpless)")


def _streams(layer64, record, x: torch.Tensor) -> int:
    """How many residual streams the layer's input holds: its size over that of its MLP's input (one stream's
    tokens), streams side by side (DeepSeek V4: (T, n, d)) or flattened (Qwen4-Exp: (T, n d))."""
    try:
        call = record.get(find_mlp(layer64))
    except ModelInputError:
        call = None
    if call is not None and isinstance(call.inp, torch.Tensor) and call.inp.numel():
        one = call.inp.numel()
    else:
        one = min((c.inp.numel() for c in record.values() if isinstance(c.inp, torch.Tensor) and c.inp.dim() >= 2
                   and c.inp.shape[-1] == x.shape[-1]), default=x.numel())
    return x.numel() // one if x.numel() % one == 0 else 1


def _several_streams(x: torch.Tensor, streams: int) -> str:
    return (f"the layer carries {streams} residual streams (its input {tuple(x.shape)}: hyper-connections), "
            "collapsed before the MLP and its output expanded back along weights computed from the token's own "
            "streams: an exact patch of the MLP's parameters (its stream weights' generator included) needs the "
            "attention's expansion weights, mixed by the MLP's stream mixing, collinear with the MLP's expansion "
            "weights (H_C h_attn parallel to h_mlp, theorem several_streams), which does not hold for n > 1 "
            "streams in general: refused")


def _named(kinds: list[Adapter | None], model_type: str) -> list[Adapter | None]:
    """Distinct specs get distinct names (``<type>``, ``<type>_k1``, ...) so kernels do not collide."""
    distinct = list(dict.fromkeys(k.spec for k in kinds if k is not None))
    if len(distinct) <= 1:
        return kinds
    rename = {s: dataclasses.replace(s, name=f"{s.name}_k{i}" if i else s.name) for i, s in enumerate(distinct)}
    return [None if k is None else dataclasses.replace(k, spec=rename[k.spec]) for k in kinds]


def _signature(layer) -> tuple:
    return tuple((n, type(m).__name__, tuple((k, tuple(p.shape)) for k, p in m.named_parameters(recurse=False)))
                 for n, m in layer.named_modules())


def describe(spec: BlockSpec) -> str:
    m = spec.mlp
    parts = [spec.residual, m.kind, m.activation]
    if m.post_ln:
        parts.append(f"post-LN {m.post_ln.kind}/{m.post_ln.scale} after the add")
    if m.pre_norm:
        parts.append(f"pre {m.pre_norm.kind}/{m.pre_norm.scale}")
    if m.post_norm:
        parts.append(f"post {m.post_norm.kind}/{m.post_norm.scale}")
    b = [k for k in ("gate", "up", "down") if getattr(m.bias, k)]
    if b:
        parts.append("bias " + "+".join(b))
    if m.branch_scale != 1.0:
        parts.append(f"branch x{m.branch_scale:g}")
    if spec.moe:
        e = spec.moe
        parts.append(f"moe E={e.experts} k={e.top_k} {e.scoring} {e.softmax}{' renorm' if e.renormalize else ''}"
                     f"{f' (+{e.renormalize_eps:g})' if e.renormalize_eps else ''}"
                     f"{f' jitter {e.jitter_eps:g}' if e.jitter_eps else ''}"
                     f"{' select-bias' if e.selection_bias else ''}{' router-bias' if e.router_bias else ''}"
                     f"{f' groups {e.topk_groups}/{e.groups}' if e.groups > 1 else ''}"
                     f"{f' scale {e.routed_scale:g}' if e.routed_scale != 1 else ''} shared={e.shared_expert}")
    return ", ".join(parts)
