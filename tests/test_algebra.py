"""The vector algebra: rewrite rules, the zero test, side conditions, shapes and printers."""

from __future__ import annotations

import pytest
import sympy as sp
import torch

from numeric.check.numeval import evaluate
from symbolic.algebra import (
    BOUND,
    Condition,
    DimensionError,
    Dot,
    Mat,
    MatVec,
    Mean,
    Outer,
    Vec,
    dim_of,
    is_scalar,
    is_zero,
    normalize,
    side_conditions,
    tidy,
)
from symbolic.printing import latex, pstr

W = Mat("W", "m", "d")
z, zc, x = Vec("z", "d"), Vec("z_C", "d"), Vec("x", "m")
c = sp.Symbol("c")


def test_rank1_lemma_holds_for_every_dimension():
    patched = W + Outer(MatVec(W, zc - z) / Dot(z, z), z)
    assert is_zero(MatVec(patched, z) - MatVec(W, zc)) is True


@pytest.mark.parametrize("wrong", [
    W + Outer(MatVec(W, zc - z) / Dot(zc, zc), z),  # |z_C|^2 for |z|^2
    W + Outer(MatVec(W, z - zc) / Dot(z, z), z),  # z and z_C swapped
    W + Outer(z, MatVec(W, zc - z) / Dot(z, z)),  # transposed factors (and a shape error)
])
def test_wrong_rank1_patches_do_not_vanish(wrong):
    try:
        result = is_zero(MatVec(wrong, z) - MatVec(W, zc))
    except DimensionError:
        return
    assert result is not True


def test_linearity_rules():
    assert normalize(MatVec(W, c * z + zc)) == c * MatVec(W, z) + MatVec(W, zc)
    assert normalize(Dot(c * z, zc)) == c * Dot(z, zc)
    assert normalize(Mean(c * z + 1)) == c * Mean(z) + 1
    assert Dot(zc, z) == Dot(z, zc)
    j, k = sp.Symbol("i", integer=True, positive=True), sp.Symbol("k", integer=True, positive=True)
    s = sp.Function("s")
    assert normalize(sp.Sum(c * s(j), (j, 1, k))) == c * sp.Sum(s(BOUND), (BOUND, 1, k))


def test_vector_products_do_not_leave_the_matvec():
    # W (c z) = c W z only for a scalar c: a vector factor must stay inside.
    assert normalize(MatVec(W, zc * z)) == MatVec(W, zc * z)
    assert not is_scalar(zc * z) and is_scalar(Dot(z, zc) * c)


def test_dimensions_are_checked():
    assert dim_of(MatVec(W, z)) == "m"
    with pytest.raises(DimensionError):
        dim_of(MatVec(W, x))
    with pytest.raises(DimensionError):
        dim_of(z + x)


def test_side_conditions_from_denominators():
    eps = sp.Symbol("epsilon", positive=True)
    conds = side_conditions(x / Dot(z, z) + z / sp.sqrt(Mean(z**2) + eps) + zc / z)
    assert Condition(z, "vector") in conds and Condition(z, "coords") in conds
    assert len(conds) == 2  # sqrt(mean(z^2) + eps) > 0 needs no condition
    assert Condition(z, "vector") in side_conditions(z / sp.sqrt(Mean(z**2)))


def test_printers():
    e = tidy(MatVec(W, zc) / Dot(z, z) - MatVec(W, z) / Dot(z, z))
    assert pstr(e) in ("(W @ (-z + z_C))/dot(z, z)", "(W @ (z_C - z))/dot(z, z)")
    assert latex(Dot(z, z)) == r"\lVert z \rVert^{2}"
    assert r"\oslash" in latex(zc / z) and r"\odot" in latex(zc * z)
    assert latex(MatVec(W, z) ** 2) == r"\left(W z\right)^{2}"


def test_numeric_evaluation_matches_the_meaning():
    gen = torch.Generator().manual_seed(0)
    Wn, zn, zcn = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((4, 3), (3,), (3,)))
    expr = MatVec(W + Outer(MatVec(W, zc - z) / Dot(z, z), z), z)
    value = evaluate(expr, {W: Wn, z: zn, zc: zcn})
    assert torch.allclose(value, Wn @ zcn, rtol=0, atol=1e-13)
    assert float(evaluate(Mean(z**2), {z: zn})) == pytest.approx(float((zn**2).mean()), rel=1e-15)


def test_sum_normalisation_is_hygienic():
    """Renaming bound variables never captures: sum_i i sum_l (i + l)^2 keeps i and l apart."""
    i, l_, k = (sp.Symbol(n, integer=True, positive=True) for n in ("i", "l", "k"))
    nested = sp.Sum(i * sp.Sum((i + l_) ** 2, (l_, 1, k)), (i, 1, k))
    wrong = sp.Sum(4 * BOUND**2, (BOUND, 1, k)) * sp.Sum(BOUND, (BOUND, 1, k))
    assert is_zero(nested - wrong) is not True
    renamed = sp.Sum(l_ * sp.Sum((l_ + i) ** 2, (i, 1, k)), (l_, 1, k))  # alpha-equivalent
    assert is_zero(nested - renamed) is True


def test_shapes_type_every_construct():
    from symbolic.algebra import shape

    assert shape(Outer(x, z)) == ("matrix", "m", "d") and shape(Dot(z, zc)) == ("scalar",)
    for bad in (lambda: Dot(z, x), lambda: MatVec(x * W, z), lambda: W + z, lambda: Mean(W)):
        with pytest.raises(DimensionError):
            shape(bad())
