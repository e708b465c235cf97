"""Shared fixtures: the catalog, the example specs with no perfect patch, verdicts computed once, the benchmark
scripts as modules."""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import settings

from ctxpatch.api import check
from symbolic import catalog

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))

# Property tests draw the same examples on every run (``derandomize``: the seed comes from the test's own source)
# and keep no example database: a run's cost and its verdict do not depend on earlier runs or on luck (a random
# spec once drew a form that SymPy's simplify did not finish). Each test's own ``@settings`` bounds its examples.
# ``HYPOTHESIS_PROFILE=explore`` draws afresh, for looking for new counterexamples by hand.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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
