"""Code generation: the derived formulas rendered as NumPy and PyTorch kernels by Jinja2 templates.

`render(spec, backend)` gives the source of one module; `write_catalog()` renders every catalog
architecture into ``numeric/kernels/{numpy,torch}/<arch>.py``; `stale()` lists the committed files
that differ from a fresh rendering (``ctxpatch codegen --check``). Rendering is deterministic: the
same spec and derivation give the same bytes.

Expressions are printed by `symbolic.codegen.printers` (SymPy printer subclasses) from the
lowered, common-subexpression-eliminated assignments of `symbolic.codegen.lower`; the template
holds only the function skeletons, never a formula.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import jinja2
import sympy as sp

from symbolic import catalog
from symbolic.codegen.lower import Function, KernelIR, PatchOut, build, depends_on, route_args
from symbolic.codegen.printers import BACKENDS
from symbolic.derive import Derivation, formula_text
from symbolic.spec import BlockSpec

TEMPLATE = "kernel.py.j2"
KERNELS = Path(__file__).resolve().parents[2] / "numeric" / "kernels"
TITLES = {"numpy": "NumPy", "torch": "PyTorch"}


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("symbolic.codegen", "templates"),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined, autoescape=False,
    )
    env.filters["pyfloat"] = lambda v: repr(float(v))
    return env


def _template_hash() -> str:
    source, _, _ = _env().loader.get_source(_env(), TEMPLATE)
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _printer(backend: str, fn: Function, ir: KernelIR):
    fixed = _token_free(ir, fn)
    return BACKENDS[backend](per_expert=lambda e: depends_on(e, fn.per_expert), dense=not ir.moe,
                             per_token=lambda e: any(s.name not in fixed for s in e.free_symbols))


def _token_free(ir: KernelIR, fn: Function) -> set[str]:
    """The names of `fn` without the token axis: parameters, constants, and assignments made of them only."""
    names = {var for var, _ in ir.params} | {name for name, _ in ir.constants}
    for a in fn.body:
        if all(s.name in names for s in a.expr.free_symbols):
            names.add(a.target)
    return names


def _used_params(ir: KernelIR, fn: Function) -> list[tuple[str, str]]:
    names = {s.name for a in fn.body for s in a.expr.free_symbols}
    if fn is ir.patch_fn:  # the top-k mask and margin check read the router's own arguments
        names |= {str(a) for a in route_args(ir.spec)}
    return [(var, name) for var, name in ir.params if var in names]


def _out_value(ir: KernelIR, p: PatchOut, field: str, var: str) -> str:
    """The user-facing array of one patch field: (T, n), or (T, E, n) for per-expert patches."""
    if not ir.moe:
        return var
    if p.per_expert:
        return f"runtime.per_expert({var}, selected, masked={field == 'left'})"
    return f"{var}[:, 0]"


def _references(ir: KernelIR) -> list[tuple[str, str]]:
    """What each patch is measured against for the conditioning warning: the matrix, or gamma."""
    out = []
    for p in ir.patches:
        value = f'params["{p.param}"]'
        if p.param.endswith(".scale"):
            one_plus = ir.spec.norms[p.param.split(".")[0]].scale == "one_plus"
            out.append((p.param, f"(1 + {value})" if one_plus else value))
        elif p.kind == "rank1":
            out.append((p.param, value))
    return out


def _shapes_doc(ir: KernelIR) -> str:
    text = "u, u_ctx (T, d) with T tokens; parameters in their stored layout (W (out, in))"
    if ir.moe:
        text += "; per-expert patches (T, E, n), masked to zero off each token's top-k experts"
    return text + "."


def render(spec: BlockSpec, backend: str, derivation: Derivation | None = None) -> str:
    """The source of the `backend` kernel module of `spec` (default derivation unless one is given)."""
    from symbolic.controllability import check

    if backend not in BACKENDS:
        raise ValueError(f"unknown back end {backend!r}; allowed: {sorted(BACKENDS)}")
    der = derivation or check(spec).derivation
    if der is None:
        raise ValueError(f"{spec.name}: no perfect patch, so there is no kernel to generate "
                         f"(see `ctxpatch check {spec.name}` for the counterexample)")
    ir = build(spec, der)
    imports: set[str] = set()

    def code(expr: sp.Expr, fn: Function) -> str:
        printer = _printer(backend, fn, ir)
        text = printer.doprint(expr)
        imports.update(printer.module_imports)
        if backend == "numpy":
            imports.add("numpy")
        return text

    # Render the body first so that the imports it needs are known, then the whole file.
    template = _env().get_template(TEMPLATE)
    context = dict(
        ir=ir, backend=backend, template=TEMPLATE, template_hash=_template_hash(), backend_title=TITLES[backend],
        code=code, used_params=lambda fn: _used_params(ir, fn),
        out_value=lambda p, f, v: _out_value(ir, p, f, v),
        one_plus=lambda name: spec.norms[name.split(".")[0]].scale == "one_plus",
        patch_lines=[f"{p.param} ({p.kind}): {formula_text(p)}" for p in der.patches], shapes_doc=_shapes_doc(ir),
        inputs=["u", "u_ctx"] + (["x"] if ir.parallel else []), imports=[], references=_references(ir),
        route_extra="".join(f", {a}" for a in route_args(spec)),
    )
    template.render(**context)
    context["imports"] = sorted(imports)
    return template.render(**context)


def kernel_path(root: Path, backend: str, name: str) -> Path:
    return Path(root) / backend / f"{name}.py"


def catalog_sources() -> dict[Path, str]:
    """Every catalog architecture's kernels, rendered in memory: {path: source}."""
    out = {}
    for name in catalog.names():
        spec = catalog.load(name)
        for backend in BACKENDS:
            out[kernel_path(KERNELS, backend, name)] = render(spec, backend)
    return out


def write(sources: dict[Path, str]) -> list[Path]:
    """Write rendered sources (with package markers); returns the files that changed."""
    changed = []
    for path, text in sources.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        init = path.parent / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated kernels (see `ctxpatch codegen`)."""\n')
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(path)
    return changed


def stale(sources: dict[Path, str]) -> list[Path]:
    """Files that are missing or differ from their fresh rendering."""
    return [p for p, text in sources.items() if not p.exists() or p.read_text() != text]
