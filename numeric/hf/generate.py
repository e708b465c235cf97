r"""Greedy generation by a model without the context, patched afresh for every new token.
"""

from __future__ import annotations

from collections import Counter
from functools import partial

import torch

from numeric.hf import offload, paired
from numeric.hf.accuracy import PatchAccuracyWarning, collected_ill
from numeric.hf.bounds import logit_bound
from numeric.hf.compat import cached, check_ids, kv_cache, last_logits_only, model_dtype
from numeric.hf.dense import DenseWriter
from numeric.hf.paired import batch_refusal, pair, paired_cache, paired_mask
from numeric.hf.passes import contextual_bases, paired_branches, swapped_branches, token_given
from numeric.hf.runs import materialized_pass, patch_pass
from numeric.hf.selection import Patcher, resolve
from symbolic.errors import ModelInputError
from symbolic.spec import BlockSpec

#: Generation steps run in this process, by path: ``"batched"`` (one forward of batch 2, `numeric.hf.paired`) and
#: ``"two_pass"`` (a one-token pass with the context, then one without it). Read by tests and benchmarks.
STEPS: Counter = Counter()


@torch.no_grad()
def generate_without_context(model, context_ids: torch.Tensor, query_ids: torch.Tensor, max_new_tokens: int,
                             strategy: str | None = None, applied: str = "factored",
                             spec: BlockSpec | str | None = None, params: dict[str, str] | None = None) -> torch.Tensor:
    """Greedy generation by the model WITHOUT the context, patched afresh for every new token.

    Two runs advance one token per step: the contextual run (to read $u_C$ of the new token at every layer)
    and the patched run; the new token's patches depend only on its own $u$ and $u_C$, so no earlier token is
    recomputed. Where `numeric.hf.paired.batch_refusal` allows it (attention caches only, explicit positions:
    Llama, Gemma, GPT-2, ...), a step is ONE forward of batch 2, row 0 the contextual token, row 1 the patched
    one (its cache left-padded, the padding masked), each layer's patches computed within that forward from
    row 0's $u_C$ at the same layer (`numeric.hf.paired.pair`): the weights are read once for both rows.
    Elsewhere (recurrent, SSM or convolution state; positions of the model's own; ``"materialized"``) a step
    is two one-token passes. `STEPS` counts the steps of each path.
    ``applied="factored"`` (default): the kernels apply every token's patches in the model's run (its
    own attention and norms; the MLP branch by the kernel's `apply`); ``"materialized"``: every token's
    patches are written into the model's own modules (Algorithm 1 in the model's arithmetic; dense per-token
    weights, slower: benchmarks/RESULTS.md has both against `model.generate`). Both give the contextual
    run's greedy ids (`tests/test_real_models.py`, `ctxpatch models`). The contextual step also hands each layer
    the products its modules computed (`contextual_bases`, `Adapter.products`), so a patched layer reads its MLP
    matrices once, as the model's own does: a step costs the two passes and the patch checks.
    Every step's next-token logits are compared with the contextual run's (which computes them anyway):
    one `PatchAccuracyWarning` at the end names the steps where they left the dtype's bound or chose
    another token, instead of a warning per layer and token.
    Returns the generated ids, shape (1, max_new_tokens).
    """
    check_ids(context_ids, query_ids, model, later=max(max_new_tokens - 1, 0), logits=True)
    if max_new_tokens < 1:
        raise ModelInputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if applied not in ("materialized", "factored"):
        raise ModelInputError(f"applied must be 'materialized' or 'factored', got {applied!r}")
    layout, candidates = resolve(model, strategy, spec=spec, params=params)
    ill: dict[int, float] = {}
    with collected_ill(ill):
        tokens, steps = _generate(model, Patcher(model, layout, candidates), layout, context_ids, query_ids,
                                  max_new_tokens, applied)
    _verdict(model, steps, ill)
    return torch.cat(tokens, 1)


