"""transformers' own calling conventions, in one place: checked token ids, key/value caches, last logits.

The keyword a model's forward takes for its key/value cache, and the field its output returns it in, changed
between transformers releases (``past_key_values`` before 5.24, ``cache`` since); every cached pass of the
project goes through `cached` and `kv_cache`.
"""

from __future__ import annotations

import inspect

import torch

from symbolic.errors import ModelInputError


def check_ids(context_ids, query_ids, model) -> None:
    """Refuse ids that are not (1, n >= 1) integer tensors inside the model's vocabulary."""
    for name, ids in (("context_ids", context_ids), ("query_ids", query_ids)):
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] < 1 or \
                ids.dtype not in (torch.int64, torch.int32):
            raise ModelInputError(f"{name} must be an integer tensor of shape (1, n) with n >= 1, got "
                                  f"{getattr(ids, 'shape', type(ids).__name__)} {getattr(ids, 'dtype', '')}")
        vocab = vocab_size(model.config)
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ModelInputError(f"{name} holds token ids outside [0, {vocab})")


def vocab_size(cfg) -> int:
    """The vocabulary size of a config, or of its text model's (a multimodal composite: Gemma 3, Llama 4)."""
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(getattr(cfg, "vocab_size", None) or getattr(text, "vocab_size", 0) or 0)


def cached(model, cache) -> dict:
    """Keyword arguments that run `model` on a key/value cache (None: a new one) and return it extended
    (`kv_cache`): ``cache=`` since transformers 5.24, ``past_key_values=`` before (read from the signature of
    the model's forward)."""

    keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {keyword: cache, "use_cache": True}


def kv_cache(out, model):
    """The key/value cache of a run with ``use_cache=True`` (`cached`); a `ModelInputError` for a model that keeps
    none (GPT-1). The output's field is ``cache`` since transformers 5.24, ``past_key_values`` before."""
    fields = getattr(out, "__dataclass_fields__", {})
    cache = getattr(out, "cache" if "cache" in fields else "past_key_values", None)
    if cache is None:
        raise ModelInputError(f"model type {model.config.model_type!r} returns no key/value cache: the token-by-token "
                              "runs (materialized patches, generation) need one; the factored logits do not")
    return cache


def last_logits_only(model) -> dict:
    """Ask a causal LM for the last position's logits only (the contextual pass needs the states)."""

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
