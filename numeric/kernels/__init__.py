"""Kernels generated from the derived formulas (`ctxpatch codegen`) and their run-time helpers.

``numeric.kernels.numpy.<arch>`` and ``numeric.kernels.torch.<arch>`` offer the same functions:
``block_patches(params, u, u_ctx)``, ``apply(params, patches, u)``, ``forward(params, u)`` and
``materialize(params, patches, j)``. `load` imports one by name; for a strategy other than an
architecture's default, or for a user's spec, it renders the kernel in memory (same template,
same printers) and caches the module.
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
