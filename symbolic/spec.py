"""Block specs: the declaration of a transformer block's MLP sub-block, loaded from TOML.

A spec says how the block is wired (sequential or parallel residual, with or without skip),
which norms exist and how they are parameterized, what the MLP is (dense, gated, mixture of
experts), which linear maps carry biases, and which parameters the user allows to be patched.
It is pure data: frozen dataclasses validated at construction (every number against its bound in
`symbolic.limits`, the name and activations by `symbolic.specfile`, all failures a `SpecError`), read with
`tomllib` through `symbolic.specfile` and printed back to TOML by `dump_toml` (so that
`load_toml(dump_toml(s)) == s`). The symbolic meaning of a spec lives in `symbolic.model`; this module must not
import SymPy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal, get_args

from symbolic import limits
from symbolic.errors import SpecError, bad_value, suggest
from symbolic.specfile import ACTIVATIONS as ACTIVATIONS  # the named activations, part of the spec's vocabulary
from symbolic.specfile import Table, check_activation, check_name, parse_document, read_text

NormKind = Literal["rms", "layer"]
ScaleParam = Literal["plain", "one_plus", "none"]
Residual = Literal["sequential", "parallel"]
MLPKind = Literal["dense", "gated", "moe"]
ExpertKind = Literal["dense", "gated"]
SoftmaxOrder = Literal["before_topk", "after_topk"]
SharedExpert = Literal["none", "plain", "gated"]
Scoring = Literal["softmax", "sigmoid"]
Weighting = Literal["output", "input"]


NORM_FIELDS = ("kind", "eps", "scale", "bias")


@dataclass(frozen=True)
class NormSpec:
    r"""One normalization layer.

    RMSNorm: $N(v) = \gamma \odot v / \sqrt{\mathrm{mean}(v^2) + \epsilon}$; LayerNorm centres
    $v$ first and may add a bias $\beta$. `scale` says how the stored weight $w$ gives
    $\gamma$: `plain` ($\gamma = w$), `one_plus` ($\gamma = 1 + w$, Gemma) or `none`.
    """

    kind: NormKind
    eps: float = 1e-6
    scale: ScaleParam = "plain"
    bias: bool = False

    def __post_init__(self) -> None:
        if self.kind not in get_args(NormKind):
            raise SpecError(f"norm kind {self.kind!r}; allowed: {get_args(NormKind)}")
        limits.EPS.check("norm eps", self.eps, SpecError)
        if self.bias and self.kind == "rms":
            raise SpecError("an RMSNorm has no bias; use kind = 'layer' for a LayerNorm with bias")


@dataclass(frozen=True)
class AttentionSpec:
    """Norms on the attention side. They shape u and u_C but are never patched."""

    pre_norm: NormSpec | None = None
    post_norm: NormSpec | None = None  # inside the attention branch (Gemma 2/3 sandwich, OLMo-2)
    post_ln: NormSpec | None = None  # after the residual add (BERT)


@dataclass(frozen=True)
class Biases:
    gate: bool = False
    up: bool = False
    down: bool = False


@dataclass(frozen=True)
class MLPSpec:
    r"""The MLP sub-block: pre-norm -> inner maps -> activation -> mid-norm -> outer map -> post-norm, times
    `branch_scale`.

    `mid_norm` normalizes the hidden activations before the outer map, $h = W_\mathrm{down} N(a) + b_\mathrm{down}$
    (BitNet's ``ffn_sub_norm``); dense and gated MLPs only. `branch_scale` $c$ multiplies the branch output
    before the residual add, $r = u + c\,o$ (Granite's ``residual_multiplier``); it must be nonzero (the output
    strategies aim at $(o_C + \delta) / c$). `up_activation` $\psi$ acts on the up map of every gated map of the
    block, $a = \sigma(W_\mathrm{gate} z) \odot \psi(W_\mathrm{up} z)$ (gpt-oss:
    $\psi(p) = \mathrm{clamp}(p, -L, L) + 1$).
    """

    kind: MLPKind
    activation: str = "gelu"
    out_activation: str = "identity"
    bias: Biases = field(default_factory=Biases)
    pre_norm: NormSpec | None = None
    post_norm: NormSpec | None = None  # inside the residual branch (Gemma 2/3, OLMo-2)
    post_ln: NormSpec | None = None  # after the residual add (BERT)
    branch_scale: float = 1.0
    mid_norm: NormSpec | None = None  # on the hidden activations, before W_down (BitNet)
    up_activation: str = "identity"  # psi in a = sigma(gate) * psi(up) (gated maps only)

    def __post_init__(self) -> None:
        if self.kind not in get_args(MLPKind):
            raise SpecError(f"mlp kind {self.kind!r}; allowed: {get_args(MLPKind)}")
        limits.BRANCH_SCALE.check("field `mlp.branch_scale`", self.branch_scale, SpecError)
        for key in ("activation", "up_activation", "out_activation"):
            if getattr(self, key) != "module":
                check_activation(f"mlp.{key}", getattr(self, key))
            elif key != "activation":  # "module": the MLP's own map sigma, read from the module (Gemma 3n)
                raise SpecError(f"field `mlp.{key}` has the value 'module'; only `mlp.activation` (sigma) may be the "
                                "module's own map. Allowed here: a named activation or a real expression in x")
        if self.kind != "gated" and self.bias.gate:
            raise SpecError("only a gated MLP has a gate projection, so bias.gate must be false")
        if self.up_activation != "identity" and self.kind == "dense":
            raise SpecError("mlp.up_activation acts on the up map of a gated MLP (a = sigma(gate) * psi(up)); a "
                             "dense MLP has only sigma: use kind = 'gated' (or 'moe' with gated experts), or drop it")
        if self.mid_norm is not None and self.kind == "moe":
            raise SpecError("mlp.mid_norm (a norm on the hidden activations before W_down) is supported for "
                             "kind = 'dense' or 'gated', not for 'moe'; set mid_norm = 'none'")


@dataclass(frozen=True)
class MoESpec:
    r"""Routed experts: a router, top-k selection, optional shared expert.

    The router's logits $\ell = W_\mathrm{router} z$ give scores $s = \mathrm{softmax}(\ell)$ or
    $s = \sigma(\ell)$ (`scoring`). The experts are chosen by the largest $s + b_\mathrm{select}$
    (`selection_bias`: a constant correction bias used for the choice only, DeepSeek-V3's
    ``e_score_correction_bias``), among the `topk_groups` best of `groups` equal groups of experts
    (a group scores the sum of its two largest $s + b_\mathrm{select}$); the chosen experts are
    weighted by their uncorrected $s$, renormalized over the top-k if `renormalize`, and the routed
    sum is multiplied by `routed_scale` (shared experts are not). `softmax` says whether the
    softmax is taken before or after the top-k (after: over the selected logits only, the same as
    renormalizing the softmax; meaningless for sigmoid scores). `router_bias`: the logits are
    $W_\mathrm{router} z + b_\mathrm{router}$ (gpt-oss), a patchable input bias like `b_up`. `expert_bias`: every
    routed expert's maps have biases, `experts.b_gate|b_up|b_down` (gpt-oss); the strategies patch the expert
    matrices and leave them alone. `weighting`: the routing weight $s_e$ multiplies the expert's output
    (`output`, the usual $\sum_j s_{e_j} E_{e_j}(z)$) or its input (`input`, Llama 4: $\sum_j E_{e_j}(s_{e_j} z)$).
    `shared_kind`: the shared expert is a gated MLP (`gated`, the default) or a dense one, $W_\mathrm{down}
    \sigma(W_\mathrm{up} z)$ (`dense`: Nemotron-H's ReLU² shared expert).
    """

    experts: int
    top_k: int
    softmax: SoftmaxOrder = "before_topk"
    renormalize: bool = False
    shared_expert: SharedExpert = "none"
    expert: ExpertKind = "gated"
    scoring: Scoring = "softmax"
    selection_bias: bool = False
    groups: int = 1
    topk_groups: int = 1
    routed_scale: float = 1.0
    router_bias: bool = False
    expert_bias: bool = False
    weighting: Weighting = "output"
    shared_kind: ExpertKind = "gated"

    def __post_init__(self) -> None:
        for key, bound in (("experts", limits.EXPERTS), ("top_k", limits.TOP_K), ("groups", limits.EXPERTS),
                           ("topk_groups", limits.EXPERTS)):
            bound.check(f"field `moe.{key}`", getattr(self, key), SpecError)
        limits.ROUTED_SCALE.check("field `moe.routed_scale`", self.routed_scale, SpecError)
        if self.shared_kind not in get_args(ExpertKind):
            raise SpecError(f"moe.shared_kind {self.shared_kind!r}; allowed: {get_args(ExpertKind)}")
        if self.shared_kind != "gated" and self.shared_expert != "plain":
            raise SpecError("moe.shared_kind = 'dense' declares an ungated shared expert (W_up, W_down: Nemotron-H); "
                            "it needs shared_expert = 'plain' (a scalar-gated shared expert is gated)")
        if not 1 <= self.top_k <= self.experts:
            raise SpecError(f"moe.top_k must be in [1, experts={self.experts}], got {self.top_k}")
        if self.scoring not in get_args(Scoring):
            raise SpecError(f"moe.scoring {self.scoring!r}; allowed: {get_args(Scoring)}")
        if self.scoring == "sigmoid" and self.softmax == "after_topk":
            raise SpecError("moe.softmax = 'after_topk' takes a softmax over the selected logits, but "
                             "moe.scoring = 'sigmoid' has none; use softmax = 'before_topk' (and renormalize = "
                             "true to normalize the selected sigmoid scores)")
        self._check_groups()
        if self.weighting not in get_args(Weighting):
            raise SpecError(f"moe.weighting {self.weighting!r}; allowed: {get_args(Weighting)}")
        if self.weighting == "input" and (self.gates_sum_to_one or self.routed_scale != 1):
            raise SpecError("moe.weighting = 'input' (the weight scales the expert's input, Llama 4) is supported "
                             "with unnormalized scores only: set softmax = 'before_topk', renormalize = false and "
                             "routed_scale = 1")

    def _check_groups(self) -> None:
        if self.groups < 1 or self.experts % self.groups:
            raise SpecError(f"moe.groups must be >= 1 and divide experts={self.experts}, got {self.groups}")
        if not 1 <= self.topk_groups <= self.groups:
            raise SpecError(f"moe.topk_groups must be in [1, groups={self.groups}], got {self.topk_groups}")
        size = self.experts // self.groups
        if self.groups > 1 and size < 2:
            raise SpecError(f"a group scores the sum of its two best experts, so it needs >= 2 experts; "
                             f"experts={self.experts} in groups={self.groups} gives {size}")
        if self.top_k > self.topk_groups * size:
            raise SpecError(f"moe.top_k={self.top_k} exceeds the experts of the topk_groups={self.topk_groups} "
                             f"chosen groups ({self.topk_groups} x {size})")

    @property
    def gates_sum_to_one(self) -> bool:
        """Whether the selected experts' gates sum to one (softmax after top-k, or renormalized)."""
        return self.softmax == "after_topk" or self.renormalize


@dataclass(frozen=True)
class PatchSpec:
    """Which MLP parameters may be patched (fnmatch patterns), and the preferred strategies."""

    allow: tuple[str, ...] = ("*",)
    strategy: str | None = None
    input_strategy: str | None = None


@dataclass(frozen=True)
class BlockSpec:
    """A transformer block as the theory sees it: the MLP sub-block of one token as pre / inner / sigma / outer /
    post (`symbolic.model`), met by the residual stream sequentially or in parallel with attention, optionally a
    mixture of experts; ``patch`` names the parameters a patch may change (docs/theory.md, "Theory")."""

    name: str
    mlp: MLPSpec
    residual: Residual = "sequential"
    skip: bool = True
    shared_pre_norm: bool = False
    attention: AttentionSpec = field(default_factory=AttentionSpec)
    moe: MoESpec | None = None
    patch: PatchSpec = field(default_factory=PatchSpec)
    description: str = ""
    reference: str = ""
    hf_model_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_name(self.name)
        if (self.mlp.kind == "moe") != (self.moe is not None):
            raise SpecError("a [moe] table is required exactly when mlp.kind = 'moe'")
        if self.residual == "parallel" and not self.skip:
            raise SpecError("a parallel block always has its residual skip; set skip = true")
        if self.shared_pre_norm and self.residual != "parallel":
            raise SpecError("shared_pre_norm only makes sense for a parallel block")
        if self.shared_pre_norm and self.mlp.pre_norm != self.attention.pre_norm:
            raise SpecError("shared_pre_norm requires mlp.pre_norm == attention.pre_norm")
        if self.moe is not None and self.mlp.bias != Biases():
            raise SpecError("mlp.bias declares the biases of a dense or gated MLP; the experts of kind = 'moe' "
                             "take theirs from moe.expert_bias = true (set mlp.bias = false)")
        if self.moe is not None and self.mlp.up_activation != "identity" and self.moe.expert != "gated" and \
                self.moe.shared_expert == "none":
            raise SpecError("mlp.up_activation acts on gated maps, but these experts are dense and there is no "
                             "shared expert: use moe.expert = 'gated', or drop up_activation")
        if not self.skip and (self.mlp.post_ln is not None):
            raise SpecError("mlp.post_ln normalizes the residual sum, so it needs skip = true")

    @property
    def norms(self) -> dict[str, NormSpec]:
        """The MLP-side norms that exist, by canonical name."""
        named = {
            "mlp_pre_norm": self.mlp.pre_norm,
            "mlp_mid_norm": self.mlp.mid_norm,
            "mlp_post_norm": self.mlp.post_norm,
            "post_ln": self.mlp.post_ln,
        }
        return {k: v for k, v in named.items() if v is not None}


# --------------------------------------------------------------------------- parameters


def patchable_parameters(spec: BlockSpec) -> tuple[str, ...]:
    """Canonical names of every MLP-side parameter of the block, in pipeline order.

    The vocabulary is shared by specs, SymPy symbols, kernels and reports: `W_gate`, `W_up`,
    `W_down`, `b_*`; for mixtures of experts `W_router`, `b_router`, `b_select` (the selection-only correction
    bias, a constant no strategy patches), `experts.W_*` (one per selected expert), `shared.W_*`
    and `shared.w_gate`; norms `<norm>.scale` and `<norm>.bias`.
    """
    names: list[str] = []
    for norm_name, norm in spec.norms.items():
        if norm_name != "mlp_pre_norm":
            continue
        names += _norm_params(norm_name, norm)
    mlp = spec.mlp
    if mlp.kind == "moe":
        assert spec.moe is not None
        names.append("W_router")
        if spec.moe.router_bias:
            names.append("b_router")
        if spec.moe.selection_bias:
            names.append("b_select")
        for n in _map_names(spec.moe.expert):
            names.append(f"experts.{n}")
            if spec.moe.expert_bias:
                names.append(f"experts.b_{n.split('_')[1]}")
        if spec.moe.shared_expert != "none":
            names += [f"shared.{n}" for n in _map_names(spec.moe.shared_kind)]
            if spec.moe.shared_expert == "gated":
                names.append("shared.w_gate")
    else:
        for n in _map_names(mlp.kind):
            names.append(n)
            if getattr(mlp.bias, n.split("_")[1]):
                names.append("b_" + n.split("_")[1])
    for norm_name, norm in spec.norms.items():
        if norm_name != "mlp_pre_norm":
            names += _norm_params(norm_name, norm)
    return tuple(names)


PATCH_KINDS = ("rank1", "rank_k", "scale", "vector", "bias")


def _split_pattern(pattern: str) -> tuple[str, str | None]:
    name, _, kind = pattern.partition(":")
    return name, (kind or None)


def allowed_parameters(spec: BlockSpec) -> tuple[str, ...]:
    """The parameters matched by `spec.patch.allow` (patterns, optionally `name:kind`)."""
    every = patchable_parameters(spec)
    pats = [_split_pattern(p)[0] for p in spec.patch.allow]
    return tuple(p for p in every if any(fnmatchcase(p, pat) for pat in pats))


def allowed_kinds(spec: BlockSpec, param: str) -> frozenset[str]:
    """Patch kinds allowed for `param`: every kind, unless each matching pattern names one (`name:kind`)."""
    kinds: set[str] = set()
    for pattern in spec.patch.allow:
        name, kind = _split_pattern(pattern)
        if fnmatchcase(param, name):
            kinds |= set(PATCH_KINDS) if kind is None else {kind}
    return frozenset(kinds)


def _map_names(kind: str) -> list[str]:
    return ["W_gate", "W_up", "W_down"] if kind == "gated" else ["W_up", "W_down"]


def _norm_params(name: str, norm: NormSpec) -> list[str]:
    out = [f"{name}.scale"] if norm.scale != "none" else []
    return out + ([f"{name}.bias"] if norm.bias else [])


# --------------------------------------------------------------------------- TOML reading


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
    """The text of an activation field; `MLPSpec` checks it (`_check_activation`)."""
    return tab.get(key, str, default)


TOP_FIELDS = ("name", "description", "reference", "hf_model_types", "residual", "skip",
              "shared_pre_norm", "norm", "attention", "mlp", "moe", "patch")
MLP_FIELDS = ("kind", "activation", "up_activation", "out_activation", "bias", "pre_norm", "mid_norm", "post_norm",
              "post_ln", "branch_scale")
MOE_FIELDS = ("experts", "top_k", "softmax", "renormalize", "shared_expert", "expert", "scoring", "selection_bias",
              "groups", "topk_groups", "routed_scale", "router_bias", "expert_bias", "weighting", "shared_kind")


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
    _check_allow(spec, source)
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


def _check_allow(spec: BlockSpec, source: str) -> None:
    every = patchable_parameters(spec)
    for full in spec.patch.allow:
        pattern, kind = _split_pattern(full)
        if kind is not None and kind not in PATCH_KINDS:
            raise bad_value(source, "patch.allow", full, [f"{pattern}:{k}" for k in PATCH_KINDS],
                            "A pattern may end in ':kind' to allow only that kind of patch.")
        if not any(fnmatchcase(p, pattern) for p in every):
            raise SpecError(
                f"{source}: field `patch.allow` names {pattern!r}, which matches no parameter of "
                f"this block.{suggest(pattern, every)} Parameters: {', '.join(every)} "
                "(fnmatch patterns such as 'W_*' are allowed)."
            )


def load_toml(path: str | Path) -> BlockSpec:
    """Read a spec file. Raises `SpecError` with the file name on any problem."""
    return loads_toml(read_text(path), str(path))


def loads_toml(text: str, source: str = "<string>") -> BlockSpec:
    """Parse the text of a spec file. Raises `SpecError` with `source` on any problem (`symbolic.specfile`)."""
    return parse_spec(parse_document(text, source), source)


# --------------------------------------------------------------------------- TOML writing


def dump_toml(spec: BlockSpec) -> str:
    """Print a spec as TOML; `loads_toml(dump_toml(s)) == s`."""
    norms = [n for n in (*_attn_norms(spec), *spec.norms.values()) if n is not None]
    default = norms[0] if norms else NormSpec("rms")
    lines = [f"name = {_q(spec.name)}"]
    if spec.description:
        lines.append(f"description = {_q(spec.description)}")
    if spec.reference:
        lines.append(f"reference = {_q(spec.reference)}")
    if spec.hf_model_types:
        lines.append(f"hf_model_types = [{', '.join(_q(t) for t in spec.hf_model_types)}]")
    lines += [f"residual = {_q(spec.residual)}", f"skip = {_b(spec.skip)}"]
    if spec.shared_pre_norm:
        lines.append("shared_pre_norm = true")
    lines += ["", "[norm]  # defaults for norms written by kind only",
              f"eps = {default.eps!r}", f"scale = {_q(default.scale)}", f"bias = {_b(default.bias)}"]
    lines += ["", "[attention]"]
    for key, norm in zip(("pre_norm", "post_norm", "post_ln"), _attn_norms(spec), strict=True):
        lines.append(f"{key} = {_norm_toml(norm, default)}")
    mlp = spec.mlp
    lines += ["", "[mlp]", f"kind = {_q(mlp.kind)}", f"activation = {_q(mlp.activation)}"]
    if mlp.up_activation != "identity":
        lines.append(f"up_activation = {_q(mlp.up_activation)}")
    if mlp.out_activation != "identity":
        lines.append(f"out_activation = {_q(mlp.out_activation)}")
    lines.append(f"bias = {_bias_toml(mlp)}")
    for key in ("pre_norm", "post_norm", "post_ln"):
        lines.append(f"{key} = {_norm_toml(getattr(mlp, key), default)}")
    if mlp.mid_norm is not None:
        lines.append(f"mid_norm = {_norm_toml(mlp.mid_norm, default)}")
    if mlp.branch_scale != 1:
        lines.append(f"branch_scale = {mlp.branch_scale!r}")
    if spec.moe is not None:
        m = spec.moe
        lines += ["", "[moe]", f"experts = {m.experts}", f"top_k = {m.top_k}",
                  f"softmax = {_q(m.softmax)}", f"renormalize = {_b(m.renormalize)}",
                  f"shared_expert = {_q(m.shared_expert)}", f"expert = {_q(m.expert)}"]
        if m != MoESpec(m.experts, m.top_k, m.softmax, m.renormalize, m.shared_expert, m.expert):
            lines += [f"scoring = {_q(m.scoring)}", f"selection_bias = {_b(m.selection_bias)}",
                      f"groups = {m.groups}", f"topk_groups = {m.topk_groups}", f"routed_scale = {m.routed_scale!r}",
                      f"router_bias = {_b(m.router_bias)}", f"expert_bias = {_b(m.expert_bias)}",
                      f"weighting = {_q(m.weighting)}"]
            if m.shared_kind != "gated":
                lines.append(f"shared_kind = {_q(m.shared_kind)}")
    p = spec.patch
    lines += ["", "[patch]", f"allow = [{', '.join(_q(a) for a in p.allow)}]"]
    if p.strategy:
        lines.append(f"strategy = {_q(p.strategy)}")
    if p.input_strategy:
        lines.append(f"input_strategy = {_q(p.input_strategy)}")
    return "\n".join(lines) + "\n"


def _attn_norms(spec: BlockSpec) -> tuple[NormSpec | None, ...]:
    a = spec.attention
    return (a.pre_norm, a.post_norm, a.post_ln)


def _norm_toml(norm: NormSpec | None, default: NormSpec) -> str:
    """A kind string where the [norm] defaults reproduce `norm`, else a full inline table."""
    if norm is None:
        return '"none"'
    implied = NormSpec(norm.kind, default.eps, default.scale, default.bias and norm.kind == "layer")
    if norm == implied:
        return _q(norm.kind)
    return "{ " + ", ".join(f"{f.name} = {_value(getattr(norm, f.name))}" for f in fields(norm)) + " }"


def _bias_toml(mlp: MLPSpec) -> str:
    keys = ("gate", "up", "down") if mlp.kind == "gated" else ("up", "down")
    values = {k: getattr(mlp.bias, k) for k in keys}
    if len(set(values.values())) == 1:
        return _b(next(iter(values.values())))
    return "{ " + ", ".join(f"{k} = {_b(v)}" for k, v in values.items()) + " }"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return _b(v)
    if isinstance(v, str):
        return _q(v)
    return repr(v)


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _b(v: bool) -> str:
    return "true" if v else "false"
