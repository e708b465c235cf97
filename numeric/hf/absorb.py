r"""Absorb a context into per-token, per-layer MLP patches of a Hugging Face transformers model.

`absorb_context(model, context_ids, query_ids) -> PatchSet`: the contextual run feeds ``[context; query]``
and records, at every layer, the residual stream $u_C$ that the MLP branch is added to, at the query
positions. The query is then run alone (positions from 0, or each token alone at its absolute position with
``keep_positions=True``, the paper's reduced run); at every layer a hook reads the actual patched state $u$
below it and computes that layer's patches with the generated torch kernel (`block_patches`): the
self-correcting layer-by-layer algorithm of arXiv:2511.17864 (Algorithm 1). By default the query runs in one
pass, the MLP branches applying the patches factored (`PatchSet.logits`), every token's patches of a layer
computed at once. ``computed_in="model"`` runs it in the model's own arithmetic instead: token by token
(key/value cache) through the model's own modules, each layer's dense patched weights written in per token
(`PatchSet.materialized_logits` replays exactly that). A patch computed in one arithmetic and applied in
another drifts apart with depth when it amplifies: the patched block moves its output by about
max|dw| / |gamma| times any change of its input (large for Theorem 1 on real Gemma weights), and Algorithm 1
corrects only the rounding of the computation that applies the patches (docs/theory.md, "Pitfalls"). So
``"model"`` is the default for a named strategy, whose amplification the default's choice does not bound.

The default output strategy is chosen per layer and token among the block's exact strategies: the
well-conditioned one with the least `amplification` of input perturbations (`numeric.hf.selection`;
Theorem 1 is kept by name, ``strategy="norm_vector"``); ``layer.strategies`` records the choice.

What the layers are is inferred from the model (`numeric.hf.infer.layout_for`): a `Layout` holds, per layer,
an `Adapter` with the layer's `BlockSpec`, where the MLP-side modules live, and how the canonical parameters
(`W_gate`, `experts.W_down`, ...) map onto the model's parameters (stored transposed for GPT-2's Conv1D, fused
gate/up rows, stacked expert tensors); every layer's spec is checked against the module numerically before
any patch. ``spec=`` and ``params=`` declare what inference cannot.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from numeric.hf.accuracy import EXACT, Accuracy, Reference, check, collected_ill
from numeric.hf.compat import cached, check_ids, finite_run, keep_logits, kv_cache, model_dtype, outputs_of
from numeric.hf.dense import DenseWriter
from numeric.hf.offload import get
from numeric.hf.passes import contextual_bases, layer_outputs, stacked, token_given
from numeric.hf.patches import merge_tokens
from numeric.hf.patchset import PatchSet
from numeric.hf.runs import materialized_pass, patch_pass
from numeric.hf.selection import DEFAULT, Memory, Patcher, resolve
from numeric.hf.sequence import SequencePatch, absorb_sequence
from symbolic.errors import ModelInputError, PatchConditionError
from symbolic.spec import BlockSpec

COMPUTED_IN = ("model", "kernel")
MODES = {"token": "per-token patches", "sequence": "one patch per layer"}


@dataclass(frozen=True)
class Options:
    r"""How `absorb_context` computes the patches: the protocol of the query run, the strategies, the block.

    ``keep_positions=True`` runs each query token alone at its absolute position (the paper's reduced run);
    the default runs the query alone from position 0. ``strategy``: an output strategy by name (``norm_vector``
    is the paper's Theorem 1), or ``None``/``"default"``: per layer and token, the exact strategy of least
    `amplification` (recorded in ``layer.strategies``); ``input_strategy`` likewise. ``patch_dtype`` computes
    the patches in a wider dtype than the model's (e.g. float32 for a bfloat16 model, or for a float16 model
    whose residual stream squares past float16's range) and keeps them in it: the kernels apply them in it too
    (the factored run; its output cast to the model's dtype), and writing them into the model's weights rounds
    $P + U V^\top$ once to the model's dtype.

    ``computed_in="kernel"`` (the default): one pass of the whole query through the model's own attention and
    norms, the MLP branches applying the patches factored by the kernels; layer n's patches are computed from
    the u this run produces, all tokens at once (`Patcher`), so `PatchSet.logits()` reproduces the contextual
    run; written into the weights (`PatchSet.materialized_logits()`) the patches carry the kernel/module
    rounding difference unamplified, the chosen strategies amplifying at most
    `numeric.hf.selection.ACCEPT`. ``"model"`` (the default when a strategy is named, whose amplification
    nothing bounds): Algorithm 1 in the model's arithmetic. The query goes token by token through the
    model's own modules with each lower layer's patches written into its weights, and layer n's patches are
    computed from the u those modules produce, so `PatchSet.materialized_logits()` reproduces the contextual
    run at the model's own round-off; one token at a time, it costs several times the one-pass run. The
    errors and costs of both, per model and context, are in benchmarks/RESULTS.md.

    ``measure=False`` skips the `amplification` of a strategy named explicitly (NaN is recorded).
    ``spec``/``params``: the user's spec (catalog name, TOML path or `BlockSpec`) and its parameter map
    {canonical name: parameter path in a layer, ``path:layout`` for a non-(out, in) storage}, instead of the
    inferred ones; either way every layer is checked against the model first (`layout_for`).
    """

    keep_positions: bool = False
    strategy: str | None = None
    input_strategy: str | None = None
    patch_dtype: torch.dtype | None = None
    computed_in: str | None = None
    measure: bool = True
    spec: BlockSpec | str | None = None
    params: dict[str, str] | None = None

    def __post_init__(self):
        if self.computed_in is not None and self.computed_in not in COMPUTED_IN:
            raise ModelInputError(f"computed_in must be one of {', '.join(COMPUTED_IN)}, got {self.computed_in!r}")

    def protocol(self, encoder: bool) -> str:
        """``computed_in`` as it applies to a model (``encoder``: every token sees the later ones): a named
        strategy may amplify round-off, so it is computed where Algorithm 1 corrects it, in the model."""
        if self.computed_in is None:
            named = self.strategy not in (None, DEFAULT) and not (encoder and not self.keep_positions)
            return "model" if named else "kernel"
        if self.computed_in == "model" and encoder and not self.keep_positions:
            raise ModelInputError("computed_in='model' runs the query token by token, which an encoder (every token "
                                  "sees the later ones) cannot do; use keep_positions=True or computed_in='kernel'")
        return self.computed_in


@torch.no_grad()
def absorb_context(model, context_ids: torch.Tensor, query_ids: torch.Tensor, options: Options | None = None, *,
                   memory: dict[int, str] | None = None, mode: str = "token", **fields) -> PatchSet:
    """Per-token, per-layer patches that make the query-alone run reproduce the run with the context.

    ``options``: an `Options`, or its fields as keywords (``strategy="stable"``, ``keep_positions=True``,
    ...), which override the given one's. ``memory``: {layer: strategy} the default tries first (a layer
    without one: the layer below's), updated with its choices; pass the same dict to successive calls (one
    token each, as the paper's protocol does) to save their time. The contextual products of the patch
    formulas (W_gate z_C, ...) are read from the modules of the run with the context that computed them,
    where the layout found such modules (`Adapter.products`), so the patches do not read those matrices again.

    The patch set measures itself (`PatchSet.accuracy`, `numeric.hf.accuracy`): the patched run's outputs on
    the query tokens against the run with the context, which this call computes anyway, with the bound of
    the model's dtype (`numeric.hf.bounds.logit_bound`); above it, one `PatchAccuracyWarning` names the layer
    where the patched state leaves the contextual one, the worst tokens and what to do. Refused by name
    (`ModelInputError`): what is not a transformers model, a model in training mode, a dtype other than
    float64/32/bfloat16/float16, a patch dtype narrower than the model's, a run past a learned position
    table, a residual stream the patch arithmetic cannot square (float16), a model whose own run overflows.

    ``mode="sequence"`` is `absorb_sequence` under this name (one patch per layer for all query tokens at once,
    a PEFT LoRA adapter; the design's contract names it so): it returns a `SequencePatch` and takes ``spec``
    and ``params`` only.
    """
    if mode not in MODES:
        raise ModelInputError(f"mode must be 'token' (per-token patches) or 'sequence' (one patch per layer), "
                              f"got {mode!r}")
    if options is not None and not isinstance(options, Options):
        raise TypeError(f"options must be an Options (or its fields as keywords), got {type(options).__name__}")
    options = dataclasses.replace(options or Options(), **fields)
    if mode == "sequence":
        return _as_sequence(model, context_ids, query_ids, options, memory)
    check_ids(context_ids, query_ids, model)
    dtype = model_dtype(model)
    check_patch_dtype(options.patch_dtype, dtype)
    layout, candidates = resolve(model, options.strategy, options.input_strategy, options.spec, options.params)
    computed_in = options.protocol(layout.encoder)
    patcher = Patcher(model, layout, candidates, options.patch_dtype, Memory({} if memory is None else memory),
                      options.measure)
    accuracy = Accuracy.of(dtype, computed_in)
    with collected_ill(accuracy.ill):  # one verdict per call (`check`), not a warning per layer and token
        reference, targets, given = _contextual(model, layout, context_ids, query_ids)
        positions = torch.arange(context_ids.shape[1], context_ids.shape[1] + query_ids.shape[1])[None] \
            if options.keep_positions else None
        with layer_outputs(model, layout) as rows:
            layers, outs = _query(model, patcher, query_ids, targets, given, positions, computed_in)
    ps = PatchSet(model, query_ids, layers, layout, positions, kernels=candidates,
                  incremental=computed_in == "model" and positions is None, patch_dtype=options.patch_dtype,
                  reference=reference, accuracy=accuracy)
    check(ps, EXACT[computed_in], reference.compare(torch.cat([outputs_of(o) for o in outs], 1), stacked(rows)),
          "absorb_context")
    return ps


def check_patch_dtype(patch_dtype, dtype: torch.dtype) -> None:
    """A patch dtype must be a floating dtype at least as precise as the model's (None: the model's own)."""
    if patch_dtype is None or patch_dtype == dtype:
        return
    wider = (torch.float32, torch.float64) if dtype in (torch.bfloat16, torch.float16) else (torch.float64,)
    if patch_dtype not in wider:
        raise ModelInputError(f"patch_dtype {patch_dtype} for a {dtype} model: the patches are computed in the model's "
                              f"dtype or a wider one; allowed: None, {', '.join(map(str, (dtype, *wider)))}")


def _contextual(model, layout, context_ids, query_ids) -> tuple[Reference, list, dict]:
    """The run with the context: its outputs and layer outputs on the query tokens (`Reference`), u_C of
    every layer at the query positions, and the contextual products of the query rows (`Adapter.products`)."""
    c, q = context_ids.shape[1], query_ids.shape[1]
    given: dict = {}  # layer -> the contextual products of the query rows (`Adapter.products`)
    states: dict = {}
    bases, out = contextual_bases(model, layout, torch.cat([context_ids, query_ids], 1), head=True, given=given,
                                  start=c, states=states, **keep_logits(model, q))
    output = outputs_of(out)[0, -q:]
    finite_run(model, output)
    return Reference(output, stacked(states)), [b[c:] for b in bases], given


def _query(model, patcher: Patcher, query_ids, targets, given, positions, computed_in) -> tuple[list, list]:
    """Algorithm 1 on the query alone: (per-layer patches, the outputs of the passes). One pass of the kernels'
    factored run, or token by token (each alone at its position, or through the key/value cache)."""
    if computed_in == "kernel" and positions is None:
        stored, out = patch_pass(model, patcher, query_ids, targets, given=given)
        return stored, [out]
    per_token, outs, cache, writer = [], [], None, DenseWriter(model, patcher.layout)
    for j in range(query_ids.shape[1]):
        kwargs = {"position_ids": positions[:, j:j + 1]} if positions is not None else cached(model, cache, j)
        one = token_given(given, j)
        try:
            if computed_in == "kernel":
                lps, out = patch_pass(model, patcher, query_ids[:, j:j + 1], [t[j:j + 1] for t in targets],
                                      given=one, **kwargs)
            else:
                lps, out = materialized_pass(model, patcher, query_ids[:, j:j + 1], [t[j:j + 1] for t in targets],
                                             given=one, writer=writer, **kwargs)
                cache = kv_cache(out, model) if positions is None else None
        except PatchConditionError as exc:  # the run held one token: name it by its index in the query
            raise PatchConditionError(exc.condition, [j], exc.layer) from None
        per_token.append(lps)
        outs.append(out)
    layers = [merge_tokens(get(model, patcher.layout.layers)[n], [t[n] for t in per_token])
              for n in range(len(per_token[0]))]
    return layers, outs


def _as_sequence(model, context_ids, query_ids, options: Options, memory) -> SequencePatch:
    """``absorb_context(..., mode="sequence")``: `absorb_sequence`, refusing the options it does not take."""
    taken = dataclasses.replace(Options(), spec=options.spec, params=options.params)
    extra = [f.name for f in dataclasses.fields(Options) if getattr(options, f.name) != getattr(taken, f.name)]
    if memory is not None:
        extra.append("memory")
    if extra:
        raise ModelInputError(f"mode='sequence' takes spec= and params= only, got {', '.join(extra)}: the sequence "
                              "patch has one protocol and no strategy choice (use mode='token' for these options)")
    return absorb_sequence(model, context_ids, query_ids, spec=options.spec, params=options.params)
