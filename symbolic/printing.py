r"""Printers for the vector algebra: plain text (NumPy-like) and LaTeX.

Plain text writes `W @ z`, `dot(a, b)`, `mean(v)`, `outer(x, y)` and elementwise `*` and `/`,
so a formula reads like the array code that computes it. LaTeX writes $W z$, $a^\top b$,
$\lVert z\rVert^2$, $x y^\top$ and uses $\odot$ / $\oslash$ between vectors.
Both are subclasses of SymPy's printers with one `_print_X` per construct.
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from symbolic.terms import EVec, is_scalar


class PlainPrinter(StrPrinter):
    def _print_MatVec(self, e):
        W, z = e.args
        return f"({self._paren_mat(W)} @ {self.parenthesize(z, 100)})"

    def _paren_mat(self, W):
        s = self._print(W)
        return f"({s})" if isinstance(W, (sp.Add, sp.Mul)) else s

    def _print_Dot(self, e):
        return f"dot({self._print(e.args[0])}, {self._print(e.args[1])})"

    def _print_Mean(self, e):
        return f"mean({self._print(e.args[0])})"

    def _print_Outer(self, e):
        return f"outer({self._print(e.args[0])}, {self._print(e.args[1])})"

    def _print_EMat(self, e):
        return f"{self._print(e.args[0])}[{self._print(e.args[1])}]"

    _print_EVec = _print_EMat

    def _print_Sel(self, e):
        return f"topk_index({self._print(e.args[0])}, {self._print(e.args[1])})"

    def _print_Gate(self, e):
        return f"gate({self._print(e.args[0])}, {self._print(e.args[1])})"

    def _print_ExpertGate(self, e):
        return f"weight({self._print(e.args[0])}, {self._print(e.args[1])})"

    def _print_RmsInverse(self, e):
        return f"rms_inverse({self._print(e.args[0])}, {self._print(e.args[1])})"


def pstr(e: sp.Basic) -> str:
    """Plain-text form of an expression (elementwise arithmetic, `@` for matrix-vector)."""
    return PlainPrinter(dict(order="none")).doprint(e)


_GREEK = {"gamma", "beta", "delta", "epsilon", "mu", "sigma", "ell", "theta"}


def _powered(method):
    """LaTeX printers pass exp= when a function call is raised to a power: wrap and raise it."""

    def wrapped(self, e, exp=None):
        s = method(self, e)
        return rf"\left({s}\right)^{{{exp}}}" if exp is not None else s

    return wrapped


class VecLatexPrinter(LatexPrinter):
    def _print_Symbol(self, e, style="plain"):
        name, _, sub = e.name.partition("_")
        prime = "'" * name.count("'")
        name = name.replace("'", "")
        hat = name.endswith("hat") and len(name) > 3  # ahat -> \hat{a} (the mid-normed hidden activations)
        name = name[:-3] if hat else name
        head = (rf"\{name}" if name in _GREEK else name)
        head = (rf"\hat{{{head}}}" if hat else head) + prime
        if sub:
            sub = sub.replace("_", ",")
            sub = sub if len(sub) == 1 or sub in ("C",) else rf"\mathrm{{{sub}}}"
            head = f"{head}_{{{sub}}}"
        return f"{{{head}}}" if prime else head  # a prime is a superscript: keep ^2 outside it

    _print_Vec = _print_Symbol
    _print_Mat = _print_Symbol

    @_powered
    def _print_MatVec(self, e):
        W, z = e.args
        mat = self._print(W)
        if isinstance(W, (sp.Add, sp.Mul)):
            mat = rf"\left({mat}\right)"
        arg = self._print(z)
        if not isinstance(z, (sp.Symbol, EVec)):
            arg = rf"\left({arg}\right)"
        return f"{mat} {arg}"

    @_powered
    def _print_Dot(self, e):
        a, b = e.args
        if a == b:
            return rf"\lVert {self._print(a)} \rVert^{{2}}"
        return rf"{self._wrap(a)}^{{\top}} {self._wrap(b)}"

    def _wrap(self, a):
        s = self._print(a)
        return s if isinstance(a, sp.Symbol) else rf"\left({s}\right)"

    @_powered
    def _print_Mean(self, e):
        return rf"\operatorname{{mean}}\left({self._print(e.args[0])}\right)"

    @_powered
    def _print_Outer(self, e):
        return rf"{self._wrap(e.args[0])} {self._wrap(e.args[1])}^{{\top}}"

    @_powered
    def _print_EMat(self, e):
        return rf"{self._print(e.args[0])}^{{({self._print(e.args[1])})}}"

    _print_EVec = _print_EMat

    @_powered
    def _print_Sel(self, e):
        return rf"\operatorname{{top}}_{{{self._print(e.args[1])}}}\left({self._print(e.args[0])}\right)"

    @_powered
    def _print_Gate(self, e):
        return rf"s_{{{self._print(e.args[1])}}}\left({self._print(e.args[0])}\right)"

    @_powered
    def _print_ExpertGate(self, e):
        return rf"s^{{({self._print(e.args[1])})}}\left({self._print(e.args[0])}\right)"

    @_powered
    def _print_RmsInverse(self, e):
        t, g = e.args
        return rf"\operatorname{{RMSinv}}_{{{self._print(g)}}}\left({self._print(t)}\right)"

    def _atom_or_paren(self, e):
        s = self._print(e)
        return s if e.is_Atom or isinstance(e, (sp.Function, sp.Pow)) else rf"\left({s}\right)"

    def _print_Mul(self, e):
        num, den = sp.fraction(e, exact=True)
        if den != 1 and not is_scalar(den):
            return rf"{self._atom_or_paren(num)} \oslash {self._atom_or_paren(den)}"
        factors = sp.Mul.make_args(num)
        vectors = [f for f in factors if not is_scalar(f)]
        if len(vectors) < 2:
            return super()._print_Mul(e)
        scal = sp.Mul(*(f for f in factors if is_scalar(f)))
        head = "" if scal == 1 else ("-" if scal == -1 else self.parenthesize(scal, 50) + " ")
        body = head + r" \odot ".join(self.parenthesize(v, 60) for v in vectors)
        return body if den == 1 else rf"\frac{{{body}}}{{{self._print(den)}}}"


def latex(e: sp.Basic) -> str:
    """LaTeX of an expression in the vector algebra."""
    return VecLatexPrinter(dict(order="none")).doprint(e)


