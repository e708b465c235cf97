"""`make reports`: render the HTML and PDF report of every catalog architecture, and an index page; with
``--check``, write nothing and say which committed report is not what the code renders now
(`ctxpatch.reporting.freshness`).

Usage: ``python -m ctxpatch.reporting.catalog [OUT_DIR] [--only NAME ...] [--check]`` (default ``reports/``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from ctxpatch import reporting as report
from ctxpatch.reporting import freshness
from symbolic import catalog


def entry(name: str, data: dict, pdf: bool) -> dict:
    """The index row of one report."""
    return {"name": name, "strategies": f"{data['verdict']['input_strategy']} / {data['verdict']['output_strategy']}",
            "pdf": pdf, "verified": f"{sum(t['verified'] for t in data['theorems'])}/{len(data['theorems'])}",
            "float64": data["validation"][0]["max_rel_error"], "float32": data["validation"][1]["max_rel_error"],
            "date": data["date"]}


def render_all(out: Path, names: list[str], progress: Progress) -> tuple[list[dict], list[str]]:
    entries, failed = [], []
    task = progress.add_task("reports", total=len(names))
    for name in names:
        progress.update(task, description=f"report {name}")
        spec = catalog.load(name)
        try:
            data = report.collect(spec)
            report.render(spec, "html", out, data=data)
            pdf = report.pdf_available()
            if pdf:
                report.render(spec, "pdf", out, data=data)
        except Exception as exc:  # keep going: one broken report must not hide the others
            print(f"{name}: {type(exc).__name__}: {str(exc)[-1500:]}", file=sys.stderr)
            failed.append(name)
            progress.advance(task)
            continue
        ok = all(t["verified"] for t in data["theorems"]) and all(v["ok"] for v in data["validation"])
        failed += [] if ok else [name]
        entries.append(entry(name, data, pdf))
        progress.advance(task)
    return entries, failed


def check_all(out: Path, names: list[str], progress: Progress) -> list[str]:
    """Every reason a committed report (or the index) is stale; empty when all are fresh."""
    reasons, entries = [], []
    task = progress.add_task("check reports", total=len(names))
    for name in names:
        progress.update(task, description=f"check {name}")
        spec = catalog.load(name)
        derived = report.derived(spec)
        reasons += report.stale(spec, out, derived)
        html = out / f"{name}.html"
        kept = freshness.read_measured(html.read_text()) if html.exists() else None
        if kept is not None:
            entries.append(entry(name, {**derived, **kept}, (out / f"{name}.pdf").exists()))
        progress.advance(task)
    index = out / "index.html"
    if sorted(names) == sorted(catalog.names()) and not reasons:
        if not index.exists() or index.read_text() != report.index_text(entries):
            reasons.append(f"{index} is not what the code renders now")
    return reasons


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctxpatch.reporting.catalog",
                                     description="Render (or --check) the reports of every catalog block.")
    parser.add_argument("out", nargs="?", default="reports", help="the reports' folder (default reports/)")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=catalog.names(), help="only these blocks")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a report is stale")
    args = parser.parse_args(argv)
    out, names = Path(args.out), args.only or catalog.names()
    with Progress(console=Console(stderr=True)) as progress:
        if args.check:
            reasons = check_all(out, names, progress)
        else:
            entries, failed = render_all(out, names, progress)
    if args.check:
        for r in reasons:
            print(r, file=sys.stderr)
        print(f"{len(names)} reports up to date" if not reasons else
              f"{len(reasons)} stale: re-render with `make reports`")
        return 1 if reasons else 0
    if args.only is None:
        report.index(entries, out)
    print(f"{len(entries)} reports in {out}/" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
