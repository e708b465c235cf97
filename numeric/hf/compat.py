"""transformers' own calling conventions, in one place: checked models and token ids, key/value caches, logits.

The keyword a model's forward takes for its key/value cache, and the field its output returns it in, changed
between transformers releases (``past_key_values`` before 5.24, ``cache`` since); every cached pass of the
project goes through `cached` and `kv_cache`.
"""

from __future__ import annotations

import copy
import inspect
import weakref

import torch

from symbolic.errors import ModelInputError

#: The dtypes a model may compute in: the patches' arithmetic and bounds are stated for these
#: (`numeric.hf.bounds.logit_bound`).
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


#: Kernels transformers may run stacked experts by that take no float64 (``torch._grouped_mm``: float32, bfloat16
#: and float16 only); a float64 model needs ``experts_implementation="eager"``.
NO_FLOAT64_EXPERTS = ("grouped_mm",)

DROPOUT = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.AlphaDropout,
           torch.nn.FeatureAlphaDropout)


def check_model(model, logits: bool = False) -> None:
    """Refuse what is not a transformers model the patches can be computed for, naming why: another kind of
    object or module (no ``config`` with a vocabulary), a model whose outputs are not per-token (a sequence
    classifier: a head that is not the language-model head; ``logits``: the caller needs per-token logits, so
    a base model without its head is refused too), a model in training mode (``model.train()``, or a dropout
    module left training: every run would be random, the patches would fit one draw), a dtype outside
    `DTYPES`."""
    config = getattr(model, "config", None)
    if not isinstance(model, torch.nn.Module) or getattr(config, "vocab_size", None) is None:
        raise ModelInputError(f"the model must be a transformers model with a vocabulary (a torch.nn.Module with a "
                              f".config, e.g. AutoModelForCausalLM.from_pretrained(...)); got "
                              f"{type(model).__module__}.{type(model).__name__}")
    head = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
    base = getattr(model, "base_model", model) is model
    if head is None and (logits or not base):
        what = "a base model without its language-model head" if base else "not a language model"
        raise ModelInputError(f"{type(model).__name__} is {what}: its outputs are not per-token logits"
                              f"{'' if base else ' (a head that is not the language-model head)'}; pass the causal "
                              "LM, e.g. AutoModelForCausalLM.from_pretrained(...)"
                              f"{'' if logits else ', or its base model (model.model) for the hidden states'}")
    training = [name for name, m in model.named_modules() if m.training and isinstance(m, DROPOUT) and m.p > 0]
    if model.training or training:
        where = f" (dropout active at {', '.join(training[:3])}{', ...' if len(training) > 3 else ''})" \
            if training else ""
        raise ModelInputError(f"the model is in training mode{where}: dropout and other training-time behaviour make "
                              "every run random, so no patch can reproduce the run with the context; call "
                              "model.eval() first")
    dtype = model_dtype(model)
    if dtype not in DTYPES:
        raise ModelInputError(f"the model computes in {dtype}; allowed: "
                              f"{', '.join(str(d).removeprefix('torch.') for d in DTYPES)}")
    kernel = getattr(config, "_experts_implementation", None)
    if kernel in NO_FLOAT64_EXPERTS and dtype == torch.float64:
        raise ModelInputError(f"the model's stacked experts run by transformers' {kernel!r} kernel, which takes no "
                              "float64, so the model's own forward cannot run in float64; build or load it with "
                              "experts_implementation='eager' (from_config / from_pretrained), or use float32")


def model_dtype(model) -> torch.dtype:
    """The dtype the model computes in: its floating-point parameters' (transformers' ``model.dtype``), else
    its first parameter's (which `check_model` then refuses)."""
    params = list(model.parameters())
    return next((p.dtype for p in params if p.is_floating_point()), params[0].dtype if params else torch.float32)


