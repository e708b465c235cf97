"""The catalog of built-in block specs: one TOML file per architecture, shipped in the package.

`names()` lists them, `load(name)` parses one, `resolve(arg)` accepts a catalog name or a path
to a user's TOML file (the ARCH_OR_TOML argument of the command line).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from symbolic.errors import SpecError, suggest
from symbolic.spec import BlockSpec, load_toml, loads_toml, read_text


def names() -> list[str]:
    """Every catalog architecture, sorted."""
    return sorted(p.name[:-5] for p in resources.files(__package__).iterdir() if p.name.endswith(".toml"))


def text(name: str) -> str:
    """The catalog TOML of `name`, as shipped."""
    if name not in names():
        raise SpecError(
            f"unknown architecture {name!r}.{suggest(name, names())} "
            f"Catalog: {', '.join(names())}; or pass the path of a .toml spec file."
        )
    return resources.files(__package__).joinpath(f"{name}.toml").read_text(encoding="utf-8")


@cache
def load(name: str) -> BlockSpec:
    return loads_toml(text(name), f"catalog/{name}.toml")


def is_path(arg: str) -> bool:
    """Whether ARCH_OR_TOML names a file: it ends in .toml, or it is an existing file that is not a
    catalog name (a folder, or a file without a suffix, never hides a catalog entry)."""
    return arg.endswith(".toml") or (Path(arg).is_file() and arg not in names())


def resolve(arg: str) -> BlockSpec:
    """A catalog name, or a path to a TOML spec (see `is_path`)."""
    return load_toml(arg) if is_path(arg) else load(arg)


def resolve_text(arg: str) -> str:
    """The TOML text behind ARCH_OR_TOML, as written."""
    return read_text(arg) if is_path(arg) else text(arg)
