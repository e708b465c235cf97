"""Kernels generated from the derived formulas (`ctxpatch codegen`) and their run-time helpers.

``numeric.kernels.numpy.<arch>`` and ``numeric.kernels.torch.<arch>`` exist for every catalog name and offer
the same names; `load` imports one by name. Arrays are batched over the T tokens; ``params`` maps the
canonical parameter names to arrays in their stored layout (W (out, in)); a parallel block's functions
also take ``x``, the MLP input.

Functions:

- ``block_patches(params, u, u_ctx, layer="", given=None)`` -> {parameter: {field: array}}: the factored
  patches of every token (rank1: ``left`` (T, out), ``right`` (T, in); bias, vector: ``delta``; scale:
  ``scale``; per expert (T, E, n) in a mixture, zero off each token's top-k). A failed side condition, a
  non-finite input or patch raises `PatchConditionError` naming the layer, the tokens and the condition.
- ``apply(params, patches, u)`` -> y: the patched MLP sub-block, without forming a dense matrix.
- ``forward(params, u)`` -> y: the sub-block without patches.
- ``patched(params, u, u_ctx, layer="", given=None)`` -> (patches, y): dense blocks only; both of the above
  in one pass, z and each input map's W z computed once.
- ``products(params, u_ctx)`` -> {matrix: (T, out)}: where `GIVEN` is not empty, the contextual products the
  patch formulas read; ``block_patches`` and ``patched`` accept them ready-made as ``given``.
- ``references(params)`` -> {parameter: array}: what each patch is measured against (conditioning).
- ``materialize(params, patches, j)`` -> params with token j's patches written in densely (for checks).

Constants: ``ARCH`` (the catalog name), ``INPUT_STRATEGY`` and ``OUTPUT_STRATEGY``, ``PATCHES`` ((parameter,
kind), ...), ``CONDITIONS`` (the side conditions, as text), ``GIVEN`` (the matrices whose contextual
products ``given`` may hold), the spec's constants (``epsilon_pre``, ...) and, in a mixture of experts,
``TOP_K`` and ``ROUTING``. The module's header gives the spec, template and formula hashes; its docstring
the patch formulas and their side conditions.

One module per distinct kernel: where catalog names derive the same kernel (the same formulas, constants
and strategies: llama, mistral, qwen2, qwen3), the first name in catalog order holds the code and the others
are thin aliases that re-export its names under their own ``ARCH``, with ``ALIAS_OF`` naming the module
that holds it. Importing an alias, or `load` of its name, gives the alias module; its functions are the
other module's own.

What is not a formula lives in `numeric.kernels.runtime` (the named activations the kernels call,
``runtime.silu(t)``, ``runtime.gelu_tanh(t)``, ...; the top-k routing; the constrained RMSNorm inverse; the
checks), written once for both back ends through the array API. For a strategy other than an
architecture's default, or for a user's spec, `load` renders the kernel in memory (same templates, same
printers) and caches the module.
"""

from __future__ import annotations

import importlib
from functools import cache
from types import ModuleType


@cache
def load(arch, backend: str = "torch", strategy: str | None = None,
         input_strategy: str | None = None) -> ModuleType:
    """The kernel module of a catalog name, TOML path or `BlockSpec` for the given (default) strategies.

    A catalog block with its default strategies imports the committed module; anything else is
    rendered in memory (same template, same printers).
    """
    from symbolic import catalog
    from symbolic.controllability import check
    from symbolic.spec import BlockSpec

    if backend not in ("numpy", "torch"):
        raise ValueError(f"unknown back end {backend!r}; allowed: 'numpy', 'torch'")
    spec = arch if isinstance(arch, BlockSpec) else catalog.resolve(arch)
    in_catalog = spec.name in catalog.names() and catalog.load(spec.name) == spec
    verdict = check(spec)
    default = verdict.derivation
    der = verdict.derivation_for(strategy, input_strategy)
    if in_catalog and default is not None and \
            (der.input_strategy, der.output_strategy) == (default.input_strategy, default.output_strategy):
        return importlib.import_module(f"numeric.kernels.{backend}.{spec.name}")
    return _exec(spec, backend, der)


def _exec(spec, backend: str, der) -> ModuleType:
    from symbolic.codegen import render

    name = f"numeric.kernels.{backend}.{spec.name}__{der.input_strategy}__{der.output_strategy}"
    return module_from_source(name, render(spec, backend, der))


def module_from_source(name: str, source: str) -> ModuleType:
    """A module executed from kernel source held in memory (a rendering, or a mutant of one)."""
    module = ModuleType(name)
    exec(compile(source, f"<ctxpatch kernel {name}>", "exec"), module.__dict__)  # noqa: S102 - generated code
    return module
