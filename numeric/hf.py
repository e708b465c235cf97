r"""Hugging Face transformers models: absorb a context into per-token, per-layer MLP patches.

`absorb_context(model, context_ids, query_ids) -> PatchSet` (DESIGN.md): the contextual run feeds
``[context; query]`` and records, at every layer, the residual stream $u_C$ that the MLP branch is
added to, at the query positions. The query is then run alone (positions from 0, or each token
alone at its absolute position with ``keep_positions=True``, the paper's reduced run); at every
layer a hook reads the actual patched state $u$ below it, computes the patches of every query
token at once with the generated torch kernel (`block_patches`), and replaces the MLP branch by the
kernel's patched sub-block (`apply`, factored: no dense weight per token). That is the
self-correcting layer-by-layer algorithm of arXiv:2511.17864 (Algorithm 1), in one forward pass.

An `Adapter` per model family declares which catalog spec its layers are, where the layers and
the MLP-side modules live, and how the canonical parameters (`W_gate`, `experts.W_down`, ...) map
onto the model's parameters (stored transposed for GPT-2's Conv1D, fused gate/up rows, stacked
expert tensors). Sizes, eps, activation and MoE routing options come from the model's config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from numeric import kernels
from symbolic import catalog
from symbolic.errors import PatchConditionError, SpecError
from symbolic.spec import BlockSpec, MoESpec

HF_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu"}


@dataclass(frozen=True)
class Param:
    """Where a canonical parameter lives in a layer: a path, and how it is stored.

    ``layout``: ``linear`` (out, in) as the canonical matrix; ``conv1d`` (in, out), GPT-2;
    ``rows0``/``rows1``: the first/second half of the rows of a fused matrix (gate_up), per expert
    when the tensor is stacked (E, out, in); ``vector`` a 1-D parameter; ``row`` a (1, d) matrix used
    as a vector (a shared-expert gate).
    """

    path: str
    layout: str = "linear"

    def read(self, layer) -> torch.Tensor:
        t = _get(layer, self.path).detach()
        if self.layout == "conv1d":
            return t.T
        if self.layout in ("rows0", "rows1"):
            half = t.shape[-2] // 2
            return t[..., :half, :] if self.layout == "rows0" else t[..., half:, :]
        if self.layout == "row":
            return t[0]
        return t


@dataclass(frozen=True)
class Adapter:
    """How one transformers family maps onto a catalog spec.

    ``mode`` says how the MLP branch meets the residual stream:
    ``sequential``: u is the input of ``u_module``; the output of ``branch_module`` is added to u.
    ``parallel``: x (the layer input) is the input of ``u_module`` (the MLP's pre-norm), the
    attention output is the output of ``attn_module``, u = x + attention; ``branch_module``'s output
    is added to both. ``post_ln``: u is the input of ``u_module``; ``branch_module`` returns the
    sub-block's output y itself (BERT's output LayerNorm after the add).
    """

    arch: str
    mode: str
    u_module: str
    branch_module: str
    params: dict[str, Param]
    layers: str = "model.layers"
    attn_module: str = ""
    skip: tuple[str, ...] = ()  # modules before the branch module that the patched run does not need
    encoder: bool = False
    config_check: Callable[[object], str] | None = None


def _linear(**paths: str) -> dict[str, Param]:
    return {canon.replace("__", "."): Param(path) for canon, path in paths.items()}


_GATED = _linear(W_gate="mlp.gate_proj.weight", W_up="mlp.up_proj.weight", W_down="mlp.down_proj.weight")
_LLAMA = Adapter("llama", "sequential", "post_attention_layernorm", "mlp",
                 {**_GATED, **_linear(mlp_pre_norm__scale="post_attention_layernorm.weight")})
_SANDWICH = {**_GATED, **_linear(mlp_pre_norm__scale="pre_feedforward_layernorm.weight",
                                 mlp_post_norm__scale="post_feedforward_layernorm.weight")}
_EXPERTS = {"experts.W_gate": Param("mlp.experts.gate_up_proj", "rows0"),
            "experts.W_up": Param("mlp.experts.gate_up_proj", "rows1"),
            "experts.W_down": Param("mlp.experts.down_proj"), "W_router": Param("mlp.gate.weight"),
            "mlp_pre_norm.scale": Param("post_attention_layernorm.weight")}


def _falcon_check(cfg) -> str:
    ok = cfg.parallel_attn and not cfg.new_decoder_architecture and not cfg.bias
    return "" if ok else "only parallel_attn = True, new_decoder_architecture = False, bias = False is mapped"


def _neox_check(cfg) -> str:
    return "" if cfg.use_parallel_residual else "only use_parallel_residual = True is mapped"


ADAPTERS: dict[str, Adapter] = {
    "llama": _LLAMA,
    "mistral": dataclasses.replace(_LLAMA, arch="mistral"),
    "qwen2": dataclasses.replace(_LLAMA, arch="qwen2"),
    "qwen3": dataclasses.replace(_LLAMA, arch="qwen3"),
    "gemma": dataclasses.replace(_LLAMA, arch="gemma"),
    "gemma2": Adapter("gemma2", "sequential", "pre_feedforward_layernorm", "post_feedforward_layernorm", _SANDWICH,
                      skip=("mlp",)),
    "gemma3_text": Adapter("gemma3", "sequential", "pre_feedforward_layernorm", "post_feedforward_layernorm",
                           _SANDWICH, skip=("mlp",)),
    "olmo2": Adapter("olmo2", "sequential", "mlp", "post_feedforward_layernorm",
                     {**_GATED, **_linear(mlp_post_norm__scale="post_feedforward_layernorm.weight")}, skip=("mlp",)),
    "mixtral": Adapter("mixtral", "sequential", "post_attention_layernorm", "mlp", _EXPERTS),
    "qwen3_moe": Adapter("qwen3_moe", "sequential", "post_attention_layernorm", "mlp", _EXPERTS),
    "olmoe": Adapter("olmoe", "sequential", "post_attention_layernorm", "mlp", _EXPERTS),
    "qwen2_moe": Adapter("qwen2_moe", "sequential", "post_attention_layernorm", "mlp", {
        **_EXPERTS, **_linear(shared__W_gate="mlp.shared_expert.gate_proj.weight",
                              shared__W_up="mlp.shared_expert.up_proj.weight",
                              shared__W_down="mlp.shared_expert.down_proj.weight"),
        "shared.w_gate": Param("mlp.shared_expert_gate.weight", "row")}),
    "gpt2": Adapter("gpt2", "sequential", "ln_2", "mlp", {
        "W_up": Param("mlp.c_fc.weight", "conv1d"), "b_up": Param("mlp.c_fc.bias"),
        "W_down": Param("mlp.c_proj.weight", "conv1d"), "b_down": Param("mlp.c_proj.bias"),
        "mlp_pre_norm.scale": Param("ln_2.weight"), "mlp_pre_norm.bias": Param("ln_2.bias")},
        layers="transformer.h"),
    "gptj": Adapter("gptj", "parallel", "ln_1", "mlp", _linear(
        W_up="mlp.fc_in.weight", b_up="mlp.fc_in.bias", W_down="mlp.fc_out.weight", b_down="mlp.fc_out.bias",
        mlp_pre_norm__scale="ln_1.weight", mlp_pre_norm__bias="ln_1.bias"), layers="transformer.h",
        attn_module="attn"),
    "phi": Adapter("phi", "parallel", "input_layernorm", "mlp", _linear(
        W_up="mlp.fc1.weight", b_up="mlp.fc1.bias", W_down="mlp.fc2.weight", b_down="mlp.fc2.bias",
        mlp_pre_norm__scale="input_layernorm.weight", mlp_pre_norm__bias="input_layernorm.bias"),
        attn_module="self_attn"),
    "falcon": Adapter("falcon", "parallel", "input_layernorm", "mlp", _linear(
        W_up="mlp.dense_h_to_4h.weight", W_down="mlp.dense_4h_to_h.weight",
        mlp_pre_norm__scale="input_layernorm.weight", mlp_pre_norm__bias="input_layernorm.bias"),
        layers="transformer.h", attn_module="self_attention", config_check=_falcon_check),
    "gpt_neox": Adapter("gpt_neox", "parallel", "post_attention_layernorm", "mlp", _linear(
        W_up="mlp.dense_h_to_4h.weight", b_up="mlp.dense_h_to_4h.bias", W_down="mlp.dense_4h_to_h.weight",
        b_down="mlp.dense_4h_to_h.bias", mlp_pre_norm__scale="post_attention_layernorm.weight",
        mlp_pre_norm__bias="post_attention_layernorm.bias"), layers="gpt_neox.layers", attn_module="attention",
        config_check=_neox_check),
    "bert": Adapter("bert", "post_ln", "intermediate", "output", _linear(
        W_up="intermediate.dense.weight", b_up="intermediate.dense.bias", W_down="output.dense.weight",
        b_down="output.dense.bias", post_ln__scale="output.LayerNorm.weight", post_ln__bias="output.LayerNorm.bias"),
        layers="encoder.layer", skip=("intermediate",), encoder=True),
}


def _get(root, path: str):
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def adapter_for(model) -> Adapter:
    model_type = model.config.model_type
    if model_type not in ADAPTERS:
        raise SpecError(f"model type {model_type!r} has no adapter. Allowed: {', '.join(sorted(ADAPTERS))}.")
    adapter = ADAPTERS[model_type]
    problem = adapter.config_check(model.config) if adapter.config_check else ""
    if problem:
        raise SpecError(f"model type {model_type!r}: {problem}.")
    return adapter


def spec_for(model, adapter: Adapter) -> BlockSpec:
    """The family's catalog spec with the config's eps, activation and MoE routing."""
    cfg = model.config
    spec = catalog.load(adapter.arch)
    act_name = next((getattr(cfg, k) for k in ("hidden_activation", "hidden_act", "activation_function", "activation")
                     if getattr(cfg, k, None)), None)
    if act_name not in HF_ACTIVATIONS:
        raise SpecError(f"config activation {act_name!r} is not mapped; allowed: {sorted(HF_ACTIVATIONS)}")
    eps = next(getattr(cfg, k) for k in ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon")
               if getattr(cfg, k, None) is not None)

    def with_eps(n):
        return None if n is None else dataclasses.replace(n, eps=float(eps))

    mlp = dataclasses.replace(spec.mlp, activation=HF_ACTIVATIONS[act_name], pre_norm=with_eps(spec.mlp.pre_norm),
                              post_norm=with_eps(spec.mlp.post_norm), post_ln=with_eps(spec.mlp.post_ln))
    moe = spec.moe
    if moe is not None:
        experts = getattr(cfg, "num_local_experts", None) or cfg.num_experts
        renorm = True if cfg.model_type == "mixtral" else bool(getattr(cfg, "norm_topk_prob", False))
        moe = MoESpec(experts=experts, top_k=cfg.num_experts_per_tok, softmax="before_topk", renormalize=renorm,
                      shared_expert=moe.shared_expert, expert=moe.expert)
    return dataclasses.replace(spec, mlp=mlp, moe=moe)


# --------------------------------------------------------------------------- patch sets


@dataclass
class LayerPatches:
    """Patches of one layer for every query token (DESIGN.md, `PatchSet.layers`)."""

    rank1: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    factored: dict = field(default_factory=dict)  # the kernel's patches, by canonical name


@dataclass
class PatchSet:
    """Per-layer patches of a query; `logits()` runs the query alone with them (factored)."""

    model: object
    query_ids: torch.Tensor
    layers: list[LayerPatches]
    adapter: Adapter
    spec: BlockSpec
    kernel: object
    positions: torch.Tensor | None = None  # keep_positions: each token alone at its absolute position

    def _run(self):
        if self.positions is None:
            with _patched(self.model, self.adapter, self.kernel, lambda n, u, x: self.layers[n].factored):
                return self.model(self.query_ids)
        outs = []
        for j in range(self.query_ids.shape[1]):
            def one(n, u, x, j=j):
                return _slice(self.layers[n].factored, j)

            with _patched(self.model, self.adapter, self.kernel, one):
                outs.append(self.model(self.query_ids[:, j:j + 1], position_ids=self.positions[:, j:j + 1]))
        return outs

    @torch.no_grad()
    def logits(self) -> torch.Tensor:
        """(1, q, vocab): the no-context run with the patches applied."""
        out = self._run()
        return out.logits if not isinstance(out, list) else torch.cat([o.logits for o in out], 1)

    @torch.no_grad()
    def hidden_states(self) -> torch.Tensor:
        """(1, q, d): the last hidden state of the patched no-context run (encoders)."""
        out = self._run()
        if isinstance(out, list):
            return torch.cat([o.last_hidden_state for o in out], 1)
        return out.last_hidden_state


def _slice(patches: dict, j: int) -> dict:
    return {name: {f: v[j:j + 1] for f, v in fields.items()} for name, fields in patches.items()}


def _concat(parts: list[dict]) -> dict:
    return {name: {f: torch.cat([p[name][f] for p in parts]) for f in fields} for name, fields in parts[0].items()}


def layer_params(layer, adapter: Adapter) -> dict[str, torch.Tensor]:
    return {canon: p.read(layer) for canon, p in adapter.params.items()}


def _input_hooks(model, adapter: Adapter, store: dict) -> list:
    """Hooks that store, per layer n, the input of the u module (`store[n]["first"]`) and, for a
    parallel block, the attention output (`store[n]["attn"]`); they do not change the run."""
    handles = []
    for n, layer in enumerate(_get(model, adapter.layers)):
        def grab(_mod, args, n=n):
            store.setdefault(n, {})["first"] = args[0][0].detach()

        def grab_attn(_mod, _args, output, n=n):
            store.setdefault(n, {})["attn"] = (output[0] if isinstance(output, tuple) else output)[0].detach()

        handles.append(_get(layer, adapter.u_module).register_forward_pre_hook(grab))
        if adapter.mode == "parallel":
            handles.append(_get(layer, adapter.attn_module).register_forward_hook(grab_attn))
    return handles


def _base(r: dict, adapter: Adapter) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(u, x) of one layer from what the hooks stored: x + attention and x for a parallel block."""
    if adapter.mode == "parallel":
        return r["first"] + r["attn"], r["first"]
    return r["first"], None


