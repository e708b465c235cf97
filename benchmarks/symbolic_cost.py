"""The symbolic pipeline's cost: the catalog's derivations and checks, its proofs, its generated kernels.

    python benchmarks/symbolic_cost.py [--json] [--runs 1]

Each step in a fresh process (nothing cached in memory; SymPy's own caches start empty), run from the
repository root: ``pipeline`` (check every catalog block, prove every theorem, render every kernel's source:
`run.symbolic_seconds`, the issue's ``symbolic_seconds``), ``ctxpatch codegen --check`` and ``ctxpatch prove
all``. Reported: wall seconds and the CPU seconds the process used (user + system). SymPy runs on one core, so
on a machine shared with other work the CPU seconds are what the step costs on an idle one; the wall seconds
are what this run waited. Medians over ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PIPELINE = ("from symbolic import catalog, codegen\nfrom proofs import registry as prover\n"
            "from symbolic.controllability import check\n"
            "[check(catalog.load(n)) for n in catalog.names()]\n"
            "r = prover.run(prover.theorems_for('all'))\n"
            "assert all(x.status == 'verified' for x in r)\n"
            "codegen.catalog_sources()\n")
STEPS = {"pipeline": [sys.executable, "-c", PIPELINE],
         "codegen --check": [str(BIN / "ctxpatch"), "codegen", "--check"],
         "prove all": [str(BIN / "ctxpatch"), "prove", "all"]}


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fresh process; an exit status other than 0 is an error."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    out = {}
    for name, cmd in STEPS.items():
        runs = [timed(cmd) for _ in range(max(1, args.runs))]
        out[name] = {"wall_seconds": statistics.median(w for w, _ in runs),
                     "cpu_seconds": statistics.median(c for _, c in runs)}
        print(f"{name}: {out[name]['wall_seconds']:.1f} s wall, {out[name]['cpu_seconds']:.1f} s CPU",
              file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(out, indent=2))
    return 0 if out["pipeline"]["cpu_seconds"] <= 30 else 1


if __name__ == "__main__":
    sys.exit(main())
