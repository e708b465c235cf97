"""Generated kernels: every printed construct, both back ends against the SymPy formulas and each
other, exactness of `apply(block_patches(...))` against the independent reference block, side
conditions as errors, byte-identical regeneration, and kernels a reader can read: activations by
name, temporaries for repetition only, lines within 120 characters, one module per distinct kernel."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
import zlib
from types import ModuleType

import numpy as np
import pytest
import sympy as sp
import torch

from ctxpatch.cli import main
from numeric import kernels
from numeric.check.lambdified import Instance, patched_params
from numeric.check.reference import forward, random_params, small_expert_count
from numeric.kernels import runtime
from symbolic import catalog, codegen
from symbolic.activations import named
from symbolic.activations import x as act_x
from symbolic.algebra import Dot, Mat, MatVec, Mean, Vec
from symbolic.codegen.layout import WIDTH
from symbolic.codegen.lower import build, name_activations
from symbolic.codegen.printers import BACKENDS, Activation, EMatVec, ExpertSum, RouteWeight
from symbolic.errors import PatchConditionError
from symbolic.spec import ACTIVATIONS
from tests.conftest import ROOT, verdict

T, D, M = 6, 5, 7
BACKEND_NAMES = sorted(BACKENDS)


def _seed(*parts: str) -> torch.Generator:
    seed = zlib.crc32("/".join(parts).encode())
    print("seed", seed)
    return torch.Generator().manual_seed(seed)


def _rel(a, b) -> float:
    a, b = (torch.as_tensor(v.copy()) if isinstance(v, np.ndarray) else v for v in (a, b))
    ref = float(torch.linalg.vector_norm(b))
    return float(torch.linalg.vector_norm(a - b)) / (ref if ref > 0 else 1.0)


# --------------------------------------------------------------------------- printed constructs

x, y = sp.symbols("x y", real=True)
SCALAR_CASES = [
    sp.sqrt(2) * x, sp.pi * x + sp.Rational(8943, 200000), sp.erf(x / sp.sqrt(2)), sp.Max(0, x), sp.Min(x, 1),
    sp.Max(x, y, 0), sp.Min(x, y), sp.Abs(x) + sp.sign(y), sp.exp(-x) / (1 + sp.exp(-x)), sp.tanh(x) ** 3,
    1 / (1 + x**2), sp.sqrt(1 + x**2), 1 / sp.sqrt(2 + y**2), sp.Heaviside(x), sp.log(1 + x**2),
    sp.Piecewise((x, x > 0), (x**2, True)), sp.atan(x) * sp.cos(y) + sp.sin(x) * sp.cosh(y) - sp.sinh(x),
]


def _run(backend: str, code: str, printer, env: dict):
    ns = {"runtime": runtime, **env}
    for module in printer.module_imports:
        ns[module.split(".")[0]] = importlib.import_module(module.split(".")[0])
        importlib.import_module(module)
    return eval(code, ns)  # noqa: S307 - the printed expression under test


def _arrays(backend: str, **values: np.ndarray) -> dict:
    return {k: (torch.from_numpy(v) if backend == "torch" else v) for k, v in values.items()}


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("expr", SCALAR_CASES, ids=[str(e)[:40] for e in SCALAR_CASES])
def test_elementwise_construct_matches_evalf(backend, expr):
    rng = np.random.default_rng(zlib.crc32(f"{backend}{expr}".encode()))
    xs, ys = rng.normal(size=5), rng.normal(size=5)
    xs[0] = 0.0 if expr.has(sp.Heaviside) else xs[0]  # Heaviside(0) = 1/2 in SymPy and in both kernels
    printer = BACKENDS[backend]()
    code = printer.doprint(expr)
    got = np.asarray(_run(backend, code, printer, _arrays(backend, x=xs, y=ys)), dtype=float)
    want = np.array([float(expr.subs({x: a, y: b}).evalf(30)) for a, b in zip(xs, ys, strict=True)])
    np.testing.assert_allclose(np.broadcast_to(got, want.shape), want, rtol=1e-13, atol=1e-14, err_msg=code)


def test_known_printer_gaps_are_fixed():
    torch_p, numpy_p = BACKENDS["torch"](), BACKENDS["numpy"]()
    assert "torch.sqrt(2)" not in torch_p.doprint(sp.sqrt(2) * x)
    assert "torch.max(" not in torch_p.doprint(sp.Max(0, x))
    assert "math.erf" not in numpy_p.doprint(sp.erf(x)) and "scipy.special.erf" in numpy_p.doprint(sp.erf(x))
    with pytest.raises(TypeError):  # an outer product must never be printed (no dense patch)
        from symbolic.algebra import Outer

        torch_p.doprint(Outer(Vec("a", "d"), Vec("b", "d")))


# --------------------------------------------------------------------------- named activations

NAMED = [n for n in ACTIVATIONS if name_activations(named(n)) != named(n)]  # the activations printed by name


def test_the_back_ends_own_functions_stay_and_every_other_registry_activation_is_named():
    assert set(NAMED) == set(ACTIVATIONS) - {"identity", "tanh"}  # x and tanh(x) print as themselves
    for name in NAMED:
        assert name_activations(named(name)) == Activation.of(name, act_x)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("name", NAMED)
def test_named_activation_computes_the_registry_formula(backend, name):
    """sigma(g) * up, as a gated MLP has it: recognised exactly, printed as one run-time call, and the call
    computes the registry's expression (large |g| included: the tails of exp, tanh and erf)."""
    g = 2 * x - y
    expr = named(name).subs(act_x, g) * y
    lowered = name_activations(expr)
    assert lowered == Activation.of(name, g) * y
    assert sp.simplify(lowered.replace(lambda e: isinstance(e, Activation), lambda e: e.unfold()) - expr) == 0
    printer = BACKENDS[backend]()
    code = printer.doprint(lowered)
    inline = re.search(r"(exp|tanh|erf|maximum|clamp)\(|0\.5", code.replace(f"runtime.{name}(", "("))
    assert f"runtime.{name}(" in code and not inline, code
    rng = np.random.default_rng(zlib.crc32(f"{backend}{name}".encode()))
    xs, ys = rng.normal(size=8), rng.normal(size=8)
    xs[:2] = [-20.0, 15.0]
    got = np.asarray(_run(backend, code, printer, _arrays(backend, x=xs, y=ys)), dtype=float)
    want = np.array([float(expr.subs({x: a, y: b}).evalf(30)) for a, b in zip(xs, ys, strict=True)])
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14, err_msg=code)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_custom_activation_stays_an_expression_with_registry_pieces_named(backend):
    """gpt-oss's clamped GLU gate x*sigmoid(1.702 x) is no silu (another constant): a sigmoid times x; mish has no
    registry piece and prints as it is written."""
    from symbolic.activations import parse_custom

    glu = parse_custom("Min(x, 7) * sigmoid(1.702 * Min(x, 7))")
    mish = parse_custom("x * tanh(log(1 + exp(x)))")
    printer = BACKENDS[backend]()
    assert "runtime.sigmoid(" in printer.doprint(name_activations(glu))
    assert "runtime.silu(" not in printer.doprint(name_activations(glu))
    assert name_activations(mish) == mish and "runtime" not in printer.doprint(mish)
    xs = np.random.default_rng(3).normal(size=6) * 5
    for expr in (glu, mish):
        lowered = name_activations(expr)
        code = printer.doprint(lowered)
        got = np.asarray(_run(backend, code, printer, _arrays(backend, x=xs)), dtype=float)
        want = np.array([float(expr.subs(x, a).evalf(30)) for a in xs])
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14, err_msg=code)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_vector_constructs_match_numpy_reference(backend):
    rng = np.random.default_rng(7)
    W, E = rng.normal(size=(4, 3)), rng.normal(size=(5, 4, 3))
    z, v = rng.normal(size=(T, 3)), rng.normal(size=(T, 3))
    zz, ee = rng.normal(size=(T, 1, 3)), rng.normal(size=(T, 5, 3))
    ell = rng.normal(size=(T, 1, 5))
    Wm, z_, v_ = Mat("W", "m", "d"), Vec("z", "d"), Vec("v", "d")
    env = _arrays(backend, W=W, E=E, z=z, v=v, zz=zz, ee=ee, ell=ell)
    e_pred = {"ee"}
    cases = {
        MatVec(Wm, z_): z @ W.T,
        Dot(z_, v_) * z_: (z * v).sum(-1, keepdims=True) * z,
        Mean(z_**2): (z**2).mean(-1, keepdims=True),
        EMatVec(Mat("E", "m", "d"), Vec("zz", "d")): np.einsum("eoi,ti->teo", E, zz[:, 0]),
        EMatVec(Mat("E", "m", "d"), Vec("ee", "d")): np.einsum("eoi,tei->teo", E, ee),
        ExpertSum(Vec("ee", "d")): ee.sum(1, keepdims=True),
    }
    from symbolic.codegen.lower import depends_on

    for expr, want in cases.items():
        printer = BACKENDS[backend](per_expert=lambda e: depends_on(e, e_pred))
        got = _run(backend, printer.doprint(expr), printer, env)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-13, err_msg=str(expr))
    # Routing: softmax over all experts, kept on the top-2 (ties: lower index), zero elsewhere.
    printer = BACKENDS[backend]()
    routing = {"TOP_K": 2, "ROUTING": runtime.Routing()}
    got = np.asarray(_run(backend, printer.doprint(RouteWeight(Vec("ell", "n_E"))), printer, {**env, **routing}))
    p = np.exp(ell[:, 0]) / np.exp(ell[:, 0]).sum(-1, keepdims=True)
    top = np.argsort(-ell[:, 0], axis=-1, kind="stable")[:, :2]
    want = np.zeros_like(p)
    np.put_along_axis(want, top, np.take_along_axis(p, top, -1), -1)
    np.testing.assert_allclose(got[..., 0], want, rtol=1e-13)
    # Sigmoid scores, the choice by score + selection bias, the weight the uncorrected score.
    b = rng.normal(size=5)
    routing = {"TOP_K": 2, "ROUTING": runtime.Routing(scoring="sigmoid"), **_arrays(backend, b=b)}
    code = printer.doprint(RouteWeight(Vec("ell", "n_E"), Vec("b", "n_E")))
    assert code.endswith("(ell, TOP_K, ROUTING, b)")
    got = np.asarray(_run(backend, code, printer, {**env, **routing}))
    s = 1 / (1 + np.exp(-ell[:, 0]))
    top = np.argsort(-(s + b), axis=-1, kind="stable")[:, :2]
    want = np.zeros_like(s)
    np.put_along_axis(want, top, np.take_along_axis(s, top, -1), -1)
    np.testing.assert_allclose(got[..., 0], want, rtol=1e-13)


