r"""Proof reports: LaTeX/PDF and self-contained HTML, rendered with Jinja2 from the pipeline's results.

`collect(spec)` gathers, for one block: the spec, the controllability verdict, the derived
formulas and definitions (SymPy's LaTeX printer), the block and multi-layer theorems with every
checked step, the generated kernel's header and signatures, random-instance validation in float64
and float32, the Hugging Face check (for blocks with a transformers model type), and the implicit
dynamics of the patch as the context grows. `render(spec, fmt, out_dir)` writes the report; math
in HTML is MathML converted from the same LaTeX (latex2mathml), images are inlined.

Nothing here computes a formula: it presents what the other modules derived, proved and measured.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import time
from functools import cache
from pathlib import Path

import jinja2

from ctxpatch.reporting import freshness
from proofs import registry as prover
from symbolic.activations import activation
from symbolic.activations import x as act_x
from symbolic.derive import Deriver
from symbolic.errors import CtxpatchInputError, SpecError
from symbolic.kernel import RELATIONS, VERIFIED, Term
from symbolic.kernel import latex as term_latex
from symbolic.printing import latex
from symbolic.spec import BlockSpec, dump_toml
from symbolic.theorems import SIGMA, SIGMA_FREE

FORMATS = ("latex", "pdf", "html")
_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: object) -> str:
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _TEX_SPECIAL[m.group()], str(text))


def mathml(tex: str, display: bool = False) -> str:
    import latex2mathml.converter

    return latex2mathml.converter.convert(tex, display="block" if display else "inline")


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("ctxpatch.reporting", "templates"), trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters.update(wrap=_wrap, tex=tex_escape, html=html.escape, mathml=mathml,
                       mathml_block=lambda t: mathml(t, display=True), sci=lambda v: "n/a" if v is None else f"{v:.2e}")
    return env


def environment() -> jinja2.Environment:
    """The reports' Jinja2 environment: their templates and filters (tex, html, sci, wrap, mathml)."""
    return _env()


def compile_pdf(tex: Path) -> Path:
    """Compile a LaTeX file with latexmk, as the proof reports are; the PDF lands beside the .tex."""
    return _compile(tex)


def _wrap(text: str, width: int = 96) -> str:
    """Hard-wrap long lines for a verbatim block (continuation lines indented)."""
    import textwrap

    out = []
    for line in text.splitlines():
        out += textwrap.wrap(line, width, subsequent_indent="    ", break_long_words=True) or [""]
    return "\n".join(out)


# --------------------------------------------------------------------------- data


def theorems(spec: BlockSpec) -> list[dict]:
    """Each theorem of `spec` as the kernel checked it: definitions (the named intermediates),
    hypotheses, statement and steps in LaTeX, with every step's status and instance evidence."""
    out = []
    results = prover.run(prover.arch_builders(spec))
    arch = [r for r in results if r.theorem.name.endswith(spec.name) or f"_{spec.name}_" in r.theorem.name]
    for res in arch + [r for r in results if r not in arch]:  # the architecture's theorems, then the lemmas
        th = res.theorem
        steps = [{"n": i, "claim": f"{_tex(st.lhs)} {_rel(st.relation)} {_tex(st.rhs)}",
                  "justification": st.justification, "status": sr.status, "instances": sr.instances,
                  "residual": sr.residual} for i, (st, sr) in enumerate(zip(th.steps, res.steps, strict=True), 1)]
        out.append({"name": th.name, "title": th.title, "status": res.status, "verified": res.status == VERIFIED,
                    "reference": th.reference, "generic": th.generic, "seconds": res.seconds,
                    "block": th.name.startswith("block_"),
                    "definitions": [h.latex() for h in th.definitions],
                    "hypotheses": [h.latex() for h in th.assumptions],
                    "statement": f"{_tex(th.lhs)} {_rel(th.relation)} {_tex(th.rhs)}", "steps": steps,
                    "verified_steps": res.verified_steps})
    return out


def _tex(e) -> str:
    """LaTeX of a kernel term (the theorems) or of a SymPy expression (the derivation)."""
    return term_latex(e) if isinstance(e, Term) else latex(e)


def _rel(relation: str) -> str:
    return RELATIONS[relation].latex


def activation_latex(spec: BlockSpec) -> str:
    r"""The block's activation, defined once: $\sigma(x) = \dots$ (every formula writes $\sigma$)."""
    act = activation(spec.mlp.activation)
    return rf"\sigma(x) = {latex(act)}"


def named_definitions(spec: BlockSpec, der) -> list[tuple[str, object]]:
    """The derivation's definitions with the activation kept as sigma where the patches never look at it."""
    d = Deriver(spec)
    d.derive(der.input_strategy, der.output_strategy)
    if der.input_strategy in SIGMA_FREE:
        d.block.sigma = SIGMA(act_x)
    return list(d.definitions().items())


