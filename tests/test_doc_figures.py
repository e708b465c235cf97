"""The docs' figures come from commands that print them now.

Every figure in docs/ names the command that prints it; the cheap ones are re-run here and compared:
a shown session (a ```text block that starts with `$ ctxpatch ...`) must print the same figures today,
and the counts the prose states (theorems, catalog blocks, kernels) must be the registries' counts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from ctxpatch.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])")


def sessions() -> list[tuple[str, str, str]]:
    """(page, command, shown output) of every shown `$ ctxpatch` session."""
    out = []
    for page in DOCS:
        for block in re.findall(r"```text\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
            first, _, shown = block.partition("\n")
            if first.startswith("$ ctxpatch "):
                out.append((page.relative_to(ROOT).as_posix(), first[2:], shown))
    return out


@pytest.mark.parametrize("page, command, shown", sessions(), ids=[f"{p}:{c}" for p, c, _ in sessions()])
def test_a_shown_session_prints_the_same_figures_today(page, command, shown, capsys, monkeypatch):
    """Each figure of the shown output, in order, is printed by the command now (rich's layout aside)."""
    monkeypatch.setenv("COLUMNS", "200")
    code = main(shlex.split(command)[1:])
    printed = capsys.readouterr().out
    assert code == 0, printed
    wanted, now = NUMBER.findall(shown), iter(NUMBER.findall(printed))
    missing = [n for n in wanted if n not in now]  # `in` on the iterator: a subsequence, in order
    assert not missing, f"{page}: `{command}` no longer prints {missing}; run it and update the page:\n{printed}"


def test_the_theorem_count_the_docs_state_is_the_registry():
    from proofs.registry import theorems_for

    count = len(theorems_for("all"))
    stated = re.findall(r"checks (\d+) theorems", (ROOT / "docs/reference/proofs.md").read_text(encoding="utf-8"))
    assert stated, "docs/reference/proofs.md no longer states how many theorems `prove all` checks"
    assert {int(n) for n in stated} == {count}, f"the docs say {stated}, `ctxpatch prove all` checks {count}"
