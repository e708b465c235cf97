r"""Which layers a tiny config keeps: every layer kind of the family, each at least once.

A hybrid family declares its layers' kinds per layer: lists as long as the stack (``layer_types``,
``mlp_layer_types``, ``layers_block_type``, Gemma 3n's per-layer ``intermediate_size`` and
``activation_sparsity_pattern``), lists of layer indices (``hybrid_layer_ids``, ``attn_layer_indices``), a
count of trailing layers (``num_kv_shared_layers``), per-layer overrides of a heterogeneous config (Gemma 4's
``per_layer_config``), or properties derived from other fields (Jamba's ``layers_block_type`` from
``attn_layer_period``/``attn_layer_offset``). A layer's *kind* is the tuple of its entries in all of them.

`plan` keeps, in order, the first layer of every kind of the default config and its last layer (the head
follows a layer of the same kind as in the real model), and sets every field from which the kinds derive for
that selection: lists sub-selected, indices renumbered, counts recounted, per-layer overrides renumbered and
shrunk with the global sizes. Where the kinds derive from fields the selection cannot renumber (a period and an
offset), the shortest prefix of the stack that holds every kind is kept instead. `kinds` tells what a config
holds, so the zoo checks that the tiny config holds every kind of the default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
TRAILING_COUNTS = ("num_kv_shared_layers",)  # the last N layers are of another kind (they reuse a cache)
MAX_LAYERS = 12  # a tiny model stays tiny: a family with more kinds keeps its first MAX_LAYERS


def layer_count(cfg) -> int | None:
    for key in LAYER_KEYS:
        v = _get(cfg, key)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _get(cfg, key, default=None):
    """``cfg.key``; a heterogeneous config's global value of a per-layer key too (which it refuses to give)."""
    try:
        return getattr(cfg, key, default)
    except Exception:  # noqa: BLE001 - AmbiguousGlobalPerLayerAttributeError, or a property that fails
        return vars(cfg).get(key, default)


def _is_property(cfg, key: str) -> bool:
    return isinstance(getattr(type(cfg), key, None), property) or key in (getattr(cfg, "attribute_map", {}) or {})


def per_layer_lists(cfg, n: int) -> dict[str, list]:
    """The stored fields that are lists with one entry per layer."""
    return {k: v for k, v in vars(cfg).items() if isinstance(v, list) and len(v) == n and n > 1
            and not k.startswith("_") and not _is_property(cfg, k)}


def index_lists(cfg, n: int) -> dict[str, list]:
    """The stored fields that are increasing lists of layer indices, shorter than the stack."""
    out = {}
    for k, v in vars(cfg).items():
        if k.startswith("_") or not isinstance(v, list) or not v or len(v) >= n or _is_property(cfg, k):
            continue
        if all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in v) and v == sorted(set(v)) \
                and k.endswith(("_ids", "_idxs", "_indices", "_layers")):
            out[k] = v
    return out


def derived_lists(cfg, n: int) -> dict[str, list]:
    """Properties of the config's class that give one entry per layer (kinds derived from other fields:
    ``layers_block_type``, ``layer_types``, ``layers_num_experts``)."""
    out = {}
    for k in dir(type(cfg)):
        if not k.startswith("layer") or not isinstance(getattr(type(cfg), k, None), property):
            continue
        v = _get(cfg, k)
        if isinstance(v, list) and len(v) == n and all(isinstance(e, (str, int, float, bool)) for e in v):
            out[k] = v
    return out


def overrides(cfg) -> dict[int, dict]:
    """A heterogeneous config's per-layer overrides, {layer: {key: value}} ({} for a homogeneous one)."""
    spec = vars(cfg).get("_heterogeneity_spec")
    return dict(getattr(spec, "per_layer_overrides", None) or {})


def kinds(cfg) -> list[tuple]:
    """Every layer's kind: its entries in the per-layer lists, index lists, trailing counts and overrides."""
    n = layer_count(cfg)
    if not n:
        return []
    lists = {**per_layer_lists(cfg, n), **derived_lists(cfg, n)}
    idx = index_lists(cfg, n)
    counts = {k: _get(cfg, k) for k in TRAILING_COUNTS if isinstance(_get(cfg, k), int)}
    over = overrides(cfg)
    lists = {k: _ranked(v) for k, v in lists.items()}
    return [tuple(_hashable(v[i]) for _k, v in sorted(lists.items()))
            + tuple(i in v for _k, v in sorted(idx.items()))
            + tuple(i >= n - c for _k, c in sorted(counts.items()))
            + (tuple(sorted(over.get(i, {}))),) for i in range(n)]


def _ranked(values: list) -> list:
    """Numbers by their rank among the list's distinct numbers (a kind is 16 experts or 4 alike: the zoo
    shrinks sizes), other entries as they are."""
    numbers = sorted({v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return [numbers.index(v) if v in numbers and not isinstance(v, bool) else v for v in values]


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


@dataclass
class Plan:
    """The layers a tiny config keeps (``layers``: their indices in the default stack) and the fields that
    declare their kinds, set for that selection (``fields``)."""

    layers: list[int]
    fields: dict = field(default_factory=dict)


SELECTIONS = ("first", "prefix")


def plan(base, how: str = "first") -> Plan | None:
    """The tiny stack's layers and the fields that give them their kinds (None: no per-layer kinds).
    ``how``: ``first`` (`select`) or ``prefix`` (`prefix`)."""
    n = layer_count(base)
    every = kinds(base)
    if not n or len(set(every)) <= 1:
        return None
    keep = select(every) if how == "first" else prefix(every)
    pos = {i: j for j, i in enumerate(keep)}
    fields: dict = {}
    for k, v in per_layer_lists(base, n).items():
        fields[k] = [v[i] for i in keep]
    for k, v in index_lists(base, n).items():
        fields[k] = [pos[i] for i in v if i in pos]
    for k in TRAILING_COUNTS:
        c = _get(base, k)
        if isinstance(c, int) and not isinstance(c, bool):
            fields[k] = sum(i >= n - c for i in keep)
    over = overrides(base)
    if over:
        fields["per_layer_config"] = {pos[i]: dict(o) for i, o in over.items() if i in pos}
    return Plan(list(keep), fields)


def select(every: list[tuple]) -> list[int]:
    """The first layer of every kind, in order, and the last layer (at most `MAX_LAYERS`)."""
    seen, keep = set(), []
    for i, k in enumerate(every):
        if k not in seen:
            seen.add(k)
            keep.append(i)
    last = len(every) - 1
    if keep[-1] != last and every[keep[-1]] != every[last]:
        keep.append(last)
    if len(keep) < 2:
        keep = [0, last] if last > 0 else keep
    return keep[:MAX_LAYERS]


def prefix(every: list[tuple]) -> list[int]:
    """The shortest prefix of the stack that holds every kind (for kinds derived from a period and an offset)."""
    wanted = set(every)
    for n in range(2, len(every) + 1):
        if set(every[:n]) == wanted:
            return list(range(min(n, MAX_LAYERS)))
    return list(range(min(len(every), MAX_LAYERS)))
