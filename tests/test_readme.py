"""The README is the user's first contact: its examples run, its command table lists every verb and
option the parser has, and its strategy table is the registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ctxpatch.cli import build_parser, main
from symbolic.derive import STRATEGIES

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
TOML_BLOCKS = re.findall(r"```toml\n(.*?)```", README, re.S)
VERBS = build_parser()._subparsers._group_actions[0].choices


def command_rows() -> dict[str, str]:
    rows = re.findall(r"^\| `ctxpatch ([a-z-]+)([^`]*)` \|(.*)$", README, re.M)
    return {verb: args + text for verb, args, text in rows}


def test_readme_has_toml_examples():
    assert TOML_BLOCKS


@pytest.mark.parametrize("index", range(len(TOML_BLOCKS)))
def test_every_toml_block_is_a_spec_that_checks(tmp_path, capsys, index):
    path = tmp_path / f"readme_{index}.toml"
    path.write_text(TOML_BLOCKS[index], encoding="utf-8")
    assert main(["check", str(path), "--json"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_and_option_is_in_the_command_table(verb):
    rows = command_rows()
    assert verb in rows, f"`ctxpatch {verb}` is missing from the README's command table"
    options = [a.option_strings for a in VERBS[verb]._actions if a.option_strings]
    missing = sorted(opts[-1] for opts in options if not set(opts) & {"--help", "--json"}
                     and not any(re.search(rf"(?<![\w-]){o}(?![\w-])", rows[verb]) for o in opts))
    assert not missing, f"ctxpatch {verb}: options not in the README: {missing}"


def test_strategy_table_is_the_registry():
    rows = re.findall(r"^\| (input|output) \| `([a-z_0-9]+)` \| (.*?) \| (.*?) \|$", README, re.M)
    expected = [(s.side, s.name, s.doc, s.source or "—") for s in STRATEGIES]
    assert rows == expected
