r"""A sequence patch grown by one rank per token (Greville's update), exact for the sequence so far.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from numeric.hf.compat import cached, check_ids, explicit_step_positions, kv_cache, last_logits_only
from numeric.hf.infer import layout_for
from numeric.hf.sequence import (
    Induction,
    SequenceLayer,
    SequencePatch,
    bias64,
    record_hooks,
    residual_u,
    run_hooks,
    saved_parameters,
    site_for,
    touched_parameters,
    uniform,
    weight64,
)
from numeric.hf.sequence_algebra import greville, scale_for, shared_scale
from symbolic.errors import PatchConditionError
from symbolic.spec import BlockSpec


class _Growth(Induction):
    """Forward hooks of a ONE-token pass (the key/value cache of the patched run holds the earlier tokens):
    each map's factors gain the new token by `greville`, from its actual input, before the map runs."""

    def __init__(self, base: Induction, ctx: dict, token: int, rescale: bool):
        self.__dict__.update(base.__dict__)
        self.ctx, self.token, self.now, self.rescale, self.rescaled = ctx, token, {}, rescale, []

    def input_hook(self, n: int, path: str):
        def hook(module, args):
            z = self.rows(args[0])[-1].detach().double()  # (d,)
            zC = self.ctx[n][("in", path)][-1]
            W = weight64(module, self.site)
            lp = self.layers[n]
            B, A = lp.lora[path]
            self.kept[n][path], A, cond = greville(self.kept[n][path], A, z, f"Z:{path}", n, self.token)
            B = torch.cat([B, (W @ (zC - z))[:, None]], 1)
            self.write(module, B, A)
            lp.lora[path], lp.condition[f"Z:{path}"], lp.rank = (B, A), cond, max(lp.rank, A.shape[0])
            miss = W @ z + B @ (A @ z) - W @ zC
            lp.residual = max(lp.residual, float(miss.abs().max() / (W @ zC).abs().max().clamp_min(1e-300)))
        return hook

    def output_hook(self, n: int):
        def hook(module, args):
            a = self.rows(args[0])[-1].detach().double()  # (m,)
            rec, lp, kept, down = self.ctx[n], self.layers[n], self.kept[n], self.site.down
            target = (residual_u(rec) + rec["b"] - residual_u(self.now[n]))[-1]  # (d,)
            W = weight64(module, self.site)
            B, A = lp.lora[down]
            kept[down], A, cond = greville(kept[down], A, a, "A", n, self.token)
            if self.site.post_norm is not None:
                sign, w = kept["w"]
                kept["T"] = torch.cat([kept["T"], target[None]])
                kept["c0"] = torch.cat([kept["c0"], (rec["h"][-1].pow(2).mean() + self.site.eps).sqrt()[None]])
                try:
                    target = scale_for(target, w, self.site.eps, n, self.token) * target * (sign * w.sqrt())
                except PatchConditionError:
                    if not self.rescale:
                        raise
                    H = self._rescale(n, kept, lp)  # (q+1, d): every token's down output under the new scale
                    B = (H - (W @ kept[down]).T - bias64(module)).T  # all columns: their targets moved
                    target = H[-1]
            if B.shape[1] < A.shape[0]:
                B = torch.cat([B, (target - W @ a - bias64(module))[:, None]], 1)
            self.write(module, B, A)
            lp.lora[down], lp.condition["A"], lp.rank = (B, A), cond, max(lp.rank, A.shape[0])
            miss = W @ a + B @ (A @ a) + bias64(module) - target
            lp.residual = max(lp.residual, float(miss.abs().max() / target.abs().max().clamp_min(1e-300)))
        return hook

    def _rescale(self, n: int, kept: dict, lp: SequenceLayer) -> torch.Tensor:
        """A new shared scale for layer n's post-norm (`shared_scale` over all q+1 targets), written in; the down
        outputs (d, q+1) every token then needs. Only this layer's scale and W_down's B change: every earlier
        token's post-norm output, hence every state above, stays what it was."""
        norm = self.model.get_submodule(self.adapter.layers)[n].get_submodule(self.site.post_norm)
        w, c = shared_scale(kept["T"], kept["c0"], kept["gamma"], self.site.eps, n)
        sign = kept["w"][0]
        stored = sign / w.sqrt() - (1 if self.site.one_plus else 0)
        lp.scale[self.site.post_norm + ".weight"] = stored.to(norm.weight.dtype)
        norm.weight.detach().copy_(stored.to(norm.weight.dtype))
        lp.condition["gamma'"] = float(w.max().sqrt() / w.min().sqrt())
        kept["w"] = (sign, w)
        self.rescaled.append(n)
        return c[:, None] * kept["T"] * (sign * w.sqrt())