@contextmanager
def _patched(model, adapter: Adapter, kernel, patches_for):
    """Swap every layer's MLP branch for the kernel's patched sub-block (factored patches).

    The branch module's forward is replaced (so the model's own MLP never runs), modules in
    `adapter.skip` become pass-throughs, and the input hooks read u (and x, the attention output, for a
    parallel block). Everything is restored on exit.
    """
    state: dict = {}
    handles, swapped = _input_hooks(model, adapter, state), []
    for n, layer in enumerate(_get(model, adapter.layers)):
        params = layer_params(layer, adapter)

        def branch(*args, n=n, params=params, **kwargs):
            r = state.pop(n)
            u, x = _base(r, adapter)
            extra = {} if x is None else {"x": x}
            y = kernel.apply(params, patches_for(n, u, x), u, **extra)
            out = y if adapter.mode == "post_ln" else y - u
            return out[None].to(r["first"].dtype)

        for path in adapter.skip:
            module = _get(layer, path)
            module.forward = _passthrough
            swapped.append(module)
        module = _get(layer, adapter.branch_module)
        module.forward = branch
        swapped.append(module)
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for module in swapped:
            del module.forward  # back to the class's forward


def _passthrough(hidden, *args, **kwargs):
    return hidden


def contextual_bases(model, adapter: Adapter, ids: torch.Tensor, **kwargs) -> tuple[list[torch.Tensor], object]:
    """u_C of every layer (all positions) and the output of the run with the context."""
    record: dict = {}
    handles = _input_hooks(model, adapter, record)
    try:
        out = model(ids, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return [_base(record[n], adapter)[0] for n in range(len(record))], out


def resolve(model, strategy: str | None = None, input_strategy: str | None = None):
    adapter = adapter_for(model)
    spec = spec_for(model, adapter)
    return adapter, spec, kernels.load(spec, "torch", strategy, input_strategy)


@torch.no_grad()
def absorb_context(model, context_ids: torch.Tensor, query_ids: torch.Tensor, keep_positions: bool = False,
                   strategy: str | None = None, input_strategy: str | None = None,
                   patch_dtype: torch.dtype | None = None) -> PatchSet:
    """Per-token, per-layer patches that make the query-alone run reproduce the run with the context.

    ``keep_positions=True`` runs each query token alone at its absolute position (the paper's
    reduced run); the default runs the query alone from position 0. ``patch_dtype`` computes the
    patches in a wider dtype than the model's (e.g. float32 for a bfloat16 model) and stores them in
    the model's dtype.
    """
    _check_ids(context_ids, query_ids, model)
    adapter, spec, kernel = resolve(model, strategy, input_strategy)
    c, q = context_ids.shape[1], query_ids.shape[1]
    bases, _ = contextual_bases(model, adapter, torch.cat([context_ids, query_ids], 1))
    n_layers = len(_get(model, adapter.layers))
    if not keep_positions:
        stored, _ = _patch_pass(model, adapter, spec, kernel, query_ids, [b[c:] for b in bases],
                                patch_dtype=patch_dtype)
        return PatchSet(model, query_ids, stored, adapter, spec, kernel)
    positions = torch.arange(c, c + q)[None]
    per_token = []
    for j in range(q):
        try:
            per_token.append(_patch_pass(model, adapter, spec, kernel, query_ids[:, j:j + 1],
                                         [b[c + j:c + j + 1] for b in bases], patch_dtype=patch_dtype,
                                         position_ids=positions[:, j:j + 1])[0])
        except PatchConditionError as exc:  # the run held one token: name it by its index in the query
            raise PatchConditionError(exc.condition, [j], exc.layer) from None
    layers = []
    for n in range(n_layers):
        factored = _concat([t[n].factored for t in per_token])
        params = layer_params(_get(model, adapter.layers)[n], adapter)
        layers.append(_layer_patches(adapter, params, spec, factored))
    return PatchSet(model, query_ids, layers, adapter, spec, kernel, positions)


def _patch_pass(model, adapter, spec, kernel, ids, targets, patch_dtype=None, **kwargs) -> list[LayerPatches]:
    layers = _get(model, adapter.layers)
    stored = [LayerPatches() for _ in layers]

    def compute(n, u, x):
        params = layer_params(layers[n], adapter)
        extra = {} if x is None else {"x": x}
        target = targets[n].to(device=u.device, dtype=u.dtype)  # accelerate may place layers on several devices
        if patch_dtype is not None and patch_dtype != u.dtype:  # computed wide, stored in the model's dtype
            wide = {k: v.to(patch_dtype) for k, v in params.items()}
            extra = {k: v.to(patch_dtype) for k, v in extra.items()}
            patches = kernel.block_patches(wide, u.to(patch_dtype), target.to(patch_dtype), layer=str(n), **extra)
            patches = {k: {f: v.to(u.dtype) for f, v in fs.items()} for k, fs in patches.items()}
        else:
            patches = kernel.block_patches(params, u, target, layer=str(n), **extra)
        stored[n] = _layer_patches(adapter, params, spec, patches)
        return patches

    with _patched(model, adapter, kernel, compute):
        out = model(ids, **kwargs)
    return stored, out


@torch.no_grad()
def generate_without_context(model, context_ids: torch.Tensor, query_ids: torch.Tensor, max_new_tokens: int,
                             strategy: str | None = None) -> torch.Tensor:
    """Greedy generation by the model WITHOUT the context, patched afresh for every new token.

    Two key/value caches advance one token per step: the contextual run's (to read $u_C$ of the new
    token at every layer) and the patched run's; the new token's patches depend only on its own
    $u$ and $u_C$, so no earlier token is recomputed and a step costs two one-token passes.
    Returns the generated ids, shape (1, max_new_tokens).
    """
    _check_ids(context_ids, query_ids, model)
    if max_new_tokens < 1:
        raise SpecError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    adapter, spec, kernel = resolve(model, strategy)
    c = context_ids.shape[1]
    bases, out_C = contextual_bases(model, adapter, torch.cat([context_ids, query_ids], 1), use_cache=True)
    _, out_P = _patch_pass(model, adapter, spec, kernel, query_ids, [b[c:] for b in bases], use_cache=True)
    cache_C, cache_P = out_C.past_key_values, out_P.past_key_values
    tokens = []
    for step in range(max_new_tokens):
        nxt = out_P.logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
        tokens.append(nxt)
        if step == max_new_tokens - 1:
            break
        bases, out_C = contextual_bases(model, adapter, nxt, past_key_values=cache_C, use_cache=True)
        _, out_P = _patch_pass(model, adapter, spec, kernel, nxt, bases, past_key_values=cache_P, use_cache=True)
        cache_C, cache_P = out_C.past_key_values, out_P.past_key_values
    return torch.cat(tokens, 1)


def _layer_patches(adapter: Adapter, params: dict, spec: BlockSpec, patches: dict) -> LayerPatches:
    """The kernel's factored patches in the model's own names and storage layouts."""
    out = LayerPatches(factored=patches)
    fused: dict[str, dict[str, tuple]] = {}
    for canon, fields in patches.items():
        p = adapter.params[canon]
        if "left" not in fields:
            out.values[p.path] = _value(spec, canon, params[canon], fields)
        elif p.layout in ("rows0", "rows1"):
            fused.setdefault(p.path, {})[p.layout] = (fields["left"], fields["right"])
        elif canon.startswith("experts."):
            for e in range(fields["left"].shape[1]):
                out.rank1[f"{p.path}[{e}]"] = (fields["left"][:, e], fields["right"][:, e])
        elif p.layout == "conv1d":  # stored (in, out): the transpose of left right^T
            out.rank1[p.path] = (fields["right"], fields["left"])
        else:
            out.rank1[p.path] = (fields["left"], fields["right"])
    for path, halves in fused.items():  # gate and up rows share the right factor z: one rank-1 patch
        (lg, rg), (lu, ru) = halves["rows0"], halves["rows1"]
        if not torch.equal(rg, ru):
            raise SpecError(f"{path}: the gate and up patches have different right factors, so their fused "
                            "matrix gets a rank-2 patch; use the rank1 input strategy")
        for e in range(lg.shape[1]):
            out.rank1[f"{path}[{e}]"] = (torch.cat([lg[:, e], lu[:, e]], -1), rg[:, e])
    return out


def _value(spec: BlockSpec, canon: str, param: torch.Tensor, fields: dict) -> torch.Tensor:
    """The full patched value per token, in the model's parameterization (Gemma stores w, uses 1 + w)."""
    if "delta" in fields:
        return param[None] + fields["delta"]
    one_plus = spec.norms[canon.split(".")[0]].scale == "one_plus"
    return fields["scale"] * (1 + param[None]) - 1 if one_plus else fields["scale"] * param[None]


def _check_ids(context_ids, query_ids, model) -> None:
    for name, ids in (("context_ids", context_ids), ("query_ids", query_ids)):
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] < 1 or \
                ids.dtype not in (torch.int64, torch.int32):
            raise SpecError(f"{name} must be an integer tensor of shape (1, n) with n >= 1, got "
                            f"{getattr(ids, 'shape', type(ids).__name__)} {getattr(ids, 'dtype', '')}")
        if int(ids.min()) < 0 or int(ids.max()) >= model.config.vocab_size:
            raise SpecError(f"{name} holds token ids outside [0, {model.config.vocab_size})")