def _kernel(spec: BlockSpec, der) -> dict:
    from symbolic.codegen import render

    source = render(spec, "torch", der)
    header = [ln[2:] for ln in source.splitlines()[:3]]
    signatures = [ln[4:].rstrip(":") for ln in source.splitlines() if ln.startswith("def ")]
    return {"header": header, "signatures": signatures}


def hf_rows(spec: BlockSpec, quick: bool = False) -> list[dict]:
    try:
        from numeric.hf.hfcheck import TINY, hf_check
    except ImportError:
        return []
    types = [t for t in (spec.hf_model_types or ()) if t in TINY][:1]
    rows = []
    for t in types:
        for dtype in ("float64", "float32"):
            gen = 0 if t == "bert" else (8 if quick else 32)
            rows.append(hf_check(t, layers=2, dtype=dtype, generate=gen if dtype == "float32" else 0))
    return rows


def base(spec: BlockSpec) -> dict:
    """The symbolic part of a report: spec, verdict, formulas, definitions, kernel signatures."""
    from symbolic.controllability import check
    from symbolic.derivation import formula_latex

    verdict = check(spec)
    der = verdict.derivation
    if der is None:
        raise SpecError(f"{spec.name}: no perfect patch for the allowed parameters, so there is no theorem, "
                        f"kernel or validation to report; `ctxpatch check` shows the counterexample.")
    symbols = dict(der.symbols)
    return {
        "spec": spec, "toml": dump_toml(spec), "verdict": verdict.to_json(), "strategies": strategy_rows(verdict),
        "conditions": [c.latex() for c in der.conditions],
        "patches": [{"param": p.param, "kind": p.kind, "latex": formula_latex(p, symbols.get(p.param))}
                    for p in der.patches],
        "definitions": [(_def_name(n), _tex(e)) for n, e in named_definitions(spec, der)
                        if "(" not in n and "A(" not in str(e)],
        "activation": activation_latex(spec),
        "kernel": _kernel(spec, der),
    }


def strategy_rows(verdict) -> list[dict]:
    """Every strategy of the registry with its status for this block, its formula and its source."""
    from symbolic.controllability import strategies_table
    from symbolic.derive import STRATEGIES

    chosen = {("input", verdict.input_strategy), ("output", verdict.output_strategy)}
    rows = []
    for side, name, status in strategies_table(verdict, every=True):
        s = STRATEGIES.get(side, name)
        rows.append({"side": side, "name": name, "doc": s.doc, "source": s.source, "status": status,
                     "chosen": (side, name) in chosen})
    return rows


def validation(spec: BlockSpec, quick: bool = False) -> list[dict]:
    from numeric.check.validate import Setup, validate

    return [validate(spec, Setup(dtype=dt), trials=1 if quick else 3) for dt in ("float64", "float32")]


def dynamics(spec: BlockSpec, quick: bool = False) -> dict:
    from numeric.check.validate import dynamics as dyn

    return dyn(spec, 12 if quick else 32)


# float32, naive bfloat16 (Theorem 1, `norm_vector`, computed in bfloat16), stable bfloat16
EXPERIMENTS = (("float32", None, None), ("bfloat16", "norm_vector", None), ("bfloat16", "stable", "float32"))


def experiment(spec: BlockSpec, quick: bool = False) -> list[dict]:
    """The paper's generation experiment on the trained fixture (Gemma 3 only; skipped when quick)."""
    if quick or spec.name != "gemma3":
        return []
    try:
        from numeric.hf.experiment import FIXTURE, run
    except ImportError:
        return []
    if not (FIXTURE / "config.json").exists():
        return []
    return [run(dtype=d, strategy=s, patch_dtype=p) for d, s, p in EXPERIMENTS]


def derived(spec: BlockSpec) -> dict:
    """The deterministic part of a report: `base` and the theorems as the kernel checked them."""
    return {**base(spec), "theorems": theorems(spec)}


def collect(spec: BlockSpec, hf: bool = True, quick: bool = False) -> dict:
    """Everything a report shows, computed now (see the module docstring): the derived part and the measured
    one (`ctxpatch.reporting.freshness.MEASURED`)."""
    t0 = time.perf_counter()
    data = derived(spec)
    data.update(validation=validation(spec, quick), dynamics=dynamics(spec, quick),
                hf=hf_rows(spec, quick) if hf else [], experiment=experiment(spec, quick),
                date=time.strftime("%Y-%m-%d"))
    data["seconds"] = round(time.perf_counter() - t0, 1)
    return data


def _def_name(name: str) -> str:
    import sympy as sp

    base = name.replace("[e]", "")
    return latex(sp.Symbol(base)) + (r"^{(e)}" if name.endswith("[e]") else "")


# --------------------------------------------------------------------------- rendering