class GrowingSequence:
    r"""A sequence patch grown by one rank per token: exact for the sequence so far, updated, not refitted.

    Starts as `absorb_sequence` on the first tokens (q0); `step(token)` appends one token: one pass of the
    contextual run and one of the patched run, each of that ONE token with its own key/value cache (the
    earlier tokens are not rerun). Layer by layer (Algorithm 1's induction), each map's LoRA factors gain
    the token by Greville's update (`greville`): A gains a row (its old rows get a rank-one correction
    $-d\,b^\top$ with $b^\top Z = 0$), B gains a column (its old columns are kept as they are), so
    $\Delta W' = \Delta W + (W z_C - (W + \Delta W) z)\, b^\top$: the earlier tokens' map outputs, hence
    their states and the cached keys and values, do not change. A Gemma post-norm keeps its shared scale
    $\gamma'$; the new token's pre-norm RMS $c$ comes from its own condition (`scale_for`), which refuses
    with PatchConditionError (naming the layer) where no $c$ exists, unless ``rescale=True``: then that
    layer alone gets a new shared scale (`shared_scale` over all its tokens' targets) and its W_down's B
    is recomputed for every token (A is still updated); the other layers and every earlier token's states
    are untouched (``rescaled`` lists where). Dependent inputs and q beyond a map's input size are
    refused (`greville`). The factors are applied as peft applies LoRA (``applied="lora"``). A refused
    step leaves the patch as it was. ``spec``/``params`` as in `absorb_sequence`.

    >>> g = GrowingSequence(model, context_ids, query_ids[:, :8])   # doctest: +SKIP
    >>> out = g.step(int(query_ids[0, 8]))    # {"contextual", "grown", "before"} logits of that token
    >>> g.patch.save_peft("adapter")          # rank 9 now, exact on all 9 tokens
    """

    @torch.no_grad()
    def __init__(self, model, context_ids: torch.Tensor, query_ids: torch.Tensor, rescale: bool = False,
                 spec: BlockSpec | str | None = None, params: dict[str, str] | None = None):
        check_ids(context_ids, query_ids, model, logits=True)
        explicit_step_positions(model)  # decided on the model as it is, before any hook or patch
        self.rescale, self.rescaled = rescale, []  # rescaled: (token, layer) where a new shared scale was solved
        self.model, self.adapter = model, uniform(layout_for(model, spec, params))
        self.site = site_for(model, self.adapter)
        ctx: dict = {}
        out = run_hooks(model, record_hooks(model, self.adapter, self.site, ctx, context_ids.shape[1]),
                        torch.cat([context_ids, query_ids], 1), use_cache=True, **last_logits_only(model))
        self.context_cache = kv_cache(out, model)
        self.ind = Induction(model, self.adapter, self.site, ctx, "lora")
        with saved_parameters(touched_parameters(model, self.adapter, self.site)):
            self.cache = kv_cache(run_hooks(model, self.ind.hooks(), query_ids, use_cache=True), model)
        self.ids, self.context_len = query_ids, context_ids.shape[1]

    @property
    def patch(self) -> SequencePatch:
        """The patch as it stands (shares the factors; later steps grow it)."""
        return SequencePatch(self.model, self.ids, self.ind.layers, self.adapter, self.site, "lora")

    @torch.no_grad()
    def step(self, token: int, before: bool = False) -> dict:
        """Grow by one token: the contextual and the grown patch's logits of it ((vocab,), float64), and with
        ``before`` those of the patch as it was (the next-token prediction a frozen patch would give)."""
        ids = torch.tensor([[int(token)]], dtype=self.ids.dtype)
        check_ids(ids, ids, self.model)
        out, at = {}, self.ids.shape[1]  # the new token's position in the query run
        if before:
            steps = cached(self.model, copy.deepcopy(self.cache), at)
            with self.patch.factored() as model:
                out["before"] = model(ids, **steps).logits[0, -1]
        rec: dict = {}
        ctx = run_hooks(self.model, record_hooks(self.model, self.adapter, self.site, rec, 0), ids,
                        **cached(self.model, copy.deepcopy(self.context_cache), self.context_len + at))
        out["contextual"] = ctx.logits[0, -1]
        grow = _Growth(self.ind, rec, self.ids.shape[1], self.rescale)
        saved = ([dataclasses.replace(lp, lora=dict(lp.lora), condition=dict(lp.condition),
                                       scale=dict(lp.scale)) for lp in self.ind.layers],
                 {n: dict(k) for n, k in self.ind.kept.items()}, dict(self.ind.cast))
        layers = self.model.get_submodule(self.adapter.layers)
        try:
            with saved_parameters(touched_parameters(self.model, self.adapter, self.site)):
                for n, lp in enumerate(self.ind.layers):  # the kept shared post-norm scales
                    for name, value in lp.scale.items():
                        layers[n].get_parameter(name).detach().copy_(value)
                res = run_hooks(self.model, grow.hooks(), ids, **cached(self.model, copy.deepcopy(self.cache), at))
        except PatchConditionError:  # the patch stays as it was, exact for the tokens before
            self.ind.layers[:], kept, cast = saved
            self.ind.kept.update(kept)
            self.ind.cast.clear()
            self.ind.cast.update(cast)
            raise
        self.context_cache, self.cache = kv_cache(ctx, self.model), kv_cache(res, self.model)
        out["grown"] = res.logits[0, -1]
        self.ids = torch.cat([self.ids, ids], 1)
        self.rescaled += [(self.ids.shape[1] - 1, n) for n in grow.rescaled]
        return {k: v.double() for k, v in out.items()}
