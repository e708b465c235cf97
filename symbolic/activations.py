r"""Elementwise activation functions as SymPy expressions in one variable `x`.

The named ones follow the transformers definitions exactly (`gelu` is the erf form,
`gelu_tanh` is `gelu_new`/`gelu_pytorch_tanh` with the constant 0.044715 kept rational).
A custom activation is a SymPy expression in `x` built from elementary functions (`parse_custom`), real and
finite on the reals it is probed at, within the size budget of `symbolic.limits`.
"""

from __future__ import annotations

import ast
import math
import operator
from functools import cache

import sympy as sp

from symbolic import limits
from symbolic.limits import shown

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
    r"""Parse a user's elementwise function of `x`: a real function $\mathbb{R} \to \mathbb{R}$ built from
    arithmetic and the functions of `_SAFE_FUNCTIONS`, within the budget of `symbolic.limits`.

    The text is read as a Python expression first (`ast`, nothing evaluated) and checked: its length, names,
    numbers, exponents, size and depth; only then does SymPy evaluate it. The result must be real and finite
    (float64) on a grid of x in [-PROBE_X, PROBE_X]: no complex or infinite constant (``I``, ``zoo``, ``oo``,
    ``nan``), no overflow (``exp(exp(exp(x)))``), no pole or branch cut on the grid (``1/x``, ``log(x)``).
    Raises ValueError naming the problem and what is allowed.
    """
    _Budget(text).check()
    try:
        expr = sp.sympify(text.strip(), locals=dict(_SAFE_FUNCTIONS), rational=True)
    except (sp.SympifyError, SyntaxError, TypeError, AttributeError, ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"SymPy cannot build it ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(expr, sp.Expr):
        raise ValueError("it is not a scalar expression (a condition belongs inside a Piecewise)")
    bad = sorted({str(a) for a in expr.atoms(*_NOT_REAL)})
    if bad:
        raise ValueError(f"it evaluates to {shown(str(expr))}, which holds {', '.join(bad)}: complex and infinite "
                         "constants (I, zoo, oo, nan) have no place in a real activation")
    extra = expr.free_symbols - {x}
    if extra:
        raise ValueError(f"it may use only the variable x, but uses {sorted(map(str, extra))}")
    if x not in expr.free_symbols:
        raise ValueError("it does not depend on x (a constant activation forgets its input)")
    for node in sp.preorder_traversal(expr):
        if not node.is_Atom and not isinstance(node, _SAFE_NODES):
            raise ValueError(f"it uses {node.func.__name__}, which ctxpatch can neither differentiate "
                             "reliably nor print into kernels")
    _probe(expr)
    _probe_as_written(text)
    return expr


#: What a custom activation may be built of: arithmetic, the functions of _SAFE_FUNCTIONS, and the
#: pieces of a Piecewise (conditions and their boolean connectives).
_SAFE_NODES = (
    sp.Add, sp.Mul, sp.Pow, sp.exp, sp.log, sp.tanh, sp.sinh, sp.cosh, sp.sin, sp.cos, sp.atan, sp.erf, sp.Abs,
    sp.Max, sp.Min, sp.sign, sp.Piecewise, sp.Heaviside, sp.functions.elementary.piecewise.ExprCondPair,
    sp.core.relational.Relational, sp.And, sp.Or, sp.Not,
)
_NOT_REAL = (sp.core.numbers.ImaginaryUnit, sp.core.numbers.ComplexInfinity, sp.core.numbers.NaN,
             sp.core.numbers.Infinity, sp.core.numbers.NegativeInfinity)
#: Names a custom activation may use as values (the functions of _SAFE_FUNCTIONS are called, never passed).
_VALUES = ("x", "pi", "E")
_CONSTANT_NAMES = {"I": "the imaginary unit", "zoo": "complex infinity", "oo": "infinity", "nan": "not a number",
                   "j": "the imaginary unit"}
_OPERATORS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.BitXor: "^ (a power)",
              ast.BitAnd: "& (and, in a condition)", ast.BitOr: "| (or, in a condition)"}
_CHAINS = {ast.Add: "sum", ast.Sub: "sum", ast.Mult: "product", ast.Div: "product", ast.BitAnd: "and",
           ast.BitOr: "or"}
_UNARY = (ast.USub, ast.UAdd, ast.Invert)
_COMPARISONS = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_ALLOWED_TEXT = ("An activation is built with + - * / ** and the functions "
                 + ", ".join(sorted(set(_SAFE_FUNCTIONS) - set(_VALUES)))
                 + " of x, pi and E, with conditions (< <= > >= & | ~) inside Piecewise")


