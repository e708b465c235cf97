r"""The seed paper's generation experiment (arXiv:2511.17864, Section 5): context WITHOUT the prompt.

Protocol, per prompt: the model WITH the prompt decodes greedily (the baseline). At every step the
current last token is run ALONE at its absolute position, without the prompt and the earlier tokens,
with per-layer patches recomputed for that token (`absorb_context(..., keep_positions=True)`), and its
next-token logits are compared with the baseline's: top-1 agreement and the L-infinity difference
of the logits. After a mismatch the continuation is forced on the baseline's history, as the paper
does, so every step is measured on the same prefix.

`run(model, tokenizer, ...)` works for any transformers causal LM with an adapter (`numeric.hf`),
e.g. Gemma 3 1B on disk; the committed fixture `numeric/fixtures/tiny_gemma3` is a small Gemma 3
trained on the Python standard library (`train_tiny_gemma.py`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from numeric.hf import absorb_context

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tiny_gemma3"
PROMPTS = (
    "def __init__(self, ",
    "import os\nimport sys\n\n\ndef main(",
    "        for i in range(len(",
    "class _Error(Exception):\n    ",
    '    def __repr__(self):\n        return "',
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def load(path: str | Path | None = None, dtype: str = "float32"):
    """A local causal LM and its tokenizer (the committed fixture by default); eager attention."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path or FIXTURE)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(path)


def _ids(tokenizer, prompt: str) -> torch.Tensor:
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    if ids.shape[1] < 2:
        raise ValueError(f"prompt {prompt!r} is a single token: the protocol needs a context before the last token")
    return ids


@torch.no_grad()
def run_prompt(model, ids: torch.Tensor, tokens: int, strategy: str | None, patch_dtype) -> dict:
    prefix = ids
    steps = []
    for _ in range(tokens):
        full = model(prefix).logits[0, -1].float()
        base = int(full.argmax())
        ps = absorb_context(model, prefix[:, :-1], prefix[:, -1:], keep_positions=True, strategy=strategy,
                            patch_dtype=patch_dtype)
        patched = ps.logits()[0, -1].float()
        steps.append({"token": base, "patched_token": int(patched.argmax()), "agree": int(patched.argmax()) == base,
                      "linf": float((patched - full).abs().max()), "patch": _largest_scale_patch(ps)})
        prefix = torch.cat([prefix, torch.tensor([[base]])], 1)  # forced on the baseline's history
    agree = [s["agree"] for s in steps]
    return {"agreement": sum(agree) / len(agree), "max_linf": max(s["linf"] for s in steps),
            "mean_linf": sum(s["linf"] for s in steps) / len(steps),
            "first_divergence": next((i for i, a in enumerate(agree) if not a), None), "steps": steps}


def _largest_scale_patch(ps) -> dict:
    """Where a scale patch is largest against its scale: |dw_i| / |gamma_i|, with layer and coordinate."""
    from numeric.hf import layer_params

    best = {"ratio": 0.0, "layer": None, "coordinate": None, "param": None}
    layers = ps.model.get_submodule(ps.adapter.layers)
    for n, lp in enumerate(ps.layers):
        references = ps.kernel.references(layer_params(layers[n], ps.adapter))  # gamma = 1 + w where stored so
        for canon, fields in lp.factored.items():
            if "delta" not in fields or not canon.endswith(".scale"):
                continue
            gamma = references[canon].float()
            ratio = (fields["delta"][-1].float().abs() / gamma.abs().clamp_min(1e-30))
            i = int(ratio.argmax())
            if float(ratio[i]) > best["ratio"]:
                best = {"ratio": float(ratio[i]), "layer": n, "coordinate": i, "param": canon}
    return best


def run(model=None, tokenizer=None, dtype: str = "float32", strategy: str | None = None, tokens: int = 20,
        prompts=PROMPTS, model_path: str | Path | None = None, patch_dtype: str | None = None) -> dict:
    """The protocol on every prompt; per prompt and overall figures (see the module docstring)."""
    t0 = time.perf_counter()
    if model is None:
        model, tokenizer = load(model_path, dtype)
    else:
        model = model.to(DTYPES[dtype])
    import warnings

    from numeric.kernels.runtime import IllConditionedPatchWarning

    pd = DTYPES[patch_dtype] if patch_dtype else None
    rows = []
    with warnings.catch_warnings(record=True) as caught:  # counted and reported, not printed per token
        warnings.simplefilter("always", IllConditionedPatchWarning)
        for prompt in prompts:
            r = run_prompt(model, _ids(tokenizer, prompt), tokens, strategy, pd)
            r["prompt"] = prompt
            r["baseline_text"] = tokenizer.decode([s["token"] for s in r["steps"]])
            rows.append(r)
    ill = sum(issubclass(w.category, IllConditionedPatchWarning) for w in caught)
    steps = [s for r in rows for s in r["steps"]]
    worst = max((s["patch"] for s in steps), key=lambda p: p["ratio"])
    return {"model": str(model_path or FIXTURE), "model_type": model.config.model_type, "dtype": dtype,
            "strategy": strategy or "default", "patch_dtype": patch_dtype or dtype, "tokens": tokens,
            "agreement": sum(s["agree"] for s in steps) / len(steps), "max_linf": max(s["linf"] for s in steps),
            "mean_linf": sum(s["linf"] for s in steps) / len(steps), "prompts": rows,
            "largest_scale_patch": worst, "ill_conditioned_warnings": ill,
            "seconds": round(time.perf_counter() - t0, 2)}