# --------------------------------------------------------------------------- the catalog kernels


def _instance(spec, gen):
    u, u_ctx = torch.randn(T, D, generator=gen, dtype=torch.float64), torch.randn(T, D, generator=gen,
                                                                                  dtype=torch.float64)
    extra = {"x": torch.randn(T, D, generator=gen, dtype=torch.float64)} if spec.residual == "parallel" else {}
    return u, u_ctx, extra


def _reference_runs(spec, params, u, u_ctx, extra):
    mlp_in = extra.get("x", u)
    mlp_in_C = extra.get("x", u_ctx)
    return forward(spec, params, mlp_in_C, u_ctx).y, forward(spec, params, mlp_in, u).y


def _to(backend, value):
    if isinstance(value, dict):
        return {k: _to(backend, v) for k, v in value.items()}
    return value.numpy() if backend == "numpy" else value


def _params(spec, gen):
    n_exp = small_expert_count(spec) if spec.moe else None
    return random_params(spec, D, M, gen, n_experts=n_exp)


@pytest.mark.parametrize("arch", catalog.names())
def test_kernels_reproduce_the_contextual_block_and_agree(arch):
    spec = catalog.load(arch)
    gen = _seed("kernel", arch)
    params = _params(spec, gen)
    u, u_ctx, extra = _instance(spec, gen)
    y_C, y_0 = _reference_runs(spec, params, u, u_ctx, extra)
    outs = {}
    for backend in BACKEND_NAMES:
        k = kernels.load(arch, backend)
        p, a = _to(backend, params), _to(backend, {"u": u, "u_ctx": u_ctx, **extra})
        patches = k.block_patches(p, **a)
        y = k.apply(p, patches, a["u"], **({"x": a["x"]} if "x" in a else {}))
        y_plain = k.forward(p, a["u"], **({"x": a["x"]} if "x" in a else {}))
        assert _rel(y, y_C) <= 1e-10, (backend, _rel(y, y_C))
        assert _rel(y_plain, y_0) <= 1e-12, backend
        _plain_agrees(k, spec, p, a, patches, y)
        _given_agrees(k, spec, p, a, patches)
        assert _rel(y_0, y_C) > 1e-2  # the patch matters
        outs[backend] = patches
    for name, fields in outs["torch"].items():  # the two back ends agree field by field
        for f, value in fields.items():
            assert _rel(outs["numpy"][name][f], value) <= 1e-12, (name, f)


