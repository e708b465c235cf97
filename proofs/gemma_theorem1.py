"""The Gemma-style block theorem (arXiv:2511.17864, Theorem 1) and every alternative exact strategy,
eps exact in all.

Run: python proofs/gemma_theorem1.py [--mutate NAME] [--json]; exits 0 when every step is verified.
"""

import sys

from symbolic.prover import script_main

if __name__ == "__main__":
    sys.exit(script_main(["gemma3"]))
