"""Every causal-LM model type of the installed transformers, built tiny from its config (no downloads).

`tiny_config` shrinks a type's default config by the names transformers uses for sizes (hidden size,
intermediate sizes, heads, experts, layers, vocabulary), leaving every other option at its default; a
config that cannot be made small (a multimodal composite, a default of billions of parameters) is
reported, not built; a default its own modelling code cannot build is fixed per type (`_fixes`).
`tiny_model` builds the model in a dtype with eager attention and experts (so float64 works), widens
what transformers keeps in float32 for half precision (routers) to that dtype, and perturbs every 1-D
parameter and stacked experts' biases, because norm weights that start at zero (Gemma) or at one would
hide a missing ``1 +`` or a swapped scale, and zero biases a missing bias term. Except the output
head's bias: no layer's part, so nothing it could reveal, it would only add to every logit a term the
context cannot move (0.3 against head outputs of about 0.1 at this width hid roformer's context
effect: its logits moved by 9.3e-4).
"""

from __future__ import annotations

import re
import warnings

import torch

from symbolic.errors import ModelInputError

SIZES = {"hidden_size": 32, "n_embd": 32, "d_model": 32, "n_embed": 32,
         "intermediate_size": 48, "ffn_hidden_size": 48, "n_inner": 48, "ffn_dim": 48, "d_ff": 48,
         "moe_intermediate_size": 16, "shared_expert_intermediate_size": 24, "expert_intermediate_size": 16,
         "num_attention_heads": 4, "n_head": 4, "num_heads": 4, "n_heads": 4,
         "num_key_value_heads": 2, "n_kv_heads": 2, "num_kv_heads": 2, "head_dim": 8,
         "vocab_size": 64, "max_position_embeddings": 128, "n_positions": 128,
         "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
         "num_experts_per_tok": 2, "moe_topk": 2, "n_group": 2, "topk_group": 1,
         "kv_lora_rank": 16, "q_lora_rank": 16, "qk_rope_head_dim": 4, "qk_nope_head_dim": 4, "v_head_dim": 8,
         "sliding_window": 4, "rotary_dim": 4, "first_k_dense_replace": 1,
         "vocab_size_per_layer_input": 64, "hidden_size_per_layer_input": 8, "num_experts_per_token": 2,
         "moe_shared_expert_intermediate_size": 24, "linear_num_heads": 4, "linear_head_dim": 8,
         "unpadded_vocab_size": 64, "shape_vocab_size": 64, "pronunciation_vocab_size": 64, "shape_embed_dim": 8,
         "pronunciation_embed_dim": 8, "index_num_heads": 2}
#: Name endings of sizes `SIZES` does not list by name (`_size_by_name`).
SIZE_SUFFIXES = ("_intermediate_size",)
TOP_K = ("num_experts_per_tok", "moe_topk", "num_experts_per_token")
HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "n_embed")
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
PER_LAYER_LISTS = ("layer_types", "mlp_layer_types", "layers_block_type")
#: A state-space mixer's sizes (Mamba, Mamba-2 and the hybrids): its state, and heads whose product with their
#: width must equal the mixer's inner width (`_mamba_sizes`).
MAMBA_SIZES = {"mamba_d_state": 16, "ssm_state_size": 16, "state_size": 16, "n_groups": 2}
MAMBA_STATE = ("mamba_d_state", "ssm_state_size", "state_size")  # a config with one of these has a Mamba mixer
MAMBA_HEADS = (("mamba_n_heads", "mamba_d_head"), ("mamba_num_heads", "mamba_head_dim"),
               ("n_mamba_heads", "mamba_headdim"), ("num_heads", "head_dim"))
MAMBA_HEADS_SMALL = 4
#: Layer kinds a family has but its default config leaves out (the real checkpoints have them): Bamba's and
#: Granite 4's defaults are all Mamba layers, LFM2's all attention.
KINDS_THE_DEFAULTS_LEAVE_OUT = {
    "bamba": {"num_hidden_layers": 2, "attn_layer_indices": [1]},
    "granitemoehybrid": {"num_hidden_layers": 2, "layer_types": ["mamba", "attention"]},
    "lfm2": {"num_hidden_layers": 2, "layer_types": ["conv", "full_attention"]},
}
MAX_PARAMETERS = 3_000_000
#: Types whose forward transformers itself cannot run in float64 (code written for half and single precision):
#: xglm floors its attention scores with ``torch.full((), finfo(dtype).min)`` in the default dtype, float32,
#: which float64's minimum overflows; inkling2's router casts its input to float32 against a weight in the
#: model's dtype. Their float64 tiny models run every forward under `numeric.hf.probe.Float64Mode`; so does any
#: other whose float64 forward fails (`_runs`: inkling2_loop_text's router).
WIDENED_FORWARD = ("xglm", "inkling2_text")