def _plain_agrees(k, spec, p, a, patches, y):
    """`plain_products` computes exactly the products `PLAIN` names, by `apply`'s own statements: `apply` given
    them returns the same bits as without; `block_patches` given them the same patches (to the last places: its
    own z may round otherwise); a plain product given is really used (a changed one changes the output)."""
    x = {"x": a["x"]} if "x" in a else {}
    if not k.PLAIN:
        assert not hasattr(k, "plain_products")
        return
    plain = k.plain_products(p, a["u"], **x)
    assert tuple(plain) == k.PLAIN
    same = k.apply(p, patches, a["u"], **x, plain=plain)
    assert (same == y).all()  # bit for bit
    taken = k.block_patches(p, **a, plain=plain)
    for name, fields in patches.items():
        for f, value in fields.items():
            assert _rel(taken[name][f], value) <= 1e-14, (name, f)
    for key in plain:
        shifted = plain[key] * (1 + 1e-3 * plain[key])
        assert _rel(k.apply(p, patches, a["u"], **x, plain={key: shifted}), y) > 1e-8, key
    if k.TWINS:  # a contextual product's twin: the same product, of u instead of u_C
        at_u = k.products(p, a["u"])
        assert set(k.TWINS) <= set(at_u) and set(k.TWINS.values()) <= set(plain)
        for matrix, key in k.TWINS.items():
            assert _rel(at_u[matrix], plain[key]) <= 1e-14, matrix


