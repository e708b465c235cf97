r"""What a context did to a real model: the data of the context report (`ctxpatch report MODEL --context ...`).

`collect(model, tokenizer, context, query)` absorbs the context (`numeric.hf.absorb.absorb_context`) and
measures, per layer $n$ and query token $j$:

- the size of every patch against its parameter: a rank-1 patch $\Delta W = a b^\top$ has
  $\lVert \Delta W \rVert_F = \lVert a \rVert \lVert b \rVert$, reported as
  $\lVert a \rVert \lVert b \rVert / \lVert W \rVert_F$ with both factors' norms; a norm-scale patch
  $\Delta\gamma$ as $\lVert \Delta\gamma \rVert / \lVert \gamma \rVert$ (``references`` of the kernel: the
  effective scale, $1 + w$ where the model stores $w$);
- the output strategy chosen and its amplification (`LayerPatches.strategies`, `.amplification`; NaN where
  a kept strategy was not measured again);
- the error of the patched runs against the run with the context: the last hidden state of every layer
  ($\max_j \lVert h^{\text{patched}}_j - h^{C}_j \rVert / \lVert h^{C}_j \rVert$) and the logits (L-infinity),
  with the patches applied factored by the kernels (`PatchSet.logits`) and written into the model's own
  modules (`PatchSet.materialized_logits`);
- the next-token top-k after the last query token: with the context, without it, and patched (both ways).

`main(args)` is the verb's body: it loads the model (`numeric.hf.models`), collects, and renders
(`ctxpatch.reporting.context`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from symbolic.errors import CtxpatchInputError, ModelInputError

TOP_K, MAX_TOP_K = 5, 50
APPLIED = ("factored", "materialized")


def model_problem(target: str) -> str | None:
    """None where `ctxpatch report TARGET` names a model, not a spec: what `numeric.hf.models.kind_of` accepts (a
    packaged name, a folder with config.json, a file that starts with the GGUF magic bytes); else why not, in its
    words (what is wrong, what is allowed)."""
    from numeric.hf.models import kind_of

    try:
        kind_of(target)
    except ModelInputError as exc:
        return str(exc)
    return None


CONTEXT_OPTIONS = ("context", "query", "dtype", "strategy", "top_k")  # the context report's own options


def selects(args) -> bool:
    """Whether ``ctxpatch report`` renders the context report: ARCH names a model. A model without --context and
    --query, or a spec with the context report's options, is refused by name."""
    problem = model_problem(args.arch)
    if problem is None:
        if getattr(args, "quick", False):
            raise CtxpatchInputError("--quick belongs to the proof report of a spec; the context report measures the "
                                     "context it is given (drop --quick)")
        return True
    given = [f"--{o.replace('_', '-')}" for o in CONTEXT_OPTIONS if getattr(args, o, None) is not None]
    if given:
        raise CtxpatchInputError(f"{', '.join(given)} belong to the context report, which takes a model in place of "
                                 f"ARCH, and {problem} For the proof report of a spec, drop them.")
    return False


def text_arg(value: str | None, option: str) -> str:
    """``--context``/``--query`` as given: TEXT, or @FILE for the file's text."""
    if value is None:
        raise CtxpatchInputError(f"the context report needs {option} TEXT (or {option} @FILE)")
    if value.startswith("@"):
        return Path(value[1:]).read_text()
    if not value:
        raise CtxpatchInputError(f"{option} is empty; give the text (or @FILE)")
    return value


def load(target: str, dtype: str):
    """(model, tokenizer, label): MODEL as `numeric.hf.models.resolve` reads it (a packaged name, a folder saved with
    ``save_pretrained``, a GGUF file); nothing is downloaded."""
    from numeric.hf import models

    model, tokenizer = models.resolve(target, dtype)
    kind, path = models.kind_of(target), Path(target)
    return model, tokenizer, {"gguf": path.stem, "folder": path.resolve().name}.get(kind, target)


def token_ids(tokenizer, context: str, query: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The context's ids (with the tokenizer's special tokens, e.g. BOS) and the query's (without: it continues)."""
    ctx = tokenizer(context, return_tensors="pt").input_ids
    qry = tokenizer(query, return_tensors="pt", add_special_tokens=False).input_ids
    if qry.shape[1] < 1:
        raise CtxpatchInputError(f"--query {query!r} has no tokens")
    return ctx, qry


def pieces(tokenizer, ids: torch.Tensor) -> list[dict]:
    """Each token: its id and its text (decoded alone, whitespace made visible)."""
    return [{"id": int(i), "text": tokenizer.decode([int(i)]).replace("\n", "\\n").replace(" ", "\u00b7")}
            for i in ids[0]]


