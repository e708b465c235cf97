"""How a verb answers: its exit codes, one JSON object on stdout (``--json``), or rich tables on the console."""

from __future__ import annotations

import json

from rich.console import Console

console = Console(highlight=False)
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def emit(obj: dict) -> None:
    """One JSON object on stdout (values JSON does not know, e.g. paths, as strings)."""
    print(json.dumps(obj, indent=2, default=str))
