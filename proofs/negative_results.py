"""The invariants behind the negative verdicts: RMSNorm outputs lie in a ball, bias-free LayerNorm
outputs have mean zero, a scalar scale moves along a ray, tanh is bounded.

Run: python proofs/negative_results.py [--mutate NAME] [--json]; exits 0 when every step is verified.
"""

import sys

from symbolic.prover import script_main

if __name__ == "__main__":
    sys.exit(script_main(["negative_rmsnorm_ball", "negative_layernorm_mean", "negative_scalar_ray",
                          "negative_bounded_activation"]))
