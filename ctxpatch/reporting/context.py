"""The context report: what a context did to a real model, rendered with Jinja2 as self-contained HTML (figures
drawn in memory, inlined as base64 PNG) or LaTeX/PDF (figures in ``<stem>-figures/`` beside it).

`render(data, fmt, out_dir)` takes the data of `ctxpatch.contextreport.collect` and writes only into
``out_dir``; the PDF is compiled by `ctxpatch.reporting.compile_pdf`.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from ctxpatch.reporting import FORMATS, compile_pdf, environment, require_latex, tex_escape
from ctxpatch.reporting.context_plots import FIGURES, figures
from symbolic.errors import CtxpatchInputError

BOTH = "both"  # --format both: html and pdf


def formats(asked: list[str] | None) -> list[str]:
    """The formats of ``--format`` (repeatable; ``both`` is html and pdf; default html), each once, in order."""
    out: list[str] = []
    for fmt in asked or ["html"]:
        for f in (["html", "pdf"] if fmt == BOTH else [fmt]):
            if f not in FORMATS:
                raise CtxpatchInputError(f"--format {f!r} is not allowed. Allowed: {', '.join(FORMATS)}, {BOTH}.")
            if f not in out:
                out.append(f)
    return out


def stem(data: dict) -> str:
    """The report's file name without suffix: ``<model>-context`` (characters outside [A-Za-z0-9._-] as ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", data["model"]) + "-context"


def render(data: dict, fmt: str, out_dir: Path) -> list[Path]:
    """Write the context report of `data` in `fmt` (html, latex or pdf) into `out_dir`; return the files."""
    (fmt,) = formats([fmt])
    if fmt == "pdf":
        require_latex()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = stem(data)
    pngs = figures(data)
    if fmt == "html":
        path = out_dir / f"{name}.html"
        path.write_text(html_text(data, {k: base64.b64encode(png).decode() for k, png in pngs.items()}))
        return [path]
    fig_dir = out_dir / f"{name}-figures"
    fig_dir.mkdir(exist_ok=True)
    figs = {}
    for key, png in pngs.items():
        (fig_dir / FIGURES[key][0]).write_bytes(png)
        figs[key] = f"{fig_dir.name}/{FIGURES[key][0]}"
    tex = out_dir / f"{name}.tex"
    tex.write_text(environment().get_template("context.tex.j2").render(d=data, figs=figs, safe=tex_safe))
    if fmt == "latex":
        return [tex, *sorted(fig_dir.iterdir())]
    return [compile_pdf(tex)]


def tex_safe(text: object) -> str:
    """Text for pdflatex: LaTeX's specials escaped, a character outside Latin-1 (a token may be any) as <U+XXXX>."""
    return "".join(c if ord(c) < 256 else f"<U+{ord(c):04X}>" for c in tex_escape(text))


def captions() -> dict[str, str]:
    return {k: caption for k, (_, caption) in FIGURES.items()}


def html_text(data: dict, figs: dict[str, str]) -> str:
    """The self-contained HTML report, its data embedded as JSON (``<script id="ctxpatch-context">``)."""
    embedded = json.dumps(data, sort_keys=True).replace("</", "<\\/")
    return environment().get_template("context.html.j2").render(d=data, figs=figs, captions=captions(),
                                                                 embedded=embedded)
