r"""`ctxpatch absorb` and `ctxpatch apply`: a context absorbed into patches of a model on disk, and replayed.

``absorb MODEL --context TEXT --query TEXT -o OUT`` loads MODEL (`numeric.hf.models.resolve`: a packaged
name, a ``save_pretrained`` folder or a GGUF file), runs the context and query through it, absorbs the
context (`numeric.hf.absorb_context`), measures the patched runs against the run with the context, and
writes a patch file (`numeric.hf.store`; ``--mode sequence``: a PEFT adapter folder). The figure is
$\max|\ell_\text{patched} - \ell_C| / \max|\ell_C|$ over the query tokens and the vocabulary
(`numeric.hf.hfcheck.logit_error`): ``factored`` applies the patches by the kernels, ``materialized`` writes
them into the model's own weights, ``unpatched`` is the query alone without them (the context's effect).

``apply PATCHFILE --model MODEL`` loads the file onto MODEL, refused unless its fingerprint is the file's,
runs the recorded context again and measures the replays the same way, printed beside the recorded figures.
Long steps show rich progress bars on stderr (per layer), off under ``--json`` or when stderr is no terminal.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ctxpatch.output import emit
from symbolic.errors import CtxpatchInputError, ModelInputError

if TYPE_CHECKING:
    import torch

console = Console(highlight=False)
FIGURES = ("factored", "materialized", "unpatched")
MODES = ("token", "sequence")


# --------------------------------------------------------------------------- inputs


def text_arg(value: str, option: str) -> str:
    """``TEXT`` as given, or ``@FILE``: the UTF-8 text of FILE."""
    if not value.startswith("@"):
        return value
    path = Path(value[1:])
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CtxpatchInputError(f"{option} {value}: cannot read {path} as UTF-8 text ({exc}). Allowed: the text "
                                 "itself, or @FILE naming a readable UTF-8 file.") from None


def encode(tokenizer, context: str, query: str, chat: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, c) and (1, q) token ids. Plain: the context with the tokenizer's special tokens, the query without.
    ``chat``: the context is a user turn in the tokenizer's chat template, up to the generation prompt, and the
    query is the start of the assistant's answer (the query-alone run sees the answer without the turn)."""
    from numeric.hf.hfcheck import pair_ids

    if not chat:
        ctx, q = pair_ids(tokenizer, context, query)
    else:
        if not getattr(tokenizer, "chat_template", None):
            raise ModelInputError("--chat: this model's tokenizer has no chat template; leave --chat out (the context "
                                  "and query are then tokenized as plain text).")
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": context}], tokenize=False,
                                               add_generation_prompt=True)
        ctx = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        q = tokenizer(query, add_special_tokens=False, return_tensors="pt").input_ids
    for ids, what in ((ctx, "--context"), (q, "--query")):
        if ids.shape[1] == 0:
            raise ModelInputError(f"{what}: the text gives no tokens; give a non-empty text.")
    return ctx, q


# --------------------------------------------------------------------------- progress


def decoder_layers(model) -> list:
    """The model's decoder layers (the module list as long as the config's layer count), for progress."""
    import torch

    n = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    return next((list(m) for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n), [])


class Stages:
    """Rich progress bars on stderr, one per step, advanced by every decoder layer's forward; the seconds of
    each step. ``enabled=False``: no output, timings only."""

    def __init__(self, enabled: bool):
        self.seconds: dict[str, float] = {}
        self.progress = Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled,
                                 transient=False)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    @contextmanager
    def step(self, key: str, description: str, model=None, passes: int = 0):
        """One step: ``passes`` forward passes through every decoder layer of ``model`` (0: a spinner)."""
        layers = decoder_layers(model) if model is not None else []
        total = passes * len(layers) or None
        task = self.progress.add_task(description, total=total)
        handles = [m.register_forward_hook(lambda *_: self.progress.advance(task)) for m in layers] if total else []
        t0 = time.perf_counter()
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            self.seconds[key] = round(time.perf_counter() - t0, 3)
            self.progress.update(task, total=total or 1, completed=total or 1)


