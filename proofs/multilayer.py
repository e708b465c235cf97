r"""The layer-by-layer algorithm reproduces the contextual state of every query token at every layer
(arXiv:2511.17864, Theorem 2 and Algorithm 1), for every catalog architecture.

At a generic layer l the reduced run enters with $s_{l-1}$, the contextual run with $c_{l-1}$; their MLP
inputs are $u_l = A(l, s_{l-1})$ and $u_{C,l} = A_C(l, c_{l-1})$ (A, A_C: the attention sub-layers, opaque
vector-valued maps). The patch of layer l is computed from these actual inputs, so the block theorem at
$u := u_l$, $\delta := u_{C,l} - u_l$ gives $s_l = c_l$ under the block's side conditions at layer l
(`symbolic.theorems.multilayer_theorem` generates the statement from the block theorem).

Run: python -m proofs.multilayer [ARCH ...] [--json]; exits 0 when every theorem is verified.
"""

from __future__ import annotations

import sys

from proofs.writing import script
from symbolic import catalog

if __name__ == "__main__":
    archs = [a for a in sys.argv[1:] if not a.startswith("--")] or catalog.names()
    sys.argv[1:] = [a for a in sys.argv[1:] if a.startswith("--")]
    raise SystemExit(script([f"multilayer_{a}" for a in archs]))
