"""Mutation testing: deliberately wrong formulas, proofs and kernels that `prove` or `validate` must catch.

Two families, reported together by ``ctxpatch mutate``:

- proof mutants (`proofs.mutations`): a theorem rebuilt with one wrong formula or step; caught
  when the proof kernel does not verify it;
- kernel mutants (here): one edit to a generated torch kernel (a dropped eps, a wrong denominator,
  a sign flip, z and z_C swapped, a transposed factor, a missing norm offset, a wrong top-k
  renormalization, ...) or to the layer-by-layer algorithm (an off-by-one layer); caught when random
  validation exceeds its bound or fails outright.

An edit that no longer matches the generated code is an error, never a silent pass.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from numeric.check.validate import Setup, validate
from symbolic import catalog


class MutantError(RuntimeError):
    """A mutant's edit did not apply: the generated code changed and the mutant must be updated."""


@dataclass(frozen=True)
class Edit:
    """Replace `old` by `new` inside function `function` of the kernel source (regex when `regex`)."""

    function: str
    old: str
    new: str
    regex: bool = False


@dataclass(frozen=True)
class KernelMutant:
    name: str
    description: str
    arch: str
    edits: tuple[Edit, ...] = ()
    strategy: str | None = None
    off_by_one_layer: bool = False


BP, AP = "block_patches", "apply"


def _line(target: str, template: str) -> Edit:
    """Rewrite the right-hand side of `target = ...` in block_patches: template with {rhs}."""
    return Edit(BP, rf"^(    {re.escape(target)} = )(.*)$", r"\g<1>" + template.replace("{rhs}", r"\g<2>"), True)


KERNEL_MUTANTS: tuple[KernelMutant, ...] = (
    KernelMutant("kernel_drop_eps_post", "Theorem 1 patch computed with f(h_C) without eps", "gemma3",
                 (Edit(BP, "epsilon_post + ", ""),)),
    KernelMutant("kernel_drop_eps_pre", "z computed without the pre-norm eps in block_patches", "llama",
                 (Edit(BP, "epsilon_pre + ", ""),)),
    KernelMutant("kernel_norm_of_z_C", "rank-1 patch divided by |z_C|^2 instead of |z|^2", "gemma3",
                 (Edit(BP, "torch.sum(z * z,", "torch.sum(z_C * z_C,"),)),
    KernelMutant("kernel_sign_flip", "post-norm scale patch -delta / f_C", "gemma3",
                 (_line("mlp_post_norm_scale_delta", "-({rhs})"),)),
    KernelMutant("kernel_swap_z_z_C", "rank-1 input patch with right factor z_C", "llama",
                 (_line("W_gate_right", "z_C"),)),
    KernelMutant("kernel_transposed_factor", "W_down patch stored as outer(right, left)", "llama",
                 (Edit(BP, '"W_down": {"left": W_down_left, "right": W_down_right}',
                       '"W_down": {"left": W_down_right, "right": W_down_left}'),)),
    KernelMutant("kernel_scale_without_one_plus", "patched Gemma post-norm applied as w instead of 1 + w", "gemma3",
                 (Edit(AP, "(mlp_post_norm_scale_delta + w_post + 1)", "(mlp_post_norm_scale_delta + w_post)"),)),
    KernelMutant("kernel_topk_not_renormalized", "Mixtral experts' gates not renormalized over the top-k",
                 "mixtral", (Edit(AP, r"/torch\.sum\((t\d+), dim=-2, keepdim=True\)", "", True),)),
    KernelMutant("kernel_expert_share", "OLMoE W_down patch without the 1 / sum of gates share", "olmoe",
                 (Edit(BP, r"delta/\(t\d+\*", "delta/(", True),)),
    KernelMutant("kernel_router_sign", "router patch with the wrong sign", "mixtral",
                 (_line("W_router_left", "-({rhs})"),)),
    KernelMutant("kernel_bias_twice", "GPT-2 output bias patch 2 delta", "gpt2", (_line("b_down_delta", "2*({rhs})"),)),
    KernelMutant("kernel_post_ln_bias_dropped", "BERT output bias patch dropped", "bert",
                 (_line("b_down_delta", "0*({rhs})"),)),
    KernelMutant("kernel_shared_gate_dropped", "Qwen2-MoE shared expert without its sigmoid gate", "qwen2_moe",
                 (Edit(AP, r"^(    sigma_sg = ).*$", r"\g<1>1.0", True),)),
    KernelMutant("kernel_parallel_half_delta", "Falcon W_down patch adding delta / 2", "falcon",
                 (_line("W_down_left", "0.5*({rhs})"),)),
    KernelMutant("kernel_stable_without_inverse", "stable update with y = t (no constrained RMSNorm inverse)",
                 "gemma3", (Edit(BP, r"^(    y = ).*$", r"\g<1>t", True),), strategy="stable"),
    KernelMutant("kernel_stable_remainder_dropped", "stable update without the remainder in the scale", "gemma3",
                 (_line("mlp_post_norm_scale_delta", "0*({rhs})"),), strategy="stable"),
    KernelMutant("algorithm_off_by_one_layer", "layer l patched towards the contextual state of layer l-1",
                 "llama", off_by_one_layer=True),
)


