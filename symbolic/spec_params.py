"""The parameters of a block spec: their canonical names in pipeline order, and which a patch may change.

`patchable_parameters` is the vocabulary shared by specs, SymPy symbols, kernels and reports; `patch.allow`
patterns (fnmatch, optionally ``name:kind`` with a kind of `PATCH_KINDS`) select among them
(`allowed_parameters`, `allowed_kinds`) and are checked against them when a spec is read (`check_allow`).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from symbolic.errors import SpecError, bad_value, suggest
from symbolic.spec_data import BlockSpec, NormSpec


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
        if mlp.bias.down:  # added once to the mixture's output (JetMoE)
            names.append("b_down")
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


def split_pattern(pattern: str) -> tuple[str, str | None]:
    """A `patch.allow` pattern as (fnmatch pattern, kind or None): ``"W_*:rank1"`` -> ``("W_*", "rank1")``."""
    name, _, kind = pattern.partition(":")
    return name, (kind or None)


def allowed_parameters(spec: BlockSpec) -> tuple[str, ...]:
    """The parameters matched by `spec.patch.allow` (patterns, optionally `name:kind`)."""
    every = patchable_parameters(spec)
    pats = [split_pattern(p)[0] for p in spec.patch.allow]
    return tuple(p for p in every if any(fnmatchcase(p, pat) for pat in pats))


def allowed_kinds(spec: BlockSpec, param: str) -> frozenset[str]:
    """Patch kinds allowed for `param`: every kind, unless each matching pattern names one (`name:kind`)."""
    kinds: set[str] = set()
    for pattern in spec.patch.allow:
        name, kind = split_pattern(pattern)
        if fnmatchcase(param, name):
            kinds |= set(PATCH_KINDS) if kind is None else {kind}
    return frozenset(kinds)


def check_allow(spec: BlockSpec, source: str) -> None:
    """Every `patch.allow` pattern matches a parameter of the block and names a known kind; else a `SpecError`
    naming the pattern, the parameters and the kinds (`source` names the file)."""
    every = patchable_parameters(spec)
    for full in spec.patch.allow:
        pattern, kind = split_pattern(full)
        if kind is not None and kind not in PATCH_KINDS:
            raise bad_value(source, "patch.allow", full, [f"{pattern}:{k}" for k in PATCH_KINDS],
                            "A pattern may end in ':kind' to allow only that kind of patch.")
        if not any(fnmatchcase(p, pattern) for p in every):
            raise SpecError(
                f"{source}: field `patch.allow` names {pattern!r}, which matches no parameter of "
                f"this block.{suggest(pattern, every)} Parameters: {', '.join(every)} "
                "(fnmatch patterns such as 'W_*' are allowed)."
            )


def _map_names(kind: str) -> list[str]:
    return ["W_gate", "W_up", "W_down"] if kind == "gated" else ["W_up", "W_down"]


def _norm_params(name: str, norm: NormSpec) -> list[str]:
    out = [f"{name}.scale"] if norm.scale != "none" else []
    return out + ([f"{name}.bias"] if norm.bias else [])
