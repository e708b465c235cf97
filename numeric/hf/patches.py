r"""Patches of one layer, as the model stores its parameters: `LayerPatches`.

The kernels give factored patches by canonical name ({``W_gate``: {``left``, ``right``}, ...}, (T, ...)
arrays); `layer_patches` turns them into the model's own names and storage layouts (transposed, per expert,
halves of a fused gate/up matrix); `combine_tokens` and `merge_tokens` join per-token ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from numeric.hf.layout import FUSED, Adapter, fuse, parameter_view
from symbolic.errors import ModelInputError
from symbolic.spec import BlockSpec


@dataclass
class LayerPatches:
    """Patches of one layer for every query token (`PatchSet.layers`; docs/design.md, "Contracts").

    ``strategies[j]`` is the output strategy token j's patches were derived with (the default picks,
    per layer and token, the exact strategy with the smallest amplification, `amplification[j]`).
    ``factored`` holds the kernel's patches by canonical name, (q, ...) arrays, when every token used
    the same strategy; ``per_token[j]`` holds token j's alone when they were computed token by token.
    """

    rank1: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    factored: dict = field(default_factory=dict)  # the kernel's patches, by canonical name
    strategies: list[str] = field(default_factory=list)
    amplification: list[float] = field(default_factory=list)
    per_token: list[dict] = field(default_factory=list)

    def token(self, j: int) -> dict:
        """The kernel's factored patches of token j alone, (1, ...) arrays."""
        return self.per_token[j] if self.per_token else token_slice(self.factored, j)


def token_slice(patches: dict, j: int) -> dict:
    return {name: {f: v[j:j + 1] for f, v in fields.items()} for name, fields in patches.items()}


def concat_tokens(parts: list[dict]) -> dict:
    return {name: {f: torch.cat([p[name][f] for p in parts]) for f in fields} for name, fields in parts[0].items()}


def combine_tokens(layer, tokens: list[LayerPatches]) -> LayerPatches:
    """One LayerPatches from per-token ones whose strategies may differ: a token without a rank-1 patch
    of some parameter gets zero factors, one without a value gets the parameter itself."""
    out = LayerPatches()
    for name in dict.fromkeys(k for t in tokens for k in t.rank1):
        shapes = next(t.rank1[name] for t in tokens if name in t.rank1)
        pairs = [t.rank1.get(name, (torch.zeros_like(shapes[0]), torch.zeros_like(shapes[1]))) for t in tokens]
        out.rank1[name] = (torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs]))
    for name in dict.fromkeys(k for t in tokens for k in t.values):
        dtype = next(t.values[name].dtype for t in tokens if name in t.values)
        own = parameter_view(layer, name).detach()[None].to(dtype)  # (1, *shape): the unpatched value
        out.values[name] = torch.cat([t.values.get(name, own) for t in tokens])
    return out


def merge_tokens(layer, tokens: list[LayerPatches]) -> LayerPatches:
    """The LayerPatches of q single-token runs as one (q tokens)."""
    out = combine_tokens(layer, tokens)
    out.per_token = [t.token(0) for t in tokens]
    out.strategies = [s for t in tokens for s in t.strategies]
    out.amplification = [a for t in tokens for a in t.amplification]
    out.factored = concat_tokens(out.per_token) if len(set(out.strategies)) == 1 else {}
    return out


def layer_patches(adapter: Adapter, params: dict, patches: dict) -> LayerPatches:
    """The kernel's factored patches in the model's own names and storage layouts.

    A canonical (out, in) patch ``left right^T`` is stored as such (``linear``), transposed (``conv1d``,
    ``t``: factors swapped), per expert (``experts.*``: one patch per slice ``path[e]``), or as half of a
    fused gate/up matrix (`numeric.hf.layout.FUSED`: halves or interleaved entries, rows or transposed columns):
    gate and up share the right factor z, so the fused matrix gets one rank-1 patch whose left factor joins
    the two left factors (zero for a half left unpatched).
    """
    out = LayerPatches(factored=patches)
    fused: dict[str, dict[int, tuple]] = {}
    for canon, fields in patches.items():
        p = adapter.params[canon]
        if "left" not in fields:
            if p.layout in FUSED:  # no strategy patches the value of half of a fused tensor (a fused bias)
                raise ModelInputError(f"{canon} ({p.path}, {p.layout}): a value patch of half of a fused tensor is not "
                                      "written; use the rank1 input strategy")
            out.values[p.path] = _value(adapter.spec, canon, params[canon], fields)
            continue
        left, right = fields["left"], fields["right"]
        if p.layout in FUSED:
            fused.setdefault(p.path, {})[FUSED[p.layout].which] = (left, right, FUSED[p.layout],
                                                                    canon.startswith("experts."))
            continue
        if p.layout in ("conv1d", "t"):  # stored (in, out): the transpose of left right^T
            left, right = right, left
        if canon.startswith("experts."):
            for e in range(left.shape[1]):
                where = f"{e * p.rows}:{(e + 1) * p.rows}" if p.rows else e  # flat experts: a slice of rows
                out.rank1[f"{p.path}[{where}]"] = (left[:, e], right[:, e])
        else:
            out.rank1[p.path] = (left, right)
    for path, halves in fused.items():
        left, right, half, experts = next(iter(halves.values()))
        if any(not torch.equal(h[1], right) for h in halves.values()):
            raise ModelInputError(f"{path}: the gate and up patches have different right factors, so their fused "
                                  "matrix gets a rank-2 patch; use the rank1 input strategy")
        parts = [halves[w][0] if w in halves else torch.zeros_like(left) for w in (0, 1)]
        both = fuse(*parts, -1, half.interleaved)  # (q, [E,] 2 out): the fused output axis
        for e in range(both.shape[1]) if experts else [None]:
            lf, rf = (both, right) if e is None else (both[:, e], right[:, e])
            out.rank1[path if e is None else f"{path}[{e}]"] = (rf, lf) if half.transposed else (lf, rf)
    return out


def _value(spec: BlockSpec, canon: str, param: torch.Tensor, fields: dict) -> torch.Tensor:
    """The full patched value per token, in the model's parameterization (Gemma stores w, uses 1 + w)."""
    if "delta" in fields:
        return param[None] + fields["delta"]
    one_plus = spec.norms[canon.split(".")[0]].scale == "one_plus"
    return fields["scale"] * (1 + param[None]) - 1 if one_plus else fields["scale"] * param[None]
