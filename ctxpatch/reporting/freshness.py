r"""Are the committed reports what the code renders now? (``python -m ctxpatch.reporting.catalog --check DIR``)

A report has two parts. The *derived* part (spec, verdict, side conditions, formulas, definitions, every theorem
with its checked steps, the kernel's header and signatures) is deterministic: the check computes it afresh. The
*measured* part (random-instance validation, the Hugging Face check, the implicit dynamics, the experiment, the
date and the time the report took, and the figures drawn from them) carries the machine's rounding, so a report
keeps it as data: the HTML embeds it as JSON (with the formula hash of the kernel it was measured with) beside its
figures (PNG). The check renders the HTML again from the derived part of today and the measured part of the file
and requires the very same bytes, and the formula hash of today; a PDF carries in its metadata (Keywords) the
SHA-256 of the LaTeX source it was compiled from, which must be the source rendered today. A report whose formulas
changed must be measured again (`make reports`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
from pathlib import Path

from ctxpatch.reporting.plots import FIGURES

#: The keys of a report's data that are measured (everything else is derived, and checked afresh).
MEASURED = ("validation", "dynamics", "hf", "experiment", "date", "seconds")
_SCRIPT = re.compile(r'<script type="application/json" id="ctxpatch-measured">(.*?)</script>', re.S)
KEYWORDS = "ctxpatch-source-sha256 "


def formulas_hash(data: dict) -> str:
    """The kernel's formula hash (its header line ``formulas: sha256 ...``): what the measured figures are of."""
    header = " ".join(data["kernel"]["header"])
    found = re.search(r"formulas: sha256 ([0-9a-f]+)", header)
    return found.group(1) if found else ""


def measured(data: dict) -> dict:
    """The measured part of a report's data, with the formula hash it belongs to."""
    return {**{k: data[k] for k in MEASURED if k in data}, "formulas": formulas_hash(data)}


def measured_json(data: dict) -> str:
    """The measured part as JSON that can sit inside a <script> element (no ``</`` in it)."""
    return json.dumps(measured(data), sort_keys=True).replace("</", "<\\/")


def read_measured(html: str) -> dict | None:
    found = _SCRIPT.search(html)
    return json.loads(found.group(1)) if found else None


def read_figures(html: str) -> dict[str, str]:
    """The base64 PNG figures of a rendered HTML report, by key."""
    out = {}
    for key, (_, alt) in FIGURES.items():
        found = re.search(rf'<img alt="{re.escape(alt)}" src="data:image/png;base64,([^"]*)"', html)
        if found:
            out[key] = found.group(1)
    return out


def encode_figures(pngs: dict[str, bytes]) -> dict[str, str]:
    """The figures' PNG bytes as the base64 text an HTML report inlines."""
    return {k: base64.b64encode(png).decode() for k, png in pngs.items()}


def source_digest(tex: str) -> str:
    return hashlib.sha256(tex.encode()).hexdigest()


def pdf_keywords(pdf: Path) -> str:
    """The Keywords entry of a PDF's metadata (poppler's pdfinfo), or an empty string."""
    run = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, timeout=60)
    found = re.search(r"^Keywords:\s*(.*)$", run.stdout, re.M)
    return found.group(1).strip() if found else ""
