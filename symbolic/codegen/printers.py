r"""SymPy printers for the batched kernels: one subclass per back end, one `_print_X` per construct.

Array conventions of the generated code (tokens on the leading axis):

- a vector of the algebra (`Vec`, `MatVec`, ...) is an array ``(T, n)``; in a mixture-of-experts
  kernel ``(T, 1, n)``, or ``(T, E, n)`` when it depends on the expert (the expert axis is implicit:
  `EVec(v, e)` prints as ``v``);
- a scalar per token (`Dot`, `Mean`) keeps its axis: ``(T, 1)`` (``(T, E, 1)`` per expert), so it
  broadcasts against vectors exactly as the algebra's scalars do;
- a parameter matrix ``W`` (out, in) acts as ``v @ W.T``; an expert-stacked ``W`` (E, out, in) through
  `EMatVec` as an einsum over the expert axis;
- an activation of the registry (`Activation`, found by `symbolic.codegen.lower.name_activations`) is a
  call by name of the run-time helper that computes it: ``runtime.gelu_tanh(v)``.

Fixes over SymPy 1.14 (each tested numerically in ``tests/test_codegen.py``): numeric constants are
printed as float literals (``TorchPrinter`` prints ``torch.sqrt(2)``, which fails on a Python number;
``NumPyPrinter`` prints rationals as ``(8943/200000)``); `Max`/`Min` become ``maximum``/``clamp``
(``TorchPrinter`` prints ``torch.max(0, x)``, which fails on a number); ``erf`` comes from
``scipy.special`` (``NumPyPrinter`` prints ``math.erf``, which rejects arrays); transposes are
written ``W.T`` on 2-D parameters only. Anything without a rule is refused (strict mode).
"""

from __future__ import annotations

import sympy as sp
from sympy.core.symbol import Str
from sympy.printing.numpy import SciPyPrinter
from sympy.printing.pytorch import TorchPrinter

from symbolic.activations import MODULE_PARAM, named
from symbolic.activations import x as act_var
from symbolic.algebra import MatVec


class ExpertSum(sp.Function):
    r"""$\sum_e f_e$ over the (implicit) expert axis of a per-expert array."""

    nargs = 1


class RouteWeight(sp.Function):
    r"""The routing weight of every expert: its score ($\mathrm{softmax}(\ell)_e$ or $\sigma(\ell_e)$) on the
    top-k, 0 elsewhere, shape (T, E, 1). Arguments: the logits, then the selection bias if the router has one."""

    nargs = (1, 2)


class TopkMask(sp.Function):
    r"""1 on each token's top-k experts, 0 elsewhere, shape (T, E, 1). Arguments as `RouteWeight`."""

    nargs = (1, 2)


class Activation(sp.Function):
    r"""$\sigma(v)$ elementwise, $\sigma$ a named activation of the registry (`symbolic.activations.named`):
    ``Activation(Str("gelu_tanh"), v)``, printed as the run-time call ``runtime.gelu_tanh(v)``. `unfold` gives
    the registry's expression (what the call computes); `lower.name_activations` finds it in a formula."""

    nargs = 2

    @classmethod
    def of(cls, name: str, v: sp.Expr) -> Activation:
        return cls(Str(name), v)

    @property
    def name(self) -> str:
        return self.args[0].name

    def unfold(self) -> sp.Expr:
        """The registry's expression of the activation at the argument."""
        return named(self.name).subs(act_var, self.args[1])

    def _eval_evalf(self, prec):
        return self.unfold()._eval_evalf(prec)


class EMatVec(sp.Function):
    r"""$W^{(e)} v$ for every expert e: `W` stacked (E, out, in), `v` shared (T, 1, in) or per expert (T, E, in)."""

    nargs = 2


class KDot(sp.Function):
    """`Dot` without automatic evaluation: common-subexpression temporaries are plain symbols, and
    `Dot`/`Mean` would treat them as scalars (``Mean(t**2) -> t**2``). Kernels print only these."""

    nargs = 2


class KMean(sp.Function):
    """`Mean` without automatic evaluation (see `KDot`)."""

    nargs = 1