# --------------------------------------------------------------------------- patch sizes


def sizes(fields: dict, reference: torch.Tensor) -> dict:
    """One token's patch of one parameter against the parameter: {kind, relative, left, right} (norms)."""
    ref = float(reference.double().norm())
    if "left" in fields:
        left, right = fields["left"].double(), fields["right"].double()
        ln, rn = left.norm(dim=-1), right.norm(dim=-1)  # (1, [E]): one rank-1 patch per expert
        frob = float((ln * rn).pow(2).sum().sqrt())
        return {"kind": "rank1", "relative": frob / ref, "left": float(ln.pow(2).sum().sqrt()),
                "right": float(rn.pow(2).sum().sqrt())}
    if "delta" in fields:
        return {"kind": "scale", "relative": float(fields["delta"].double().norm()) / ref, "left": None, "right": None}
    if "scale" in fields:
        delta = (fields["scale"].double() - 1) * reference.double()
        return {"kind": "scale", "relative": float(delta.norm()) / ref, "left": None, "right": None}
    raise ModelInputError(f"a patch with fields {sorted(fields)}: the report reads rank-1 factors (left, right) and "
                          "scale patches (delta, scale)")


def layer_rows(ps) -> list[dict]:
    """Per layer: strategies, amplification and every parameter's patch sizes, per query token."""
    from numeric.hf.layout import layer_params
    from numeric.hf.offload import get

    layers = get(ps.model, ps.layout.layers)
    rows = []
    for n, lp in enumerate(ps.layers):
        params = layer_params(layers[n], ps.layout[n])
        q = len(lp.strategies) or ps.query_ids.shape[1]
        per_param: dict[str, list[dict]] = {}
        for j in range(q):
            # what each patch is measured against: the token's kernel's references (the effective norm scale)
            refs = {**params, **ps.kernel_for(n, lp.strategies[j] if lp.strategies else None).references(params)}
            for canon, fields in lp.token(j).items():
                per_param.setdefault(canon, []).append(sizes(fields, refs[canon]))
        amps = [None if math.isnan(a) else a for a in lp.amplification]
        rows.append({"layer": n, "arch": ps.layout[n].spec.name, "strategies": list(lp.strategies),
                     "strategy_counts": {s: lp.strategies.count(s) for s in dict.fromkeys(lp.strategies)},
                     "amplification": amps, "max_amplification": max((a for a in amps if a is not None),
                                                                     default=None),
                     "params": per_param, "peaks": [peak(p, s) for p, s in per_param.items()],
                     "largest": [max(p[j]["relative"] for p in per_param.values()) for j in range(q)]})
    return rows


def peak(param: str, per_token: list[dict]) -> dict:
    """A parameter's largest patch over the query tokens: its size, factors' norms and token."""
    j = max(range(len(per_token)), key=lambda i: per_token[i]["relative"])
    return {"param": param, "token": j, **per_token[j]}


# --------------------------------------------------------------------------- errors


class LayerOutputs:
    """Forward hooks on every decoder layer: the hidden states it outputs, in call order (one pass or token by
    token), joined along the sequence axis."""

    def __init__(self, layers):
        self.layers, self.seen, self.handles = layers, {n: [] for n in range(len(layers))}, []

    def __enter__(self):
        for n, layer in enumerate(self.layers):
            self.handles.append(layer.register_forward_hook(lambda m, a, out, n=n: self.seen[n].append(
                (out[0] if isinstance(out, tuple) else out).detach().double())))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def joined(self) -> list[torch.Tensor]:
        return [torch.cat(self.seen[n], -2).reshape(-1, self.seen[n][0].shape[-1]) for n in self.seen]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over tokens of |a_j - b_j| / |b_j| (rows)."""
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-300)).max())


@torch.no_grad()
def runs(model, ps, context_ids, query_ids) -> dict:
    """The contextual run, the query alone, and the patched runs (factored, materialized): last-token logits
    and every layer's output at the query positions."""
    from numeric.hf.offload import get

    layers = get(model, ps.layout.layers)
    c = context_ids.shape[1]
    with LayerOutputs(layers) as hooks:
        full = model(torch.cat([context_ids, query_ids], 1)).logits[0, c:].double()
    out = {"context": {"logits": full, "hidden": [h[c:] for h in hooks.joined()]},
           "alone": {"logits": model(query_ids).logits[0].double(), "hidden": None}}
    for how, fn in (("factored", ps.logits), ("materialized", ps.materialized_logits)):
        with LayerOutputs(layers) as hooks:
            logits = fn()[0].double()
        out[how] = {"logits": logits, "hidden": hooks.joined()}
    return out


