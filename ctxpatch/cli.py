"""The `ctxpatch` command line. Each verb is a small function; errors become exit codes.

Exit codes: 0 success; 1 a check failed (a derivation SymPy could not verify, a side condition of a patch);
2 bad input (`symbolic.errors.CtxpatchInputError`: a spec, as an unknown architecture, malformed TOML, an unknown
field, value or strategy; a model or its inputs; an option), reported as one paragraph on stderr, never a
traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from ctxpatch import api, workbench
from ctxpatch.hfverbs import cmd_experiment, cmd_hf_check, cmd_models
from ctxpatch.options import bounded, out_dir, out_file, reference
from ctxpatch.output import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, console, emit
from ctxpatch.reporting import FORMATS
from symbolic import catalog, limits
from symbolic.errors import CtxpatchInputError, PatchConditionError, SpecError

# --------------------------------------------------------------------------- verbs


def cmd_archs(args) -> int:
    names = catalog.names()
    if args.json:
        emit({"archs": names})
        return EXIT_OK
    table = Table("arch", "description", title="ctxpatch catalog")
    for n in names:
        table.add_row(n, escape(catalog.load(n).description))
    console.print(table)
    return EXIT_OK


def cmd_spec(args) -> int:
    from symbolic.spec import dump_toml

    spec = catalog.resolve(args.name)  # parsed (and so checked) whichever way it is printed
    text = dump_toml(spec) if args.canonical else catalog.resolve_text(args.name)
    if args.json:
        emit({"arch": spec.name, "toml": text})
    else:
        print(text, end="")
    return EXIT_OK


def cmd_check(args) -> int:
    from symbolic.controllability import strategies_table

    verdict = api.check(args.arch, args.strategy, args.input_strategy)
    out = verdict.to_json()
    if args.json:
        emit(out)
    else:
        _print_verdict(verdict, out, strategies_table(verdict))
    unverified = verdict.derivation is not None and not verdict.derivation.verified
    return EXIT_FAILED if unverified else EXIT_OK


def _print_verdict(verdict, out: dict, rows) -> None:
    yes = {True: "[green]yes[/green]", False: "[red]no[/red]"}
    table = Table(title=f"controllability of {out['arch']}", show_header=False)
    table.add_row("perfect patch", yes[out["perfect_patch"]])
    table.add_row("inner function input controllable", yes[out["input_controllable"]])
    table.add_row("outer function output controllable", yes[out["output_controllable"]])
    table.add_row("strategy (input / output)", f"{out['input_strategy']} / {out['output_strategy']}")
    console.print(table)
    if out["patches"]:
        pt = Table("parameter", "kind", "patch", title="patches")
        for p in verdict.derivation.patches:
            from symbolic.derivation import formula_text

            pt.add_row(p.param, p.kind, formula_text(p))
        console.print(pt)
        console.print("side conditions: " + ("; ".join(out["conditions"]) or "none"))
    st = Table("side", "strategy", "status", title="strategies tried")
    for row in rows:
        st.add_row(*row)
    console.print(st)
    ce = out["counterexample"]
    if ce:
        console.print(f"[red]no perfect patch[/red]: {ce['side']} side, stage {ce['stage']} ({ce['reason']}).")
        console.print(f"invariant: {ce['invariant']}")
        console.print(f"witness (d = {ce['dims']['d']}, seed {ce['seed']}): {ce['note']}")


def cmd_derive(args) -> int:
    from symbolic.derivation import derivation_json, formula_text

    der = api.derive(args.arch, args.strategy, args.input_strategy)
    out = derivation_json(der, latex=args.latex)
    if args.json:
        emit(out)
        return EXIT_OK if der.verified else EXIT_FAILED
    print(f"{der.arch}: input strategy {der.input_strategy}, output strategy {der.output_strategy} "
          f"(verified: {der.verified})")
    if args.latex:
        print("\\begin{align*}")
        print(" \\\\\n".join(out["latex"].values()))
        print("\\end{align*}\nwhere\n\\begin{align*}")
        print(" \\\\\n".join(f"{_tex_name(n)} &= {e}" for n, e in out["definitions_latex"].items()))
        print("\\end{align*}")
        print("side conditions: $" + "$, $".join(out["conditions_latex"]) + "$" if out["conditions_latex"] else "")
        return EXIT_OK if der.verified else EXIT_FAILED
    for p in der.patches:
        print(f"{p.param} [{p.kind}]: {formula_text(p)}")
    print("where:")
    for name, expr in out["definitions"].items():
        print(f"  {name} = {expr}")
    print("side conditions: " + ("; ".join(out["conditions"]) or "none"))
    return EXIT_OK if der.verified else EXIT_FAILED


def cmd_prove(args) -> int:
    from proofs import registry as prover

    t0 = time.perf_counter()
    if args.coq is not None:
        return _prove_coq(args, prover, t0)
    results = prover.run(prover.theorems_for(args.target), instances=not args.no_instances)
    out = prover.summary(results, time.perf_counter() - t0)
    if args.json:
        emit(out)
    else:
        prover.report(results, console, steps=not args.brief)
        console.print(f"\n{out['verified']}/{len(results)} theorems verified, {out['failed']} failed, "
                      f"{out['seconds']:.1f} s")
    return EXIT_OK if out["failed"] == 0 else EXIT_FAILED


def _prove_coq(args, prover, t0: float) -> int:
    """`prove --coq DIR`: the kernel checks the core theorems, then they are written as a Coq project (the
    statements printed from the kernel's own theorem objects) and coqc checks it."""
    from symbolic.kernel.coq import write_coq_project

    results = prover.run(prover.theorems_for(args.target), instances=not args.no_instances)
    coq = write_coq_project(args.coq, [r.theorem for r in results if r.status == "verified"])
    out = prover.summary(results, time.perf_counter() - t0) | {"coq": coq}
    if args.json:
        emit(out)
    else:
        for c in coq:
            console.print(f"{c['name']}: {'checked by coqc' if c['checked'] else '[red]not checked[/red]'}")
        console.print(f"\n{sum(c['checked'] for c in coq)}/{len(coq)} theorems checked by coqc in {args.coq}")
    return EXIT_OK if coq and all(c["checked"] for c in coq) and out["failed"] == 0 else EXIT_FAILED


def cmd_codegen(args) -> int:
    """Render kernels: the whole catalog into numeric/kernels (or -o DIR), or one user spec."""
    from symbolic import codegen
    from symbolic.controllability import check

    if args.spec is None:
        if args.strategy or args.input_strategy:
            raise CtxpatchInputError("--strategy and --input-strategy apply to --spec only; the catalog kernels use "
                                     "each architecture's default strategies")
        sources = codegen.catalog_sources()
        if args.out is not None:
            sources = {args.out / p.parent.name / p.name: t for p, t in sources.items()}
    else:
        spec = catalog.resolve(args.spec)
        verdict = check(spec, args.strategy, args.input_strategy)
        if not verdict.perfect_patch:  # no derivation, or one that did not verify: no kernel stands on it
            print(f"ctxpatch codegen: {verdict.absence()} There is no kernel to generate.", file=sys.stderr)
            return EXIT_FAILED
        out = args.out or Path("kernels")
        try:
            sources = {codegen.kernel_path(out, b, spec.name): codegen.render(spec, b, verdict.derivation)
                       for b in codegen.BACKENDS}
        except (TypeError, NotImplementedError) as exc:
            raise SpecError(f"{args.spec}: the derived formulas use a construct the kernel printers cannot "
                            f"print ({exc}). Allowed in activations: exp, log, tanh, sinh, cosh, sin, cos, "
                            "atan, erf, sqrt, Abs, Max, Min, sign, Heaviside, Piecewise, polynomials.") from None
    if args.check:
        stale = codegen.stale(sources)
        if args.json:
            emit({"files": sorted(map(str, sources)), "stale": sorted(map(str, stale))})
        for p in stale:
            print(f"stale: {p} (regenerate with `ctxpatch codegen`)", file=sys.stderr)
        if not stale and not args.json:
            console.print(f"{len(sources)} kernels up to date")
        return EXIT_FAILED if stale else EXIT_OK
    changed = codegen.write(sources)
    if args.json:
        emit({"files": sorted(map(str, sources)), "changed": sorted(map(str, changed))})
    else:
        console.print(f"{len(sources)} kernels rendered, {len(changed)} changed")
        for p in changed:
            console.print(f"  wrote {p}", markup=False)
    return EXIT_OK


def cmd_validate(args) -> int:
    """Random-instance validation of the layer-by-layer algorithm on a stack of random layers."""
    from numeric.check.validate import Setup, check_memory, validate

    spec = catalog.resolve(args.arch)
    setup = Setup(layers=args.layers, d=args.d, m=args.m, heads=args.heads, kv_heads=args.kv_heads,
                  rope=not args.no_rope, context_len=args.context_len, query_len=args.query_len, dtype=args.dtype,
                  strategy=args.strategy, input_strategy=args.input_strategy)  # sizes checked, heads divide d
    check_memory(spec, setup)  # before the derivation, which may take seconds
    api.derive(spec, args.strategy, args.input_strategy)  # a strategy that is not exact here: a clear error first
    out = validate(spec, setup, trials=args.trials, seed=args.seed)
    if args.json:
        emit(out)
    else:
        table = Table(title=f"validation of {out['arch']} ({args.layers} layers, {args.dtype}, {args.trials} trials)",
                      show_header=False)
        measured = len(out["refused"]) < out["trials"]  # every trial refused: no figure was measured
        table.add_row("patched vs contextual, max relative error", (f"{out['max_rel_error']:.3e}  " if measured
                      else "n/a (no trial measured)  ") + f"(bound {out['bound']:.0e})")
        for key, label in (("unpatched_rel_error", "unpatched vs contextual, min relative error"),
                           ("min_right_norm", "smallest right factor (e.g. |z|)"),
                           ("max_relative_patch_norm", "largest patch / parameter norm"),
                           ("min_abs_gamma", "smallest |gamma_i| of an MLP norm")):
            table.add_row(label, "n/a" if out[key] is None else f"{out[key]:.3e}")
        if out["refused"]:
            table.add_row("trials refused by a side condition", f"{len(out['refused'])} of {out['trials']}: "
                          + out["refused"][0]["reason"])
        table.add_row("result", "[green]ok[/green]" if out["ok"] else "[red]FAILED[/red]")
        console.print(table)
    return EXIT_OK if out["ok"] else EXIT_FAILED


def cmd_report(args) -> int:
    """Render the proof report of a block as LaTeX, PDF or HTML; given a model, the context report."""
    from ctxpatch import contextreport
    from ctxpatch import reporting as report

    if contextreport.selects(args):
        return contextreport.main(args, console)
    spec = catalog.resolve(args.arch)
    files = []
    data = None
    for fmt in args.format:
        if fmt == "pdf":
            report.require_latex()
        data = data or report.collect(spec, quick=args.quick)
        files += report.render(spec, fmt, args.out, data=data)
    if args.json:
        emit({"files": [str(f) for f in files]})
    else:
        for f in files:
            console.print(f"wrote {f}", markup=False)
    failed = [t["name"] for t in data["theorems"] if not t["verified"]] + \
        [v["dtype"] for v in data["validation"] if not v["ok"]] + [h["model_type"] for h in data["hf"] if not h["ok"]]
    return EXIT_FAILED if failed else EXIT_OK


def cmd_precision(args) -> int:
    """Error of the patched run vs dtype (float64, float32, bfloat16) and vs conditioning."""
    from numeric.check.validate import precision

    spec = catalog.resolve(args.arch)
    api.derive(spec, args.strategy)  # a strategy that is not exact here: a clear error first
    out = precision(spec, trials=args.trials, strategy=args.strategy)
    if args.json:
        emit(out)
        return EXIT_OK
    table = Table("dtype", "max error", "median error", "max error / (kappa eps)", "failed trials",
                  title=f"precision of {spec.name} ({args.strategy or 'default strategy'}, {args.trials} trials)")
    for dtype, row in out["summary"].items():
        fmt = [("n/a" if row[k] is None else f"{row[k]:.2e}") for k in
               ("max_rel_error", "median_rel_error", "max_error_over_kappa_eps")]
        table.add_row(dtype, *fmt, str(row["failed_trials"]))
    console.print(table)
    console.print("kappa = largest |patch| / |parameter|; a ratio of order 1 means the loss of precision is the "
                  "patch's conditioning (the dtype's eps amplified by kappa), not a defect.")
    return EXIT_OK


def cmd_mutate(args) -> int:
    """Mutation testing: every deliberately wrong formula, proof or kernel must be caught."""
    from numeric.check.mutants import run_all

    out = run_all()
    if args.json:
        emit(out)
    else:
        table = Table("mutant", "kind", "what is wrong", "caught by", "detail", title="ctxpatch mutate")
        for r in out["results"]:
            table.add_row(r["name"], r["kind"], r["description"], ", ".join(r["caught_by"]) or "[red]SURVIVED[/red]",
                          r["detail"][:60])
        console.print(table)
        console.print(f"{out['killed']}/{out['mutants']} mutants killed")
    return EXIT_OK if not out["survivors"] else EXIT_FAILED


def _tex_name(name: str) -> str:
    import sympy as sp

    from symbolic.printing import latex

    return latex(sp.Symbol(name.replace("[e]", ""))) + (r"^{(e)}" if name.endswith("[e]") else "")


def cmd_demo(args) -> int:
    """The main job on gemma3: check, prove, codegen, validation, the HF check with generation, reports."""
    from rich.progress import Progress

    from ctxpatch import demo

    steps: list[dict] = []
    data: dict = {}
    plan = demo.steps(args.out, data, steps)
    with Progress(console=console, transient=True, disable=args.json) as progress:
        task = progress.add_task("demo", total=len(plan))
        for name, fn in plan:
            progress.update(task, description=name)
            t0 = time.perf_counter()
            try:
                ok = bool(fn())
            except demo.STEP_ERRORS as exc:  # a failed step is reported in the table; a bug surfaces
                ok = False
                console.print(f"{name}: {type(exc).__name__}: {exc}", markup=False)
            steps.append({"name": name, "ok": ok, "seconds": round(time.perf_counter() - t0, 2)})
            progress.advance(task)
    files = data.get("files", [])
    if args.json:
        emit({"steps": steps, "files": files})
    else:
        table = Table("step", "ok", "seconds", title="ctxpatch demo: gemma3 (arXiv:2511.17864, Theorem 1)")
        for s in steps:
            table.add_row(s["name"], "[green]yes[/green]" if s["ok"] else "[red]NO[/red]", f"{s['seconds']:.1f}")
        console.print(table)
        if data.get("validation"):
            v64, v32 = data["validation"]
            console.print(f"patched vs contextual: {v64['max_rel_error']:.1e} (float64), {v32['max_rel_error']:.1e} "
                          f"(float32); unpatched {v64['unpatched_rel_error']:.2f}")
        for f in files:
            console.print(f"report: {f}", markup=False)
    return EXIT_OK if all(s["ok"] for s in steps) else EXIT_FAILED


# --------------------------------------------------------------------------- parser


def _options() -> dict[str, argparse.ArgumentParser]:
    """Options that several verbs share, each declared once (argparse parent parsers)."""
    from symbolic.derive import STRATEGIES

    def parent() -> argparse.ArgumentParser:
        return argparse.ArgumentParser(add_help=False)

    arch, js, out_s = parent(), parent(), parent()
    arch.add_argument("arch", type=reference, metavar="ARCH_OR_TOML",
                      help="a catalog architecture or a path to a TOML spec")
    js.add_argument("--json", action="store_true", help="print one JSON object")
    out_s.add_argument("--strategy", choices=STRATEGIES.names("output"), metavar="NAME",
                       help="output-side strategy (default: the checker's choice): "
                       + ", ".join(STRATEGIES.names("output")))
    both = argparse.ArgumentParser(add_help=False, parents=[out_s])
    both.add_argument("--input-strategy", choices=STRATEGIES.names("input"), metavar="NAME",
                      help="input-side strategy (default: the checker's choice): "
                      + ", ".join(STRATEGIES.names("input")))
    return {"arch": arch, "json": js, "strategy": out_s, "strategies": both}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctxpatch",
        description="Exact context-to-parameter patches for transformer blocks: specs, controllability, "
                    "derivations (arXiv:2507.16003, arXiv:2511.17864).")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    opt = _options()

    def verb(name: str, fn, help_: str, *shared: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, parents=[opt[k] for k in ("json", *shared)])
        p.set_defaults(fn=fn)
        return p

    verb("archs", cmd_archs, "list the catalog architectures")
    p = verb("spec", cmd_spec, "print the catalog TOML of an architecture (or of a TOML spec file)")
    p.add_argument("name", type=reference, metavar="ARCH_OR_TOML")
    p.add_argument("--canonical", action="store_true", help="print the parsed spec back as canonical TOML")
    verb("check", cmd_check, "controllability verdict: perfect patch, conditions or counterexample", "arch",
         "strategies")
    p = verb("derive", cmd_derive, "print the derived patch formulas", "arch", "strategies")
    p.add_argument("--latex", action="store_true", help="print the formulas as LaTeX")
    p = verb("prove", cmd_prove, "check theorems step by step (a theorem name, an architecture, a TOML spec, or all)")
    p.add_argument("target", type=reference, metavar="NAME|ARCH|all", nargs="?", default="all")
    p.add_argument("--brief", action="store_true", help="one line per theorem")
    p.add_argument("--coq", type=out_dir, metavar="DIR", help="write the core theorems as a self-contained Coq "
                   "project (a _CoqProject) into DIR and check it with coqc")
    p.add_argument("--no-instances", action="store_true", help="skip the exact-instance evidence")
    p = verb("codegen", cmd_codegen, "render the NumPy and Torch kernels from the derived formulas", "strategies")
    p.add_argument("--spec", type=reference, metavar="TOML", help="render one spec (a TOML path or catalog name), "
                   "not the catalog; --strategy and --input-strategy apply to it")
    p.add_argument("-o", "--out", type=out_dir, metavar="DIR", help="output folder (default: numeric/kernels for "
                   "the catalog, ./kernels for --spec); kernels go to DIR/numpy/<name>.py and DIR/torch/<name>.py")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a kernel is missing or stale")
    p = verb("validate", cmd_validate, "random-instance validation: layer stacks with real attention, "
             "patched no-context run vs contextual run", "arch", "strategies")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--layers", type=bounded(limits.LAYERS), default=4)
    p.add_argument("--trials", type=bounded(limits.TRIALS), default=3)
    p.add_argument("--context-len", type=bounded(limits.TOKENS), default=5)
    p.add_argument("--query-len", type=bounded(limits.TOKENS), default=4)
    p.add_argument("--d", type=bounded(limits.WIDTH), default=16, help="model width")
    p.add_argument("--m", type=bounded(limits.MLP_WIDTH), default=24, help="MLP width")
    p.add_argument("--heads", type=bounded(limits.HEADS), default=4)
    p.add_argument("--kv-heads", type=bounded(limits.HEADS), default=2,
                   help="grouped-query attention when fewer than --heads")
    p.add_argument("--no-rope", action="store_true", help="attention without rotary position embeddings")
    p.add_argument("--seed", type=bounded(limits.SEED), default=0)
    p = verb("hf-check", cmd_hf_check, "absorb a context on a tiny random transformers model (no downloads) or on a "
             "real pretrained model by name", "strategy")
    p.add_argument("model_type", type=reference, metavar="MODEL_TYPE", help="a transformers model type, e.g. "
                   "gemma3_text, llama, gpt2, or a real model by name: gemma3-270m, smollm2-135m")
    p.add_argument("--layers", type=bounded(limits.LAYERS), default=2)
    p.add_argument("--context-len", type=bounded(limits.TOKENS), default=6)
    p.add_argument("--query-len", type=bounded(limits.TOKENS), default=5)
    p.add_argument("--dtype", choices=["float64", "float32", "bfloat16", "float16"], default="float64",
                   help="the model's dtype (figures judged against its bound, numeric.hf.bounds)")
    p.add_argument("--generate", type=bounded(limits.GENERATE), default=0, metavar="N",
                   help="also generate N tokens greedily without the context and compare with model.generate")
    p.add_argument("--keep-positions", action="store_true", help="each query token alone at its absolute position")
    p.add_argument("--seed", type=bounded(limits.SEED), default=0,
                   help="seed of the random model and of the random token ids")
    p.add_argument("--spec", type=reference, metavar="ARCH_OR_TOML", help="check the model against this spec instead "
                   "of the inferred one (needs --param for every canonical parameter)")
    p.add_argument("--param", action="append", default=[], metavar="CANON=PATH",
                   help="with --spec: where a canonical parameter lives in a layer, e.g. W_up=mlp.up_proj.weight "
                   "(PATH:conv1d for (in, out) storage); repeat for each")
    p = verb("models", cmd_models, "every causal-LM type of the installed transformers, tiny and random: supported "
             "(errors, generation) or refused (why)")
    p.add_argument("--types", nargs="+", metavar="TYPE", help="only these model types")
    p.add_argument("--markdown", type=out_file, metavar="FILE", help="also write the table as Markdown")
    p = verb("report", cmd_report, "render the proof report of a block (spec, verdict, checked proofs, formulas, "
             "kernel, validation and plots), or, given a model with --context and --query, what the context did to it",
             "arch", "strategy")
    p.add_argument("--format", action="append", choices=(*FORMATS, "both"), metavar="latex|pdf|html|both",
                   help="output format (repeat for several; both: html and pdf; default html)")
    p.add_argument("--context", metavar="TEXT|@FILE", help="with a model (gemma3-270m, smollm2-135m, a model folder or "
                   "a GGUF file in place of ARCH): the context report of this context")
    p.add_argument("--query", metavar="TEXT|@FILE", help="with --context: the query the context is absorbed for")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float64"], help="context report: the model's dtype "
                   "(default float32)")
    p.add_argument("--top-k", type=int, help="context report: next tokens shown (default 5, at most 50)")
    p.add_argument("-o", "--out", type=out_dir, default=Path("reports"), metavar="DIR",
                   help="output folder, created if missing (default: reports/ under the current directory)")
    p.add_argument("--quick", action="store_true", help="fewer trials and tokens (what the demo uses)")
    p = verb("precision", cmd_precision, "error of the patched run vs dtype (float64, float32, bfloat16) and "
             "conditioning", "arch", "strategy")
    p.add_argument("--trials", type=bounded(limits.TRIALS), default=8)
    verb("mutate", cmd_mutate, "mutation testing: wrong formulas, proofs and kernels that prove/validate must catch")
    p = verb("experiment", cmd_experiment, "the paper's generation experiment: each token alone at its absolute "
             "position, patched, vs the model with the prompt (greedy, forced on the baseline history)", "strategy")
    p.add_argument("--model", type=reference, metavar="NAME_OR_PATH", help="gemma3-270m, smollm2-135m, a folder "
                   "written by save_pretrained or a GGUF file (default: the trained fixture)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float64"],
                   help="default float32; with --json and neither --dtype nor --strategy: every setting")
    p.add_argument("--patch-dtype", choices=["float32", "bfloat16", "float64"],
                   help="dtype the patches are computed in (default: the model's; float32 for stable in bfloat16)")
    p.add_argument("--tokens", type=bounded(limits.TOKENS), default=20)
    p.add_argument("--prompts", choices=("paper", "natural", "code"), help="prompt set: the paper's five (default "
                   "for a packaged name or a GGUF file), our natural text, or the Python code (default for a folder)")
    p.add_argument("--applied", action="append", choices=("factored", "materialized"),
                   help="how the patches are applied (repeat for both; default both): by the kernels, or written "
                   "into the model's own modules (the paper's Algorithm 1)")
    workbench.register(verb)  # absorb, apply: ctxpatch/workbench.py
    p = verb("demo", cmd_demo, "the main job, end to end on gemma3: check, prove, codegen, validate, HF check, reports")
    p.add_argument("-o", "--out", type=out_dir, default=Path("reports/demo"), metavar="DIR",
                   help="where the reports go (default: reports/demo under the current directory)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed --help (0) or a usage error naming the option (2)
        return int(exc.code or 0)
    if args.verb == "report":  # default html; both: html and pdf
        args.format = [f for fmt in args.format or ["html"] for f in (("html", "pdf") if fmt == "both" else (fmt,))]
    try:
        return args.fn(args)
    except CtxpatchInputError as exc:  # bad input of any kind (`symbolic.errors`)
        print(f"ctxpatch {args.verb}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a path the user named cannot be read or written
        print(f"ctxpatch {args.verb}: {exc.filename or ''}: {exc.strerror or exc}. Name a readable file, or a "
              "folder you can write to.", file=sys.stderr)
        return EXIT_BAD_INPUT
    except PatchConditionError as exc:
        print(f"ctxpatch {args.verb}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
