r"""The seed paper's generation experiment (arXiv:2511.17864, Section 5): context WITHOUT the prompt.

Protocol, per prompt: the model WITH the prompt decodes greedily (the baseline). At every step the
current last token is run ALONE at its absolute position, without the prompt and the earlier tokens,
with per-layer patches recomputed for that token (`absorb_context(..., keep_positions=True)`), and its
next-token logits are compared with the baseline's: top-1 agreement and the L-infinity difference
of the logits. After a mismatch the continuation is forced on the baseline's history, as the paper
does, so every step is measured on the same prefix. Every step is measured twice: the patches
applied by the kernels (``factored``, computed in the kernels' arithmetic) and written into the
model's own modules (``materialized``, computed in the model's arithmetic: Algorithm 1).
`run_all` runs the paper's three settings (float32, naive and stable bfloat16) both ways; the seed
(`SEED`) and torch's thread count are recorded with the figures.

`run(model, tokenizer, ...)` works for any transformers causal LM whose layers `numeric.hf.infer` reads
(`numeric.hf`); `run(name_or_path=MODEL)` reads MODEL as every command does (`numeric.hf.models.resolve`: a
packaged name, a ``save_pretrained`` folder such as Gemma 3 1B on disk, or a GGUF file). The default, the
committed fixture `numeric/hf/fixtures/tiny_gemma3`, is a small Gemma 3 trained on the Python standard library
(`train_tiny_gemma.py`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from numeric.hf.absorb import absorb_context
from numeric.hf.bounds import logit_bound
from numeric.hf.compat import last_logits_only
from numeric.hf.models import DTYPES, kind_of, resolve
from symbolic.errors import ModelInputError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tiny_gemma3"
PROMPTS = (
    "def __init__(self, ",
    "import os\nimport sys\n\n\ndef main(",
    "        for i in range(len(",
    "class _Error(Exception):\n    ",
    '    def __repr__(self):\n        return "',
)


def _ids(tokenizer, prompt: str) -> torch.Tensor:
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    if ids.shape[1] < 2:
        raise ModelInputError(f"prompt {prompt!r} is a single token: the protocol needs a context before the last "
                              "token")
    return ids


APPLIED = ("factored", "materialized")
#: The seed paper's five prompts (arXiv:2511.17864 v3, Section 4), verbatim as the independent reproduction
#: recovered them from the paper's sources (MachineLearning-Nerd/icml26-repro-aZ5Di8Ii4X-context-weight-patch,
#: ``repro/source_audits/claims_4_5.md``): the default set of pretrained weights (`DEFAULT_PROMPTS`).
PAPER_PROMPTS = (
    "Write a single-sentence weather forecast for Mars, from the perspective of a slightly annoyed robot:",
    "Constraint: No 'e's. Topic: The meaning of life. Length: Exactly 20 words. Write:",
    "Explain what a 'bug' is in computer programming, but explain it to a 16th-century medieval peasant. "
    "Use 20 words or less:",
    "Topic: Three siblings named Jack, Fred, and Alice. Task: Write one 5-7-5 haiku about them:",
    "We can absorb the impact of a prompt for a modern language model such as Gemma into the MLP weights. "
    "Write a two-line rhyming couplet about this fact:",
)
#: Our natural text for real pretrained models: facts, code, a short story, a list, a dialogue.
REAL_PROMPTS = (
    "The capital of France is Paris, and the capital of Japan is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Once upon a time, a little fox lived at the edge of a dark forest. One morning she",
    "Shopping list:\n1. Milk\n2. Eggs\n3.",
    "Alice: Hi Bob, how was your weekend?\nBob:",
)
#: The paper's three settings: float32, naive bfloat16 (Theorem 1 computed in bfloat16), stable
#: bfloat16 (Appendix B, patches computed in float32); (dtype, strategy, patch dtype).
SETTINGS = (("float32", None, None), ("bfloat16", "norm_vector", None), ("bfloat16", "stable", "float32"))
#: The prompt sets by name (``ctxpatch experiment --prompts NAME``): the paper's five, ours on natural text, and
#: the Python code the fixture was trained on (unnamed: `DEFAULT_PROMPTS`).
PROMPT_SETS = {"paper": PAPER_PROMPTS, "natural": REAL_PROMPTS, "code": PROMPTS}
#: The prompts a model gets when none are asked for, by what MODEL is (`numeric.hf.models.kind_of`): the paper's
#: five for pretrained weights (a packaged name or a GGUF file), the code for a ``save_pretrained`` folder (the
#: fixture is one).
DEFAULT_PROMPTS = {"name": PAPER_PROMPTS, "gguf": PAPER_PROMPTS, "folder": PROMPTS}
SEED = 0


@torch.no_grad()
def run_prompt(model, ids: torch.Tensor, tokens: int, strategy: str | None, patch_dtype,
               applied: tuple[str, ...] = APPLIED) -> dict:
    """Greedy baseline WITH the prompt; each step's last token alone, patched, applied as asked."""
    prefix, memory = ids, {}
    steps = []
    for _ in range(tokens):
        full = model(prefix, **last_logits_only(model)).logits[0, -1].float()
        base = int(full.argmax())
        tied = [int(t) for t in torch.nonzero(full == full.max())[:, 0]]  # an exact tie in the model's dtype
        step = {"token": base, "tied": tied}
        for how in applied:
            patched, ps = _patched_logits(model, prefix, strategy, patch_dtype, how, memory)
            token = int(patched.argmax())
            step[how] = {"patched_token": token, "agree": token == base, "agree_up_to_ties": token in tied,
                         "linf": float((patched - full).abs().max()),
                         "rel_error": float((patched - full).abs().max() / full.abs().max())}
        step.update(step[applied[-1]])  # the flat figures of a step: the last application measured
        step["patch"] = _largest_scale_patch(ps)
        step["ill_layers"] = sorted(ps.accuracy.ill)  # layers whose patch is ill-conditioned (folded, not warned)
        steps.append(step)
        prefix = torch.cat([prefix, torch.tensor([[base]])], 1)  # forced on the baseline's history
    out = {"steps": steps}
    bound = logit_bound(model.dtype)
    for how in applied:
        out[how] = _figures([s[how] for s in steps], bound)
    out.update(out[applied[-1]])  # the flat figures: the materialized run when it was measured
    return out


