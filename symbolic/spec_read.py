"""Reading block specs from TOML: `load_toml` (a file), `loads_toml` (text), `parse_spec` (a parsed document).

The document is read by `tomllib` through `symbolic.specfile`, which names the file, the field, the value and what
is allowed in every error; this module maps its tables onto the dataclasses of `symbolic.spec_data` (defaults of
the ``[norm]`` table, inline norm and bias tables, ``[mlp]``, ``[moe]``, ``[patch]``) and refuses unknown fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

from symbolic import limits
from symbolic.errors import SpecError, bad_value
from symbolic.spec_data import (
    AttentionSpec,
    Biases,
    BlockSpec,
    ExpertKind,
    MLPKind,
    MLPSpec,
    MoESpec,
    NormKind,
    NormSpec,
    PatchSpec,
    Residual,
    ScaleParam,
    Scoring,
    SharedExpert,
    SoftmaxOrder,
    Weighting,
)
from symbolic.spec_params import check_allow
from symbolic.specfile import Table, check_name, parse_document, read_text

NORM_FIELDS = ("kind", "eps", "scale", "bias")


def _read_norm(tab: Table, key: str, defaults: dict[str, Any]) -> NormSpec | None:
    raw = tab.data.get(key, "none")
    tab.used.add(key)
    if isinstance(raw, str):
        if raw == "none":
            return None
        if raw not in get_args(NormKind):
            raise bad_value(tab.source, tab.path(key), raw, ("none", *get_args(NormKind)),
                            "Or an inline table {kind, eps, scale, bias}.")
        return _make_norm(tab.source, tab.path(key), {**defaults, "kind": raw})
    sub = Table(tab.source, tab.path(key), raw)
    values = dict(defaults)
    for name in NORM_FIELDS:
        if name in sub.data:
            values[name] = sub.data[name]
    sub.finish(NORM_FIELDS)
    if "kind" not in sub.data:
        raise SpecError(f"{tab.source}: field `{tab.path(key)}.kind` is missing; allowed: 'rms', 'layer'.")
    if sub.data.get("bias") is True and values["kind"] == "rms":
        raise SpecError(f"{tab.source}: field `{tab.path(key)}.bias` is true, but an RMSNorm has no bias. Allowed: "
                        "bias = false, or kind = 'layer' for a LayerNorm with a bias.")
    return _make_norm(tab.source, tab.path(key), values)


def _read_norm_defaults(root: Table) -> dict[str, Any]:
    tab = root.sub("norm")
    if tab is None:
        return {"eps": 1e-6, "scale": "plain", "bias": False}
    out = {
        "eps": tab.number("eps", limits.EPS, 1e-6),
        "scale": tab.choice("scale", get_args(ScaleParam), "plain"),
        "bias": tab.get("bias", bool, False),
    }
    tab.finish(("eps", "scale", "bias"))
    return out


def _make_norm(source: str, where: str, v: dict[str, Any]) -> NormSpec:
    if v["kind"] not in get_args(NormKind):
        raise bad_value(source, f"{where}.kind", v["kind"], get_args(NormKind))
    if v.get("scale") not in get_args(ScaleParam):
        raise bad_value(source, f"{where}.scale", v.get("scale"), get_args(ScaleParam))
    eps = limits.EPS.check(f"{source}: field `{where}.eps`", v.get("eps"), SpecError)
    if not isinstance(v.get("bias"), bool):
        raise SpecError(f"{source}: field `{where}.bias` must be true or false, got {v.get('bias')!r}.")
    bias = bool(v["bias"]) and v["kind"] == "layer"  # a [norm] default `bias = true` concerns LayerNorms only
    return NormSpec(kind=v["kind"], eps=float(eps), scale=v["scale"], bias=bias)


def _read_biases(tab: Table, kind: str) -> Biases:
    raw = tab.data.get("bias", False)
    tab.used.add("bias")
    keys = ("gate", "up", "down") if kind == "gated" else ("up", "down")
    if isinstance(raw, bool):
        return Biases(**{k: raw for k in keys})
    sub = Table(tab.source, tab.path("bias"), raw)
    values = {k: sub.get(k, bool, False) for k in keys}
    sub.finish(keys)
    return Biases(**values)


def _read_activation(tab: Table, key: str, default: str) -> str:
    """The text of an activation field; `MLPSpec` checks it (`symbolic.specfile.check_activation`)."""
    return tab.get(key, str, default)


TOP_FIELDS = ("name", "description", "reference", "hf_model_types", "residual", "skip",
              "shared_pre_norm", "norm", "attention", "mlp", "moe", "patch")
MLP_FIELDS = ("kind", "activation", "up_activation", "out_activation", "bias", "pre_norm", "mid_norm", "post_norm",
              "post_ln", "branch_scale")
MOE_FIELDS = ("experts", "top_k", "softmax", "renormalize", "shared_expert", "expert", "scoring", "selection_bias",
              "groups", "topk_groups", "routed_scale", "router_bias", "expert_bias", "weighting", "shared_kind",
              "renormalize_eps", "jitter_eps")


def parse_spec(data: dict[str, Any], source: str) -> BlockSpec:
    """Build a `BlockSpec` from a parsed TOML document; `source` names the file in errors."""
    root = Table(source, "", data)
    defaults = _read_norm_defaults(root)
    name = root.get("name", str, None)
    if not name:
        raise SpecError(f"{source}: field `name` is missing; give the block a name, e.g. name = \"my_block\".")
    try:
        check_name(name)
    except SpecError as exc:
        raise SpecError(f"{source}: {exc}.") from None
    attention = AttentionSpec()
    if (att := root.sub("attention")) is not None:
        attention = AttentionSpec(*(_read_norm(att, k, defaults) for k in ("pre_norm", "post_norm", "post_ln")))
        att.finish(("pre_norm", "post_norm", "post_ln"))
    mlp_tab = root.sub("mlp")
    if mlp_tab is None:
        raise SpecError(f"{source}: table `[mlp]` is missing; it needs at least kind = 'dense', 'gated' or 'moe'.")
    mlp = _read_mlp(mlp_tab, defaults)
    moe = _read_moe(root.sub("moe"))
    patch = _read_patch(root.sub("patch"))
    types = root.get("hf_model_types", list, [])
    for i, t in enumerate(types):
        if not isinstance(t, str):
            raise SpecError(f"{source}: field `hf_model_types[{i}]` must be a string (a transformers model type "
                            f"such as \"llama\"), got {type(t).__name__} {t!r}.")
    top = dict(
        name=name,
        description=root.get("description", str, ""),
        reference=root.get("reference", str, ""),
        hf_model_types=tuple(types),
        residual=root.choice("residual", get_args(Residual), "sequential"),
        skip=root.get("skip", bool, True),
        shared_pre_norm=root.get("shared_pre_norm", bool, False),
    )
    root.finish(TOP_FIELDS)
    try:
        spec = BlockSpec(mlp=mlp, attention=attention, moe=moe, patch=patch, **top)
    except ValueError as exc:
        raise SpecError(f"{source}: {exc}.") from None
    check_allow(spec, source)
    return spec


def _read_mlp(tab: Table, defaults: dict[str, Any]) -> MLPSpec:
    kind = tab.choice("kind", get_args(MLPKind), None)
    if kind is None:
        raise SpecError(f"{tab.source}: field `mlp.kind` is missing; allowed: 'dense', 'gated', 'moe'.")
    values = dict(
        kind=kind,
        activation=_read_activation(tab, "activation", "gelu"),
        up_activation=_read_activation(tab, "up_activation", "identity"),
        out_activation=_read_activation(tab, "out_activation", "identity"),
        bias=_read_biases(tab, kind),
        **{k: _read_norm(tab, k, defaults) for k in ("pre_norm", "mid_norm", "post_norm", "post_ln")},
        branch_scale=float(tab.number("branch_scale", limits.BRANCH_SCALE, 1.0)),
    )
    tab.finish(MLP_FIELDS)
    try:
        return MLPSpec(**values)
    except ValueError as exc:
        raise SpecError(f"{tab.source}: [mlp]: {exc}.") from None


def _read_moe(tab: Table | None) -> MoESpec | None:
    if tab is None:
        return None
    experts = tab.number("experts", limits.EXPERTS, None)
    top_k = tab.number("top_k", limits.TOP_K, None)
    if experts is None or top_k is None:
        raise SpecError(f"{tab.source}: [moe] needs integer fields `experts` and `top_k`.")
    values = dict(
        experts=experts,
        top_k=top_k,
        softmax=tab.choice("softmax", get_args(SoftmaxOrder), "before_topk"),
        renormalize=tab.get("renormalize", bool, False),
        shared_expert=tab.choice("shared_expert", get_args(SharedExpert), "none"),
        expert=tab.choice("expert", get_args(ExpertKind), "gated"),
        scoring=tab.choice("scoring", get_args(Scoring), "softmax"),
        selection_bias=tab.get("selection_bias", bool, False),
        groups=tab.number("groups", limits.EXPERTS, 1),
        topk_groups=tab.number("topk_groups", limits.EXPERTS, 1),
        routed_scale=float(tab.number("routed_scale", limits.ROUTED_SCALE, 1.0)),
        router_bias=tab.get("router_bias", bool, False),
        expert_bias=tab.get("expert_bias", bool, False),
        weighting=tab.choice("weighting", get_args(Weighting), "output"),
        shared_kind=tab.choice("shared_kind", get_args(ExpertKind), "gated"),
        renormalize_eps=float(tab.number("renormalize_eps", limits.RENORM_EPS, 0.0)),
        jitter_eps=float(tab.number("jitter_eps", limits.JITTER_EPS, 0.0)),
    )
    tab.finish(MOE_FIELDS)
    try:
        return MoESpec(**values)
    except ValueError as exc:
        raise SpecError(f"{tab.source}: [moe]: {exc}.") from None


def _read_patch(tab: Table | None) -> PatchSpec:
    if tab is None:
        return PatchSpec()
    allow = tab.get("allow", list, ["*"])
    for i, item in enumerate(allow):
        if not isinstance(item, str):
            raise SpecError(f"{tab.source}: field `patch.allow[{i}]` must be a string, got {item!r}.")
    out = PatchSpec(
        allow=tuple(allow),
        strategy=tab.get("strategy", str, None),
        input_strategy=tab.get("input_strategy", str, None),
    )
    tab.finish(("allow", "strategy", "input_strategy"))
    return out


def load_toml(path: str | Path) -> BlockSpec:
    """Read a spec file. Raises `SpecError` with the file name on any problem."""
    return loads_toml(read_text(path), str(path))


def loads_toml(text: str, source: str = "<string>") -> BlockSpec:
    """Parse the text of a spec file. Raises `SpecError` with `source` on any problem (`symbolic.specfile`)."""
    return parse_spec(parse_document(text, source), source)
