"""Proofs that read like the paper: short formulas, one page per block theorem, nothing wider than the column.

The gemma3 report is rendered once (quick, without the Hugging Face check): its LaTeX has no formula
longer than 600 characters, the PDF puts each block theorem on one page at the body's type size,
and the HTML, laid out by headless Chromium, has no scroll bar and nothing wider than the column
(checked by the page's own layout script and by a screenshot whose right margin must stay blank).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("latex2mathml")

from ctxpatch import reporting as report  # noqa: E402
from symbolic import catalog  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LATEX = shutil.which("latexmk") and shutil.which("pdflatex") and shutil.which("pdftotext")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
MAX_FORMULA = 600


@pytest.fixture(scope="module")
def data():
    return report.collect(catalog.load("gemma3"), hf=False, quick=True)


def formulas(tex: str) -> list[str]:
    r"""The argument of every \fiteq{...} (balanced braces)."""
    out = []
    for m in re.finditer(r"\\fiteq\{", tex):
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(tex[i], 0) if tex[i - 1] != "\\" else 0
            i += 1
        out.append(tex[m.end():i - 1])
    return out


def test_no_formula_longer_than_600_characters(data, tmp_path):
    tex = report.render(catalog.load("gemma3"), "latex", tmp_path, data=data)[0].read_text()
    found = formulas(tex)
    longest = max(found, key=len)
    print(f"{len(found)} formulas; the longest has {len(longest)} characters")
    assert len(found) > 50 and len(longest) <= MAX_FORMULA, longest
    assert r"\resizebox" not in tex  # formulas keep the body's type size
    assert "tanh" not in "".join(t for th in data["theorems"] for t in th["definitions"])  # sigma stays opaque
    assert tex.count(r"\tanh") == 1  # the activation is written once, where it is defined


@pytest.mark.skipif(not LATEX, reason="needs latexmk, pdflatex and pdftotext")
def test_each_block_theorem_fits_on_one_page(data, tmp_path):
    (pdf,) = report.render(catalog.load("gemma3"), "pdf", tmp_path, data=data)
    pages = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                           check=True).stdout.split("\f")
    blocks = [th["name"] for th in data["theorems"] if th["block"]]
    assert blocks
    for name in blocks:
        start = [i for i, p in enumerate(pages) if f"{name}: verified" in p]
        end = [i for i, p in enumerate(pages) if f"End of {name}." in p]
        assert len(start) == 1 and start == end, (name, start, end)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian chromium")
def test_html_math_has_no_scroll_bars_and_stays_in_the_column(data, tmp_path):
    import matplotlib.image

    (page,) = report.render(catalog.load("gemma3"), "html", tmp_path, data=data)
    assert "overflow-x: auto" not in page.read_text().split("<body>")[0].split("pre {")[0]
    dom = subprocess.run([CHROMIUM, *FLAGS, "--window-size=1280,1600", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    laid, total = dom.split('data-math="')[1].split('"')[0].split("/")
    wide = dom.split('data-wide="')[1].split('"')[0]
    assert laid == total and int(total) > 50, (laid, total)
    assert wide.startswith("0:"), wide
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, "--window-size=1280,12000", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    pixels = matplotlib.image.imread(shot)
    column_right = (1280 + 960) // 2 + 4  # body max-width 60rem = 960 px, centred
    margin = pixels[:, column_right + 8:, :3]
    print(f"screenshot {pixels.shape[1]}x{pixels.shape[0]}; right margin min {margin.min():.3f}")
    assert pixels.std() > 0.05 and margin.min() > 0.95  # content, and nothing drawn beyond the column