VOCAB = 64


def _fixes(model_type: str, layers: int) -> dict:
    """Options a type's default config gets wrong for a small model: lists per layer derived from a default
    of their own (not from the layer count), sizes inside nested sub-configs, and defaults its own modelling
    code cannot build (each a gap in transformers' defaults, not a choice of architecture)."""
    if model_type == "gpt_neo":  # attention_types expands to one entry per layer
        return {"attention_types": [[["global"], layers]]}
    if model_type == "dbrx":  # sizes live in two sub-configs; DbrxAttention reads attn_config.rope_theta,
        # which DbrxAttentionConfig does not declare (the rotary embedding uses rope_parameters), and clamps
        # q, k, v with clip_qkv, whose default None torch.clamp refuses (DBRX's checkpoints use 8)
        return {"attn_config": {"kv_n_heads": SIZES["num_key_value_heads"], "rope_theta": 10000.0, "clip_qkv": 8.0},
                "ffn_config": {"ffn_hidden_size": SIZES["moe_intermediate_size"], "moe_top_k": 2}}
    if model_type == "dots1":  # the shared expert's width is moe_intermediate_size * n_shared_experts (None)
        return {"n_shared_experts": 1}
    if model_type == "lfm2_moe":  # layer_types defaults to None, which the model indexes; one dense layer
        return {"layer_types": ["conv", "full_attention"] * (layers // 2) + ["conv"] * (layers % 2),
                "num_dense_layers": 1}
    if model_type == "qwen4_exp_text":  # the QSA indexer of its indexed-attention layers has no default sizes
        return {"indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": 8, "indexer_budget": 4,
                "indexer_compress_ratio": 2}
    if model_type == "gemma3n_text":  # activation sparsity 0.95 keeps 5% of the hidden units: 48 would often keep
        return {"intermediate_size": [256] * layers}  # none (a_C = 0, nothing to patch); 16384 in the real model
    if model_type == "kolibri1_1":  # NVFP4 rounding of keys and values needs head_dim a multiple of 16
        return {"head_dim": 16}
    if model_type == "cohere_compass_text":  # rope is per layer type, and its default is empty
        return {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 10000.0,
                                                       "mrope_section": [2, 1, 1]}}}  # head_dim 8: 4 pairs
    return {}