def _products(k, p, a) -> dict:
    return k.products(p, a["u_ctx"]) if k.GIVEN else {}


def _given_agrees(k, spec, p, a, patches):
    """The contextual products `GIVEN` names: `products` computes exactly them from u_ctx alone, the patches are
    the same when they are given ready-made, and a given one is really used (a changed product, given alone,
    changes a patch).
    None in a mixture of experts or a parallel block (whose MLP input does not see the context)."""
    if spec.moe is not None or spec.residual == "parallel":
        assert k.GIVEN == () and not hasattr(k, "products")
        return
    given = _products(k, p, a)
    assert tuple(given) == k.GIVEN
    for fn in [k.block_patches]:
        same = fn(p, **a, given=given)
        for name, fields in patches.items():
            for f, value in fields.items():
                assert _rel(same[name][f], value) <= 1e-14, (name, f)
        for key in given:
            shifted = given[key] * (1 + 1e-3 * given[key])  # not a scaling or a shift, which a norm undoes
            moved = fn(p, **a, given={key: shifted})  # alone: the others computed from it
            assert max(_rel(moved[n][f], v) for n, fs in patches.items() for f, v in fs.items()) > 1e-6, key


@pytest.mark.parametrize("arch", catalog.names())
def test_kernel_patches_equal_the_sympy_formulas(arch):
    """Token by token, the dense patched parameters from the kernel equal the lambdified derivation's."""
    spec = catalog.load(arch)
    der = verdict(arch).derivation
    gen = _seed("formula", arch)
    params = _params(spec, gen)
    u, u_ctx, extra = _instance(spec, gen)
    for backend in BACKEND_NAMES:
        k = kernels.load(arch, backend)
        p, a = _to(backend, params), _to(backend, {"u": u, "u_ctx": u_ctx, **extra})
        patches = k.block_patches(p, **a)
        for j in (0, T - 1):
            x = extra.get("x")
            inst = Instance(u[j:j + 1] if x is None else x[j:j + 1], u[j:j + 1],
                            u_ctx[j:j + 1] if x is None else x[j:j + 1], u_ctx[j:j + 1])
            want = patched_params(spec, der, params, inst)
            got = k.materialize(p, patches, j)
            for name, _ in k.PATCHES:
                assert _rel(got[name], want[name]) <= 1e-12, (backend, name, j)


