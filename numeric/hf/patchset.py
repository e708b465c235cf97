r"""`PatchSet`: per-layer patches of a query, and the runs that replay them.

`PatchSet.logits()` runs the query alone with the patches applied factored by the kernels, in the protocol
they were computed in; `PatchSet.materialized_logits()` writes them into the model's own modules (dense, per
token) and runs the model unchanged. The replay in the arithmetic the patches were computed in
(``accuracy.exact``) reproduces the run absorb_context measured; each replay measures itself against the run
with the context (`numeric.hf.accuracy`) and warns once when it leaves its bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from numeric.hf import offload
from numeric.hf.accuracy import Accuracy, Reference, check
from numeric.hf.compat import cached, explicit_step_positions, kv_cache
from numeric.hf.dense import DenseWriter
from numeric.hf.layout import Layout
from numeric.hf.passes import layer_outputs, stacked, swapped_branches, token_pass
from numeric.hf.patches import LayerPatches
from symbolic.errors import ModelInputError
from symbolic.spec import BlockSpec


@dataclass
class PatchSet:
    """Per-layer patches of a query; `logits()` runs the query alone with them (factored) and
    `materialized_logits()` with them written into the model's own modules (dense, per token).

    ``accuracy`` (`numeric.hf.accuracy.Accuracy`): the figures of the runs measured so far against the run
    with the context (``reference``), with the bound of the model's dtype; ``patch_dtype``: the arithmetic of
    the kernels (computing and applying the patches; None: the model's dtype)."""

    model: object
    query_ids: torch.Tensor
    layers: list[LayerPatches]
    layout: Layout
    positions: torch.Tensor | None = None  # keep_positions: each token alone at its absolute position
    kernels: dict = field(default_factory=dict)  # spec -> {output strategy: kernel module}, the default first
    incremental: bool = False  # computed token by token through the key/value cache: `logits` replays that
    patch_dtype: torch.dtype | None = None
    reference: Reference | None = None
    accuracy: Accuracy | None = None

    @property
    def spec(self) -> BlockSpec:
        """The spec of the first layer (`layout` has every layer's)."""
        return self.layout.specs[0]

    def kernel_for(self, n: int, strategy: str | None = None):
        """Layer n's kernel of an output strategy (its spec's default when None)."""
        candidates = self.kernels[self.layout[n].spec]
        return candidates.get(strategy) if strategy in candidates else next(iter(candidates.values()))

    @property
    def kernel(self):
        """The first layer's default kernel."""
        return self.kernel_for(0)

    def save(self, path, **record):
        """Write the patches to a patch file: safetensors and a JSON header with the model's fingerprint
        (`numeric.hf.store.save`; ``record``: ``context_ids``, ``errors``, ``meta``, ``source``)."""
        from numeric.hf import store

        return store.save(self, path, **record)

    @classmethod
    def load(cls, path, model, **options) -> PatchSet:
        """The patch set of a patch file on `model`, refused (`numeric.hf.store.FingerprintMismatch`) unless the
        model is the one it was absorbed on (`numeric.hf.store.fields`); ``options``: ``spec``, ``params``."""
        from dataclasses import fields

        from numeric.hf import store

        given = store.fields(*store.read(path), model, path, **options)
        return cls(**{f.name: given[f.name] for f in fields(cls) if f.name in given})

    def _run(self):
        """The query run with the factored patches, in the protocol they were computed in: one pass; each token
        alone at its absolute position (``positions``); or token by token through the key/value cache
        (``incremental``; a patch fits the u its own protocol produced, and a model's cached and one-pass runs
        may differ: Moshi's cache keeps a sliding window that its full causal mask does not apply)."""
        if self.positions is None and not self.incremental:
            with swapped_branches(self.model, self.layout, lambda n: LayerKernel(self, n),
                                  lambda n, u, x, plain: self.layers[n]), \
                    offload.located(self.model, self.layout.layers):
                return self.model(self.query_ids)
        outs, cache = [], None
        for j in range(self.query_ids.shape[1]):
            kwargs = cached(self.model, cache) if self.positions is None else \
                {"position_ids": self.positions[:, j:j + 1]}
            with swapped_branches(self.model, self.layout, lambda n: LayerKernel(self, n, share=False),  # token j alone
                                  lambda n, u, x, plain, j=j: (self.layers[n], j)), \
                    offload.located(self.model, self.layout.layers):
                outs.append(self.model(self.query_ids[:, j:j + 1], **kwargs))
            cache = kv_cache(outs[-1], self.model) if self.positions is None else None
        return outs

    @torch.no_grad()
    def logits(self) -> torch.Tensor:
        """(1, q, vocab): the no-context run with the patches applied, in the protocol they were computed in;
        measured against the run with the context (``accuracy.figures["factored"]``)."""
        out, states = self._measured(self._run)
        logits = out.logits if not isinstance(out, list) else torch.cat([o.logits for o in out], 1)
        self._check("factored", logits, states, "PatchSet.logits")
        return logits

    @torch.no_grad()
    def hidden_states(self) -> torch.Tensor:
        """(1, q, d): the last hidden state of the patched no-context run (encoders), measured as `logits`."""
        out, states = self._measured(self._run)
        hidden = torch.cat([o.last_hidden_state for o in out], 1) if isinstance(out, list) else out.last_hidden_state
        self._check("factored", hidden, states, "PatchSet.hidden_states")
        return hidden

    def _measured(self, run, *args):
        """``run(*args)`` with every layer's output recorded (`layer_outputs`)."""
        with layer_outputs(self.model, self.layout) as rows:
            out = run(*args)
        return out, stacked(rows) if rows else None

    def _check(self, which: str, output: torch.Tensor, states, caller: str) -> None:
        if self.reference is not None and self.accuracy is not None:
            check(self, which, self.reference.compare(output, states), caller)

    @torch.no_grad()
    def materialized_logits(self, layers: int | None = None) -> torch.Tensor:
        r"""(1, q, vocab): the query run by the model's own modules with the patches written into its weights.

        For query token $j$ every patched parameter $P$ of every layer becomes
        $P + U_j V_j^\top$ (`rank1`) or `values[j]`, densely, in the model's own storage and dtype;
        the model's forward runs unchanged. Tokens go one at a time through the key/value cache
        (from position 0), so token $j$ attends to the states the earlier query tokens produced
        with *their own* patched weights; with ``keep_positions`` each token runs alone at its
        absolute position. Every parameter is restored afterwards. Decoders only (an encoder's
        tokens see later tokens, which a per-token weight cannot express). ``layers``: write the
        patches of the first `layers` layers only (the others keep their weights; a depth study).
        """
        if self.layout.encoder and self.positions is None:
            raise ModelInputError("materialized_logits runs the query token by token, which an encoder cannot do "
                                  "(every token sees the later ones); absorb with keep_positions=True")
        explicit_step_positions(self.model)  # decided on the model as it is, before the measuring hooks
        if layers is not None:  # a depth study: not the patched run, not measured
            return torch.cat([o.logits for o in self._materialized(layers)], 1)
        outs, states = self._measured(self._materialized)
        logits = torch.cat([o.logits for o in outs], 1)
        self._check("materialized", logits, states, "PatchSet.materialized_logits")
        return logits

    def _materialized(self, upto: int | None = None) -> list:
        upto = len(self.layout) if upto is None else upto
        outs, cache, writer = [], None, DenseWriter(self.model, self.layout)
        for j in range(self.query_ids.shape[1]):
            def dense(n, u, x, j=j):
                return (self.layers[n], j) if n < upto else None

            ids = self.query_ids[:, j:j + 1]
            if self.positions is None:
                out = token_pass(self.model, self.layout, ids, dense, writer, **cached(self.model, cache, j))
                cache = kv_cache(out, self.model)
            else:
                out = token_pass(self.model, self.layout, ids, dense, writer, position_ids=self.positions[:, j:j + 1])
            outs.append(out)
        return outs


class LayerKernel:
    """`apply` of a layer's factored patches with each token's own strategy kernel (for `swapped_branches`)."""

    def __init__(self, ps: PatchSet, n: int, share: bool = True):
        self.ps, self.n, self.share = ps, n, share  # share: offer the no-context products (`plain`)

    def plain(self, params, u, **extra) -> dict | None:
        """The no-context products of u that the layer's kernels take ready-made (the `plain_products` of its spec's
        default kernel; each kernel takes only the products it would compute itself, by their keys); None where
        the kernels compute in the patch dtype or the block has none."""
        wide = self.ps.patch_dtype
        fn = getattr(self.ps.kernel_for(self.n), "plain_products", None)
        if fn is None or not self.share or (wide is not None and wide != u.dtype):
            return None
        return fn(params, u, **extra)

    def apply(self, params, which, u, plain: dict | None = None, **extra):
        """The patched branch of every token (``which``: the LayerPatches, or (LayerPatches, j) for token j alone).
        ``plain`` (`plain`) is taken where the tokens share one strategy and are applied in one call, the call a
        replay makes: the same bits as without it."""
        wide = self.ps.patch_dtype
        if wide is not None and wide != u.dtype:  # the kernels' arithmetic: the patch dtype (the caller casts back)
            params = {k: v.to(wide) for k, v in params.items()}
            u, extra = u.to(wide), {k: v.to(wide) for k, v in extra.items()}
        lp, only = which if isinstance(which, tuple) else (which, None)
        if only is not None:
            return self._one(params, lp, only, u, extra)
        if lp.factored and len(set(lp.strategies)) <= 1:
            kernel = self.ps.kernel_for(self.n, lp.strategies[0] if lp.strategies else None)
            return kernel.apply(params, lp.factored, u, **extra, **({"plain": plain} if plain else {}))
        rows = [self._one(params, lp, j, u[j:j + 1], {k: v[j:j + 1] for k, v in extra.items()})
                for j in range(u.shape[0])]
        return torch.cat(rows)

    def _one(self, params, lp, j, u, extra):
        kernel = self.ps.kernel_for(self.n, lp.strategies[j] if lp.strategies else None)
        return kernel.apply(params, lp.token(j), u, **extra)
