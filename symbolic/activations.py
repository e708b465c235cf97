r"""Elementwise activation functions as SymPy expressions in one variable `x`.

The named ones follow the transformers definitions exactly (`gelu` is the erf form,
`gelu_tanh` is `gelu_new`/`gelu_pytorch_tanh` with the constant 0.044715 kept rational).
A custom activation is any SymPy expression in `x` built from elementary functions.
"""

from __future__ import annotations

from functools import cache

import sympy as sp

x = sp.Symbol("x", real=True)

_SAFE_FUNCTIONS = {
    name: getattr(sp, name)
    for name in ("exp", "log", "tanh", "sinh", "cosh", "sin", "cos", "atan", "erf", "sqrt",
                 "Abs", "Max", "Min", "sign", "pi", "E", "Rational", "Piecewise", "Heaviside")
}
_SAFE_FUNCTIONS["sigmoid"] = lambda v: 1 / (1 + sp.exp(-v))
_SAFE_FUNCTIONS["x"] = x


def named(name: str) -> sp.Expr:
    r"""The activation `name` as an expression in `x`, e.g. SiLU $x\,\sigma(x)$."""
    table = {
        "identity": x,
        "relu": sp.Max(0, x),
        "relu2": sp.Max(0, x) ** 2,
        "gelu": x / 2 * (1 + sp.erf(x / sp.sqrt(2))),
        "gelu_tanh": x / 2 * (1 + sp.tanh(sp.sqrt(2 / sp.pi) * (x + sp.Rational(44715, 10**6) * x**3))),
        "silu": x / (1 + sp.exp(-x)),
        "sigmoid": 1 / (1 + sp.exp(-x)),
        "tanh": sp.tanh(x),
    }
    return table[name]


def parse_custom(text: str) -> sp.Expr:
    """Parse a user's elementwise function of `x`; raise ValueError naming the problem."""
    if "__" in text or "lambda" in text or "import" in text:
        raise ValueError("only arithmetic and elementary functions of x are accepted")
    try:
        expr = sp.sympify(text, locals=dict(_SAFE_FUNCTIONS), rational=True)
    except (sp.SympifyError, SyntaxError, TypeError, AttributeError) as exc:
        raise ValueError(f"it is not a SymPy expression ({type(exc).__name__})") from None
    if not isinstance(expr, sp.Expr):
        raise ValueError("it is not a scalar expression")
    extra = expr.free_symbols - {x}
    if extra:
        raise ValueError(f"it may use only the variable x, but uses {sorted(map(str, extra))}")
    if x not in expr.free_symbols:
        raise ValueError("it does not depend on x (a constant activation forgets its input)")
    for node in sp.preorder_traversal(expr):
        if not node.is_Atom and not isinstance(node, _SAFE_NODES):
            raise ValueError(f"it uses {node.func.__name__}, which ctxpatch can neither differentiate "
                             "reliably nor print into kernels")
    return expr


#: What a custom activation may be built of: arithmetic, the functions of _SAFE_FUNCTIONS, and the
#: pieces of a Piecewise (conditions and their boolean connectives).
_SAFE_NODES = (
    sp.Add, sp.Mul, sp.Pow, sp.exp, sp.log, sp.tanh, sp.sinh, sp.cosh, sp.sin, sp.cos, sp.atan, sp.erf, sp.Abs,
    sp.Max, sp.Min, sp.sign, sp.Piecewise, sp.Heaviside, sp.functions.elementary.piecewise.ExprCondPair,
    sp.core.relational.Relational, sp.And, sp.Or, sp.Not,
)


#: The spec's name of an opaque activation: the MLP module's own map of its pre-activations (`ModuleActivation`).
MODULE = "module"
#: The kernels' run-time parameter that holds it (a callable, in ``params``).
MODULE_PARAM = "activation"


class ModuleActivation(sp.Function):
    r"""$\sigma(q)$ of the MLP module's own activation, a map of the whole pre-activation vector whose formula is
    not known (Gemma 3n's activation sparsity cuts at $\mathrm{mean}(q) + k\,\mathrm{std}(q)$: not elementwise).
    The input strategies need none (the rank-1 patches reproduce $q_C$, so $\sigma(q_C)$ whatever $\sigma$ is);
    the strategies that invert or differentiate $\sigma$ are unavailable with it. Kernels call the module's map,
    ``params[MODULE_PARAM]``."""

    nargs = 1


@cache
def activation(name_or_expr: str) -> sp.Expr:
    """The activation of a spec field: a named one, the module's own (`MODULE`), or a parsed custom expression."""
    if name_or_expr == MODULE:
        return ModuleActivation(x)
    try:
        return named(name_or_expr)
    except KeyError:
        return parse_custom(name_or_expr)


def is_opaque(expr: sp.Expr) -> bool:
    """Whether an activation's expression holds the module's own, formula-less map."""
    return bool(expr.atoms(ModuleActivation))
