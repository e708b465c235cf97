"""The verbs on Hugging Face models: `hf-check` (tiny random models of any causal-LM type, or real weights),
`models` (every type of the installed transformers: supported or refused) and `experiment` (the seed paper's
generation experiment). `ctxpatch.cli` registers them; `ctxpatch.workbench` holds `absorb` and `apply`."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from ctxpatch.output import EXIT_FAILED, EXIT_OK, console, emit
from symbolic.errors import CtxpatchInputError, ModelInputError, SpecError


def cmd_hf_check(args) -> int:
    """Absorb a random context on a tiny random transformers model; compare with the contextual run."""
    try:
        from numeric.hf.hfcheck import hf_check
    except ImportError as exc:  # transformers is the `hf` extra
        raise CtxpatchInputError(f"hf-check needs transformers ({exc}); install it with "
                                 "`pip install -e '.[hf]'`.") from None
    from numeric.hf.models import is_model_name

    if is_model_name(args.model_type):  # real pretrained weights: natural-text pairs
        from numeric.hf.hfcheck import real_check

        out = real_check(args.model_type, dtype=args.dtype, generate=args.generate, strategy=args.strategy)
    else:
        out = hf_check(args.model_type, layers=args.layers, context_len=args.context_len, query_len=args.query_len,
                       dtype=args.dtype, generate=args.generate, keep_positions=args.keep_positions,
                       strategy=args.strategy, seed=args.seed, spec=args.spec, params=params_of(args))
    if args.json:
        emit(out)
    else:
        title = f"{out['model_type']} ({out['arch']}), {len(out['strategies'])} layers, {args.dtype}"
        table = Table(title=title, show_header=False)
        for key, label, run in (("max_rel_error", "patched vs contextual, max relative error (factored)", "factored"),
                                ("materialized_rel_error", "written into the model's modules (materialized)",
                                 "materialized")):
            if out.get(key) is None:
                continue
            mark = "" if out[key] <= out["bound"] else "  [red]above the bound[/red]"
            note = "; computed in this run" if out.get("exact") == run else "; a replay in the other arithmetic"
            table.add_row(label, f"{out[key]:.3e}  (bound {out['bound']:.1e}{note}){mark}")
        for n, (used, amp) in enumerate(zip(out["strategies"], out.get("amplification") or
                                            [float("nan")] * len(out["strategies"]), strict=True)):
            table.add_row(f"layer {n} strategy (tokens)", ", ".join(f"{k} ({v})" for k, v in used.items()) +
                          (f"; amplification {amp:.3g}" if amp == amp else ""))
        table.add_row("unpatched vs contextual", f"{out['unpatched_rel_error']:.3e}")
        if "generation_identical" in out:
            table.add_row(f"greedy generation of {args.generate} tokens identical", str(out["generation_identical"]))
        table.add_row("result", "[green]ok[/green]" if out["ok"] else
                      "[red]FAILED[/red]: " + escape("; ".join(out["problems"])))
        console.print(table)
        for text in dict.fromkeys(out.get("warnings", [])):
            console.print(escape(text), style="yellow", highlight=False)
    return EXIT_OK if out["ok"] else EXIT_FAILED


def cmd_models(args) -> int:
    """Every causal-LM model type of the installed transformers, tiny: supported (with figures) or refused."""
    try:
        from numeric.hf import zoo
        from numeric.hf.hfcheck import SUPPORT, models_markdown, models_table
    except ImportError as exc:
        raise CtxpatchInputError(f"models needs transformers ({exc}); install it with "
                                 "`pip install -e '.[hf]'`.") from None
    known = zoo.causal_lm_types()
    unknown = [t for t in args.types or () if t not in known]
    if unknown:
        raise ModelInputError(f"--types: {', '.join(unknown)} not causal-LM types of the installed transformers. "
                              f"Allowed: {', '.join(known)}")

    def progress(row):
        if not args.json:
            mark = "[green]supported[/green]" if row["status"] == "supported" else "[yellow]refused[/yellow]"
            console.print(f"{row['model_type']:<28} {mark} {escape(row['reason'])}", highlight=False)
    rows = models_table(args.types or None, progress)
    summary = {"types": len(rows), "supported": sum(r["status"] == "supported" for r in rows),
               "refused": sum(r["status"] == "refused" for r in rows), "bounds": SUPPORT}
    if args.markdown:
        Path(args.markdown).write_text(models_markdown(rows, summary), encoding="utf-8")
    if args.json:
        emit({"models": rows, "summary": summary})
    else:
        console.print(f"{summary['supported']} of {summary['types']} types supported, {summary['refused']} refused")
    return EXIT_OK


def params_of(args) -> dict[str, str] | None:
    """--param CANON=PATH pairs as a dict (None without --spec)."""
    if args.spec is None:
        if args.param:
            raise SpecError("--param needs --spec (the inferred spec maps its own parameters)")
        return None
    out = {}
    for item in args.param:
        canon, eq, path = item.partition("=")
        if not eq or not canon or not path:
            raise SpecError(f"--param {item!r}: expected CANON=PATH, e.g. W_up=mlp.up_proj.weight")
        out[canon] = path
    return out


def cmd_experiment(args) -> int:
    """The seed paper's generation experiment on the trained fixture or any MODEL (`numeric.hf.models.resolve`: a
    packaged name, a ``save_pretrained`` folder or a GGUF file; anything else refused by name, exit 2)."""
    try:
        from numeric.hf.experiment import APPLIED, PROMPT_SETS, run, run_all
    except ImportError as exc:
        raise CtxpatchInputError(f"experiment needs transformers ({exc}); install it with "
                                 "`pip install -e '.[hf]'`.") from None
    prompts = PROMPT_SETS[args.prompts] if args.prompts else None
    applied = tuple(args.applied) if args.applied else APPLIED
    if args.json and args.dtype is None and args.strategy is None:  # every setting, factored and materialized
        out = run_all(tokens=args.tokens, name_or_path=args.model, prompts=prompts, applied=applied)
        emit(out)
        return EXIT_OK if out["ok"] else EXIT_FAILED
    dtype = args.dtype or "float32"
    patch_dtype = args.patch_dtype or ("float32" if args.strategy == "stable" and dtype == "bfloat16" else None)
    out = run(name_or_path=args.model, dtype=dtype, strategy=args.strategy, tokens=args.tokens,
              patch_dtype=patch_dtype, prompts=prompts, applied=applied)
    args.dtype = dtype
    if args.json:
        emit(out)
        return EXIT_OK if out["ok"] else EXIT_FAILED
    title = f"{out['model_type']} without the prompt, {args.dtype}, strategy {out['strategy']}, patches in " \
            f"{out['patch_dtype']}"
    table = Table("prompt", "top-1 agreement", "max rel. logit error", "max logit Linf", "mean logit Linf",
                  "first divergence", title=title)
    for r in out["prompts"]:
        table.add_row(repr(r["prompt"])[:40], f"{r['agreement']:.0%}", f"{r['max_rel_error']:.2e}",
                      f"{r['max_linf']:.2e}", f"{r['mean_linf']:.2e}",
                      "-" if r["first_divergence"] is None else str(r["first_divergence"]))
    for how in out["applied"]:
        f = out[how]
        table.add_row(f"all, {how}", f"{f['agreement']:.1%}", f"{f['max_rel_error']:.2e}", f"{f['max_linf']:.2e}",
                      f"{f['mean_linf']:.2e}", "")
    console.print(table)
    w = out["largest_scale_patch"]
    if w["layer"] is not None:
        console.print(f"largest scale patch |dw_i / gamma_i| = {w['ratio']:.3g} ({w['param']}, layer {w['layer']}, "
                      f"coordinate {w['coordinate']}); {out['ill_conditioned_patches']} ill-conditioned patches "
                      "(token x layer)")
    failed = [f"{how}: max relative logit error {out[how]['max_rel_error']:.2e} (bound {out[how]['bound']:.1e}), "
              f"agreement up to ties {out[how]['agreement_up_to_ties']:.0%}" for how in out["applied"]
              if not out[how]["ok"]]
    console.print("result " + ("[green]ok[/green]" if out["ok"] else "[red]FAILED[/red]: " + escape("; ".join(failed))))
    return EXIT_OK if out["ok"] else EXIT_FAILED