def test_kernel_header_and_constants():
    text = (codegen.KERNELS / "torch" / "gemma3.py").read_text()
    assert text.startswith("# Generated by `ctxpatch codegen` -- do not edit")
    assert "spec: gemma3 (sha256 " in text and "formulas: sha256 " in text
    k = kernels.load("gemma3", "torch")
    assert k.PATCHES == (("W_gate", "rank1"), ("W_up", "rank1"), ("mlp_post_norm.scale", "vector"))
    assert k.CONDITIONS == tuple(c.text() for c in verdict("gemma3").derivation.conditions)
    assert k.epsilon_post == catalog.load("gemma3").norms["mlp_post_norm"].eps
    for c in k.CONDITIONS:  # the docstring states the formulas and their side conditions
        assert f"\n    {c}\n" in k.__doc__
    assert "mlp_post_norm.scale (vector): delta/f_C" in k.__doc__


# --------------------------------------------------------------------------- kernels a reader can read


def _kernel_files() -> list:
    return sorted(p for p in codegen.KERNELS.glob("*/*.py") if p.name != "__init__.py")


def _code_of(backend: str, name: str) -> str:
    """The source that holds `name`'s kernel: its module, or the module its alias re-exports."""
    module = importlib.import_module(f"numeric.kernels.{backend}.{name}")
    return codegen.kernel_path(codegen.KERNELS, backend, getattr(module, "ALIAS_OF", name)).read_text()


def _neutral(source: str, name: str) -> str:
    """A kernel's source without what names its block (the spec line of the header, ARCH, the title)."""
    lines = source.splitlines()
    return "\n".join(lines[:1] + lines[2:]).replace(f"`{name}`", "`?`").replace(f'ARCH = "{name}"', "ARCH = ?")


def test_generated_lines_fit_and_carry_no_noqa():
    files = _kernel_files()
    assert len(files) == 2 * len(catalog.names())
    for path in files:
        text = path.read_text()
        assert "noqa" not in text, path
        long = [n for n, line in enumerate(text.splitlines(), 1) if len(line) > WIDTH]
        assert not long, f"{path}: lines {long} over {WIDTH} characters"


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_kernels_call_their_activations_by_name(backend):
    for arch in catalog.names():
        mlp = catalog.load(arch).mlp
        code = _code_of(backend, arch)
        for name in {mlp.activation, mlp.up_activation, mlp.out_activation} & set(NAMED):
            assert f"runtime.{name}(" in code, (arch, name)
        assert not re.search(r"0\.044715|1\.4142135623730951|0\.7071067811865476|\.exp\(-", code), arch


def _functions(source: str):
    return [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)]


def test_temporaries_are_numbered_in_the_order_they_are_assigned():
    for path in _kernel_files():
        for fn in _functions(path.read_text()):
            temps = [t.id for node in fn.body if isinstance(node, ast.Assign) for t in node.targets
                     if isinstance(t, ast.Name) and re.fullmatch(r"t\d+", t.id)]
            assert temps == [f"t{i}" for i in range(len(temps))], (path.name, fn.name, temps)