class _Batched:
    """Rules shared by both back ends; `_mod(name)` gives the back end's function path."""

    _dense = False  # a block without experts (`_print_MatVec`)
    _per_token = staticmethod(lambda _: True)  # whether an expression has the token axis
    _kw_axis = "axis"
    _kw_keep = "keepdims"
    _runtime = "runtime"

    def _print(self, expr, **kwargs):
        if isinstance(expr, sp.Expr) and expr.is_number and not expr.is_Integer and expr.is_finite:
            value = complex(expr.evalf(30))
            if value.imag != 0:
                raise TypeError(f"complex constant {expr} cannot be printed for a real kernel")
            return repr(float(value.real))
        return super()._print(expr, **kwargs)

    def parenthesize(self, item, level, strict=False):
        """A positive constant prints as one float literal (`_print`): no parentheses (``0.5*x``)."""
        if isinstance(item, sp.Expr) and item.is_number and item.is_positive and not item.is_Integer:
            return self._print(item)
        return super().parenthesize(item, level, strict)

    def _print_Vec(self, e):
        return e.name

    _print_Mat = _print_Vec

    def _reduce(self, fn: str, arg: str, axis: int) -> str:
        return f"{self._mod(fn)}({arg}, {self._kw_axis}={axis}, {self._kw_keep}=True)"

    def _print_MatVec(self, e):
        """``v @ W.T``; in a dense block (``dense``), where a vector with the token axis is (T, n), the same
        product computed with W on the left and stored row-major (`_left_product`), which the CPU library
        computes much faster for the few rows a kernel multiplies (`benchmarks/products.py`) and, row-major,
        to the same bits as ``v @ W.T`` from 32 rows on (the model's own ``nn.Linear``: the patched run then
        rounds as the contextual one does). A parameter vector (no token axis: ``per_token`` false) is 1-D,
        and in a mixture of experts vectors are (T, 1, n): ``.T`` is no matrix transpose there."""
        text = self._matvec(e)
        return text if self._is_call(e) else f"({text})"

    def _matvec(self, e) -> str:
        """`_print_MatVec` without the parentheses that ``v @ W.T`` needs among other operators."""
        W, v = e.args
        if not isinstance(W, sp.Symbol):
            raise TypeError(f"MatVec of a non-atomic matrix reached the printer: {W}")
        if self._is_call(e):
            return self._left_product(self._print(W), self._print(v) if isinstance(v, sp.Symbol) else
                                      f"({self._print(v)})")
        return f"{self._print(v)} @ {self._print(W)}.T"

    def _is_call(self, e) -> bool:
        """Whether the product `e` prints as a call (`_left_product`), not as the operator ``@``."""
        return self._dense and self._per_token(e.args[1])

    def _operand(self, e) -> str:
        """`e` as a call's only argument or an assignment's whole value: without parentheses around it all
        (``v @ W.T``, ``1 / s``)."""
        return _unwrapped(self._matvec(e) if isinstance(e, MatVec) else self._print(e))

    def doprint(self, expr, assign_to=None):
        text = super().doprint(expr, assign_to)
        return self._operand(expr) if assign_to is None and "\n" not in text else text

    def _print_EMatVec(self, e):
        W, v = e.args
        spec = "'eoi,tei->teo'" if self._per_expert(v) else "'eoi,tki->teo'"  # k: the singleton axis
        return f"{self._mod('einsum')}({spec}, {self._print(W)}, {self._print(v)})"

    def _print_Dot(self, e):
        a, b = e.args
        return self._reduce("sum", f"{self.parenthesize(a, 50)} * {self.parenthesize(b, 50)}", -1)

    def _print_Mean(self, e):
        return self._reduce("mean", self._print(e.args[0]), -1)

    _print_KDot = _print_Dot
    _print_KMean = _print_Mean

    def _print_ExpertSum(self, e):
        return self._reduce("sum", self._print(e.args[0]), -2)

    def _print_RouteWeight(self, e):
        extra = "".join(f", {self._print(a)}" for a in e.args[1:])
        return f"{self._runtime}.route({self._print(e.args[0])}, TOP_K, ROUTING{extra})"

    def _print_TopkMask(self, e):
        extra = "".join(f", {self._print(a)}" for a in e.args[1:])
        return f"{self._runtime}.topk_mask({self._print(e.args[0])}, TOP_K, ROUTING{extra})"

    def _print_ModuleActivation(self, e):  # the module's own map, a run-time argument of every kernel function
        return f"params[{MODULE_PARAM!r}]({self._print(e.args[0])})"

    def _print_Activation(self, e):
        return f"{self._runtime}.{e.name}({self._operand(e.args[1])})"

    def _print_RmsInverse(self, e):
        return f"{self._runtime}.rms_inverse({self._print(e.args[0])}, {self._print(e.args[1])})"

    def _print_Outer(self, e):
        raise TypeError(f"an outer product reached the printer (kernels never materialize it): {e}")

    _print_EMat = _print_Outer

    def _print_Sum(self, e):
        raise TypeError(f"a symbolic sum reached the printer (lower top-k sums first): {e}")


def _unwrapped(text: str) -> str:
    """`text` without parentheses that enclose all of it: ``(a @ W.T)`` -> ``a @ W.T``, ``(a)*(b)`` unchanged."""
    depth = 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return text[1:-1] if i == len(text) - 1 and text.startswith("(") else text
    return text


