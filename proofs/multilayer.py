"""The layer-by-layer algorithm reproduces the contextual state of every query token at every layer
(arXiv:2511.17864, Theorem 2 and Algorithm 1).

Run: python proofs/multilayer.py [--mutate NAME] [--json]; exits 0 when every step is verified.
"""

import sys

from symbolic.prover import script_main

if __name__ == "__main__":
    sys.exit(script_main(["multilayer_gemma3", "multilayer_llama", "multilayer_mixtral"]))
