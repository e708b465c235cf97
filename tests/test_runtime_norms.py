"""The kernels' runtime remembers a parameter's norm (conditioning checks) across the views that read it, and
forgets it when the parameter is written."""

from __future__ import annotations

import torch

from numeric.kernels.runtime import relative_sizes


def _size(weight: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> float:
    patches = {"W": {"left": left[None], "right": right[None]}}
    return float(relative_sizes(patches, {"W": weight})["W"][0])


def test_a_parameters_norm_follows_writes_through_fresh_views():
    gen = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(6, 4, generator=gen, dtype=torch.float64))
    left, right = torch.ones(6, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    want = float(left.norm() * right.norm() / param.detach().norm())
    first = _size(param.detach()[:], left, right)  # a fresh view each call, as every extraction makes
    assert first == _size(param.detach()[:], left, right) == _size(param.detach(), left, right) == want
    with torch.no_grad():
        param.mul_(2.0)  # written in place: the remembered norm must not be used
    assert _size(param.detach()[:], left, right) == _size(param.detach(), left, right) == want / 2
    assert _size(param.detach()[:3], left, right) == float(left.norm() * right.norm() / param.detach()[:3].norm())
    other = param.detach().t()  # another view of the same storage, other strides: its own norm
    size = _size(other, torch.ones(4, dtype=torch.float64), torch.ones(6, dtype=torch.float64))
    assert abs(size - want / 2) <= 1e-14 * want  # its own sum, in its own order


def test_finiteness_is_decided_entry_by_entry_when_the_sum_is_not_finite():
    """`require_finite` names exactly the tokens with an infinity or a NaN, and a finite array whose sum overflows
    (float32) is finite, not refused."""
    import numpy
    import pytest

    from numeric.kernels.runtime import require_finite
    from symbolic.errors import PatchConditionError

    big = torch.full((3, 4), 3e38, dtype=torch.float32)  # finite entries, a sum past float32's largest
    require_finite("big", big)
    require_finite("big", big.numpy())
    for bad in (float("inf"), float("-inf"), float("nan")):
        value = big.clone()
        value[1, 2] = bad
        for arr in (value, value.numpy()):
            with pytest.raises(PatchConditionError) as told:
                require_finite("v", arr)
            assert told.value.tokens == [1]
    mixed = torch.zeros(4, 2, 3, dtype=torch.float64)
    mixed[0, 1, 2], mixed[3, 0, 0] = float("inf"), float("-inf")  # opposite infinities: their sum is NaN
    with pytest.raises(PatchConditionError) as told:
        require_finite("v", mixed)
    assert told.value.tokens == [0, 3]
    assert numpy.isfinite(big.numpy()).all()