def position_limit(model) -> int | None:
    """How many positions the model can run: ``max_position_embeddings`` where it holds a learned table of
    absolute positions (GPT-2's ``wpe``, OPT, BERT: an embedding other than the input one with at least that
    many rows), past which its embedding fails; None where positions are computed (rotary, ALiBi)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return None
    inputs = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m is not inputs
              and m.num_embeddings >= limit]
    return limit if tables else None


def check_ids(context_ids, query_ids, model, later: int = 0, logits: bool = False) -> None:
    """Refuse a model `check_model` refuses (``logits``: the caller needs per-token logits), ids that are not
    (1, n >= 1) integer tensors inside the model's vocabulary, and a run longer than the model's positions
    (`position_limit`; ``later``: tokens a generation adds). Decides `explicit_step_positions` while the model
    runs as it is (no hook or patch of a later stage in it)."""
    check_model(model, logits)
    explicit_step_positions(model)
    for name, ids in (("context_ids", context_ids), ("query_ids", query_ids)):
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] < 1 or \
                ids.dtype not in (torch.int64, torch.int32):
            raise ModelInputError(f"{name} must be an integer tensor of shape (1, n) with n >= 1, got "
                                  f"{getattr(ids, 'shape', type(ids).__name__)} {getattr(ids, 'dtype', '')}")
        vocab = vocab_size(model.config)
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ModelInputError(f"{name} holds token ids outside [0, {vocab})")
    limit, total = position_limit(model), context_ids.shape[1] + query_ids.shape[1] + later
    if limit is not None and total > limit:
        raise ModelInputError(f"the run needs {total} positions (context {context_ids.shape[1]} + query "
                              f"{query_ids.shape[1]}{f' + {later} generated' if later else ''}), more than the "
                              f"{limit} the model's position table holds (max_position_embeddings); shorten them")


def vocab_size(cfg) -> int:
    """The vocabulary size of a config, or of its text model's (a multimodal composite: Gemma 3, Llama 4)."""
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(getattr(cfg, "vocab_size", None) or getattr(text, "vocab_size", 0) or 0)


def cached(model, cache, position: int | None = None, tokens: int = 1) -> dict:
    """Keyword arguments that run `model` on a key/value cache (None: a new one) and return it extended
    (`kv_cache`): ``cache=`` since transformers 5.24, ``past_key_values=`` before (read from the signature of
    the model's forward). ``position``: where the run's ``tokens`` new tokens stand in the sequence; passed as
    ``position_ids`` only to a model whose own cached step does not count them from its past
    (`explicit_step_positions`), so that every model's run token by token through its cache is its run of the
    whole sequence."""

    keyword = cache_keyword(model)
    kwargs = {keyword: cache, "use_cache": True}
    if position is not None and explicit_step_positions(model):
        kwargs["position_ids"] = torch.arange(position, position + tokens, device=_device(model))[None]
    return kwargs


