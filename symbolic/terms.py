r"""The terms of the vector algebra and their types: the bottom of `symbolic`.

A `Vec` symbol stands for a real vector of symbolic length (its `dim`), a `Mat` for a matrix of
symbolic shape (rows, cols); `MatVec`, `Dot`, `Mean`, `Outer`, `Frob`, `EMat`, `EVec`, `Sel`,
`Gate` and `RmsInverse` are the operations that couple coordinates. `shape` types a term:
``("scalar",)``, ``("vector", dim)`` or ``("matrix", rows, cols)``; an ill-typed term (a d-vector
dotted with an m-vector, a vector times a matrix) raises `DimensionError` naming the subterm.

This module imports only SymPy: every other module of `symbolic` may import it.
"""

from __future__ import annotations

import sympy as sp

#: The generic expert index of per-expert formulas (universally quantified over the experts).
EXPERT = sp.Symbol("e", integer=True, positive=True)


class DimensionError(TypeError):
    """Two vectors of different (symbolic) lengths met in one elementwise or linear operation."""


class Vec(sp.Symbol):
    """A real vector of symbolic length `dim`; arithmetic on it is elementwise.

    The length is part of the symbol's identity: ``Vec("x", "d") != Vec("x", "m")``.
    """

    dim: str

    def __new__(cls, name: str, dim: str):
        obj = sp.Symbol.__xnew__(cls, name, real=True)
        obj.dim = dim
        return obj

    def __getnewargs_ex__(self):
        return (self.name, self.dim), {}

    def _hashable_content(self):
        return super()._hashable_content() + (self.dim,)


class Mat(sp.Symbol):
    """A matrix of symbolic shape (rows, cols); only meaningful inside `MatVec` and `Outer`."""

    rows: str
    cols: str

    def __new__(cls, name: str, rows: str, cols: str):
        obj = sp.Symbol.__xnew__(cls, name, commutative=True)
        obj.rows, obj.cols = rows, cols
        return obj

    def __getnewargs_ex__(self):
        return (self.name, self.rows, self.cols), {}

    def _hashable_content(self):
        return super()._hashable_content() + (self.rows, self.cols)


class MatVec(sp.Function):
    """$W z$."""

    nargs = 2

    @classmethod
    def eval(cls, W, z):
        if z.is_zero:
            return sp.S.Zero
        return None

    def _eval_is_real(self):
        return True


class Dot(sp.Function):
    r"""$a^\top b$, a scalar. Arguments are kept in canonical order."""

    nargs = 2

    @classmethod
    def eval(cls, a, b):
        if a.is_zero or b.is_zero:
            return sp.S.Zero
        if sp.default_sort_key(b) < sp.default_sort_key(a):
            return cls(b, a)
        return None

    def _eval_is_real(self):
        return True

    def _eval_is_nonnegative(self):
        a, b = self.args
        return True if a == b and a.is_real else None


class Mean(sp.Function):
    r"""$\mathrm{mean}(v) = \frac1n\sum_i v_i$, a scalar."""

    nargs = 1

    @classmethod
    def eval(cls, v):
        if is_scalar(v):
            return v
        return None

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_is_nonnegative(self):
        return self.args[0].is_nonnegative


class Outer(sp.Function):
    r"""$x y^\top$, a matrix."""

    nargs = 2


class Frob(sp.Function):
    r"""$\langle A, B\rangle_F = \operatorname{tr}(A^\top B)$, the Frobenius product of two matrices."""

    nargs = 2

    @classmethod
    def eval(cls, A, B):
        if sp.default_sort_key(B) < sp.default_sort_key(A):
            return cls(B, A)
        return None

    def _eval_is_real(self):
        return True

    def _eval_is_nonnegative(self):
        return True if self.args[0] == self.args[1] else None


class EMat(sp.Function):
    """Matrix `W` of expert `e` (a slice of a stacked expert tensor)."""

    nargs = 2


class EVec(sp.Function):
    """Vector `v` of expert `e` (e.g. the hidden activation of expert e)."""

    nargs = 2

    def _eval_is_real(self):
        return True