def _generate(model, patcher: Patcher, layout, context_ids, query_ids, max_new_tokens: int, applied: str):
    """(the generated ids, per step (relative logit error, same greedy token)) of `generate_without_context`."""
    step = partial(materialized_pass, writer=DenseWriter(model, layout)) if applied == "materialized" \
        else patch_pass
    c, q = context_ids.shape[1], query_ids.shape[1]
    given: dict = {}  # layer -> the contextual products of the query rows, then of each new token
    bases, out_C = contextual_bases(model, layout, torch.cat([context_ids, query_ids], 1), given=given,
                                    start=c, use_cache=True, **last_logits_only(model))
    cache_C, cache_P = kv_cache(out_C, model), None
    if applied == "factored":
        _, out_P = step(model, patcher, query_ids, [b[c:] for b in bases], given=given, use_cache=True,
                        **last_logits_only(model))  # the next token reads the last position only
    else:
        for j in range(q):
            _, out_P = step(model, patcher, query_ids[:, j:j + 1], [b[c + j:c + j + 1] for b in bases],
                            head=j == q - 1, given=token_given(given, j),
                            **cached(model, cache_P, j))
            cache_P = kv_cache(out_P, model)
    cache_P = kv_cache(out_P, model)
    if applied == "factored" and batch_refusal(model, (cache_C, cache_P)) is None:
        return _batched(model, patcher, layout, out_C, out_P, paired_cache(cache_C, cache_P), c, q, max_new_tokens)
    tokens, steps = [], []
    for i in range(max_new_tokens):
        nxt = out_P.logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
        steps.append(_compare(out_P.logits[0, -1], out_C.logits[0, -1]))
        tokens.append(nxt)
        if i == max_new_tokens - 1:
            break
        given = {}
        bases, out_C = contextual_bases(model, layout, nxt, given=given, **cached(model, cache_C, c + q + i))
        _, out_P = step(model, patcher, nxt, bases, given=given, **cached(model, cache_P, q + i))
        cache_C, cache_P = kv_cache(out_C, model), kv_cache(out_P, model)
        STEPS["two_pass"] += 1
    return tokens, steps


def _batched(model, patcher: Patcher, layout, out_C, out_P, cache, c: int, q: int, max_new_tokens: int):
    """`_generate`'s steps as one forward of batch 2 each (`numeric.hf.paired`): row 0 the run with the context at
    position c + q + i, row 1 the patched run at q + i, its cache left-padded by c masked entries."""
    tokens, steps = [], []
    logits_C, logits_P = out_C.logits[0, -1], out_P.logits[0, -1]
    mask = paired_mask(c, c + q, device=logits_P.device)

    with _branches(model, patcher, layout), offload.located(model, layout.layers):
        for i in range(max_new_tokens):
            nxt = logits_P.argmax(-1).reshape(1, 1)
            steps.append(_compare(logits_P, logits_C))
            tokens.append(nxt)
            if i == max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask[:, :1].new_ones(2, 1)], 1)
            positions = torch.tensor([[c + q + i], [q + i]], device=mask.device)
            out = model(torch.cat([nxt, nxt]).to(mask.device), attention_mask=mask, position_ids=positions,
                        **cached(model, cache), **last_logits_only(model))
            cache, logits_C, logits_P = kv_cache(out, model), out.logits[0, -1], out.logits[1, -1]
            STEPS["batched"] += 1
    return tokens, steps


def _branches(model, patcher: Patcher, layout):
    """The hooks of a batched step: each patched layer's MLP branch on both rows by `pair` (row 0 by the model's
    own modules or by the kernel: `paired.CONTEXT_ROW`)."""
    def patches_for(n):
        return lambda u, u_C, x, given, plain=None: patcher.layer(n, u, u_C, x, given, plain)

    def patched_row(n, u_C, u, x_C, x, given, twins=None):
        return pair(patcher.kernels[layout[n].spec], patcher.params(n), u_C, u, patches_for(n), x_C, x, given,
                    twins=twins)[1]

    def both_rows(n, params, u, x):
        y_C, y, _ = pair(patcher.kernels[layout[n].spec], params, u[:1], u[1:], patches_for(n),
                         None if x is None else x[:1], None if x is None else x[1:], contextual=True)
        return torch.cat([y_C, y])

    if paired.CONTEXT_ROW == "kernel":
        return swapped_branches(model, layout, None, None, sub_block=both_rows)
    return paired_branches(model, layout, patched_row)


def _compare(patched: torch.Tensor, want: torch.Tensor) -> tuple[float, bool]:
    """(max|Δ|/max|logit|, the same greedy token) of one step's next-token logits."""
    want, patched = want.double(), patched.double()
    return float((patched - want).abs().max() / want.abs().max()), bool(patched.argmax() == want.argmax())


def _verdict(model, steps: list[tuple[float, bool]], ill: dict[int, float]) -> None:
    """One warning for the whole generation when some step left the bound or chose another token."""
    import warnings

    dtype = model_dtype(model)
    bound = logit_bound(dtype)
    out = [i for i, (err, _) in enumerate(steps) if not err <= bound]
    other = [i for i, (_, same) in enumerate(steps) if not same]
    if not out and not other:
        return
    worst = max(range(len(steps)), key=lambda i: steps[i][0] if steps[i][0] == steps[i][0] else float("inf"))
    text = (f"generate_without_context: the patched next-token logits left the {str(dtype).removeprefix('torch.')} "
            f"bound {bound:.1e} at {len(out)} of {len(steps)} steps (worst {steps[worst][0]:.2e} at step {worst})")
    if other:
        text += f"; the greedy token differs from the run with the context at steps {other[:8]}"
    if ill:
        text += f"; ill-conditioned patches at layers {sorted(ill)}"
    text += (". What to do: absorb_context on the query measures each layer (PatchSet.accuracy); try the default "
             "strategy (least amplification), the other `applied`, or a wider dtype.")
    warnings.warn(text, PatchAccuracyWarning, stacklevel=3)
