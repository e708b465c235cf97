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

# Property tests draw the same examples on every run and keep no example database: a run's cost and its verdict
# depend neither on earlier runs nor on luck (a random spec once drew a form that SymPy's simplify did not finish).
# The draws are fixed by ``--hypothesis-seed=2`` (pyproject's pytest ``addopts``), not by ``derandomize``: that
# mode's draws are skewed (test_bad_input's fuzzed arguments drew a full `codegen ... --check` in 19 of 60
# examples, 996 s on a loaded machine). Of the seeds timed (0, 2, 3), 2 gave the cheapest
# test_random_valid_specs_are_consistent_end_to_end (48 s against 104 s and 556 s, same machine, loaded); the
# assertions are the same for every seed. Each test's own ``@settings`` bounds its examples. Another seed on the
# command line (``--hypothesis-seed=N``) overrides it; ``HYPOTHESIS_PROFILE=explore`` keeps a database.
settings.register_profile("ci", database=None, print_blob=True)
settings.register_profile("explore", print_blob=True)
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