class Sel(sp.Function):
    r"""The index of the expert ranked `j`-th by router logits $\ell$ (top-k selection)."""

    nargs = 2


class Gate(sp.Function):
    r"""The routing weight of the `j`-th selected expert: $\mathrm{softmax}(\ell)_{\mathrm{Sel}(\ell, j)}$."""

    nargs = 2

    def _eval_is_positive(self):
        return True


class ExpertGate(sp.Function):
    r"""The routing weight of expert `e` by logits $\ell$: its score on the top-k, 0 off it (Llama 4 scales the
    expert's input by it)."""

    nargs = 2

    def _eval_is_nonnegative(self):
        return True

    def _eval_is_real(self):
        return True


class RmsInverse(sp.Function):
    r"""$\arg\min_{y:\ \mathrm{mean}(y^2)=1} \lVert \gamma \odot y - t \rVert^2$ (the constrained RMSNorm inverse)."""

    nargs = 2

    def _eval_is_real(self):
        return True


MATRIX_FUNCS = (Outer, EMat)
SCALAR_FUNCS = (Dot, Mean, Gate, ExpertGate, Sel, Frob)
VECTOR_FUNCS = (MatVec, EVec, RmsInverse)


# --------------------------------------------------------------------------- shapes


def is_matrix(e: sp.Basic) -> bool:
    if isinstance(e, Mat) or isinstance(e, MATRIX_FUNCS):
        return True
    if isinstance(e, (sp.Add, sp.Mul)):
        return any(is_matrix(a) for a in e.args)
    return False


def is_scalar(e: sp.Basic) -> bool:
    """Whether `e` denotes a scalar (broadcast over coordinates) rather than a vector."""
    if isinstance(e, Vec) or isinstance(e, VECTOR_FUNCS):
        return False
    if isinstance(e, SCALAR_FUNCS):
        return True
    if is_matrix(e):
        raise DimensionError(f"a matrix is used as a value: {e}")
    if isinstance(e, sp.Sum):
        return is_scalar(e.function)
    if e.is_Atom:
        return True
    return all(is_scalar(a) for a in e.args if not isinstance(a, sp.Tuple))


SCALAR: tuple = ("scalar",)


def shape(e: sp.Basic) -> tuple:
    r"""The type of a term: ``("scalar",)``, ``("vector", n)`` or ``("matrix", rows, cols)``.

    Elementwise arithmetic needs equal lengths (a scalar broadcasts); $W z$ needs a vector with as
    many entries as $W$ has columns; a matrix is only ever a scalar multiple or sum of matrices,
    an argument of `MatVec` / `Frob`, or a patch. Raises `DimensionError` naming the subterm.
    """
    rule = _RULES.get(type(e)) or next((r for t, r in _RULES.items() if isinstance(e, t)), None)
    if rule is not None:
        return rule(e)
    if isinstance(e, sp.core.function.AppliedUndef):
        return _undefined(e)
    if e.is_Atom:
        return SCALAR
    if isinstance(e, sp.Add):
        return _add(e)
    if isinstance(e, sp.Mul):
        return _mul(e)
    if isinstance(e, sp.Pow):
        return _pow(e)
    if isinstance(e, sp.Sum):
        for _, lo, hi in e.limits:
            _need(lo, "scalar", e), _need(hi, "scalar", e)
        return shape(e.function)
    if isinstance(e, sp.Function):
        return _elementwise(e, e.args)
    if isinstance(e, (sp.Tuple, sp.Piecewise)) or not isinstance(e, sp.Expr):
        raise DimensionError(f"not a term of the vector algebra: {e}")
    return _elementwise(e, e.args)


def _need(e: sp.Basic, kind: str, where: sp.Basic) -> tuple:
    s = shape(e)
    if s[0] != kind:
        raise DimensionError(f"{e} is a {s[0]} where a {kind} is needed, in {where}")
    return s


def _broadcast(shapes: list[tuple], where: sp.Basic) -> tuple:
    vecs = {s for s in shapes if s[0] == "vector"}
    if any(s[0] == "matrix" for s in shapes):
        raise DimensionError(f"a matrix is used as a value in {where}")
    if len(vecs) > 1:
        raise DimensionError(f"vectors of lengths {sorted(s[1] for s in vecs)} combined elementwise in {where}")
    return vecs.pop() if vecs else SCALAR


