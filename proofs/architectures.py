"""One theorem per architecture, generated from its spec: every catalog entry, or the TOML specs
given on the command line (python proofs/architectures.py my_block.toml).

Run: python proofs/architectures.py [SPEC.toml ...]; exits 0 when every step is verified.
"""

import sys

from symbolic import catalog
from symbolic.prover import script_main

if __name__ == "__main__":
    specs = [a for a in sys.argv[1:] if not a.startswith("--")]
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    sys.exit(script_main(specs or catalog.names(), flags))
