"""Nothing is written outside the output folder: each command that writes (and the cheap ones that should not), run
in an empty current directory with the system's temporary folder redirected to an empty one (`sandbox`), leaves
files only under its -o. The demo is watched the same way where it is tested (tests/test_report.py)."""

from __future__ import annotations

import shutil

import pytest
from sandbox import files, sandbox, stray_files

from ctxpatch.cli import build_parser, main

LATEX = shutil.which("latexmk") and shutil.which("pdflatex")


def _prove_options() -> set[str]:
    verbs = build_parser()._subparsers._group_actions[0].choices
    return {o for a in verbs["prove"]._actions for o in a.option_strings}


#: (name, the runs, each an argument list with OUT for the output folder; whether they write under OUT)
PRINTING = [["check", "gemma3"], ["derive", "gemma3", "--latex"], ["prove", "rank1_lemma"],
            ["validate", "gemma3", "--layers", "1", "--trials", "1"], ["spec", "gemma3"], ["hf-check", "llama",
                                                                                         "--layers", "1"]]
COMMANDS = [
    ("report", [["report", "vanilla", "--quick", "--format", "html", "--format", "latex",
                 *(["--format", "pdf"] if LATEX else []), "-o", "OUT"]], True),
    ("codegen_spec", [["codegen", "--spec", "llama", "-o", "OUT"]], True),
    ("codegen_catalog", [["codegen", "-o", "OUT"]], True),
    ("models_markdown", [["models", "--types", "gpt2", "--markdown", "OUT/models.md"]], True),
    ("printing_verbs", PRINTING, False),
]
if "--coq" in _prove_options():  # the Coq export, where this version has it
    COMMANDS.append(("prove_coq", [["prove", "rank1_lemma", "--coq", "OUT"]], True))


@pytest.mark.parametrize(("name", "runs", "writes"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_command_writes_only_under_its_output_folder(name, runs, writes, tmp_path, capsys):
    with sandbox(tmp_path) as folders:
        out = folders["out"]
        if name == "models_markdown":
            out.mkdir()
        for args in runs:
            code = main([a.replace("OUT", str(out)) for a in args])
            assert code == 0, (args, capsys.readouterr().err)
    assert stray_files(folders) == []
    assert bool(files(out)) == writes, files(out)


def test_html_report_figures_are_inlined_not_left_in_a_temporary_folder(tmp_path):
    """The HTML report's PNGs live in the page (data URIs); the LaTeX report's beside the .tex; no temporary copy."""
    from ctxpatch import reporting
    from symbolic import catalog

    spec = catalog.load("vanilla")
    data = reporting.collect(spec, hf=False, quick=True)
    with sandbox(tmp_path) as folders:
        (page,) = reporting.render(spec, "html", folders["out"], data=data)
        tex_files = reporting.render(spec, "latex", folders["out"], data=data)
    assert stray_files(folders) == []
    assert page.read_text().count("data:image/png;base64,") >= 3
    assert {p.name for p in tex_files} >= {"vanilla.tex", "errors.png", "patch_norms.png", "dynamics.png"}
