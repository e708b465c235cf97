"""Input-controllable inner + output-controllable outer give a perfect patch (arXiv:2511.17864, Theorem
5), with its corollaries checked on the catalog blocks that have each feature (pre-norm llama, post-
norm olmo2, sandwich gemma3, post-LN bert, biases gpt2, gated llama, parallel gptj, MoE mixtral,
shared expert qwen2_moe).

Run: python proofs/controllability.py [--mutate NAME] [--json]; exits 0 when every step is verified.
"""

import sys

from symbolic.prover import script_main

if __name__ == "__main__":
    sys.exit(script_main(["controllability", "llama", "olmo2", "bert", "gpt2", "gptj", "mixtral", "qwen2_moe"]))