class _Budget:
    """The parse-time budget of a custom activation, checked on its Python syntax tree before SymPy sees it:
    length, names, numbers, the degree of nested powers, node count and depth (`symbolic.limits`)."""

    def __init__(self, text: str):
        self.text, self.nodes = text, 0

    def check(self) -> None:
        if len(self.text) > limits.EXPR_CHARS:
            raise ValueError(f"it has {len(self.text)} characters; at most {limits.EXPR_CHARS} are allowed")
        try:
            tree = ast.parse(self.text.strip(), mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            why = exc.msg if isinstance(exc, SyntaxError) else type(exc).__name__
            raise ValueError(f"it is not an arithmetic expression ({why}). {_ALLOWED_TEXT}") from None
        self.walk(tree.body, 1, 1)

    def walk(self, node: ast.AST, depth: int, degree: float) -> None:
        """Check ``node`` at ``depth``, inside powers whose numeric exponents multiply to ``degree``."""
        self.nodes += 1
        if self.nodes > limits.EXPR_NODES:
            raise ValueError(f"it has more than {limits.EXPR_NODES} nodes (operators, calls, names, numbers); at "
                             f"most {limits.EXPR_NODES} are allowed")
        if depth > limits.EXPR_DEPTH:
            raise ValueError(f"it nests deeper than {limits.EXPR_DEPTH} levels (calls and operators inside one "
                             f"another); at most {limits.EXPR_DEPTH} are allowed")
        match node:
            case ast.BinOp(left=base, op=ast.Pow() | ast.BitXor(), right=exponent):
                degree = self.power(exponent, degree)
                self.walk(base, depth + 1, degree)
                self.walk(exponent, depth + 1, degree)
            case ast.BinOp(op=op, left=left, right=right) if type(op) in _OPERATORS:
                # a sum or product of many terms is one level, not a chain: a + b + c parses as (a + b) + c
                chained = isinstance(left, ast.BinOp) and _CHAINS.get(type(left.op)) == _CHAINS.get(type(op))
                self.walk(left, depth if chained else depth + 1, degree)
                self.walk(right, depth + 1, degree)
            case ast.UnaryOp(op=op, operand=operand) if isinstance(op, _UNARY):
                self.walk(operand, depth + 1, degree)
            case ast.Compare(left=left, ops=[op], comparators=[right]) if isinstance(op, _COMPARISONS):
                self.walk(left, depth + 1, degree)
                self.walk(right, depth + 1, degree)
            case ast.Call(func=ast.Name(id=name), args=args, keywords=[]) if name in _SAFE_FUNCTIONS and \
                    name not in _VALUES:
                for a in args:
                    self.walk_argument(name, a, depth + 1, degree)
            case ast.Name(id=name) if name in _VALUES:
                pass
            case ast.Constant(value=value):
                self.number(node, value)
            case _:
                raise ValueError(f"it uses {self.describe(node)}, which is not allowed. {_ALLOWED_TEXT}")

    def walk_argument(self, function: str, node: ast.AST, depth: int, degree: float) -> None:
        if function == "Piecewise" and isinstance(node, ast.Tuple):  # (value, condition) pairs
            for item in node.elts:
                self.walk(item, depth + 1, degree)
            return
        self.walk(node, depth, degree)

    def power(self, exponent: ast.AST, degree: float) -> float:
        """The degree inside a power: the product of the numeric exponents around it (at most EXPR_DEGREE)."""
        if any(isinstance(n, ast.Name) and n.id == "x" for n in ast.walk(exponent)):
            return degree  # x**x, 2**x: the probe decides whether the values stay finite
        value = _literal_value(exponent)
        if value is None:
            raise ValueError(f"the exponent {shown(ast.unparse(exponent))} is neither a number (such as 2, 0.5, -1 "
                             "or 1/3) nor an expression in x")
        degree *= max(1.0, abs(value))
        if degree > limits.EXPR_DEGREE:
            raise ValueError(f"its powers reach degree {degree:g} (numeric exponents multiplied along nested "
                             f"powers); at most {limits.EXPR_DEGREE} is allowed")
        return degree

    def number(self, node: ast.Constant, value: object) -> None:
        if isinstance(value, bool):
            return  # True and False: the conditions of a Piecewise
        if isinstance(value, complex):
            raise ValueError(f"it uses the complex number {ast.unparse(node)}; an activation is real")
        if not isinstance(value, int | float):
            raise ValueError(f"it uses {shown(value)}, which is not a number. {_ALLOWED_TEXT}")
        source = ast.get_source_segment(self.text.strip(), node) or repr(value)
        mantissa = source.lower().split("e")[0]
        digits = sum(c.isdigit() for c in mantissa)
        size = abs(value)
        if digits > limits.LITERAL_DIGITS or not math.isfinite(size) or \
                (size != 0 and not 1 / limits.LITERAL_MAX <= size <= limits.LITERAL_MAX):
            raise ValueError(f"it uses the number {shown(source, 40)}; allowed: numbers of at most "
                             f"{limits.LITERAL_DIGITS} digits, 0 or between {1 / limits.LITERAL_MAX:g} and "
                             f"{limits.LITERAL_MAX:g} in absolute value")

    def describe(self, node: ast.AST) -> str:
        if isinstance(node, ast.Name):
            if node.id in _CONSTANT_NAMES:
                return f"{node.id} ({_CONSTANT_NAMES[node.id]}; an activation maps real numbers to real numbers)"
            if node.id in _SAFE_FUNCTIONS:
                return f"the function {node.id} without calling it"
            return f"the name {shown(node.id, 40)} (it may use only the variable x and the constants pi and E)"
        if isinstance(node, ast.Call):
            called = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            if called in _SAFE_FUNCTIONS and node.keywords:
                return f"a keyword argument in {called}(...)"
            return f"the function {shown(called, 40)}"
        if isinstance(node, ast.BoolOp):
            return "'and'/'or' (write conditions with & and |)"
        if isinstance(node, ast.Compare):
            return "a comparison other than a single <, <=, > or >= (write 0 < x < 1 as (0 < x) & (x < 1))"
        return f"{shown(ast.unparse(node), 40)} ({type(node).__name__})"


def _literal_value(node: ast.AST) -> float | None:
    """The value of a numeric exponent written with numbers, + - * / and parentheses; None for anything else."""
    match node:
        case ast.Constant(value=bool()):
            return None
        case ast.Constant(value=int() | float() as v):
            return float(v) if math.isfinite(v) else None
        case ast.UnaryOp(op=ast.USub() | ast.UAdd() as op, operand=operand):
            v = _literal_value(operand)
            return None if v is None else (-v if isinstance(op, ast.USub) else v)
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _ARITHMETIC:
            a, b = _literal_value(left), _literal_value(right)
            if a is None or b is None or (isinstance(op, ast.Div) and b == 0):
                return None
            return _ARITHMETIC[type(op)](a, b)
    return None


_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _probe(expr: sp.Expr) -> None:
    """Raise ValueError unless `expr` is real and finite in float64 at every x = k/10 in [-PROBE_X, PROBE_X]."""
    fn = sp.lambdify(x, expr, modules="math")
    for k in range(-10 * limits.PROBE_X, 10 * limits.PROBE_X + 1):
        problem = _problem_at(fn, k / 10)
        if problem:
            raise ValueError(f"{problem}; allowed: expressions real and finite (float64) for every x in "
                             f"[-{limits.PROBE_X}, {limits.PROBE_X}]")


def _probe_as_written(text: str) -> None:
    """`_probe` on the text as written, before SymPy rewrites it: sqrt(x)**2 and exp(log(x)) become x, x/x becomes 1,
    which would hide that the user's function is undefined for x < 0, x <= 0 or at 0."""
    try:
        written = sp.sympify(text.strip(), locals=dict(_SAFE_FUNCTIONS), rational=True, evaluate=False)
    except (sp.SympifyError, SyntaxError, TypeError, AttributeError, ValueError, ZeroDivisionError):
        return  # the evaluated form was read and probed; this one only adds the probe of the text as written
    if isinstance(written, sp.Expr) and written != sp.sympify(text.strip(), locals=dict(_SAFE_FUNCTIONS),
                                                                rational=True):
        _probe(written)


def _problem_at(fn, v: float) -> str | None:
    """What is wrong with the value of `fn` at `v` (an overflow, a pole, a domain error, no branch), or None."""
    try:
        y = fn(v)
    except (ArithmeticError, ValueError, TypeError) as exc:
        return f"it cannot be evaluated at x = {v:g} ({type(exc).__name__}: {exc})"
    if y is None:
        return f"no branch of its Piecewise holds at x = {v:g} (end it with an otherwise branch, (value, True))"
    if isinstance(y, complex) or not math.isfinite(y):
        return f"its value at x = {v:g} is {y!r}, not a finite real number"
    return None


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