def _patched_logits(model, prefix, strategy, patch_dtype, applied: str, memory: dict):
    """The last token alone at its absolute position, patched: its next-token logits (float32)."""
    computed_in = "model" if applied == "materialized" else "kernel"
    ps = absorb_context(model, prefix[:, :-1], prefix[:, -1:], keep_positions=True, strategy=strategy,
                        patch_dtype=patch_dtype, computed_in=computed_in, memory=memory, measure=False)
    logits = ps.materialized_logits() if applied == "materialized" else ps.logits()
    return logits[0, -1].float(), ps


def _figures(steps: list[dict], bound: float) -> dict:
    r"""Top-1 agreement, and agreement up to ties: where the baseline's largest logits are exactly equal in
    the model's dtype (bfloat16 logits are multiples of $2^{-3}$ near 20), its argmax is the lower token
    id, not the model's choice, and any of the tied tokens counts. ``max_rel_error``: the largest
    max|Δlogit|/max|logit| of a step, against the dtype's ``bound`` (`numeric.hf.bounds.logit_bound`);
    ``ok``: every step within it and agreeing up to ties."""
    agree = [s["agree"] for s in steps]
    worst = max(s["rel_error"] for s in steps)
    out = {"agreement": sum(agree) / len(agree),
           "agreement_up_to_ties": sum(s["agree_up_to_ties"] for s in steps) / len(steps),
           "ties": sum(s["agree_up_to_ties"] and not s["agree"] for s in steps),
           "max_linf": max(s["linf"] for s in steps),
           "mean_linf": sum(s["linf"] for s in steps) / len(steps),
           "max_rel_error": worst, "bound": bound,
           "first_divergence": next((i for i, a in enumerate(agree) if not a), None)}
    out["ok"] = worst <= bound and out["agreement_up_to_ties"] == 1.0
    return out


def _largest_scale_patch(ps) -> dict:
    """Where a scale patch is largest against its scale: |dw_i| / |gamma_i|, with layer and coordinate
    (the last query token's patches)."""
    from numeric.hf.layout import layer_params

    best = {"ratio": 0.0, "layer": None, "coordinate": None, "param": None}
    layers = ps.model.get_submodule(ps.layout.layers)
    for n, lp in enumerate(ps.layers):
        references = ps.kernel_for(n).references(layer_params(layers[n], ps.layout[n]))  # gamma = 1 + w where stored so
        for canon, fields in lp.token(len(lp.strategies) - 1).items():
            if "delta" not in fields or not canon.endswith(".scale"):
                continue
            gamma = references[canon].float()
            ratio = (fields["delta"][-1].float().abs() / gamma.abs().clamp_min(1e-30))
            i = int(ratio.argmax())
            if float(ratio[i]) > best["ratio"]:
                best = {"ratio": float(ratio[i]), "layer": n, "coordinate": i, "param": canon}
    return best


