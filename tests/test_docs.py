"""The README and docs/ are the user's first contact: what they show runs, their tables are the registries,
their links resolve, and they point to nothing the project does not have."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from ctxpatch.cli import build_parser, main
from symbolic.derive import STRATEGIES

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").rglob("*.md"))
PAGES = [README, *DOCS]
VERBS = build_parser()._subparsers._group_actions[0].choices


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text(path), re.S)


def test_readme_is_short_and_points_into_docs():
    lines = text(README).splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; the reference belongs in docs/"
    linked = set(re.findall(r"\]\((docs/[^)#]+)", text(README)))
    assert {p.relative_to(ROOT).as_posix() for p in DOCS} <= linked, "a docs/ page the README does not link"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text(page)):
        if re.match(r"[a-z]+:", target):
            continue  # an absolute URL
        assert (page.parent / target).resolve().exists(), f"{page.name}: the link {target} leads nowhere"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_named_project_paths_exist(page):
    """Every path of the project named in backquotes exists (no page points to a file the project lacks)."""
    tops = ("symbolic/", "numeric/", "ctxpatch/", "proofs/", "tests/", "benchmarks/", "docs/", "examples/")
    for name in re.findall(r"`([\w./-]+)`", text(page)):
        if name.startswith(tops) and "<" not in name and not name.endswith("/"):
            path = name.split("::")[0]
            assert (ROOT / path).exists() or (ROOT / (path + ".py")).exists(), f"{page.name} names {name}"


def test_no_page_points_to_notes_outside_the_project():
    for page in PAGES + sorted(ROOT.glob("**/*.py")):
        if ".venv" in page.parts:
            continue
        assert not re.search(r"\b(DESIGN|THEORY|STYLE)\.md\b", text(page)), page


TOML = [(p, i) for p in PAGES for i in range(len(blocks(p, "toml")))]


@pytest.mark.parametrize("page,index", TOML, ids=[f"{p.name}-{i}" for p, i in TOML])
def test_every_toml_block_is_a_spec_that_checks(tmp_path, capsys, page, index):
    path = tmp_path / f"example_{index}.toml"
    path.write_text(blocks(page, "toml")[index], encoding="utf-8")
    assert main(["check", str(path), "--json"]) == 0, capsys.readouterr().err


def commands() -> list[tuple[Path, str]]:
    """Every `ctxpatch ...` line of a shell block, as written."""
    out = []
    for page in PAGES:
        for block in blocks(page, "sh"):
            for line in block.splitlines():
                line = line.split("  #")[0].strip()
                if line.startswith("ctxpatch "):
                    out.append((page, line))
    return out


@pytest.mark.parametrize("page,line", commands(), ids=[c[1] for c in commands()])
def test_every_shown_command_parses(page, line):
    """The parser accepts every command the pages show, with every option it names."""
    build_parser().parse_args(shlex.split(line)[1:])


def test_readme_example_block_runs_as_shown(tmp_path, monkeypatch, capsys):
    """The README's own spec, through check, derive (the lines it shows), prove, codegen and validate."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_block.toml").write_text(blocks(README, "toml")[0], encoding="utf-8")
    for line in commands():
        if line[0] == README and "my_block.toml" in line[1] and " report " not in line[1]:
            assert main(shlex.split(line[1])[1:]) == 0, (line[1], capsys.readouterr().err)
    capsys.readouterr()
    assert main(["derive", "my_block.toml"]) == 0
    printed = capsys.readouterr().out
    shown = blocks(README, "text")[0]
    for row in shown.splitlines():
        assert row.strip() in printed, row


def command_rows() -> dict[str, str]:
    rows = re.findall(r"^\| `ctxpatch ([a-z-]+)([^`]*)` \|(.*)$", text(ROOT / "docs/reference/commands.md"), re.M)
    return {verb: args + rest for verb, args, rest in rows}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_and_option_is_in_the_command_table(verb):
    rows = command_rows()
    assert verb in rows, f"`ctxpatch {verb}` is missing from docs/reference/commands.md"
    options = [a.option_strings for a in VERBS[verb]._actions if a.option_strings]
    missing = sorted(opts[-1] for opts in options if not set(opts) & {"--help", "--json"}
                     and not any(re.search(rf"(?<![\w-]){o}(?![\w-])", rows[verb]) for o in opts))
    assert not missing, f"ctxpatch {verb}: options not in docs/reference/commands.md: {missing}"


def test_strategy_table_is_the_registry():
    page = text(ROOT / "docs/reference/strategies.md")
    rows = re.findall(r"^\| (input|output) \| `([a-z_0-9]+)` \| (.*?) \| (.*?) \|$", page, re.M)
    expected = [(s.side, s.name, s.doc, s.source or "—") for s in STRATEGIES]
    assert rows == expected


@pytest.mark.slow
def test_readme_real_model_example_runs_and_is_exact():
    """The README's Python example, as written, on the packaged Gemma 3 270M: the patched query alone gives the
    logits of the run with the context (factored and written into the model's own modules)."""
    import torch

    scope: dict = {}
    exec(compile(blocks(README, "python")[0], "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    model, ctx, query, ps = (scope[k] for k in ("model", "ctx", "query", "ps"))
    with torch.no_grad():
        full = model(torch.cat([ctx, query], dim=1)).logits[:, ctx.shape[1]:]
    scale = full.abs().max()
    assert (ps.logits() - full).abs().max() / scale < 1e-4
    assert (ps.materialized_logits() - full).abs().max() / scale < 1e-4
