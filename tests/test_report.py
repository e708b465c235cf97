"""Reports: the PDF's text holds the theorem, hypotheses, every step and the validation table; the
HTML is self-contained and renders in headless Chromium (math laid out, page not blank)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("latex2mathml")

from ctxpatch import reporting as report
from ctxpatch.cli import main  # noqa: E402
from symbolic import catalog  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LATEX = shutil.which("latexmk") and shutil.which("pdflatex") and shutil.which("pdftotext")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--hide-scrollbars"]


@pytest.fixture(scope="module")
def gemma3_data():
    return report.collect(catalog.load("gemma3"), quick=True)


def test_collected_data_is_what_the_pipeline_computed(gemma3_data):
    d = gemma3_data
    assert d["verdict"]["perfect_patch"] and [p["param"] for p in d["patches"]] == \
        ["W_gate", "W_up", "mlp_post_norm.scale"]
    names = [t["name"] for t in d["theorems"]]
    assert names[0] == "block_gemma3" and "multilayer_gemma3" in names and "block_gemma3_stable" in names
    assert all(t["verified"] and t["verified_steps"] == len(t["steps"]) for t in d["theorems"])
    assert [v["dtype"] for v in d["validation"]] == ["float64", "float32"] and all(v["ok"] for v in d["validation"])
    assert d["hf"] and d["hf"][1]["generation_identical"]
    assert any(s.startswith("block_patches(") for s in d["kernel"]["signatures"])


@pytest.mark.skipif(not LATEX, reason="needs latexmk, pdflatex and pdftotext (Debian texlive-latex-recommended, "
                                      "latexmk, poppler-utils; .ci/run installs them)")
def test_pdf_has_theorem_hypotheses_steps_and_validation(gemma3_data, tmp_path):
    (pdf,) = report.render(catalog.load("gemma3"), "pdf", tmp_path, data=gemma3_data)
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    for th in gemma3_data["theorems"]:
        assert th["name"] in text
        for st in th["steps"]:
            assert f"Step {st['n']} (" in text
    assert "Hypotheses." in text and "Statement." in text and "Proof." in text
    assert "Numerical validation" in text and "float32" in text and "greedy generation identical" in text
    assert f"{gemma3_data['validation'][0]['max_rel_error']:.2e}" in text
    assert text.count("verified") >= sum(len(t["steps"]) for t in gemma3_data["theorems"])


def test_latex_format_needs_no_tex_installation(gemma3_data, tmp_path):
    files = report.render(catalog.load("gemma3"), "latex", tmp_path, data=gemma3_data)
    tex = files[0].read_text()
    assert files[0].suffix == ".tex" and r"\begin{document}" in tex and r"\oslash" in tex
    assert {f.name for f in files[1:]} == {"errors.png", "patch_norms.png", "dynamics.png"}


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian chromium (.ci/run installs it)")
def test_html_renders_in_headless_chromium(gemma3_data, tmp_path):
    import matplotlib.image

    (page,) = report.render(catalog.load("gemma3"), "html", tmp_path, data=gemma3_data)
    html = page.read_text()
    assert "<math" in html and "data:image/png;base64," in html
    assert "http://" not in html.replace("http://www.w3.org/1998/Math/MathML", "")  # nothing to fetch
    dom = subprocess.run([CHROMIUM, *CHROME_FLAGS, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    laid, total = dom.split('data-math="')[1].split('"')[0].split("/")
    assert int(total) == html.count("<math") and laid == total, (laid, total)  # every formula of the page laid out
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *CHROME_FLAGS, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] == 1600 and pixels.std() > 0.05  # text and formulas, not a blank page


def test_report_command(tmp_path, capsys):
    assert main(["report", "vanilla", "--format", "latex", "-o", str(tmp_path), "--quick", "--json"]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert files[0].endswith("vanilla.tex")
    assert main(["report", "vanilla", "--format", "docx", "-o", str(tmp_path)]) == 2
    assert main(["report", "examples/tanh_output.toml", "-o", str(tmp_path)]) == 2
    assert "no perfect patch" in capsys.readouterr().err


def test_demo_runs_every_step_and_writes_the_reports(tmp_path, capsys):
    from sandbox import sandbox, stray_files

    with sandbox(tmp_path) as folders:  # nothing written outside -o, temporary files included
        assert main(["demo", "--json", "-o", str(folders["out"])]) == 0
    assert stray_files(folders) == []
    out = json.loads(capsys.readouterr().out)
    names = [s["name"].split(" ")[0] for s in out["steps"]]
    assert names == ["check", "prove", "codegen", "validate", "HF", "experiment", "reports"]
    assert all(s["ok"] for s in out["steps"])
    assert any(f.endswith("gemma3.html") for f in out["files"])
    assert any(f.endswith("gemma3.pdf") for f in out["files"]) == bool(LATEX)


def test_gemma3_report_has_the_generation_experiment_section(gemma3_data, tmp_path):
    from numeric.hf.experiment import PROMPTS, run

    data = {**gemma3_data, "experiment": [run(dtype="float32", tokens=2, prompts=PROMPTS[:1])]}
    files = report.render(catalog.load("gemma3"), "latex", tmp_path, data=data)
    assert "experiment.png" in {f.name for f in files}
    assert "generation experiment" in files[0].read_text()
    (page,) = report.render(catalog.load("gemma3"), "html", tmp_path, data=data)
    assert "generation experiment" in page.read_text()
