"""One patch per layer for q tokens at once (rank <= q): the rank-q lemma on the input maps and on W_down,
its minimum Frobenius norm, the shared post-norm scale, and the bound q <= d (symbolic.sequence).

Run: python proofs/sequence_patch.py [--json]; exits 0 when every step is verified.
"""

import sys

from symbolic.prover import script_main
from symbolic.sequence import THEOREMS

if __name__ == "__main__":
    sys.exit(script_main(list(THEOREMS)))
