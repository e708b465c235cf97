"""The layering of the pipeline, read from the source (every import, also those inside functions).

spec -> symbolic -> codegen/kernels -> numeric -> ctxpatch (the face): `symbolic` imports neither torch
nor `numeric` nor the face; `numeric` does not import the face; inside `numeric` the rooms follow the
pipeline, kernels -> check (random instances) -> hf (Hugging Face models), and no module imports its own
package's face (``numeric.hf``'s re-exports are for users); no import cycle anywhere; no module imports
another module's private name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ctxpatch", "symbolic", "numeric")
FORBIDDEN = {
    "symbolic": ("torch", "numeric", "ctxpatch", "transformers", "numpy"),
    "numeric": ("ctxpatch",),
    "numeric.kernels": ("numeric.check", "numeric.hf"),
    "numeric.check": ("numeric.hf",),
}


def within(name: str, room: str) -> bool:
    """Whether a dotted module name is the room or inside it."""
    return name == room or name.startswith(room + ".")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports(path: Path, known: dict[str, Path]) -> list[tuple[str, tuple[str, ...], int]]:
    """(imported module, names taken from it, line) for every import statement in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, (), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = tuple(a.name for a in node.names)
            subs = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in known]
            out += [(s, (), node.lineno) for s in subs]
            rest = tuple(n for n in names if f"{node.module}.{n}" not in known)
            if rest or not subs:
                out.append((node.module, rest, node.lineno))
    return out


MODULES = project_modules()
GRAPH = {m: {t for t, _, _ in imports(p, MODULES) if t in MODULES and t != m} for m, p in MODULES.items()}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downwards(layer):
    bad = [f"{m}:{line} imports {target}" for m, p in MODULES.items() if within(m, layer)
           for target, _, line in imports(p, MODULES) if any(within(target, f) for f in FORBIDDEN[layer])]
    assert not bad, "\n".join(bad)


def test_the_rooms_of_numeric_are_packages_the_rule_knows():
    """Every subpackage of `numeric` is a room with its place in the order above (a new room needs one)."""
    rooms = {m for m, p in MODULES.items()
             if m.count(".") == 1 and m.startswith("numeric.") and p.name == "__init__.py"}
    assert rooms == {"numeric.kernels", "numeric.check", "numeric.hf"}


def test_no_module_of_a_room_imports_the_rooms_face():
    """A room's ``__init__`` re-exports for users (`numeric.hf.absorb_context`); its own modules import each other."""
    rooms = [m for m, p in MODULES.items() if p.name == "__init__.py" and within(m, "numeric") and m != "numeric"]
    bad = [f"{m}:{line} imports {target}" for m, p in MODULES.items() for target, _, line in imports(p, MODULES)
           if target in rooms and target != m and within(m, target)]
    assert not bad, "\n".join(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# Deliberate exceptions, each with its reason.
PRIVATE_ALLOWED = {
    # An attack that reaches into the proof kernel's private token, as a hostile proof script could, to show
    # that a result the kernel did not issue is refused all the same (it is not in the kernel's registry).
    ("tests/test_kernel_attacks.py", "symbolic.proof", "_TOKEN"),
}


def test_no_private_names_cross_modules():
    files = [*MODULES.values(), *(p for d in ("tests", "proofs", "benchmarks") for p in (ROOT / d).rglob("*.py"))]
    bad = [f"{f.relative_to(ROOT)}:{line} imports {n} from {target}" for f in files
           for target, names, line in imports(f, MODULES) if target in MODULES
           for n in names if n.startswith("_") and not n.startswith("__")
           and (str(f.relative_to(ROOT)), target, n) not in PRIVATE_ALLOWED]
    assert not bad, "\n".join(bad)


def test_import_ctxpatch_is_light_and_complete():
    import subprocess
    import sys

    code = ("import sys, ctxpatch; assert 'torch' not in sys.modules, 'import ctxpatch loaded torch'; "
            "from ctxpatch import (check, derive, prove, codegen, validate, absorb_context, "
            "generate_without_context, report, PatchSet, load_spec)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