def causal_lm_types() -> list[str]:
    """Every model type transformers maps to a causal-LM class, sorted."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def tiny_config(model_type: str, layers: int = 2, decoder: bool = True):
    """The type's default config with small sizes (see `SIZES`), ``layers`` layers (more where the family has
    more kinds of layer: every kind of its default stack is kept, `numeric.hf.zoo_layers`), special ids inside
    the vocabulary and no end-of-sequence token (generation must not stop early). ``decoder``: an encoder
    family's causal-LM head needs ``is_decoder`` (causal attention). A composite config (a text model inside a
    multimodal one) has its sub-configs shrunk the same way."""
    from transformers import AutoConfig

    try:
        base = AutoConfig.for_model(model_type, **KINDS_THE_DEFAULTS_LEAVE_OUT.get(model_type, {}))
    except Exception as exc:  # noqa: BLE001
        raise ModelInputError(f"model type {model_type!r}: transformers cannot build its own default config (its "
                              f"{_refuser(exc)} refuses it), so no tiny model is built") from exc
    import numeric.hf.zoo_layers as zoo_layers

    want, best = set(zoo_layers.kinds(base)), None
    for how in zoo_layers.SELECTIONS:  # the first layer of every kind; else a prefix holding every kind
        cfg = _built_config(model_type, base, layers, how, decoder)
        if want <= set(zoo_layers.kinds(cfg)):
            return cfg
        best = best or cfg
    return best


def _built_config(model_type: str, base, layers: int, how: str, decoder: bool):
    """The small config of one layer selection; where transformers refuses the zoo's top-k, with the family's own
    experts per token (a validator that allows one: ZAYA)."""
    from transformers import AutoConfig

    for own_top_k in (False, True):
        kwargs = _small(base, layers, how, own_top_k=own_top_k)
        kwargs.update(bos_token_id=0, pad_token_id=0, eos_token_id=None)
        if decoder and not getattr(base, "is_encoder_decoder", False):
            kwargs["is_decoder"] = True
        try:
            return AutoConfig.for_model(model_type, **kwargs)
        except Exception as exc:  # noqa: BLE001 - transformers' validators raise many kinds
            refused = exc
    raise ModelInputError(f"model type {model_type!r}: its config's {_refuser(refused)} refuses the small sizes "
                          "the zoo gives it") from refused


_MISSING = object()


def _small(base, layers: int, how: str = "first", depth: int = 0, widths: set | None = None,
           own_top_k: bool = False) -> dict:
    """The keyword arguments that shrink ``base``: the sizes transformers names, the layer count and the
    fields that declare each layer's kind (`zoo_layers.plan`), the sub-configs of a composite one."""
    import numeric.hf.zoo_layers as zoo_layers

    cls = type(base)

    def settable(key):  # a field of the config (None included), not a property, not a per-layer list
        v = zoo_layers._get(base, key, _MISSING)
        return v is not _MISSING and not isinstance(getattr(cls, key, None), property) and \
            not isinstance(v, (list, dict))

    kwargs = {k: v for k, v in SIZES.items() if settable(k)}
    kwargs.update({k: _size_by_name(k) for k in vars(base) if k not in kwargs and k.endswith(SIZE_SUFFIXES)
                   and settable(k) and _int(zoo_layers._get(base, k))})
    for key in TOP_K if own_top_k else ():  # the family's own experts per token (ZAYA's validator allows one)
        if key in kwargs and _int(zoo_layers._get(base, key)) and zoo_layers._get(base, key) >= 1:
            kwargs[key] = min(kwargs[key], zoo_layers._get(base, key))
    widths = _hidden_widths(base) if widths is None else widths
    # a width equal to a hidden size of the config or of a sub-config (an adapter's input or output) stays equal
    kwargs.update({k: SIZES["hidden_size"] for k in vars(base) if k not in kwargs and k.endswith(("_dim", "_size"))
                   and settable(k) and _int(zoo_layers._get(base, k)) and zoo_layers._get(base, k) in widths})
    if "qk_rope_head_dim" in kwargs:  # multi-head latent attention: head_dim is the rope part, no grouped keys
        if "head_dim" in kwargs:
            kwargs["head_dim"] = kwargs["qk_rope_head_dim"]
        for key in ("num_key_value_heads", "n_kv_heads", "num_kv_heads"):
            if key in kwargs:
                kwargs[key] = SIZES["num_attention_heads"]
    kwargs.update(_mamba_sizes(base, kwargs))
    heads, kv = (zoo_layers._get(base, k) for k in ("num_attention_heads", "num_key_value_heads"))
    if zoo_layers.overrides(base) and heads == kv and "num_key_value_heads" in kwargs:
        kwargs["num_key_value_heads"] = kwargs["num_attention_heads"]  # per-layer heads: keys as many as queries
    layer_plan = zoo_layers.plan(base, how)
    count = layers if layer_plan is None else len(layer_plan.layers)
    for key in zoo_layers.LAYER_KEYS:
        if settable(key):
            kwargs[key] = count
    if layer_plan is not None:
        kwargs.update(_shrunk_fields(base, layer_plan.fields, kwargs))
    for key in PER_LAYER_LISTS:  # per-layer lists of a family without kinds: the default for the new count
        if key not in kwargs and isinstance(vars(base).get(key), list) and not zoo_layers._is_property(base, key):
            kwargs[key] = None
    fixes = _fixes(base.model_type, count)
    subs = _sub_configs(base) if depth < 2 else {}
    kwargs.update({k: v for k, v in fixes.items() if k not in subs})
    for key, sub in subs.items():  # a sub-config shrunk the same way, the type's fixes of it on top
        own = fixes.get(key) if isinstance(fixes.get(key), dict) else {}
        try:
            kwargs[key] = type(sub)(**{**sub.to_dict(), **_small(sub, layers, how, depth + 1, widths), **own})
        except Exception as exc:  # noqa: BLE001 - transformers' validators raise many kinds
            raise ModelInputError(f"model type {base.model_type!r}: its sub-config {key}'s {_refuser(exc)} refuses "
                                  "the small sizes the zoo gives it") from exc
    return kwargs