def _quiet(args) -> bool:
    """No progress bars (ours, nor transformers' while loading) under --json or when stderr is no terminal."""
    quiet = args.json or not sys.stderr.isatty()
    if quiet:
        from transformers.utils import logging

        logging.disable_progress_bar()
    return quiet


# --------------------------------------------------------------------------- measuring


def contextual(model, ctx: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(q, vocab): the logits of the run with the context, at the query positions."""
    import torch

    with torch.no_grad():
        return model(torch.cat([ctx, q], 1)).logits[0, ctx.shape[1]:]


def measured(ps, want: torch.Tensor, stages: Stages, passes: dict[str, int]) -> dict[str, float]:
    """The patch set's figures against the contextual logits `want`: ``factored``, ``materialized``,
    ``unpatched`` (`numeric.hf.hfcheck.logit_error`)."""
    import torch

    from numeric.hf.hfcheck import logit_error

    with stages.step("factored", "replay, factored", ps.model, passes["factored"]):
        factored = logit_error(ps.logits()[0], want)
    with stages.step("materialized", "replay, written into the weights", ps.model, passes["materialized"]):
        materialized = logit_error(ps.materialized_logits()[0], want)
    with torch.no_grad():
        unpatched = logit_error(ps.model(ps.query_ids).logits[0], want)
    return {"factored": factored, "materialized": materialized, "unpatched": unpatched}


def replay_passes(ps) -> dict[str, int]:
    """Forward passes of each replay: one, or one per query token (token by token, or each token alone)."""
    q = ps.query_ids.shape[1]
    return {"factored": q if ps.positions is not None or ps.incremental else 1, "materialized": q}


def bound(dtype: str) -> float | None:
    """The logit bound of a real model's patched run in `dtype` (`numeric.hf.hfcheck.REAL_BOUNDS`; None: none)."""
    from numeric.hf.hfcheck import REAL_BOUNDS

    return REAL_BOUNDS.get(dtype)


def exact_run(computed_in: str) -> str:
    """The replay in the arithmetic the patches were computed in."""
    return {"kernel": "factored", "model": "materialized"}[computed_in]


# --------------------------------------------------------------------------- absorb


def cmd_absorb(args) -> int:
    """Absorb a context into patches of MODEL and write them (a patch file, or a PEFT adapter folder)."""
    from numeric.hf import absorb_context
    from numeric.hf.absorb import Options
    from numeric.hf.models import resolve

    context, query = text_arg(args.context, "--context"), text_arg(args.query, "--query")
    out = Path(args.out)
    if args.mode == "token" and out.is_dir():
        raise CtxpatchInputError(f"-o {out}: a folder; --mode token writes one patch file "
                                 f"(e.g. {out}/patch.safetensors).")
    if args.mode == "sequence" and out.exists() and not out.is_dir():
        raise CtxpatchInputError(f"-o {out}: a file; --mode sequence writes a PEFT adapter folder.")
    if args.mode == "sequence" and (args.strategy or args.keep_positions):
        raise CtxpatchInputError("--mode sequence has one protocol and no strategy choice; --strategy and "
                                 "--keep-positions apply to --mode token.")
    with Stages(not _quiet(args)) as stages:
        with stages.step("load", f"loading {args.model}"):
            model, tokenizer = resolve(args.model, args.dtype)
        ctx, q = encode(tokenizer, context, query, args.chat)
        with stages.step("contextual", "run with the context", model, 1):
            want = contextual(model, ctx, q)
        if args.mode == "sequence":
            return _absorb_sequence(args, model, ctx, q, want, stages, out, context, query)
        options = Options(strategy=args.strategy, keep_positions=args.keep_positions)
        computed_in = options.protocol(False)
        passes = 1 + (q.shape[1] if computed_in == "model" or args.keep_positions else 1)
        with stages.step("absorb", f"absorbing {ctx.shape[1]} context tokens", model, passes):
            ps = absorb_context(model, ctx, q, options)
        errors = measured(ps, want, stages, replay_passes(ps))
        meta = {"context": context, "query": query, "chat": args.chat, "computed_in": computed_in,
                "keep_positions": args.keep_positions, "strategy": args.strategy}
        with stages.step("save", "writing the patch file"):
            out.parent.mkdir(parents=True, exist_ok=True)
            ps.save(out, context_ids=ctx, errors=errors, meta=meta, source=str(args.model))
    return _report_absorb(args, ps, errors, computed_in, ctx, q, stages.seconds, out)


def _report_absorb(args, ps, errors, computed_in, ctx, q, seconds, out) -> int:
    from numeric.hf.hfcheck import choices

    limit, exact = bound(args.dtype), exact_run(computed_in)
    ok = None if limit is None else errors[exact] <= limit
    result = {"model": str(args.model), "model_type": ps.model.config.model_type, "dtype": args.dtype,
              "mode": "token", "context_tokens": ctx.shape[1], "query_tokens": q.shape[1],
              "computed_in": computed_in, "exact": exact, "errors": errors, "bound": limit, "ok": ok,
              **choices(ps), "seconds": seconds, "files": [str(out)]}
    if args.json:
        emit(result)
    else:
        table = Table(title=f"{args.model}: {ctx.shape[1]} context tokens absorbed into the patches of "
                      f"{q.shape[1]} query tokens ({args.dtype}, computed in the {computed_in})", show_header=False)
        _figure_rows(table, errors, limit, exact)
        for n, (used, amp) in enumerate(zip(result["strategies"], result["amplification"], strict=True)):
            table.add_row(f"layer {n} strategy (tokens)", ", ".join(f"{k} ({v})" for k, v in used.items()) +
                          (f"; amplification {amp:.3g}" if amp == amp else ""))
        table.add_row("seconds", ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
        table.add_row("result", _verdict(ok, limit, args.dtype))
        console.print(table)
        console.print(f"patch file: {out}", markup=False)
    return 1 if ok is False else 0


def _absorb_sequence(args, model, ctx, q, want, stages, out, context, query) -> int:
    """``--mode sequence``: one patch per layer, written as a PEFT LoRA adapter folder (with ``ctxpatch.json``),
    measured as PEFT loads it: ``factored`` the LoRA adapter, ``materialized`` merged into the weights."""
    from numeric.hf import absorb_context, store

    unpatched = _unpatched(model, q, want)
    with stages.step("absorb", "absorbing (one patch per layer)", model, 2):
        sp = absorb_context(model, ctx, q, mode="sequence")
    with stages.step("save", "writing the adapter folder"):
        meta = {"context": context, "query": query, "chat": args.chat}
        store.save_sequence(sp, out, context_ids=ctx, meta=meta, source=str(args.model))
    errors = peft_figures(model, out, q, want, stages) | {"unpatched": unpatched}
    store.record_errors(out, errors)
    limit = bound(args.dtype)
    ok = None if limit is None else errors["factored"] <= limit
    result = {"model": str(args.model), "model_type": model.config.model_type, "dtype": args.dtype,
              "mode": "sequence", "context_tokens": ctx.shape[1], "query_tokens": q.shape[1], "rank": sp.rank,
              "exact": "factored", "errors": errors, "bound": limit, "ok": ok, "strategies": [],
              "seconds": stages.seconds, "files": [str(out)]}
    if args.json:
        emit(result)
    else:
        table = Table(title=f"{args.model}: one patch per layer (rank {sp.rank}) for {q.shape[1]} query tokens",
                      show_header=False)
        _figure_rows(table, errors, limit, "factored")
        table.add_row("result", _verdict(ok, limit, args.dtype))
        console.print(table)
        console.print(f"PEFT adapter folder: {out}", markup=False)
    return 1 if ok is False else 0


def _unpatched(model, q, want) -> float:
    import torch

    from numeric.hf.hfcheck import logit_error

    with torch.no_grad():
        return logit_error(model(q).logits[0], want)


def peft_figures(model, folder, q, want, stages: Stages) -> dict[str, float]:
    """A sequence adapter folder as PEFT loads it: ``factored`` (LoRA) and ``materialized`` (merged into the
    weights: `merge_and_unload`, which leaves `model` patched)."""
    import warnings

    import peft
    import torch

    from numeric.hf.hfcheck import logit_error

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's notes on the adapter's modules_to_save
        pm = peft.PeftModel.from_pretrained(model, str(folder)).eval()
    with stages.step("factored", "replay, PEFT LoRA adapter", model, 1), torch.no_grad():
        lora = logit_error(pm(q).logits[0], want)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = pm.merge_and_unload()
    with stages.step("materialized", "replay, merged into the weights", model, 1), torch.no_grad():
        weights = logit_error(merged(q).logits[0], want)
    return {"factored": lora, "materialized": weights}


def _figure_rows(table: Table, errors: dict, limit: float | None, exact: str, recorded: dict | None = None) -> None:
    labels = {"factored": "patched, factored (kernels or LoRA)", "materialized": "patched, written into the weights",
              "unpatched": "query alone, unpatched"}
    for k in FIGURES:
        mark = " (the exact replay" + (f", bound {limit:.0e})" if limit is not None else ")") if k == exact else ""
        cell = _num(errors.get(k))
        if recorded is not None:
            same = errors.get(k) == recorded.get(k)
            cell += f"   recorded {_num(recorded.get(k))}" + ("   identical" if same else "")
        table.add_row(f"{labels[k]}{mark}", cell)


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.6e}"


def _verdict(ok, limit, dtype) -> str:
    if ok is None:
        return f"no bound for {dtype}: figures only"
    return "[green]ok[/green]" if ok else f"[red]FAILED[/red]: the exact replay is above {limit:.0e}"


# --------------------------------------------------------------------------- apply


def cmd_apply(args) -> int:
    """Load a patch file onto MODEL (refused unless its fingerprint is the file's) and measure its replays."""
    import torch

    from numeric.hf import store
    from numeric.hf.models import resolve
    from numeric.hf.patchset import PatchSet

    path = Path(args.patchfile)
    if path.is_dir():
        return _apply_sequence(args, path)
    header, _ = store.read(path)  # bad files refused before a model is loaded
    dtype = args.dtype or header["model"]["dtype"]
    ctx_ids = header["tokens"].get("context_ids")
    if ctx_ids is None:
        raise ModelInputError(f"{path}: the file records no context token ids, so the run with the context cannot "
                              "be measured again; save it with PatchSet.save(path, context_ids=...).")
    with Stages(not _quiet(args)) as stages:
        with stages.step("load", f"loading {args.model}"):
            model, tokenizer = resolve(args.model, dtype)
        ps = PatchSet.load(path, model)
        if args.query is not None:
            _check_query(tokenizer, text_arg(args.query, "--query"), ps.query_ids, path)
        ctx = torch.tensor([ctx_ids], dtype=torch.long)
        with stages.step("contextual", "run with the context", model, 1):
            want = contextual(model, ctx, ps.query_ids)
        errors = measured(ps, want, stages, replay_passes(ps))
    computed_in = header.get("meta", {}).get("computed_in") or ("model" if ps.incremental else "kernel")
    return _report_apply(args, path, header, errors, dtype, ps.query_ids.shape[1], exact_run(computed_in),
                         stages.seconds)


def _report_apply(args, path, header, errors, dtype, q: int, exact: str, seconds) -> int:
    """The replays' figures beside the recorded ones; ok: each replay as close as recorded or within the bound."""
    recorded = {k: header["errors"].get(k) for k in FIGURES}
    limit = bound(dtype)
    within = [k for k in ("factored", "materialized")
              if recorded[k] is not None and errors[k] <= recorded[k] or limit is not None and errors[k] <= limit]
    ok = len(within) == 2
    identical = all(errors[k] == recorded[k] for k in FIGURES)
    result = {"file": str(path), "model": str(args.model), "dtype": dtype, "query_tokens": q,
              "errors": errors, "recorded": recorded, "identical": identical, "exact": exact, "bound": limit,
              "ok": ok, "seconds": seconds}
    if args.json:
        emit(result)
    else:
        table = Table(title=f"{path} on {args.model} ({dtype}, {q} query tokens)", show_header=False)
        _figure_rows(table, errors, limit, exact, recorded)
        table.add_row("result", ("[green]ok[/green]" if ok else "[red]FAILED[/red]: a replay is worse than recorded "
                                 "and above the bound") + ("; every figure identical to the recorded one"
                                                           if identical else ""))
        console.print(table)
    return 0 if ok else 1


def _apply_sequence(args, folder: Path) -> int:
    """`apply` of an adapter folder of ``absorb --mode sequence``: fingerprint checked, measured as PEFT loads it."""
    import torch

    from numeric.hf import store
    from numeric.hf.models import resolve

    header = store.read_sequence(folder)
    dtype = args.dtype or header["model"]["dtype"]
    with Stages(not _quiet(args)) as stages:
        with stages.step("load", f"loading {args.model}"):
            model, tokenizer = resolve(args.model, dtype)
        store.check_sequence_model(header, model, folder)
        q = torch.tensor([header["tokens"]["query_ids"]], dtype=torch.long)
        if args.query is not None:
            _check_query(tokenizer, text_arg(args.query, "--query"), q, folder)
        ctx = torch.tensor([header["tokens"]["context_ids"]], dtype=torch.long)
        with stages.step("contextual", "run with the context", model, 1):
            want = contextual(model, ctx, q)
        errors = {"unpatched": _unpatched(model, q, want)} | peft_figures(model, folder, q, want, stages)
    return _report_apply(args, folder, header, errors, dtype, q.shape[1], "factored", stages.seconds)


def _check_query(tokenizer, query: str, recorded: torch.Tensor, path) -> None:
    """--query must give the recorded query's tokens: per-token patches belong to the tokens they were made for."""
    import torch

    ids = tokenizer(query, add_special_tokens=False, return_tensors="pt").input_ids
    if not torch.equal(ids, recorded):
        raise ModelInputError(f"--query gives the tokens {ids[0].tolist()[:12]}, but {path} holds patches for the "
                              f"tokens {recorded[0].tolist()[:12]}: per-token patches belong to the tokens they were "
                              "computed for. Leave --query out (the recorded query is replayed) or absorb this query.")


# --------------------------------------------------------------------------- parser


def register(verb) -> None:
    """Add ``absorb`` and ``apply`` through the command line's ``verb(name, fn, help, *shared)``."""
    from numeric.hf.models import DTYPES, MODELS

    model_help = f"a packaged name ({', '.join(MODELS)}), a folder written by save_pretrained, or a .gguf file"
    p = verb("absorb", cmd_absorb, "absorb a context into per-token patches of a model on disk and write them (a patch "
             "file, or a PEFT adapter folder with --mode sequence)", "strategy")
    p.add_argument("model", metavar="MODEL", help=model_help)
    p.add_argument("--context", required=True, metavar="TEXT|@FILE", help="the context (or @FILE: read from FILE)")
    p.add_argument("--query", required=True, metavar="TEXT|@FILE", help="the query (or @FILE)")
    p.add_argument("--mode", choices=MODES, default="token", help="token: per-token patches (a patch file); "
                   "sequence: one patch per layer (a PEFT adapter folder)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--keep-positions", action="store_true", help="each query token alone at its absolute position "
                   "(the paper's reduced run)")
    p.add_argument("--chat", action="store_true", help="the context as a user turn in the tokenizer's chat template, "
                   "the query as the start of the answer")
    p.add_argument("-o", "--out", required=True, type=Path, metavar="OUT",
                   help="the patch file to write (--mode sequence: the adapter folder)")
    p = verb("apply", cmd_apply, "replay a patch file on a model: refused unless the model is the one it was absorbed "
             "on; the measured figures beside the recorded ones")
    p.add_argument("patchfile", metavar="PATCHFILE", help="a patch file written by `ctxpatch absorb` (or its adapter "
                   "folder, --mode sequence)")
    p.add_argument("--model", required=True, metavar="MODEL", help=model_help)
    p.add_argument("--query", metavar="TEXT|@FILE", help="check that this text gives the recorded query's tokens")
    p.add_argument("--dtype", choices=list(DTYPES), help="default: the dtype recorded in the file")