@pytest.mark.parametrize("arch", catalog.names())
def test_common_subexpressions_stand_for_real_repetition(arch):
    """Before the layout splits long lines, every temporary of every function is used more than once."""
    ir = build(catalog.load(arch), verdict(arch).derivation)
    for fn in (ir.patch_fn, ir.apply_fn, ir.forward_fn, ir.products_fn):
        for a in fn.body if fn else ():
            if re.fullmatch(r"t\d+", a.target):
                uses = sum(b.expr.count(sp.Symbol(a.target)) for b in fn.body)
                assert uses >= 2, (arch, a.target, a.expr)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_one_module_per_distinct_kernel_and_every_name_resolves(backend):
    """A catalog name whose kernel is an earlier name's is a thin alias of it (no code of its own, the very same
    functions, its own ARCH); no two modules that hold code hold the same code; `load` and `import_module` give
    the module of every name."""
    names = catalog.names()
    held: dict[str, str] = {}
    for name in names:
        module = importlib.import_module(f"numeric.kernels.{backend}.{name}")
        assert kernels.load(name, backend) is module and module.ARCH == name
        source = codegen.kernel_path(codegen.KERNELS, backend, name).read_text()
        kernel = getattr(module, "ALIAS_OF", None)
        if kernel is None:
            body = _neutral(source, name)
            assert body not in held, f"{name} repeats the code of {held.get(body)}"
            held[body] = name
            continue
        target = importlib.import_module(f"numeric.kernels.{backend}.{kernel}")
        assert not hasattr(target, "ALIAS_OF") and names.index(kernel) < names.index(name)
        assert _functions(source) == []
        public = {n for n, v in vars(target).items() if not n.startswith("_") and not isinstance(v, ModuleType)}
        assert public - {"ARCH", "annotations"} <= set(module.__all__)
        for n in set(module.__all__) - {"ARCH", "ALIAS_OF"}:
            assert getattr(module, n) is getattr(target, n), (name, n)
        own, theirs = (codegen.render(catalog.load(n), backend) for n in (name, kernel))
        assert _neutral(own, name) == _neutral(theirs, kernel), f"{name} is no alias of {kernel}"
    assert len(held) < len(names)  # the catalog has blocks with the same kernel (llama, mistral, ...)


# --------------------------------------------------------------------------- side conditions


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_zero_input_names_the_token_and_condition(backend):
    spec = catalog.load("llama")
    gen = _seed("zero", backend)
    params = _to(backend, _params(spec, gen))
    u, u_ctx, _ = _instance(spec, gen)
    u[3] = 0.0  # z = RMSNorm(0) = 0: the rank-1 input patch divides by z^T z
    k = kernels.load("llama", backend)
    with pytest.raises(PatchConditionError) as exc:
        k.block_patches(params, _to(backend, u), _to(backend, u_ctx), layer="5")
    assert exc.value.tokens == [3] and exc.value.condition == "z != 0" and "layer 5, token 3" in str(exc.value)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_non_finite_input_is_an_error_not_a_nan(backend):
    spec = catalog.load("gemma3")
    gen = _seed("nan", backend)
    params = _to(backend, _params(spec, gen))
    u, u_ctx, _ = _instance(spec, gen)
    u_ctx[2, 1] = float("inf")
    with pytest.raises(PatchConditionError) as exc:
        kernels.load("gemma3", backend).block_patches(params, _to(backend, u), _to(backend, u_ctx))
    assert exc.value.tokens == [2] and "u_ctx" in exc.value.condition


def test_zero_post_norm_coordinate_violates_the_elementwise_condition():
    """f_C_i = 0 makes the paper's Delta w = delta / f_C undefined: the kernel says which token."""
    spec = catalog.load("gemma3")
    gen = _seed("coords")
    params = _params(spec, gen)
    params["W_down"][2] = 0.0  # h_C[2] = 0 for every token, so f_C[2] = 0
    u, u_ctx, _ = _instance(spec, gen)
    with pytest.raises(PatchConditionError) as exc:
        kernels.load("gemma3", "torch").block_patches(params, u, u_ctx)
    assert exc.value.tokens == list(range(T)) and "f_C" in exc.value.condition


def test_moe_patches_vanish_off_the_top_k():
    spec = catalog.load("mixtral")
    gen = _seed("moe-mask")
    params = _params(spec, gen)
    u, u_ctx, _ = _instance(spec, gen)
    patches = kernels.load("mixtral", "torch").block_patches(params, u, u_ctx)
    left = patches["experts.W_down"]["left"]  # (T, E, d)
    active = (left.abs().sum(-1) > 0).sum(-1)
    assert left.shape == (T, spec.moe.top_k + 2, D) and torch.all(active == spec.moe.top_k)


# --------------------------------------------------------------------------- determinism, staleness, user specs


