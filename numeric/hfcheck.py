r"""Tiny random Hugging Face models of every supported type, and the check behind ``ctxpatch hf-check``.

No weights are downloaded: a model is built from a config (`AutoModelForCausalLM.from_config`)
with random weights; every 1-D parameter (norm weights, biases) is perturbed too, because
Gemma's norm weights start at zero and a missing ``1 +`` would otherwise go unnoticed. Token ids
avoid 0 (a padding row of some embeddings is zero, which makes a lone token's $z = 0$).
"""

from __future__ import annotations

import time

import torch

from numeric.hf import absorb_context, generate_without_context
from numeric.validate import rel_error

BOUNDS = {"float64": 1e-6, "float32": 1e-4}
DTYPES = {"float64": torch.float64, "float32": torch.float32}
_LLAMA_LIKE = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
_MOE = dict(hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2)
#: Config keyword arguments of a tiny model per type ("{layers}" is filled in).
TINY: dict[str, dict] = {
    "llama": _LLAMA_LIKE, "mistral": {**_LLAMA_LIKE, "sliding_window": 4}, "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE, "gemma": _LLAMA_LIKE,
    "gemma2": {**_LLAMA_LIKE, "sliding_window": 4}, "gemma3_text": {**_LLAMA_LIKE, "sliding_window": 4},
    "olmo2": _LLAMA_LIKE,
    "mixtral": {**_LLAMA_LIKE, "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {**_MOE, "shared_expert_intermediate_size": 24},
    "qwen3_moe": {**_MOE, "norm_topk_prob": True}, "olmoe": {**_MOE, "norm_topk_prob": False},
    "gpt2": dict(n_embd=32, n_head=4), "gptj": dict(n_embd=32, n_head=4, rotary_dim=4),
    "gpt_neox": dict(hidden_size=32, intermediate_size=48, num_attention_heads=4),
    "phi": dict(hidden_size=32, intermediate_size=48, num_attention_heads=4),
    "falcon": dict(hidden_size=32, num_attention_heads=4),
    "bert": dict(hidden_size=32, intermediate_size=48, num_attention_heads=4),
}
ENCODERS = {"bert"}
_LAYER_KEY = {"gpt2": "n_layer", "gptj": "n_layer"}


def tiny_model(model_type: str, layers: int = 2, dtype: str = "float64", seed: int = 0):
    """A small random model of `model_type` (eager attention and experts, so float64 works)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    if model_type not in TINY:
        from symbolic.errors import SpecError

        raise SpecError(f"no tiny model for type {model_type!r}. Allowed: {', '.join(sorted(TINY))}.")
    kwargs = {**TINY[model_type], _LAYER_KEY.get(model_type, "num_hidden_layers"): layers}
    # Special ids inside the vocabulary, and no end-of-sequence token: `generate` must not stop early.
    cfg = AutoConfig.for_model(model_type, vocab_size=64, max_position_embeddings=128, bos_token_id=0,
                               pad_token_id=0, eos_token_id=None, **kwargs)
    torch.manual_seed(seed)
    cls = AutoModel if model_type in ENCODERS else AutoModelForCausalLM
    extra = {"experts_implementation": "eager"} if "num_experts_per_tok" in kwargs else {}
    model = cls.from_config(cfg, dtype=DTYPES[dtype], attn_implementation="eager", **extra).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_((0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64)).to(p.dtype))
    return model


def random_ids(n: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(1, vocab, (1, n), generator=gen)


@torch.no_grad()
def hf_check(model_type: str, layers: int = 2, context_len: int = 6, query_len: int = 5, dtype: str = "float64",
             generate: int = 0, keep_positions: bool = False, strategy: str | None = None, seed: int = 0) -> dict:
    """Patched query-alone run vs the run with the context on a tiny random model: the figures."""
    t0 = time.perf_counter()
    model = tiny_model(model_type, layers, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 2)
    ctx, q = random_ids(context_len, 64, gen), random_ids(query_len, 64, gen)
    ps = absorb_context(model, ctx, q, keep_positions=keep_positions, strategy=strategy)
    full = model(torch.cat([ctx, q], 1))
    alone = model(q)
    if model_type in ENCODERS:
        patched, want, plain = ps.hidden_states(), full.last_hidden_state[:, context_len:], alone.last_hidden_state
    else:
        patched, want, plain = ps.logits(), full.logits[:, context_len:], alone.logits
    out = {"model_type": model_type, "dtype": dtype, "layers": layers, "context_len": context_len,
           "query_len": query_len, "keep_positions": keep_positions, "arch": ps.spec.name,
           "max_rel_error": rel_error(patched[0], want[0]), "unpatched_rel_error": rel_error(plain[0], want[0]),
           "bound": BOUNDS[dtype]}
    if generate and model_type not in ENCODERS:
        ours = generate_without_context(model, ctx, q, generate, strategy=strategy)
        ref = model.generate(torch.cat([ctx, q], 1), max_new_tokens=generate, do_sample=False)
        ref = ref[:, context_len + query_len:]
        out["generation_identical"] = bool(torch.equal(ours, ref))
        out["generated"] = ours[0].tolist()
    out["ok"] = out["max_rel_error"] <= out["bound"] and out.get("generation_identical", True)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out