def _elementwise(e: sp.Basic, args) -> tuple:
    return _broadcast([shape(a) for a in args], e)


def _undefined(e: sp.Basic) -> tuple:
    """An undefined function: `dim` declared (a vector-valued map of any arguments), else elementwise."""
    dim = getattr(e.func, "dim", None)
    if dim is None:
        return _elementwise(e, e.args)
    for a in e.args:
        shape(a)
    return ("vector", dim)


def _add(e: sp.Add) -> tuple:
    shapes = [shape(a) for a in e.args]
    mats = {s for s in shapes if s[0] == "matrix"}
    if mats:
        if len(mats) > 1 or len(mats) != len(set(shapes)):
            raise DimensionError(f"matrices of different shapes, or a matrix and a value, added: {e}")
        return mats.pop()
    return _broadcast(shapes, e)


def _mul(e: sp.Mul) -> tuple:
    shapes = [shape(a) for a in e.args]
    mats = [s for s in shapes if s[0] == "matrix"]
    if mats:
        if len(mats) > 1 or any(s[0] == "vector" for s in shapes):
            raise DimensionError(f"not a scalar multiple of one matrix: {e}")
        return mats[0]
    return _broadcast(shapes, e)


def _pow(e: sp.Pow) -> tuple:
    _need(e.exp, "scalar", e)
    return _broadcast([shape(e.base)], e)


def _matvec(e) -> tuple:
    W, z = e.args
    rows, cols = _need(W, "matrix", e)[1:]
    if _need(z, "vector", e)[1] != cols:
        raise DimensionError(f"{W} has {cols} columns but multiplies a vector of length {shape(z)[1]}: {e}")
    return ("vector", rows)


def _outer(e) -> tuple:
    return ("matrix", _need(e.args[0], "vector", e)[1], _need(e.args[1], "vector", e)[1])


def _dot(e) -> tuple:
    a, b = (_need(x, "vector", e)[1] for x in e.args)
    if a != b:
        raise DimensionError(f"a vector of length {a} dotted with one of length {b}: {e}")
    return SCALAR


def _frob(e) -> tuple:
    a, b = (_need(x, "matrix", e) for x in e.args)
    if a != b:
        raise DimensionError(f"Frobenius product of a {a[1]}x{a[2]} and a {b[1]}x{b[2]} matrix: {e}")
    return SCALAR


def _mean(e) -> tuple:
    _broadcast([shape(e.args[0])], e)
    return SCALAR


def _indexed(e) -> tuple:
    """EMat(W, e), EVec(v, e): the object of expert e has the shape of the stacked symbol."""
    _need(e.args[1], "scalar", e)
    return shape(e.args[0])


def _routing(e) -> tuple:
    """Sel(ell, j), Gate(ell, j): a scalar from router logits and a rank."""
    _need(e.args[0], "vector", e), _need(e.args[1], "scalar", e)
    return SCALAR


def _rms_inverse(e) -> tuple:
    return _broadcast([_need(a, "vector", e) for a in e.args], e)


_RULES = {Vec: lambda e: ("vector", e.dim), Mat: lambda e: ("matrix", e.rows, e.cols), MatVec: _matvec,
          Outer: _outer, Dot: _dot, Frob: _frob, Mean: _mean, EMat: _indexed, EVec: _indexed,
          Sel: _routing, Gate: _routing, ExpertGate: _routing, RmsInverse: _rms_inverse}


def dim_of(e: sp.Basic) -> str | None:
    """The symbolic length of vector expression `e` (None for a scalar). Raises DimensionError."""
    s = shape(e)
    if s[0] == "matrix":
        raise DimensionError(f"a matrix is used as a value: {e}")
    return s[1] if s[0] == "vector" else None


def matrix_shape(W: sp.Basic) -> tuple[str, str]:
    s = shape(W)
    if s[0] != "matrix":
        raise DimensionError(f"not a matrix: {W}")
    return s[1], s[2]
