"""The main job, end to end on gemma3 (``ctxpatch demo``): check, prove, codegen, validate, the Hugging Face
check with generation, the generation experiment, the reports. Each step is a function that says whether it
passed; `ctxpatch.cli` runs them in order and prints the table."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from symbolic import catalog

#: What a step can fail with and still be reported as a failed step: bad input or a refused patch
#: (CtxpatchInputError is a ValueError, PatchConditionError an ArithmeticError), a missing tool or file (LaTeX).
STEP_ERRORS = (ValueError, ArithmeticError, OSError, RuntimeError)


def steps(out_dir: Path, data: dict, done: list[dict]) -> list[tuple[str, Callable[[], bool]]]:
    """(name, step) in order; the steps fill ``data`` (what the report shows) and the last one renders the
    reports into ``out_dir``, with the seconds of the steps ``done`` before it."""
    from ctxpatch import reporting as report
    from proofs import registry as prover
    from symbolic import codegen
    from symbolic.controllability import check

    spec = catalog.load("gemma3")

    def do_check():
        v = check(spec)
        return v.perfect_patch and v.derivation.verified

    def do_prove():
        data["theorems"] = report.theorems(spec)
        results = prover.run(prover.theorems_for("rank1_lemma"))
        return all(t["verified"] for t in data["theorems"]) and all(r.status == "verified" for r in results)

    def do_codegen():
        with tempfile.TemporaryDirectory() as tmp:
            sources = {codegen.kernel_path(Path(tmp), b, spec.name): codegen.render(spec, b) for b in codegen.BACKENDS}
            codegen.write(sources)
            return all(p.read_text() == t for p, t in sources.items()) and not codegen.stale(codegen.catalog_sources())

    def do_validate():
        data["validation"] = report.validation(spec, quick=True)
        data["dynamics"] = report.dynamics(spec, quick=True)
        return all(v["ok"] for v in data["validation"])

    def do_hf():
        data["hf"] = report.hf_rows(spec)
        return bool(data["hf"]) and all(r["ok"] for r in data["hf"])

    def do_experiment():
        from numeric.hf.experiment import run

        data["experiment"] = [run(dtype="float32"), run(dtype="bfloat16", strategy="stable", patch_dtype="float32")]
        return all(r["ok"] for r in data["experiment"])  # every figure within its bound, every token agreeing

    def do_reports():
        data.update(report.base(spec), seconds=round(sum(s["seconds"] for s in done), 1),
                    date=time.strftime("%Y-%m-%d"))
        files = report.render(spec, "html", out_dir, data=data)
        if report.pdf_available():
            files += report.render(spec, "pdf", out_dir, data=data)
        data["files"] = [str(f) for f in files]
        return True

    return [("check gemma3", do_check), ("prove (block theorems, multi-layer, rank-1 lemma)", do_prove),
            ("codegen (NumPy + Torch, to a temporary folder)", do_codegen),
            ("validate (4-layer random stacks, float64 + float32)", do_validate),
            ("HF check (gemma3_text, generation)", do_hf),
            ("experiment (trained Gemma 3 without the prompt: float32, stable bfloat16)", do_experiment),
            ("reports (HTML + PDF)", do_reports)]
