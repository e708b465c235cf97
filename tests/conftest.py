"""Shared fixtures: the catalog, the example specs with no perfect patch, verdicts computed once, the benchmark
scripts as modules."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

from ctxpatch.api import check
from symbolic import catalog

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


@cache
def verdict(arch: str):
    """The controllability verdict of a catalog name or spec path, computed once per session."""
    return check(arch)


@cache
def benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` loaded as a module (benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=catalog.names())
def arch(request) -> str:
    return request.param