def _size_by_name(key: str) -> int:
    """A size transformers names by a suffix only (``first_dense_intermediate_size``,
    ``shared_intermediate_size``): an expert's or a shared MLP's width as `SIZES` gives those, a dense one's
    as the dense MLP's."""
    small = any(word in key for word in ("moe", "expert", "shared"))
    return SIZES["shared_expert_intermediate_size" if "shared" in key else "moe_intermediate_size"] if small \
        else SIZES["intermediate_size"]


def _refuser(exc: BaseException) -> str:
    """What in transformers refused a config: its validator by name (``validate_architecture``), else the
    exception's kind (the text stays in the exception chain, not in the refusal)."""
    found = re.search(r"validator '(\w+)'", str(exc))
    return f"validator {found.group(1)}" if found else f"constructor ({type(exc).__name__})"


def _hidden_widths(base) -> set[int]:
    """The hidden sizes of a config and of its sub-configs (all become ``SIZES["hidden_size"]``)."""
    import numeric.hf.zoo_layers as zoo_layers

    configs = [base, *_sub_configs(base).values()]
    return {v for c in configs for k in HIDDEN_KEYS if _int(v := zoo_layers._get(c, k))}


def _shrunk_fields(base, fields: dict, small: dict) -> dict:
    """A plan's fields with the sizes inside them small: per-layer size lists (Gemma 3n's intermediate_size)
    and per-layer overrides (Gemma 4's full-attention head_dim), keeping an override's ratio to the global
    value."""

    out = {}
    for key, value in fields.items():
        if key in SIZES and isinstance(value, list):
            value = [SIZES[key]] * len(value)
        elif key == "per_layer_config":
            value = {i: _shrunk_override(base, o, small) for i, o in value.items()}
        out[key] = value
    return out


def _shrunk_override(base, override: dict, small: dict) -> dict:
    """One layer's overrides with their sizes shrunk (`_ratio`); as many key heads as query heads where the
    override has them equal; a head dimension that is the sum of its nope and rope parts kept the sum of the
    shrunk parts (``small``: the shrunk global sizes, for the parts the override leaves to them)."""
    import numeric.hf.zoo_layers as zoo_layers

    out = {k: _ratio(k, v, zoo_layers._get(base, k)) for k, v in override.items()}
    if "num_key_value_heads" in out and override.get("num_key_value_heads") == override.get("num_attention_heads"):
        out["num_key_value_heads"] = out["num_attention_heads"]
    dims = ("head_dim", "qk_nope_head_dim", "qk_rope_head_dim")
    before = [override.get(k, zoo_layers._get(base, k)) for k in dims]  # the layer's own, else the global one
    after = [out.get(k, small.get(k)) for k in dims]
    if all(_int(v) for v in before + after) and before[0] == before[1] + before[2]:
        out["head_dim"] = after[1] + after[2]  # a latent head made of its nope and rope parts stays so
    return out


def _ratio(key: str, value, default):
    if key not in SIZES or not isinstance(value, int) or not isinstance(default, int) or default <= 0:
        return value
    return SIZES[key] * max(1, round(value / default))


def _sub_configs(base) -> dict:
    """The sub-configs of a composite config (text, vision, audio...), by field."""
    from transformers import PretrainedConfig

    return {k: v for k, v in vars(base).items() if isinstance(v, PretrainedConfig) and not k.startswith("_")}