def run(model=None, tokenizer=None, dtype: str = "float32", strategy: str | None = None, tokens: int = 20,
        prompts=None, name_or_path: str | Path | None = None, patch_dtype: str | None = None,
        applied: tuple[str, ...] = APPLIED) -> dict:
    """The protocol on every prompt; per prompt and overall figures (see the module docstring).

    The model: `model` (moved to `dtype`), or MODEL as `numeric.hf.models.resolve` reads it (``name_or_path``: a
    packaged name, a ``save_pretrained`` folder or a GGUF file; the committed fixture when None), its prompts by
    default those of `DEFAULT_PROMPTS`. ``applied``: patches applied by the kernels (``factored``) and/or written
    into the model's own modules (``materialized``); the flat figures are those of the last one.
    """
    t0 = time.perf_counter()
    torch.manual_seed(SEED)
    model, tokenizer, label, prompts = _model(model, tokenizer, dtype, name_or_path, prompts)
    import warnings

    from numeric.hf.accuracy import PatchAccuracyWarning
    from numeric.kernels.runtime import IllConditionedPatchWarning

    pd = DTYPES[patch_dtype] if patch_dtype else None
    rows = []
    with warnings.catch_warnings(record=True) as caught:  # counted and reported, not printed per token
        warnings.simplefilter("always", IllConditionedPatchWarning)
        warnings.simplefilter("always", PatchAccuracyWarning)
        for prompt in prompts:
            r = run_prompt(model, _ids(tokenizer, prompt), tokens, strategy, pd, applied)
            r["prompt"] = prompt
            r["baseline_text"] = tokenizer.decode([s["token"] for s in r["steps"]])
            rows.append(r)
    escaped = sum(issubclass(w.category, IllConditionedPatchWarning) for w in caught)
    told = sum(issubclass(w.category, PatchAccuracyWarning) for w in caught)
    for w in caught:
        if not issubclass(w.category, (IllConditionedPatchWarning, PatchAccuracyWarning)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    steps = [s for r in rows for s in r["steps"]]
    ill = escaped + sum(len(s["ill_layers"]) for s in steps)
    worst = max((s["patch"] for s in steps), key=lambda p: p["ratio"])
    out = {"model": label, "model_type": model.config.model_type, "dtype": dtype,
           "strategy": strategy or "default", "patch_dtype": patch_dtype or dtype, "tokens": tokens,
           "applied": list(applied), "prompts": rows, "largest_scale_patch": worst,
           "ill_conditioned_patches": ill, "accuracy_warnings": told, "seed": SEED,
           "torch_threads": torch.get_num_threads()}
    for how in applied:
        out[how] = _figures([s[how] for s in steps], logit_bound(model.dtype))
    out.update(out[applied[-1]])
    out["ok"] = all(out[how]["ok"] for how in applied)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _model(model, tokenizer, dtype: str, name_or_path, prompts):
    """(model, tokenizer, label, prompts): the model `run` was given, or MODEL read by `numeric.hf.models.resolve`
    (which refuses what is not a packaged name, a model folder or a GGUF file, by name)."""
    if model is not None:
        return model.to(DTYPES[dtype]), tokenizer, model.config.model_type, prompts or PROMPTS
    source = str(name_or_path or FIXTURE)
    model, tokenizer = resolve(source, dtype)
    return model, tokenizer, source, prompts or DEFAULT_PROMPTS[kind_of(source)]


def settings_for(model) -> tuple[tuple[str, str | None, str | None], ...]:
    """`SETTINGS` as far as the model's block offers them: naive bfloat16 falls back to the default
    strategy without Theorem 1's `norm_vector`; stable bfloat16 is left out without `stable`."""
    from numeric.hf.selection import resolve
    from symbolic.controllability import check

    offered = set.intersection(*(set(check(s).output.ok) for s in resolve(model)[0].specs))
    out = []
    for dtype, strategy, patch_dtype in SETTINGS:
        if strategy is None or strategy in offered:
            out.append((dtype, strategy, patch_dtype))
        elif strategy == "norm_vector":
            out.append((dtype, None, patch_dtype))
    return tuple(out)


def run_all(tokens: int = 20, name_or_path: str | Path | None = None, prompts=None,
            applied: tuple[str, ...] = APPLIED) -> dict:
    """Every setting of `settings_for` (float32, naive and stable bfloat16), each applied factored and
    materialized: ``runs`` is a list of {dtype, strategy, applied, agreement, max_logit_linf, ...} (the JSON
    contract of ``ctxpatch experiment``; docs/design.md, "Contracts"), ``results`` the full figures of every
    setting. The model is loaded afresh per dtype."""
    import gc

    t0 = time.perf_counter()
    results, runs = [], []
    model, _, _, _ = _model(None, None, "float32", name_or_path, prompts)
    settings = settings_for(model)
    del model
    gc.collect()
    for dtype, strategy, patch_dtype in settings:
        r = run(dtype=dtype, strategy=strategy, tokens=tokens, prompts=prompts, name_or_path=name_or_path,
                patch_dtype=patch_dtype, applied=applied)
        results.append(r)
        for how in applied:
            f = r[how]
            runs.append({"dtype": dtype, "strategy": r["strategy"], "patch_dtype": r["patch_dtype"], "applied": how,
                         "agreement": f["agreement"], "agreement_up_to_ties": f["agreement_up_to_ties"],
                         "max_logit_linf": f["max_linf"], "max_rel_error": f["max_rel_error"], "bound": f["bound"],
                         "ok": f["ok"],
                         "mean_logit_linf": f["mean_linf"], "first_divergence": [p[how]["first_divergence"]
                                                                                 for p in r["prompts"]]})
    return {"model": results[0]["model"], "model_type": results[0]["model_type"], "tokens": tokens, "runs": runs,
            "ok": all(r["ok"] for r in runs), "results": results, "seed": SEED,
            "torch_threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - t0, 2)}