class NumPyKernelPrinter(_Batched, SciPyPrinter):
    """NumPy (and scipy.special) code over arrays of shape (T, ...)."""

    printmethod = "_numpykernelcode"

    def __init__(self, per_expert=None, dense: bool = False, per_token=None):
        super().__init__({"fully_qualified_modules": True, "strict": True, "allow_unknown_functions": False})
        self._per_expert = per_expert or (lambda _: False)
        self._dense = dense
        self._per_token = per_token or (lambda _: True)

    def _mod(self, fn: str) -> str:
        return self._module_format("numpy." + fn)

    def _left_product(self, W: str, v: str) -> str:
        return f"{self._mod('ascontiguousarray')}(({W} @ {v}.T).T)"

    def _print_Max(self, e):
        return self._fold("numpy.maximum", e.args)

    def _print_Min(self, e):
        return self._fold("numpy.minimum", e.args)

    def _fold(self, fn: str, args) -> str:
        out = self._print(args[0])
        for a in args[1:]:
            out = f"{self._module_format(fn)}({out}, {self._print(a)})"
        return out

    def _print_Heaviside(self, e):
        h0 = e.args[1] if len(e.args) > 1 else sp.S.Half
        return f"{self._module_format('numpy.heaviside')}({self._print(e.args[0])}, {self._print(h0)})"

    def _print_Pow(self, e, rational=False):
        """``1 / x`` for $x^{-1}$ (NumPy computes ``x**(-1.0)`` as the same reciprocal); the rest as SciPy's."""
        if e.exp == -1:
            return f"(1 / {self.parenthesize(e.base, 50)})"
        return super()._print_Pow(e, rational)


class TorchKernelPrinter(_Batched, TorchPrinter):
    """PyTorch code over tensors of shape (T, ...)."""

    printmethod = "_torchkernelcode"
    _kw_axis = "dim"
    _kw_keep = "keepdim"

    def __init__(self, per_expert=None, dense: bool = False, per_token=None):
        super().__init__({"fully_qualified_modules": True, "strict": True, "allow_unknown_functions": False})
        self._per_expert = per_expert or (lambda _: False)
        self._dense = dense
        self._per_token = per_token or (lambda _: True)

    def _mod(self, fn: str) -> str:
        return self._module_format("torch." + fn)

    def _left_product(self, W: str, v: str) -> str:
        return f"({W} @ {v}.T).T.contiguous()"

    def _print_Max(self, e):
        return self._fold(e.args, "maximum", "min")

    def _print_Min(self, e):
        return self._fold(e.args, "minimum", "max")

    def _fold(self, args, fn: str, clamp_kw: str) -> str:
        """Tensors folded with torch.maximum/minimum; numbers become one clamp bound."""
        numbers = [a for a in args if a.is_number]
        tensors = [a for a in args if not a.is_number]
        out = self._print(tensors[0])
        for a in tensors[1:]:
            out = f"{self._mod(fn)}({out}, {self._print(a)})"
        if numbers:
            bound = (sp.Max if fn == "maximum" else sp.Min)(*numbers)
            out = f"{self._mod('clamp')}({out}, {clamp_kw}={self._print(sp.Float(bound))})"
        return out

    def _print_Heaviside(self, e):
        h0 = e.args[1] if len(e.args) > 1 else sp.S.Half
        x = self._print(e.args[0])
        return f"{self._mod('heaviside')}({x}, {self._mod('full_like')}({x}, {self._print(sp.Float(h0))}))"

    def _print_Pow(self, e, rational=False):
        base, exp = e.args
        if exp == sp.S.Half:
            return f"{self._mod('sqrt')}({self._print(base)})"
        if exp == -sp.S.Half:
            return f"{self._mod('rsqrt')}({self._print(base)})"
        if exp == -1:
            return f"(1 / {self.parenthesize(base, 50)})"
        if exp.is_Integer and exp > 0:
            return f"{self.parenthesize(base, 60)}**{int(exp)}"
        return f"{self._mod('pow')}({self._print(base)}, {self._print(exp)})"

    def _print_Piecewise(self, e):
        if e.args[-1].cond is not sp.true:
            raise TypeError(f"a Piecewise without an otherwise branch cannot be printed: {e}")
        out = self._print(e.args[-1].expr)
        for expr, cond in reversed(e.args[:-1]):
            out = f"{self._mod('where')}({self._print(cond)}, {self._print(expr)}, {out})"
        return out


BACKENDS = {"numpy": NumPyKernelPrinter, "torch": TorchKernelPrinter}
