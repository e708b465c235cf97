"""The rank-1 lemma (W + W(z'-z)z^T/(z^T z)) z = W z' and its minimum-norm property (arXiv:2507.16003).

Run: python proofs/rank1_lemma.py [--mutate NAME] [--json]; exits 0 when every step is verified.
"""

import sys

from symbolic.prover import script_main

if __name__ == "__main__":
    sys.exit(script_main(["rank1_lemma", "rank1_min_norm_split", "rank1_min_norm"]))
