r"""One token-independent patch per layer, fitted by least squares over many queries of one context.
"""

from __future__ import annotations

import torch

from numeric.hf.compat import check_ids, last_logits_only
from numeric.hf.infer import layout_for
from numeric.hf.sequence import (
    Induction,
    SequencePatch,
    Site,
    bias64,
    gamma64,
    record_hooks,
    residual_u,
    run_hooks,
    saved_parameters,
    site_for,
    touched_parameters,
    uniform,
    weight64,
)
from numeric.hf.sequence_algebra import SCALE_FLOOR, reduced_rank
from symbolic.errors import ModelInputError
from symbolic.spec import BlockSpec


class _Shared(Induction):
    """Forward hooks of ONE batched pass of all queries (right-padded; ``mask`` marks their tokens): each
    map's rank-r least-squares patch over all their tokens, from the inputs the patched layers below give."""

    def __init__(self, model, adapter, site: Site, ctx: dict, mask: torch.Tensor, rank: int, rcond: float):
        super().__init__(model, adapter, site, ctx, "lora")
        self.mask, self.r, self.rcond = mask, rank, rcond

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(*self.mask.shape, t.shape[-1])[self.mask]  # (B, T, .), or OPT's (B T, .) rows

    def _fit(self, module, n: int, path: str, Y: torch.Tensor, X: torch.Tensor) -> None:
        B, A = reduced_rank(Y, X, self.r, self.rcond)
        self.write(module, B, A)
        lp = self.layers[n]
        lp.lora[path], lp.rank = (B, A), max(lp.rank, A.shape[0])
        lp.residual = max(lp.residual, float((B @ (A @ X) - Y).norm() / Y.norm().clamp_min(1e-300)))

    def input_hook(self, n: int, path: str):
        def hook(module, args):
            Z = self.rows(args[0]).detach().double().T  # (d, N): every query's tokens
            W = weight64(module, self.site)
            self._fit(module, n, path, W @ (self.ctx[n][("in", path)].T - Z), Z)
        return hook

    def output_hook(self, n: int):
        def hook(module, args):
            a = self.rows(args[0]).detach().double().T  # (m, N)
            rec = self.ctx[n]
            target = residual_u(rec) + rec["b"] - residual_u(self.now[n])  # (N, d)
            if self.site.post_norm is not None:  # the norm's own scale kept: aim at a pre-norm value
                norm = self.model.get_submodule(self.adapter.layers)[n].get_submodule(self.site.post_norm)
                gamma = gamma64(norm, self.site)
                inv = torch.where(gamma.abs() > SCALE_FLOOR * gamma.pow(2).mean().sqrt(), 1 / gamma, 0.0)
                h = target * inv
                target = h * (rec["h"].pow(2).mean(-1, keepdim=True).sqrt() / h.pow(2).mean(-1, keepdim=True).sqrt()
                              .clamp_min(1e-300))
            W = weight64(module, self.site)
            Y = W @ a + (bias64(module)[:, None] if isinstance(bias64(module), torch.Tensor) else 0.0)
            self._fit(module, n, self.site.down, target.T - Y, a)
        return hook


@torch.no_grad()
def shared_patch(model, context_ids: torch.Tensor, queries: list[torch.Tensor], rank: int = 8,
                 rcond: float = 1e-6, spec: BlockSpec | str | None = None,
                 params: dict[str, str] | None = None) -> SequencePatch:
    r"""ONE token-independent patch per layer (rank $\le$ `rank`), fitted by least squares over all tokens of
    many queries of one context (in the spirit of arXiv:2510.08734's context "thought" patches).

    Layer by layer as `absorb_sequence`: one contextual pass per query records the targets; one batched
    pass of all queries (right-padded) fits each map, from the inputs the fitted layers below give, by
    `reduced_rank` over the stacked inputs of every query token (the minimum-norm least-squares patch
    where the tokens are fewer than the input size, plain least squares where more, then truncated to
    rank r optimally for the residual). Not exact anywhere: it is the rank-r fit of the targets. A Gemma
    post-norm keeps its own scale; W_down aims at $t / \gamma$ rescaled to the contextual pre-norm RMS
    (exact where $\mathrm{RMS}(t/\gamma) = 1$; zero where $\gamma$ is). Applied as a LoRA adapter to any
    token sequence: ``shared_patch(...).logits(ids)``. ``spec``/``params`` as in `absorb_sequence`.
    """
    if not queries:
        raise ModelInputError("shared_patch needs at least one query")
    if not (isinstance(rank, int) and rank >= 1):
        raise ModelInputError(f"rank must be a positive integer, got {rank!r}")
    for q in queries:
        check_ids(context_ids, q, model, logits=True)
    adapter = uniform(layout_for(model, spec, params))
    site = site_for(model, adapter)
    records = []
    for q in queries:
        rec: dict = {}
        run_hooks(model, record_hooks(model, adapter, site, rec, context_ids.shape[1]), torch.cat([context_ids, q], 1),
                  **last_logits_only(model))
        records.append(rec)
    ctx = {n: {k: torch.cat([r[n][k] for r in records], 0) for k in records[0][n]} for n in records[0]}
    width = max(q.shape[1] for q in queries)
    ids = torch.zeros(len(queries), width, dtype=queries[0].dtype)
    mask = torch.zeros(len(queries), width, dtype=torch.bool)
    for i, q in enumerate(queries):
        ids[i, :q.shape[1]], mask[i, :q.shape[1]] = q[0], True
    ind = _Shared(model, adapter, site, ctx, mask, rank, rcond)
    with saved_parameters(touched_parameters(model, adapter, site)):
        run_hooks(model, ind.hooks(), ids, attention_mask=mask.long())
    return SequencePatch(model, queries[0], ind.layers, adapter, site, "lora")
