"""Shared fixtures: the catalog, the example specs with no perfect patch, verdicts computed once."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from ctxpatch.api import check
from symbolic import catalog

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


@cache
def verdict(arch: str):
    """The controllability verdict of a catalog name or spec path, computed once per session."""
    return check(arch)


@pytest.fixture(params=catalog.names())
def arch(request) -> str:
    return request.param