def _function_span(source: str, name: str) -> tuple[int, int]:
    start = source.index(f"\ndef {name}(")
    end = source.find("\ndef ", start + 1)
    return start, len(source) if end < 0 else end


def mutated_source(source: str, edits: tuple[Edit, ...]) -> str:
    for e in edits:
        start, end = _function_span(source, e.function)
        body = source[start:end]
        new = re.sub(e.old, e.new, body, flags=re.M) if e.regex else body.replace(e.old, e.new)
        if new == body:
            raise MutantError(f"edit {e.old!r} -> {e.new!r} does not apply to {e.function}()")
        source = source[:start] + new + source[end:]
    return source


class _OffByOne:
    """A kernel whose layer n receives the contextual target of layer n - 1 (Algorithm 1, off by one)."""

    def __init__(self, kernel):
        self.kernel, self.previous = kernel, None

    def __getattr__(self, name):
        return getattr(self.kernel, name)

    def block_patches(self, params, u, u_ctx, layer="", **kw):
        target = u_ctx if self.previous is None or layer == "0" else self.previous
        self.previous = u_ctx
        return self.kernel.block_patches(params, u, target, layer=layer, **kw)


def kernel_module(m: KernelMutant):
    from numeric import kernels
    from symbolic.codegen import render
    from symbolic.controllability import check

    spec = catalog.load(m.arch)
    base = kernels.load(spec, "torch", m.strategy)
    if m.off_by_one_layer:
        return _OffByOne(base)
    source = mutated_source(render(spec, "torch", check(spec).derivation_for(m.strategy, None)), m.edits)
    return kernels.module_from_source(f"mutant_{m.name}", source)


def run_kernel_mutant(m: KernelMutant) -> dict:
    t0 = time.perf_counter()
    spec = catalog.load(m.arch)
    module = kernel_module(m)
    try:
        out = validate(spec, Setup(layers=3, strategy=m.strategy), trials=1, kernel=module)
        killed, detail = not out["ok"], f"max relative error {out['max_rel_error']:.2e} (bound {out['bound']:.0e})"
    except Exception as exc:  # a mutant that crashes the validation is caught by it
        killed, detail = True, f"validation failed: {type(exc).__name__}: {str(exc)[:120]}"
    return {"name": m.name, "kind": "kernel", "arch": m.arch, "description": m.description,
            "caught_by": ["validate"] if killed else [], "killed": killed, "detail": detail,
            "seconds": round(time.perf_counter() - t0, 2)}


def run_proof_mutant(name: str) -> dict:
    from proofs.mutations import MUTATIONS, check_mutant

    t0 = time.perf_counter()
    status, _ = check_mutant(name, instances=False)
    killed = status != "verified"
    return {"name": name, "kind": "proof", "arch": "", "description": MUTATIONS[name][0],
            "caught_by": ["prove"] if killed else [], "killed": killed, "detail": status,
            "seconds": round(time.perf_counter() - t0, 2)}


def run_all() -> dict:
    from proofs.mutations import MUTATIONS

    rows = [run_proof_mutant(n) for n in MUTATIONS] + [run_kernel_mutant(m) for m in KERNEL_MUTANTS]
    return {"mutants": len(rows), "killed": sum(r["killed"] for r in rows),
            "survivors": [r["name"] for r in rows if not r["killed"]], "results": rows}
