"""A sandbox for a command that writes: an empty current directory, the system's temporary folder redirected to an
empty folder of its own (``TMPDIR`` and `tempfile.tempdir`, which every library asks), and an output folder. After
the command no file may have appeared in the temporary folder or the current directory: what a command writes
belongs under its output folder (`stray_files` lists what does not)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def files(root: Path) -> list[str]:
    """Every file under ``root`` (links included, folders not), relative to it, sorted.

    Folders are not counted: importing transformers imports ``torch._dynamo``, which creates an empty
    ``torchinductor_<user>`` cache folder in the temporary folder once per process; ctxpatch writes nothing there.
    """
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()) if root.exists() else []


@contextlib.contextmanager
def sandbox(base: Path) -> Iterator[dict[str, Path]]:
    """Run the body in ``base/cwd`` with the temporary folder ``base/tmp``; yields the three folders (``out`` is
    not created: the command creates it). The stray files are checked by `stray_files` after the body."""
    folders = {"cwd": base / "cwd", "tmp": base / "tmp", "out": base / "out"}
    folders["cwd"].mkdir(parents=True)
    folders["tmp"].mkdir()
    before = os.getcwd(), os.environ.get("TMPDIR"), tempfile.tempdir
    os.chdir(folders["cwd"])
    os.environ["TMPDIR"] = str(folders["tmp"])
    tempfile.tempdir = str(folders["tmp"])
    try:
        yield folders
    finally:
        os.chdir(before[0])
        if before[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = before[1]
        tempfile.tempdir = before[2]


def stray_files(folders: dict[str, Path]) -> list[str]:
    """What a command left in the temporary folder or the current directory (empty when it behaved)."""
    return [f"tmp/{e}" for e in files(folders["tmp"])] + [f"cwd/{e}" for e in files(folders["cwd"])]
