"""The committed reports are what the code renders now, as the committed kernels are (`codegen --check`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctxpatch import reporting as report
from ctxpatch.reporting import freshness
from ctxpatch.reporting.catalog import main as catalog_main
from symbolic import catalog

ROOT = Path(__file__).resolve().parents[1]


def test_committed_reports_are_fresh(capsys):
    code = catalog_main([str(ROOT / "reports"), "--check"])
    assert code == 0, capsys.readouterr().err + "\nre-render them with `make reports`"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    spec = catalog.load("vanilla_skip")
    data = report.collect(spec, hf=False, quick=True)
    report.render(spec, "html", out, data=data)
    return spec, out, data


def test_a_fresh_report_passes_and_carries_its_measurements(rendered):
    spec, out, data = rendered
    assert report.stale(spec, out) == []
    kept = freshness.read_measured((out / "vanilla_skip.html").read_text())
    assert kept["validation"] == data["validation"] and kept["formulas"] == freshness.formulas_hash(data)


@pytest.mark.parametrize("edit", ["derived", "measured", "formulas"])
def test_a_changed_report_is_stale(rendered, tmp_path, edit):
    spec, out, data = rendered
    html = (out / "vanilla_skip.html").read_text()
    if edit == "derived":  # a word of the derived part the code no longer renders
        html = html.replace("<h2>Controllability verdict</h2>", "<h2>Controllability</h2>")
    elif edit == "measured":  # a figure edited in the table but not in the data it was rendered from
        first = f"{data['validation'][0]['max_rel_error']:.2e}"
        assert first in html
        html = html.replace(first, "0.00e+00", 1)
    else:  # measured with other formulas
        html = html.replace(f'"formulas": "{freshness.formulas_hash(data)}"', '"formulas": "0123abcd"')
    (tmp_path / "vanilla_skip.html").write_text(html)
    reasons = report.stale(spec, tmp_path)
    assert reasons, edit
    assert ("formulas" in reasons[0]) == (edit == "formulas")