def _mamba_sizes(base, kwargs: dict) -> dict:
    """A state-space mixer fitted to the small width: its heads times their width equal its inner width
    (``expand`` times the hidden size), its state small."""
    import numeric.hf.zoo_layers as zoo_layers

    if not any(_int(zoo_layers._get(base, k)) for k in MAMBA_STATE):
        return {}
    hidden = kwargs.get("hidden_size") or kwargs.get("d_model")
    expand = zoo_layers._get(base, "mamba_expand") or zoo_layers._get(base, "expand")
    out = {k: v for k, v in MAMBA_SIZES.items() if _int(zoo_layers._get(base, k))}
    if not _int(hidden) or not isinstance(expand, (int, float)) or isinstance(expand, bool):
        return out
    inner = int(expand * hidden)
    for heads, width in MAMBA_HEADS:  # the first pair the config has (attention's num_heads only in Mamba-2)
        if _int(zoo_layers._get(base, heads)) and _int(zoo_layers._get(base, width)):
            out[heads], out[width] = MAMBA_HEADS_SMALL, inner // MAMBA_HEADS_SMALL
            break
    if _int(zoo_layers._get(base, "mamba_d_ssm")):
        out["mamba_d_ssm"] = inner
    return out


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def tiny_model(model_type: str, layers: int = 2, dtype: torch.dtype = torch.float64, seed: int = 0,
               encoder: bool = False):
    """A small random model of `model_type`; a `ModelInputError` when its config cannot be made small."""
    from transformers import AutoModel, AutoModelForCausalLM

    cfg = tiny_config(model_type, layers, decoder=not encoder)
    cls = AutoModel if encoder else AutoModelForCausalLM
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        size = sum(p.numel() for p in _built(model_type, lambda: cls.from_config(cfg)).parameters())
    if size > MAX_PARAMETERS:
        raise ModelInputError(f"model type {model_type!r}: its config could not be made small ({size:,} parameters "
                              "with the sizes transformers names; a composite or multimodal config)")
    torch.manual_seed(seed)
    model = _built(model_type, lambda: cls.from_config(cfg, dtype=dtype, attn_implementation="eager",
                                                       experts_implementation="eager")).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    head = getattr(model.get_output_embeddings(), "bias", None) if hasattr(model, "get_output_embeddings") else None
    with torch.no_grad():
        for p in model.state_dict(keep_vars=True).values():  # parameters and persistent buffers
            if p.is_floating_point() and torch.finfo(p.dtype).bits < torch.finfo(dtype).bits:
                p.data = p.data.to(dtype)  # kept in float32 for half precision (routers): widened
        for name, p in model.named_parameters():
            stacked_bias = p.dim() > 1 and name.endswith("_proj_bias")  # experts' (E, n) biases, zeros at init
            noise = 0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64) if p.dim() == 1 or stacked_bias \
                else None
            if noise is not None and p is not head:
                p.add_(noise.to(p.dtype))
    if dtype == torch.float64 and (model_type in WIDENED_FORWARD or not _runs(model)):
        _widen_forward(model)
    return model


@torch.no_grad()
def _runs(model) -> bool:
    """Whether the model's own forward runs on two token ids (a float64 model whose code casts to float32 against
    a float64 weight does not: it is widened like `WIDENED_FORWARD`, and refused later by name if it still fails)."""
    try:
        model(torch.ones(1, 2, dtype=torch.long))
    except Exception:  # noqa: BLE001 - transformers' modelling code raises many kinds
        return False
    return True


def _built(model_type: str, build):
    """``build()``; an exception inside transformers' own code becomes a `ModelInputError` naming the type (the
    exception kept as the cause): an optional dependency it imports (timm), a sub-model it cannot build."""
    try:
        return build()
    except ImportError as exc:
        raise ModelInputError(f"model type {model_type!r}: transformers needs the package {exc.name or 'named in'} "
                              "its error to build it, which ctxpatch does not install") from exc
    except Exception as exc:  # noqa: BLE001 - transformers' modelling code raises many kinds
        raise ModelInputError(f"model type {model_type!r}: transformers' own code raised {type(exc).__name__} "
                              "building the tiny model from its config") from exc


def _widen_forward(model) -> None:
    """Every forward of the model (and of its trunk, run alone for passes without logits) under a
    `Float64Mode`: float32 casts and float tensors created in the default dtype become float64."""
    from numeric.hf.probe import Float64Mode

    modes = []

    def enter(_module, _args):
        modes.append(Float64Mode())
        modes[-1].__enter__()

    def leave(_module, _args, _out):
        modes.pop().__exit__(None, None, None)

    for module in dict.fromkeys([model, getattr(model, "base_model", model)]):
        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave, always_call=True)