def test_regeneration_is_byte_identical_and_committed_kernels_are_fresh():
    first, second = codegen.catalog_sources(), codegen.catalog_sources()
    assert first == second
    assert codegen.stale(first) == []
    assert main(["codegen", "--check"]) == 0


def test_check_reports_a_stale_kernel(tmp_path, capsys):
    assert main(["codegen", "-o", str(tmp_path)]) == 0
    target = tmp_path / "torch" / "gemma3.py"
    target.write_text(target.read_text().replace("delta/f_C", "delta*f_C"))
    assert main(["codegen", "-o", str(tmp_path), "--check"]) == 1
    assert "torch/gemma3.py" in capsys.readouterr().err
    (tmp_path / "numpy" / "llama.py").unlink()
    assert main(["codegen", "-o", str(tmp_path), "--check", "--json"]) == 1


def test_check_reports_a_stale_or_missing_alias(tmp_path, capsys):
    assert main(["codegen", "-o", str(tmp_path)]) == 0
    alias = next(p for p in sorted((tmp_path / "torch").glob("*.py")) if "ALIAS_OF = " in p.read_text())
    text = alias.read_text()
    kernel = re.search(r'ALIAS_OF = "(\w+)"', text).group(1)
    other = next(n for n in catalog.names() if n not in (kernel, alias.stem))
    alias.write_text(text.replace(f"torch.{kernel} import", f"torch.{other} import"))  # re-exports another block
    assert main(["codegen", "-o", str(tmp_path), "--check"]) == 1
    assert alias.name in capsys.readouterr().err
    alias.write_text(codegen.render(catalog.load(alias.stem), "torch"))  # a full module where an alias belongs
    assert main(["codegen", "-o", str(tmp_path), "--check"]) == 1
    alias.unlink()
    assert main(["codegen", "-o", str(tmp_path), "--check"]) == 1
    assert main(["codegen", "-o", str(tmp_path)]) == 0 and alias.read_text() == text


def test_user_spec_renders_importable_ruff_clean_kernels(tmp_path):
    text = catalog.text("olmo2").replace('name = "olmo2"', 'name = "my_block"')
    spec_file = tmp_path / "my_block.toml"
    spec_file.write_text(text)
    out = tmp_path / "out"
    assert main(["codegen", "--spec", str(spec_file), "-o", str(out), "--strategy", "down_rank1_norm_scalar"]) == 0
    files = sorted(out.rglob("my_block.py"))
    assert [f.parent.name for f in files] == ["numpy", "torch"]
    # Linted as the project lints its own kernels: `numeric` first-party, `numpy`/`torch` the libraries (not the
    # output folders of the same names, which isort would otherwise take for the kernels' own package).
    isort = ["lint.isort.known-first-party = ['numeric']", "lint.isort.detect-same-package = false"]
    config = [a for c in isort for a in ("--config", c)]
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *config, str(out)], capture_output=True,
                          text=True, cwd=ROOT)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    spec_ = importlib.util.spec_from_file_location("my_block", out / "torch" / "my_block.py")
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    assert mod.OUTPUT_STRATEGY == "down_rank1_norm_scalar"
    s = catalog.resolve(str(spec_file))
    gen = _seed("user")
    params = _params(s, gen)
    u, u_ctx, _ = _instance(s, gen)
    y_C, _ = _reference_runs(s, params, u, u_ctx, {})
    assert _rel(mod.apply(params, mod.block_patches(params, u, u_ctx), u), y_C) <= 1e-10


def test_codegen_bad_inputs_exit_2(tmp_path, capsys):
    assert main(["codegen", "--strategy", "stable"]) == 2
    bad = tmp_path / "b.toml"
    bad.write_text(catalog.text("llama").replace('name = "llama"', 'name = "my-block"'))
    assert main(["codegen", "--spec", str(bad), "-o", str(tmp_path)]) == 2
    assert "names the generated kernel module" in capsys.readouterr().err
    negative = ROOT / "examples" / "tanh_output.toml"
    assert main(["codegen", "--spec", str(negative), "-o", str(tmp_path)]) == 1
    assert "no perfect patch" in capsys.readouterr().err


# --------------------------------------------------------------------------- every strategy, rendered in memory


