"""Writing block specs as TOML: `dump_toml(spec)`, read back by `symbolic.spec_read.loads_toml` to the same spec.

Norms are written by kind where the ``[norm]`` defaults (taken from the block's first norm) reproduce them, else as
inline tables; the ``[moe]`` table lists its rarer fields only where they differ from the defaults.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from symbolic.spec_data import BlockSpec, MLPSpec, MoESpec, NormSpec


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
            if m.renormalize_eps:
                lines.append(f"renormalize_eps = {m.renormalize_eps!r}")
            if m.jitter_eps:
                lines.append(f"jitter_eps = {m.jitter_eps!r}")
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
