r"""The constrained RMSNorm inverse of the stable update (arXiv:2511.17864, Appendix B), in float64.

$$ y^\star = \arg\min_{y:\ \mathrm{mean}(y^2) = 1} \lVert \gamma \odot y - t \rVert^2 . $$

One implementation serves the symbolic layer's numeric evaluation and the generated kernels:
`numeric.kernels.runtime.rms_inverse` (array API: NumPy and PyTorch). This wrapper computes it in
float64 whatever the input dtype, as the paper's stable update prescribes.
"""

from __future__ import annotations

import torch

from numeric.kernels.runtime import rms_inverse as _rms_inverse


def rms_inverse(t: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Batched over leading axes: t (..., d), gamma broadcastable to it. Computed in float64."""
    return _rms_inverse(t.to(torch.float64), torch.as_tensor(gamma).to(torch.float64)).to(t.dtype)
