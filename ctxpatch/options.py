"""The argument types of the command line: integers within their bounds (`symbolic.limits`), catalog names and
paths no longer than a path can be, output folders and files checked before any work. Each refuses a bad value
with an `argparse.ArgumentTypeError` that names the range or the problem (argparse exits 2 with it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from symbolic import limits
from symbolic.errors import SpecError
from symbolic.limits import shown


def bounded(bound: limits.Bound):
    """An integer option within ``bound`` (argparse type; the message names the range and its reason)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shown(text, 40)} is not an integer") from None
        if not bound.holds(value):
            raise argparse.ArgumentTypeError(f"must be {bound.allowed().removeprefix('an integer ')}, got "
                                             f"{shown(value, 40)}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


def out_dir(text: str) -> Path:
    """A folder to write into: it may not exist yet, but it may not be a file (argparse type)."""
    path = _path(text)
    if _stat(path, lambda p: p.exists() and not p.is_dir()):
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder; name a folder (it is created if "
                                         "missing)")
    return path


def reference(text: str) -> str:
    """A catalog name or a path, no longer than a path can be (argparse type)."""
    _path(text, "a catalog name, a model name or a path")
    return text


def out_file(text: str) -> Path:
    """A file to write: not a folder, in a folder that exists (argparse type; checked before any work)."""
    path = _path(text)
    if _stat(path, Path.is_dir):
        raise argparse.ArgumentTypeError(f"{text} is a folder; name a file")
    if not _stat(path.parent, Path.is_dir):
        raise argparse.ArgumentTypeError(f"{text}: the folder {path.parent} does not exist; name a file in an "
                                         "existing folder")
    return path


def _path(text: str, allowed: str = "a path") -> Path:
    """A path as given, no longer than a path can be, without NUL bytes (`symbolic.specfile.check_reference`)."""
    from symbolic.specfile import check_reference

    try:
        return Path(check_reference(text, "it", allowed))
    except SpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _stat(path: Path, test) -> bool:
    """``test(path)``, an OSError (no permission to look) reported as the argument's error."""
    try:
        return bool(test(path))
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{path}: {exc.strerror or exc}") from None
