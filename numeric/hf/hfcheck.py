r"""Tiny random Hugging Face models of every supported type, and the check behind ``ctxpatch hf-check``.

No weights are downloaded: a model is built from a config (`numeric.hf.zoo.tiny_model`) with random
weights, every 1-D parameter perturbed. Token ids avoid 0 (a padding row of some embeddings is zero,
which makes a lone token's $z = 0$).
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from contextlib import contextmanager

import torch

from numeric.hf.absorb import absorb_context
from numeric.hf.accuracy import PatchAccuracyWarning
from numeric.hf.bounds import logit_bound
from numeric.hf.compat import cached, kv_cache
from numeric.hf.generate import generate_without_context
from symbolic.errors import CtxpatchInputError, ModelInputError

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: The bound of every figure a check prints, per dtype (`numeric.hf.bounds.logit_bound`).
BOUNDS = {name: logit_bound(dtype) for name, dtype in DTYPES.items()}
ENCODERS = {"bert"}
#: The types the test suite runs end to end (any causal-LM type of `numeric.hf.zoo.causal_lm_types` works).
TINY = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo2", "mixtral", "qwen2_moe",
        "qwen3_moe", "olmoe", "gpt2", "gptj", "gpt_neox", "phi", "falcon", "bert")


def tiny_model(model_type: str, layers: int = 2, dtype: str = "float64", seed: int = 0,
               encoder: bool | None = None):
    """A small random model of `model_type` (`numeric.hf.zoo.tiny_model`; eager attention and experts, so
    float64 works)."""
    from numeric.hf import zoo

    if dtype not in DTYPES:
        raise CtxpatchInputError(f"dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    if model_type not in ENCODERS and model_type not in zoo.causal_lm_types():
        raise ModelInputError(f"no tiny model for type {model_type!r}: not a causal-LM type of the installed "
                              f"transformers. Allowed: {', '.join(zoo.causal_lm_types())}, "
                              f"{', '.join(sorted(ENCODERS))}.")
    encoder = model_type in ENCODERS if encoder is None else encoder
    return zoo.tiny_model(model_type, layers, DTYPES[dtype], seed, encoder=encoder)


def random_ids(n: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(1, vocab, (1, n), generator=gen)


@torch.no_grad()
def hf_check(model_type: str, layers: int = 2, context_len: int = 6, query_len: int = 5, dtype: str = "float64",
             generate: int = 0, keep_positions: bool = False, strategy: str | None = None, seed: int = 0,
             spec=None, params: dict[str, str] | None = None, encoder: bool | None = None) -> dict:
    """Patched query-alone run vs the run with the context on a tiny random model: the figures. ``spec`` and
    ``params``: the user's spec and parameter map instead of the inferred ones (`numeric.hf.layout_for`).
    ``encoder``: build the bare encoder (default for `ENCODERS`) or the causal-LM head (``False``)."""
    t0 = time.perf_counter()
    encoder = model_type in ENCODERS if encoder is None else encoder
    model = tiny_model(model_type, layers, dtype, seed, encoder)
    gen = torch.Generator().manual_seed(seed + 2)
    ctx, q = random_ids(context_len, 64, gen), random_ids(query_len, 64, gen)
    with said() as told:
        ps = absorb_context(model, ctx, q, keep_positions=keep_positions, strategy=strategy, spec=spec, params=params)
        full = model(torch.cat([ctx, q], 1))
        alone = model(q)
        if encoder:
            patched, want, plain = ps.hidden_states(), full.last_hidden_state[:, context_len:], alone.last_hidden_state
        else:
            patched, want, plain = ps.logits(), full.logits[:, context_len:], alone.logits
        out = {"model_type": model_type, "dtype": dtype, "layers": layers, "context_len": context_len,
               "query_len": query_len, "keep_positions": keep_positions, "arch": ps.spec.name,
               "layer_kinds": len(ps.layout.specs), "exact": ps.accuracy.exact,
               "max_rel_error": logit_error(patched[0], want[0]), "unpatched_rel_error": logit_error(plain[0], want[0]),
               "bound": BOUNDS[dtype], **choices(ps)}
        if not encoder or keep_positions:
            materialized = ps.materialized_logits() if not encoder else None
            out["materialized_rel_error"] = logit_error(materialized[0], want[0]) if materialized is not None else None
        if generate and not encoder:
            ours = generate_without_context(model, ctx, q, generate, strategy=strategy, spec=spec, params=params)
            ref = greedy_with_context(model, torch.cat([ctx, q], 1), generate)
            out["generation_identical"] = bool(torch.equal(ours, ref))
            out["generated"] = ours[0].tolist()
    return verdict(out, told, t0)


FIGURES = ("max_rel_error", "materialized_rel_error")  # every figure a check prints against its bound


def verdict(out: dict, told: list[str], t0: float) -> dict:
    """``ok`` only when every figure printed is within the bound and generation is identical; ``problems``
    says which is not, ``warnings`` what the runs said (`PatchAccuracyWarning`)."""
    names = {"max_rel_error": "factored", "materialized_rel_error": "materialized"}
    problems = [f"{names[k]} error {out[k]:.2e} > bound {out['bound']:.1e}" for k in FIGURES
                if out.get(k) is not None and not out[k] <= out["bound"]]
    if not out.get("generation_identical", True):
        problems.append("greedy generation differs from the run with the context")
    out.update(ok=not problems, problems=problems, warnings=told, seconds=round(time.perf_counter() - t0, 3))
    return out


@contextmanager
def said():
    """The `PatchAccuracyWarning` messages of the block, collected for the verdict (which prints them) instead
    of printed twice; other warnings pass."""
    told: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PatchAccuracyWarning)
        try:
            yield told
        finally:
            told.extend(str(w.message) for w in caught if issubclass(w.category, PatchAccuracyWarning))
            rest = [w for w in caught if not issubclass(w.category, PatchAccuracyWarning)]
    for w in rest:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def choices(ps) -> dict:
    """What the patches were derived with, per layer: ``strategies`` ({strategy: tokens}) and
    ``amplification`` (the largest over the tokens; `numeric.hf.amplification.amplification`)."""
    return {"strategies": [dict(Counter(lp.strategies)) for lp in ps.layers],
            "amplification": [max(lp.amplification, default=float("nan")) for lp in ps.layers]}


# --------------------------------------------------------------------------- real pretrained models

#: (context, query) pairs of natural text: a fact, code, a story (contexts of 40-90 tokens, queries
#: of 5-11 tokens with either tokenizer).
REAL_PAIRS = (
    ("The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid. "
     "The capital of Portugal is Lisbon. The capital of Austria is Vienna. The capital of Poland is Warsaw.",
     " The capital of Germany is"),
    ("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n    for _ in range(n):\n"
     "        a, b = b, a + b\n    return a\n\n\ndef factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n"
     "        result *= i\n    return result\n", "\n\nprint(fibonacci(10), factorial("),
    ("Once upon a time, in a small village by the sea, there lived an old fisherman named Tomas. Every "
     "morning he rowed his little blue boat past the lighthouse, singing the songs his mother had taught him.",
     " One morning, a storm came and Tomas"),
)
REAL_BOUNDS = BOUNDS


def logit_error(a: torch.Tensor, b: torch.Tensor) -> float:
    r"""$\max |a - b| / \max |b|$ over every position and vocabulary entry (the issue's measure)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


def pair_ids(tokenizer, context: str, query: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, c) and (1, q) token ids: the context with the tokenizer's specials, the query without."""
    ctx = tokenizer(context, return_tensors="pt").input_ids
    q = tokenizer(query, return_tensors="pt", add_special_tokens=False).input_ids
    return ctx, q


@torch.no_grad()
def real_pair_check(model, ctx: torch.Tensor, q: torch.Tensor, strategy: str | None = None,
                    generate: int = 0) -> dict:
    """Factored, materialized and unpatched logit errors of one (context, query) pair; with
    ``generate`` > 0, greedy generation without the context (patched per token, written into the
    model's modules) against ``model.generate`` with it."""
    want = model(torch.cat([ctx, q], 1)).logits[0, ctx.shape[1]:]
    ps = absorb_context(model, ctx, q, strategy=strategy)
    out = {"context_len": ctx.shape[1], "query_len": q.shape[1], "exact": ps.accuracy.exact,
           "max_rel_error": logit_error(ps.logits()[0], want),
           "materialized_rel_error": logit_error(ps.materialized_logits()[0], want),
           "unpatched_rel_error": logit_error(model(q).logits[0], want), **choices(ps)}
    if generate:
        ours = generate_without_context(model, ctx, q, generate, strategy=strategy)
        ref = greedy_with_context(model, torch.cat([ctx, q], 1), generate)
        out["generation_identical"] = bool(torch.equal(ours, ref))
        out["generated"] = ours[0].tolist()
    return out


@torch.no_grad()
def greedy_with_context(model, ids: torch.Tensor, tokens: int) -> torch.Tensor:
    """(1, tokens): greedy generation by the model's own forward through its key/value cache, exactly `tokens`
    new ids (no end-of-sequence stop), with its default positions (given only where a cached step would not
    count them from its past: `numeric.hf.compat.explicit_step_positions`): the protocol `generate_without_context`
    follows. Not ``model.generate``: it passes 0-based ``position_ids``, which RoBERTa-family models count
    from ``padding_idx + 1`` by default (camembert, xlm-roberta: other tokens), and its generation config's
    logits processors would change the argmax."""
    out, new = model(ids, use_cache=True), []
    for i in range(tokens):
        new.append(out.logits[:, -1].argmax(-1, keepdim=True))  # (1, 1)
        if i < tokens - 1:
            out = model(new[-1], **cached(model, kv_cache(out, model), ids.shape[1] + i))
    return torch.cat(new, 1)


def real_check(name: str, dtype: str = "float32", generate: int = 0, strategy: str | None = None,
               pairs=REAL_PAIRS) -> dict:
    """`real_pair_check` on every pair of a real model (`numeric.hf.models`): the figures and the worst."""
    from numeric.hf import models

    t0 = time.perf_counter()
    model, tokenizer = models.load(name, dtype)
    with said() as told:
        rows = [real_pair_check(model, *pair_ids(tokenizer, c, q), strategy, generate) for c, q in pairs]
    out = {"model_type": name, "arch": model.config.model_type, "dtype": dtype, "bound": REAL_BOUNDS[dtype],
           "pairs": rows, "exact": rows[0]["exact"], "max_rel_error": _worst(r["max_rel_error"] for r in rows),
           "materialized_rel_error": _worst(r["materialized_rel_error"] for r in rows),
           "unpatched_rel_error": min(r["unpatched_rel_error"] for r in rows),
           "strategies": _merged([r["strategies"] for r in rows]), "torch_threads": torch.get_num_threads()}
    if generate:
        out["generation_identical"] = all(r["generation_identical"] for r in rows)
    return verdict(out, told, t0)


def _worst(values) -> float:
    """The largest figure; NaN when one is NaN (never within a bound)."""
    values = list(values)
    return float("nan") if any(v != v for v in values) else max(values)


def _merged(per_pair: list[list[dict]]) -> list[dict]:
    """Per layer, the strategy counts summed over the pairs."""
    return [dict(sum((Counter(p[n]) for p in per_pair), Counter())) for n in range(len(per_pair[0]))]


# --------------------------------------------------------------------------- every model type

#: `ctxpatch models`: the bounds of a `supported` type (float64 factored and materialized errors: the float64
#: `logit_bound`, which counts the float32 norms of transformers), the least effect of the context, and the
#: greedy tokens generated in float32; patched with the default strategy.
SUPPORT = {"factored": BOUNDS["float64"], "materialized": BOUNDS["float64"], "unpatched": 1e-3, "generate": 16}


def refusal(exc: BaseException) -> str:
    """One line: why a type is refused."""
    text = " ".join(str(exc).split())
    return text if isinstance(exc, CtxpatchInputError) else f"{type(exc).__name__}: {text}"[:300]


def model_status(model_type: str, layers: int = 2, seed: int = 0) -> dict:
    """`supported` (with its figures) or `refused` (with the reason) for one causal-LM model type."""
    from numeric.hf import zoo

    t0 = time.perf_counter()
    row = {"model_type": model_type, "status": "refused", "reason": "", "factored_error": None,
           "materialized_error": None, "unpatched_error": None, "generation_identical": None, "layer_kinds": None}
    try:
        cfg = zoo.tiny_config(model_type, layers)
        if getattr(cfg, "is_encoder_decoder", False):
            raise ModelInputError("encoder-decoder model (the theory is stated for one decoder stack)")
        out = hf_check(model_type, layers=layers, dtype="float64", seed=seed, encoder=False)
        row.update(factored_error=out["max_rel_error"], materialized_error=out["materialized_rel_error"],
                   unpatched_error=out["unpatched_rel_error"], layer_kinds=out["layer_kinds"])
        gen = hf_check(model_type, layers=layers, dtype="float32", generate=SUPPORT["generate"], seed=seed,
                       query_len=3, encoder=False)
        row["generation_identical"] = gen["generation_identical"]
        problems = [f"{name} error {row[key]:.1e} > {SUPPORT[name]:.0e}"
                    for name, key in (("factored", "factored_error"), ("materialized", "materialized_error"))
                    if not row[key] <= SUPPORT[name]]
        if not row["unpatched_error"] >= SUPPORT["unpatched"]:
            problems.append(f"the context barely matters (unpatched error {row['unpatched_error']:.1e})")
        if not row["generation_identical"]:
            problems.append("greedy generation differs")
        row["status"] = "refused" if problems else "supported"
        row["reason"] = "; ".join(problems)
    except Exception as exc:  # noqa: BLE001 - every failure of a type is its refusal, with the reason
        row["reason"] = refusal(exc)
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def models_table(types: list[str] | None = None, progress=None) -> list[dict]:
    """`model_status` of every causal-LM type of the installed transformers (or of ``types``)."""
    import warnings

    from numeric.hf import zoo

    rows = []
    for model_type in types or zoo.causal_lm_types():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows.append(model_status(model_type))
        if progress is not None:
            progress(rows[-1])
    return rows


def models_markdown(rows: list[dict], summary: dict) -> str:
    """The `models` table as Markdown (MODELS.md)."""
    from numeric.hf.zoo_layers import MAX_LAYERS
    def num(v):
        return "" if v is None else f"{v:.1e}"
    lines = [f"# Model types ({summary['supported']} supported of {summary['types']})", "",
             "Written by `ctxpatch models --markdown MODELS.md`: every causal-LM model type of the installed "
             "transformers, built tiny from its config with random weights: 2 layers, or more where the family has "
             "more kinds of layer (the first layer of every kind of its default stack and its last layer, at most "
             f"{MAX_LAYERS}; `numeric/hf/zoo_layers.py`); `layer kinds`: the distinct blocks inferred. `supported`: "
             f"float64 factored error <= {summary['bounds']['factored']:.1e} and materialized error <= "
             f"{summary['bounds']['materialized']:.1e} (relative, max over the query logits), unpatched error >= "
             f"{summary['bounds']['unpatched']:.0e}, greedy generation of {summary['bounds']['generate']} tokens "
             "identical in float32.", "",
             "| model type | status | factored | materialized | unpatched | generation | layer kinds | reason |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gen = "" if r["generation_identical"] is None else ("identical" if r["generation_identical"] else "differs")
        reason = r["reason"].replace("|", "\\|")
        lines.append(f"| {r['model_type']} | {r['status']} | {num(r['factored_error'])} | "
                     f"{num(r['materialized_error'])} | {num(r['unpatched_error'])} | {gen} | "
                     f"{r['layer_kinds'] or ''} | {reason} |")
    return "\n".join(lines) + "\n"