def cache_keyword(model) -> str:
    """The keyword of the key/value cache in the model's forward: ``cache`` since transformers 5.24,
    ``past_key_values`` before (read from the forward's signature)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _device(model) -> torch.device:
    """Where the model's token ids go: its first parameter that is not on the meta device (accelerate's hooks move
    the inputs of a dispatched model), else the CPU."""
    return next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))


_STEP_POSITIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.no_grad()
def explicit_step_positions(model) -> bool:
    """Whether a cached step of `model` must be given its positions: its forward's default ``position_ids``
    for the new tokens are not the ones its run of the whole sequence gives them (Bamba in transformers 5.25
    counts every call's positions from 0, cache or not: its token-by-token run put every token at position 0,
    2.4e-4 from its whole-sequence run in float64). Decided once per model, on three token ids: the last one's
    logits stepped through the cache with the default and with explicit positions against the whole run; the
    explicit ones only where they differ from the default and are nearer the whole run (RoBERTa-family models
    count from ``padding_idx + 1`` by default, so 0-based explicit positions would be wrong there). A model that
    keeps no cache needs none."""
    return _step_positions(model)[0]


def zero_based_positions(model) -> bool:
    """Whether a cached step of `model` given 0-based ``position_ids`` is its run of the whole sequence: where
    `explicit_step_positions` gives them, or where they are exactly the default (Llama, Gemma: counted from the
    past); not for RoBERTa-family models (counted from ``padding_idx + 1``), a forward without ``position_ids``
    or one the probe cannot run. Decided by the same probe, once per model."""
    needed, equal = _step_positions(model)
    return needed or equal


@torch.no_grad()
def _step_positions(model) -> tuple[bool, bool]:
    """(explicit positions needed, explicit 0-based positions equal to the default) of `_positions_needed`."""
    if model in _STEP_POSITIONS:
        return _STEP_POSITIONS[model]
    keyword = cache_keyword(model)
    try:
        found = _positions_needed(model, keyword)
    except Exception:  # noqa: BLE001 - a forward this probe cannot run (inputs of its own): the default positions,
        found = (False, False)  # as before; every run is measured against the run with the context all the same
    _STEP_POSITIONS[model] = found
    return found


def _positions_needed(model, keyword: str) -> tuple[bool, bool]:
    """`explicit_step_positions`' comparison (its docstring), and whether the explicit 0-based positions gave
    exactly the default's logits."""
    needed = equal = False
    if "position_ids" in inspect.signature(model.forward).parameters:
        vocab, pad = vocab_size(model.config), getattr(model.config, "pad_token_id", None)
        ids = torch.tensor([[t for t in range(1, vocab) if t != pad][:3]], device=_device(model))
        if ids.shape[1] == 3:
            whole = outputs_of(model(ids))[0, -1].double()
            first = model(ids[:, :2], **{keyword: None, "use_cache": True})
            cache = getattr(first, "cache", None) or getattr(first, "past_key_values", None)
            if cache is not None:
                default = outputs_of(model(ids[:, 2:], **{keyword: copy.deepcopy(cache), "use_cache": True}))
                explicit = outputs_of(model(ids[:, 2:], position_ids=torch.tensor([[2]], device=_device(model)),
                                            **{keyword: cache, "use_cache": True}))
                default, explicit = default[0, -1].double(), explicit[0, -1].double()
                equal = torch.equal(default, explicit)
                needed = not equal and \
                    float((explicit - whole).abs().max()) < float((default - whole).abs().max())
    return needed, equal


def kv_cache(out, model):
    """The key/value cache of a run with ``use_cache=True`` (`cached`); a `ModelInputError` for a model that keeps
    none (GPT-1). The output's field is ``cache`` since transformers 5.24, ``past_key_values`` before."""
    fields = getattr(out, "__dataclass_fields__", {})
    cache = getattr(out, "cache" if "cache" in fields else "past_key_values", None)
    if cache is None:
        raise ModelInputError(f"model type {model.config.model_type!r} returns no key/value cache: the token-by-token "
                              "runs (materialized patches, generation) need one; the factored logits do not, nor "
                              "does absorb_context(..., keep_positions=True), whose patches each token alone at "
                              "its position carries into the model's modules (materialized_logits)")
    return cache


def last_logits_only(model) -> dict:
    """Ask a causal LM for the last position's logits only (the contextual pass needs the states)."""

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def finite_run(model, output: torch.Tensor) -> None:
    """Refuse a model whose own run with the context is not finite: it overflows its dtype (Gemma in float16),
    and no patch can reproduce a NaN."""
    if not bool(torch.isfinite(output).all()):
        dtype = str(model_dtype(model)).removeprefix("torch.")
        wider = ", ".join(str(d).removeprefix("torch.") for d in DTYPES if d != model_dtype(model))
        raise ModelInputError(f"the model's own run with the context has non-finite outputs in {dtype}: its "
                              f"activations exceed {dtype}'s range (Gemma 3 in float16), and no patch reproduces "
                              f"a NaN; run the model in another dtype: {wider}")


def keep_logits(model, n: int) -> dict:
    """Ask a causal LM for the last `n` positions' logits only (the query's, in the run with the context)."""

    return {"logits_to_keep": n} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def outputs_of(out) -> torch.Tensor:
    """A run's outputs: the logits of a causal LM, the last hidden state of an encoder."""
    logits = getattr(out, "logits", None)
    return logits if logits is not None else out.last_hidden_state
