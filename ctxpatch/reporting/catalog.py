"""`make reports`: render the HTML and PDF report of every catalog architecture, and an index page.

Usage: ``python -m ctxpatch.reporting.catalog [OUT_DIR] [--only NAME ...]`` (default ``reports/``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from ctxpatch import reporting as report
from symbolic import catalog


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    only = args[args.index("--only") + 1:] if "--only" in args else None
    args = args[: args.index("--only")] if "--only" in args else args
    out = Path(args[0] if args else "reports")
    names = only or catalog.names()
    entries, failed = [], []
    with Progress(console=Console(stderr=True)) as progress:
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
            entries.append({"name": name, "strategies": f"{data['verdict']['input_strategy']} / "
                            f"{data['verdict']['output_strategy']}", "pdf": pdf,
                            "verified": f"{sum(t['verified'] for t in data['theorems'])}/{len(data['theorems'])}",
                            "float64": data["validation"][0]["max_rel_error"],
                            "float32": data["validation"][1]["max_rel_error"]})
            progress.advance(task)
    if only is None:
        report.index(entries, out)
    print(f"{len(entries)} reports in {out}/" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
