"""Dherin et al.'s theorem for the vanilla contextual block, without and with a skip connection
(arXiv:2507.16003; skip: arXiv:2512.11255).

Run: python proofs/dherin_vanilla.py [--mutate NAME] [--json]; exits 0 when every step is verified.
"""

import sys

from symbolic.prover import script_main

if __name__ == "__main__":
    sys.exit(script_main(["vanilla", "vanilla_skip"]))
