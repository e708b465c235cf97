"""Block specs as data: frozen dataclasses of a transformer block's MLP sub-block, validated at construction.

A `BlockSpec` says how the block is wired (sequential or parallel residual, with or without skip), which norms
exist and how they are parameterized (`NormSpec`), what the MLP is (`MLPSpec`: dense, gated; `MoESpec`: a mixture
of experts), which linear maps carry biases (`Biases`) and which parameters the user allows to be patched
(`PatchSpec`). Every number is checked against its bound in `symbolic.limits`, the name and activations by
`symbolic.specfile`; every failure is a `SpecError`. No SymPy here: the symbolic meaning of a spec lives in
`symbolic.model`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from symbolic import limits
from symbolic.errors import SpecError
from symbolic.specfile import check_activation, check_name

NormKind = Literal["rms", "layer"]
ScaleParam = Literal["plain", "one_plus", "none"]
Residual = Literal["sequential", "parallel"]
MLPKind = Literal["dense", "gated", "moe"]
ExpertKind = Literal["dense", "gated"]
SoftmaxOrder = Literal["before_topk", "after_topk"]
SharedExpert = Literal["none", "plain", "gated"]
Scoring = Literal["softmax", "sigmoid", "sparsemixer"]
Weighting = Literal["output", "input"]



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
    sum is multiplied by `routed_scale` (shared experts are not). `renormalize_eps` $\epsilon$: the renormalized
    weights are $s_j / (\sum_k s_k + \epsilon)$ (LFM2-MoE: $10^{-6}$), a context-free function of the logits
    like the rest (0: the plain $s_j / \sum_k s_k$). `scoring = "sparsemixer"` (PhiMoE at inference): the
    experts are the top-k by the logits, the j-th weighted by a softmax over the logits not chosen before it
    that are not masked, $(\ell_{e_j} - \ell_i) / \max(|\ell_i|, \ell_{e_j}) \le 2\,$`jitter_eps`: again a
    context-free function of the token's own logits (no renormalisation, groups, selection bias; output
    weighting). `softmax` says whether the
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
    renormalize_eps: float = 0.0
    jitter_eps: float = 0.0

    def __post_init__(self) -> None:
        for key, bound in (("experts", limits.EXPERTS), ("top_k", limits.TOP_K), ("groups", limits.EXPERTS),
                           ("topk_groups", limits.EXPERTS)):
            bound.check(f"field `moe.{key}`", getattr(self, key), SpecError)
        limits.ROUTED_SCALE.check("field `moe.routed_scale`", self.routed_scale, SpecError)
        limits.RENORM_EPS.check("field `moe.renormalize_eps`", self.renormalize_eps, SpecError)
        if self.renormalize_eps and not (self.renormalize and self.softmax == "before_topk"):
            raise SpecError("moe.renormalize_eps guards the top-k renormalisation s_j / (sum s + eps); it needs "
                             "renormalize = true and softmax = 'before_topk' (or set renormalize_eps = 0)")
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
        self._check_sparsemixer()
        if self.weighting not in get_args(Weighting):
            raise SpecError(f"moe.weighting {self.weighting!r}; allowed: {get_args(Weighting)}")
        if self.weighting == "input" and (self.gates_sum_to_one or self.routed_scale != 1):
            raise SpecError("moe.weighting = 'input' (the weight scales the expert's input, Llama 4) is supported "
                             "with unnormalized scores only: set softmax = 'before_topk', renormalize = false and "
                             "routed_scale = 1")

    def _check_sparsemixer(self) -> None:
        limits.JITTER_EPS.check("field `moe.jitter_eps`", self.jitter_eps, SpecError)
        if self.scoring != "sparsemixer":
            if self.jitter_eps:
                raise SpecError("moe.jitter_eps sets the sparsemixer's mask threshold; it needs scoring = "
                                "'sparsemixer' (or set jitter_eps = 0)")
            return
        plain = ("before_topk", False, False, 1, 1, "output")
        if (self.softmax, self.renormalize, self.selection_bias, self.groups, self.topk_groups,
                self.weighting) != plain:
            raise SpecError("moe.scoring = 'sparsemixer' computes its own weights from the logits: it takes softmax = "
                            "'before_topk', renormalize = false, no selection_bias, groups = topk_groups = 1 and "
                            "weighting = 'output'")

    @property
    def thresholded(self) -> bool:
        """Whether the weights mask logits by a threshold (sparsemixer): the order of the top-k and every mask need
        a margin above round-off too (`numeric.kernels.runtime.require_mask_margin`)."""
        return self.scoring == "sparsemixer"

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
        if self.moe is not None and self.mlp.bias not in (Biases(), Biases(down=True)):
            raise SpecError("for kind = 'moe', mlp.bias may only declare down = true (a bias b_down added once to the "
                             "mixture's output, JetMoE); the experts take theirs from moe.expert_bias = true")
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