def render(spec: BlockSpec, fmt: str, out_dir: Path, data: dict | None = None, quick: bool = False) -> list[Path]:
    """Write the report of `spec` in `fmt` (latex, pdf or html) into `out_dir`; return the files.

    Nothing is written outside `out_dir`: the HTML report inlines its figures, the LaTeX report writes them to
    ``<name>-figures/`` beside it, and pdflatex builds in ``<name>-build/``, removed once the PDF is copied out.
    """
    from ctxpatch.reporting.plots import figures, names

    if fmt not in FORMATS:
        raise CtxpatchInputError(f"--format {fmt!r} is not allowed. Allowed: {', '.join(FORMATS)}.")
    if fmt == "pdf":
        require_latex()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = data or collect(spec, quick=quick)
    name = spec.name
    pngs = figures(data)
    if fmt == "html":
        figs = freshness.encode_figures(pngs)
        path = out_dir / f"{name}.html"
        path.write_text(html_text(data, figs))
        return [path]
    fig_dir = out_dir / f"{name}-figures"
    fig_dir.mkdir(exist_ok=True)
    for key, png in pngs.items():
        (fig_dir / names(data)[key]).write_bytes(png)
    figs = {k: (fig_dir / names(data)[k]).relative_to(out_dir).as_posix() for k in pngs}
    tex = out_dir / f"{name}.tex"
    tex.write_text(tex_text(data, figs))
    if fmt == "latex":
        return [tex, *sorted(fig_dir.iterdir())]
    return [_compile(tex)]


def html_text(data: dict, figs: dict[str, str]) -> str:
    """The self-contained HTML report: `data` with its measured part embedded as JSON, figures as base64 PNG."""
    return _env().get_template("report.html.j2").render(d=data, figs=figs, measured=freshness.measured_json(data))


def tex_text(data: dict, figs: dict[str, str], digest: bool = True) -> str:
    """The LaTeX report, its PDF metadata (Keywords) holding the SHA-256 of this source without it."""
    plain = _env().get_template("report.tex.j2").render(d=data, figs=figs, keywords="")
    if not digest:
        return plain
    keywords = freshness.KEYWORDS + freshness.source_digest(plain)
    return _env().get_template("report.tex.j2").render(d=data, figs=figs, keywords=keywords)


def stale(spec: BlockSpec, out_dir: Path, derived_data: dict | None = None) -> list[str]:
    """Why the committed report of `spec` in `out_dir` is not what the code renders now (empty: it is)."""
    from ctxpatch.reporting.plots import names

    out_dir, name = Path(out_dir), spec.name
    html = out_dir / f"{name}.html"
    if not html.exists():
        return [f"{html} is missing"]
    committed = html.read_text()
    kept = freshness.read_measured(committed)
    if kept is None:
        return [f"{html} carries no measured data (rendered by an older ctxpatch)"]
    data = {**(derived_data or derived(spec)), **{k: v for k, v in kept.items() if k != "formulas"}}
    now = freshness.formulas_hash(data)
    reasons = []
    if kept["formulas"] != now:
        reasons.append(f"{html} was measured with formulas {kept['formulas']}, the kernel now has {now}")
    if html_text(data, freshness.read_figures(committed)) != committed:
        reasons.append(f"{html} is not what the code renders now")
    pdf = out_dir / f"{name}.pdf"
    if pdf.exists():
        figs = {k: f"{name}-figures/{f}" for k, f in names(data).items()}
        want = freshness.KEYWORDS + freshness.source_digest(tex_text(data, figs, digest=False))
        if freshness.pdf_keywords(pdf) != want:
            reasons.append(f"{pdf} was not compiled from the LaTeX the code renders now")
    return reasons


def pdf_available() -> bool:
    return shutil.which("latexmk") is not None and shutil.which("pdflatex") is not None


def require_latex() -> None:
    missing = [t for t in ("latexmk", "pdflatex") if shutil.which(t) is None]
    if missing:
        raise CtxpatchInputError(f"--format pdf needs {' and '.join(missing)}: install Debian's "
                                 "texlive-latex-recommended and latexmk (`make install-tex`), or use --format latex "
                                 "or html.")


def _compile(tex: Path) -> Path:
    """pdflatex (through latexmk) in ``<name>-build/`` beside the .tex, removed once the PDF is copied out; kept,
    with its log, when the build fails."""
    build = tex.parent / f"{tex.stem}-build"
    build.mkdir(exist_ok=True)
    run = subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", f"-outdir={build.name}",
                          tex.name], cwd=tex.parent, capture_output=True, text=True, timeout=300)
    pdf = build / (tex.stem + ".pdf")
    if run.returncode != 0 or not pdf.exists():
        log = build / (tex.stem + ".log")
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else run.stdout[-2000:]
        raise RuntimeError(f"pdflatex failed on {tex} (the build is kept in {build}):\n{tail}")
    target = tex.with_suffix(".pdf")
    shutil.copy(pdf, target)
    shutil.rmtree(build)
    return target


def index_text(entries: list[dict]) -> str:
    """reports/index.html: one row per rendered report, dated by the newest of them."""
    date = max((e["date"] for e in entries), default="")
    return _env().get_template("index.html.j2").render(entries=entries, date=date)


def index(entries: list[dict], out_dir: Path) -> Path:
    path = Path(out_dir) / "index.html"
    path.write_text(index_text(entries))
    return path
