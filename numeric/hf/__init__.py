r"""Hugging Face transformers models: a context absorbed into patches of the MLP parameters, layer by layer.

`absorb_context(model, context_ids, query_ids) -> PatchSet`: per-token, per-layer patches that make the
query-alone run reproduce the run with the context (arXiv:2511.17864, Algorithm 1);
`absorb_sequence(model, context_ids, query_ids) -> SequencePatch`: one low-rank patch per layer for all query
tokens at once, saved as a PEFT LoRA adapter; `generate_without_context`: greedy generation without the
context, patched afresh for every new token. What the layers are is inferred from the model and checked
against its own modules first (`layout_for`).

The rooms, in the order the pipeline runs them:

- the model's layout: `probe` (layers, calls, float64 copies), `identify` (norms, maps, activations), `flow`
  (how the branch meets the residual stream), `equivalence` (the mandatory check), `mixing` (whether a
  computation reads other tokens), `infer` (the `Layout`), `layout` (its records), `compat` (transformers'
  calling conventions), `offload` (accelerate's hooks);
- the patches: `patches` (`LayerPatches`), `dense` (written into the weights), `passes` (hooks),
  `patchset` (`PatchSet`), `amplification`, `selection` (strategy per layer and token), `runs` (the passes of
  Algorithm 1), `absorb`, `generate`;
- their verdict: `bounds` (the one bound per dtype), `accuracy` (every patch set and replay measured against
  the run with the context; `PatchAccuracyWarning`, one per call);
- sequence patches: `sequence_algebra`, `sequence` (with the PEFT export), `untouched` (the model left as it
  was), `growing`, `shared_patch`;
- around them: `zoo` (tiny models of every type, `zoo_layers`: every layer kind kept), `models` (packaged real
  weights, `save_pretrained` folders, GGUF files), `store` (patch files), `hfcheck`, `experiment`, `sweep` (every
  strategy x dtype x protocol of a real model).
"""

from numeric.hf.absorb import Options, absorb_context
from numeric.hf.accuracy import Accuracy, PatchAccuracyWarning
from numeric.hf.amplification import amplification
from numeric.hf.generate import generate_without_context
from numeric.hf.growing import GrowingSequence
from numeric.hf.infer import layout_for
from numeric.hf.layout import Adapter, Layout, Param
from numeric.hf.patches import LayerPatches
from numeric.hf.patchset import PatchSet
from numeric.hf.sequence import SequenceLayer, SequencePatch, absorb_sequence
from numeric.hf.shared_patch import shared_patch

__all__ = ["Accuracy", "Adapter", "GrowingSequence", "LayerPatches", "Layout", "Options", "Param",
           "PatchAccuracyWarning", "PatchSet", "SequenceLayer", "SequencePatch", "absorb_context", "absorb_sequence",
           "amplification", "generate_without_context", "layout_for", "shared_patch"]