def errors(measured: dict) -> dict:
    """Per applied way: logit L-infinity, top-1 agreement per query token, and the relative error of every layer's
    output (error against depth)."""
    ref = measured["context"]
    out = {}
    for how in APPLIED:
        got = measured[how]
        out[how] = {"logit_linf": float((got["logits"] - ref["logits"]).abs().max()),
                    "logit_relative": relative(got["logits"], ref["logits"]),
                    "top1_agree": [bool(a) for a in got["logits"].argmax(-1) == ref["logits"].argmax(-1)],
                    "per_layer": [relative(h, r) for h, r in zip(got["hidden"], ref["hidden"], strict=True)]}
    unpatched = measured["alone"]["logits"]
    out["unpatched"] = {"logit_linf": float((unpatched - ref["logits"]).abs().max()),
                        "logit_relative": relative(unpatched, ref["logits"])}
    return out


def top_k(tokenizer, measured: dict, k: int) -> list[dict]:
    """The next-token top-k after the last query token: with the context, without it, patched (both ways)."""
    rows = []
    for run, label in (("context", "with the context"), ("alone", "without the context"),
                       ("factored", "patched, factored"), ("materialized", "patched, materialized")):
        probs = torch.softmax(measured[run]["logits"][-1], -1)
        p, ids = probs.topk(k)
        rows.append({"run": run, "label": label, "tokens": [
            {"id": int(i), "text": tokenizer.decode([int(i)]).replace("\n", "\\n"), "p": float(v)}
            for v, i in zip(p, ids, strict=True)]})
    return rows


# --------------------------------------------------------------------------- collect


def collect(model, tokenizer, context: str, query: str, label: str, strategy: str | None = None,
            k: int = TOP_K) -> dict:
    """Everything the context report shows (see the module docstring), JSON-ready."""
    from numeric.hf.absorb import absorb_context

    t0 = time.perf_counter()
    torch.manual_seed(0)
    ctx, qry = token_ids(tokenizer, context, query)
    ps = absorb_context(model, ctx, qry, strategy=strategy)
    seconds_absorb = time.perf_counter() - t0
    measured = runs(model, ps, ctx, qry)
    layers = layer_rows(ps)
    strategies = sorted({s for row in layers for s in row["strategies"]})
    return {"model": label, "model_type": model.config.model_type, "dtype": str(model.dtype).removeprefix("torch."),
            "n_layers": len(layers), "archs": sorted({row["arch"] for row in layers}),
            "strategy": strategy or "default", "strategies": strategies, "protocol": "query alone from position 0, "
            "patches computed in the kernels (one pass)",
            "context": context, "query": query, "context_tokens": pieces(tokenizer, ctx),
            "query_tokens": pieces(tokenizer, qry), "layers": layers, "errors": errors(measured),
            "top_k": top_k(tokenizer, measured, k), "k": k, "date": time.strftime("%Y-%m-%d"),
            "seconds": {"absorb": round(seconds_absorb, 2), "total": round(time.perf_counter() - t0, 2)}}


def main(args, console) -> int:
    """``ctxpatch report MODEL --context TEXT --query TEXT``: load, collect, render; print the files written."""
    import json

    from ctxpatch.reporting import context as render

    context, query = text_arg(args.context, "--context"), text_arg(args.query, "--query")
    k = TOP_K if args.top_k is None else args.top_k
    if not 1 <= k <= MAX_TOP_K:
        raise CtxpatchInputError(f"--top-k {k}: allowed 1 to {MAX_TOP_K} (the next tokens the report lists)")
    formats = render.formats(args.format)
    model, tokenizer, label = load(args.arch, args.dtype or "float32")
    data = collect(model, tokenizer, context, query, label, args.strategy, k)
    files = [f for fmt in formats for f in render.render(data, fmt, args.out)]
    if args.json:
        print(json.dumps({"files": [str(f) for f in files], "errors": data["errors"]}, indent=2))
    else:
        e = data["errors"]
        console.print(f"{label}: logit L-inf vs the run with the context: factored {e['factored']['logit_linf']:.2e}, "
                      f"materialized {e['materialized']['logit_linf']:.2e} (unpatched "
                      f"{e['unpatched']['logit_linf']:.2e}); strategies {', '.join(data['strategies'])}", markup=False)
        for f in files:
            console.print(f"wrote {f}", markup=False)
    return 0