def _strategy_pairs():
    for arch in catalog.names():
        v = verdict(arch)
        for ins in v.input.ok:
            for outs in v.output.ok:
                if (ins, outs) != (v.input_strategy, v.output_strategy):
                    yield arch, ins, outs


@pytest.mark.parametrize(("arch", "ins", "outs"), list(_strategy_pairs()))
def test_every_offered_strategy_has_an_exact_kernel(arch, ins, outs):
    spec = catalog.load(arch)
    gen = _seed("strategy", arch, ins, outs)
    params = _params(spec, gen)
    u, u_ctx, extra = _instance(spec, gen)
    y_C, _ = _reference_runs(spec, params, u, u_ctx, extra)
    ys = {}
    for backend in BACKEND_NAMES:
        k = kernels.load(arch, backend, strategy=outs, input_strategy=ins)
        assert (k.INPUT_STRATEGY, k.OUTPUT_STRATEGY) == (ins, outs)
        p, a = _to(backend, params), _to(backend, {"u": u, "u_ctx": u_ctx, **extra})
        patches = k.block_patches(p, **a)
        ys[backend] = k.apply(p, patches, a["u"], **({"x": a["x"]} if "x" in a else {}))
        assert _rel(ys[backend], y_C) <= 1e-10, backend
        _plain_agrees(k, spec, p, a, patches, ys[backend])
        _given_agrees(k, spec, p, a, patches)
        default = kernels.load(arch, backend)  # a product has one meaning whatever the strategy (numeric.hf
        for name, value in _products(k, p, a).items():  # gives every candidate the products of the default's)
            if name in default.GIVEN:
                assert _rel(value, _products(default, p, a)[name]) <= 1e-14, (backend, name)
    assert _rel(ys["numpy"], ys["torch"]) <= 1e-12


# --------------------------------------------------------------------------- run-time helpers


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_rms_inverse_is_feasible_and_optimal(backend):
    gen = _seed("rmsinv", backend)
    t, g = torch.randn(50, 8, generator=gen, dtype=torch.float64), torch.randn(8, generator=gen, dtype=torch.float64)
    t[0] = g * 0.3  # a target inside the RMSNorm range
    t[1, g.abs().argmin()] = 0.0
    t[1] *= 1e-3  # the paper's hard case: no pull on the minimal coordinate, tiny elsewhere
    y = torch.as_tensor(runtime.rms_inverse(*(_to(backend, v) for v in (t, g))))
    assert torch.allclose((y**2).mean(-1), torch.ones(50, dtype=torch.float64), atol=1e-12)
    best = ((g * y - t) ** 2).sum(-1)
    for _ in range(200):  # no random feasible point does better
        r = torch.randn(50, 8, generator=gen, dtype=torch.float64)
        r = r / (r**2).mean(-1, keepdim=True).sqrt()
        assert torch.all(((g * r - t) ** 2).sum(-1) >= best - 1e-9)


def test_readme_kernel_excerpt_is_the_generated_code():
    readme = (ROOT / "docs" / "reference" / "kernels.md").read_text()
    excerpt = readme.split("The generated gemma3 kernel")[1].split("```python")[1].split("```")[0]
    kernel = _code_of("torch", "gemma3")
    lines = [ln for ln in excerpt.splitlines() if ln.strip() and "..." not in ln]
    assert len(lines) > 15
    for line in lines:
        assert line in kernel, line
    shared = readme.split("Blocks that derive the same kernel share one module:")[1].split("\n\n")[0]
    aliases = {}
    for name in catalog.names():
        kernel = getattr(importlib.import_module(f"numeric.kernels.torch.{name}"), "ALIAS_OF", None)
        if kernel is not None:
            aliases[name] = kernel
    assert set(re.findall(r"`(\w+)\.py`", shared)) == set(aliases) | set(aliases.values())  # the aliases there are


def test_rendering_does_not_depend_on_the_hash_seed():
    """Set iteration order changes with PYTHONHASHSEED; the generated bytes must not."""
    import os

    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    run = subprocess.run([sys.executable, "-m", "ctxpatch.cli", "codegen", "--check"], capture_output=True,
                         text=True, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr
