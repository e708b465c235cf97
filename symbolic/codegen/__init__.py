"""Code generation: the derived formulas rendered as NumPy and PyTorch kernels by Jinja2 templates.

`render(spec, backend)` gives the source of one module; `write_catalog()` renders every catalog
architecture into ``numeric/kernels/{numpy,torch}/<arch>.py``; `stale()` lists the committed files
that differ from a fresh rendering (``ctxpatch codegen --check``). Rendering is deterministic: the
same spec and derivation give the same bytes.

Expressions are printed by `symbolic.codegen.printers` (SymPy printer subclasses) from the
lowered, common-subexpression-eliminated assignments of `symbolic.codegen.lower`, laid out in lines
of at most 120 characters by `symbolic.codegen.layout`; the templates hold only the function
skeletons, never a formula.

One module per distinct kernel: where catalog names render the same code (the same derived formulas,
constants and strategies; llama, mistral, qwen2, qwen3), the first name in catalog order holds it and
the others are aliases (`alias.py.j2`) that re-export its names under their own ``ARCH``.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import textwrap
from functools import cache
from pathlib import Path

import jinja2
import sympy as sp

from symbolic import catalog
from symbolic.codegen.layout import INDENT, WIDTH, call, laid_out, literal
from symbolic.codegen.lower import Function, KernelIR, PatchOut, build, depends_on, route_args
from symbolic.codegen.printers import BACKENDS
from symbolic.derivation import Derivation, formula_text
from symbolic.spec import BlockSpec

TEMPLATE = "kernel.py.j2"
ALIAS_TEMPLATE = "alias.py.j2"
KERNELS = Path(__file__).resolve().parents[2] / "numeric" / "kernels"
TITLES = {"numpy": "NumPy", "torch": "PyTorch"}
FUNCTIONS = ("patch_fn", "apply_fn", "forward_fn", "products_fn")  # the KernelIR fields printed


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("symbolic.codegen", "templates"),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined, autoescape=False,
    )
    env.filters["pyfloat"] = lambda v: repr(float(v))
    return env


def _template_hash(name: str = TEMPLATE) -> str:
    source, _, _ = _env().loader.get_source(_env(), name)
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


def _router_margin(ir: KernelIR) -> dict[str, str]:
    """Where a mixture's top-k margin check goes and what `runtime.router_roundoff` reads: the router matrix,
    its contextual input and the patched run's input, after the last of them is assigned. The contextual input
    is z_C (z in a parallel block: both runs' MLP reads the same x). The patched run reads the plain z (with the
    router's patch) where the patches are functions of it; a strategy whose patches never read z (a patched
    pre-norm) reproduces z_C itself, and passes it again."""
    targets = [a.target for a in ir.patch_fn.body]
    contextual = "z_C" if "z_C" in targets else "z"
    plain = "z" if "z" in targets else contextual
    weight = next(var for var, name in ir.params if name == "W_router")
    after = max(("ell_C", contextual, plain), key=targets.index)
    return {"after": after, "args": f"{weight}, {contextual}, {plain}, ell_C"}


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
            out.append((p.param, f"1 + {value}" if one_plus else value))
        elif p.kind == "rank1":
            out.append((p.param, value))
    return out


def _shapes_doc(ir: KernelIR) -> str:
    text = "u, u_ctx (T, d) with T tokens; parameters in their stored layout (W (out, in))"
    if ir.moe:
        text += "; per-expert patches (T, E, n), masked to zero off each token's top-k experts"
    return text + "."


def _wrapped(text: str, indent: str = "", hanging: str = INDENT) -> str:
    """A docstring paragraph in lines of at most `WIDTH`, continuation lines indented by `hanging`."""
    return textwrap.fill(text, WIDTH, initial_indent=indent, subsequent_indent=indent + hanging,
                         break_long_words=False, break_on_hyphens=False)


def _line_prefix(fn: Function, target: str, given: bool) -> str:
    """What the line of `target` holds before its expression: ``given`` and ``plain`` lines take a ready-made
    product where the caller has one."""
    matrix = fn.given.get(target) if given else None
    if matrix is not None:
        return f'{INDENT}{target} = given["{matrix}"] if "{matrix}" in given else '
    key = fn.plain.get(target)
    if key is not None:
        return f'{INDENT}{target} = plain["{key}"] if "{key}" in plain else '
    return f"{INDENT}{target} = "


def plain_function(apply_fn: Function) -> Function | None:
    """`plain_products`: the statements of `apply` (laid out) that its plain products need, and only those,
    so that each product is computed by the very code `apply` runs without ``plain``. None where there are
    none."""
    if not apply_fn.plain:
        return None
    defs = {a.target: a for a in apply_fn.body}
    need: set[str] = set()

    def visit(name: str) -> None:
        if name in need or name not in defs:
            return
        need.add(name)
        for s in defs[name].expr.free_symbols:
            visit(s.name)

    for target in apply_fn.plain:
        visit(target)
    return Function([a for a in apply_fn.body if a.target in need], set(apply_fn.per_expert), "",
                    {}, dict(apply_fn.plain))


def _laid_out(ir: KernelIR, backend: str) -> KernelIR:
    """`ir` with each function's lines laid out for `backend` (`layout.laid_out`)."""
    def code(expr: sp.Expr, fn: Function) -> str:
        return _printer(backend, fn, ir).doprint(expr)

    fns = {}
    for field in FUNCTIONS:
        fn = getattr(ir, field)
        if fn is not None:
            given = field == "patch_fn"  # `patch_body` reads ``given`` there
            fns[field] = laid_out(fn, code, lambda t, fn=fn, given=given: _line_prefix(fn, t, given))
    return dataclasses.replace(ir, **fns)


def _derivation(spec: BlockSpec, derivation: Derivation | None) -> Derivation:
    from symbolic.controllability import check

    der = derivation or check(spec).derivation
    if der is None:
        raise ValueError(f"{spec.name}: no perfect patch, so there is no kernel to generate "
                         f"(see `ctxpatch check {spec.name}` for the counterexample)")
    return der


def render(spec: BlockSpec, backend: str, derivation: Derivation | None = None) -> str:
    """The source of the `backend` kernel module of `spec` (default derivation unless one is given)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown back end {backend!r}; allowed: {sorted(BACKENDS)}")
    return _Module(build(spec, _derivation(spec, derivation)), backend).source()


class _Module:
    """One kernel module of an IR for one back end: its source, and its code without the block's name."""

    def __init__(self, ir: KernelIR, backend: str):
        self.ir, self.backend = ir, backend
        self.formula_hash = ir.formula_hash  # of the derivation's assignments, before the back end's layout
        self.laid = _laid_out(ir, backend)
        self.plain_fn = plain_function(self.laid.apply_fn)
        self._printed: dict[tuple[int, sp.Expr], str] = {}
        self.imports: set[str] = set()

    def code(self, expr: sp.Expr, fn: Function) -> str:
        key = (id(fn), expr)
        if key not in self._printed:
            printer = _printer(self.backend, fn, self.laid)
            self._printed[key] = printer.doprint(expr)
            self.imports.update(printer.module_imports)
            if self.backend == "numpy":
                self.imports.add("numpy")
        return self._printed[key]

    def source(self, name: str | None = None, spec_hash: str | None = None) -> str:
        """The module under the name `name` (default: the spec's); ``name=""`` gives the code alone, what two
        specs compare to share one module."""
        template = _env().get_template(TEMPLATE)
        context = self._context(self.ir.spec.name if name is None else name,
                                self.ir.spec_hash if spec_hash is None else spec_hash)
        template.render(**context)  # the body first, so that the imports it needs are known
        context["imports"] = sorted(self.imports)
        return template.render(**context)

    def code_key(self) -> str:
        return self.source(name="", spec_hash="")

    def _context(self, name: str, spec_hash: str) -> dict:
        ir, spec = self.laid, self.laid.spec
        return dict(
            ir=ir, name=name, spec_hash=spec_hash, formula_hash=self.formula_hash, backend=self.backend,
            template=TEMPLATE, template_hash=_template_hash(), backend_title=TITLES[self.backend],
            code=self.code, used_params=lambda fn: _used_params(ir, fn),
            one_plus=lambda norm: spec.norms[norm.split(".")[0]].scale == "one_plus",
            docstring=_docstring(ir, name, TITLES[self.backend]),
            inputs=["u", "u_ctx"] + (["x"] if ir.parallel else []), imports=[],
            route_extra="".join(f", {a}" for a in route_args(spec)),
            router_margin=_router_margin(ir) if ir.moe else None,
            literal=literal, call=call, patch_entry=self._patch_entry,
            py=_py, indent=INDENT,
            given_entries=[_py(m) for m in ir.patch_fn.given.values()],
            plain_fn=self.plain_fn,
            plain_entries=[_py(k) for k in ir.apply_fn.plain.values()],
            twin_entries=[f"{_py(m)}: {_py(k)}" for m, k in ir.twins.items()],
            plain_return=[f"{_py(k)}: {v}" for v, k in ir.apply_fn.plain.items()],
            patch_entries=[_py((p.param, p.kind)) for p in ir.patches],
            condition_entries=[_py(c.text) for c in ir.checks],
            reference_entries=[f"{_py(n)}: {ref}" for n, ref in _references(ir)],
            product_entries=[f"{_py(m)}: {v}" for v, m in (ir.products_fn.given.items() if ir.products_fn else ())],
        )

    def _patch_entry(self, p: PatchOut) -> str:
        fields = [f"{_py(f)}: {_out_value(self.laid, p, f, v)}" for f, v in p.fields]
        return literal(fields, "{", "}", 2 * INDENT, lead=f"{_py(p.param)}: ", trail=",")


def _py(value) -> str:
    """A Python literal of a string or a tuple of strings, in double quotes."""
    if isinstance(value, tuple):
        return "(" + ", ".join(map(_py, value)) + ("," if len(value) == 1 else "") + ")"
    return json.dumps(str(value))


def _docstring(ir: KernelIR, name: str, title: str) -> str:
    """The module docstring's body: what the kernels compute, their side conditions, the array shapes."""
    der = ir.derivation
    lines = [f"{title} kernels of the `{name}` block: the context patches derived by ctxpatch.", "",
             f"Patches (input strategy `{der.input_strategy}`, output strategy `{der.output_strategy}`):"]
    lines += [_wrapped(f"{p.param} ({p.kind}): {formula_text(p)}", INDENT, 2 * INDENT) for p in der.patches]
    lines += ["", "Side conditions, checked at every token (a violation raises PatchConditionError naming the token):"]
    lines += [_wrapped(c.text, INDENT) for c in ir.checks] or [f"{INDENT}none"]
    lines += ["", _wrapped("Arrays: " + _shapes_doc(ir), hanging="")]
    return "\n".join(lines)


def kernel_path(root: Path, backend: str, name: str) -> Path:
    return Path(root) / backend / f"{name}.py"


def catalog_sources() -> dict[Path, str]:
    """Every catalog architecture's kernels, rendered in memory: {path: source}. A name whose code is that of
    an earlier name (catalog order) gets an alias module (`alias_source`)."""
    irs = {name: build(spec, _derivation(spec, None)) for name, spec in ((n, catalog.load(n)) for n in catalog.names())}
    out = {}
    for backend in BACKENDS:
        first: dict[str, str] = {}  # the code -> the name whose module holds it
        modules = {}
        for name, ir in irs.items():
            modules[name] = _Module(ir, backend)
            kernel = first.setdefault(modules[name].code_key(), name)
            source = modules[name].source() if kernel == name else alias_source(ir, backend, kernel,
                                                                                 modules[kernel].source())
            out[kernel_path(KERNELS, backend, name)] = source
    return out


def alias_source(ir: KernelIR, backend: str, kernel: str, kernel_source: str) -> str:
    """The module of `ir`'s block as an alias of the module `kernel` (source `kernel_source`) that holds the
    same code: its public names re-exported, its own ``ARCH`` and header."""
    names = sorted((n for n in _public_names(kernel_source) if n != "ARCH"), key=_isort_key)
    return _env().get_template(ALIAS_TEMPLATE).render(
        ir=ir, name=ir.spec.name, kernel=kernel, backend=backend, backend_title=TITLES[backend],
        template=ALIAS_TEMPLATE, template_hash=_template_hash(ALIAS_TEMPLATE), formula_hash=ir.formula_hash,
        names=names, exported=["ARCH", "ALIAS_OF", *names],
        docstring=_docstring(ir, ir.spec.name, TITLES[backend]).split("\n", 1)[1],
        literal=literal, py=_py,
    )


def _public_names(source: str) -> list[str]:
    """The names a module's top level defines (functions and assignments), without the private ones."""
    out = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef):
            out.append(node.name)
        elif isinstance(node, ast.Assign):
            out += [t.id for t in node.targets if isinstance(t, ast.Name)]
    return [n for n in out if not n.startswith("_")]


def _isort_key(name: str) -> tuple[int, str]:
    """isort's order of imported names: constants, classes, then the rest."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


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
