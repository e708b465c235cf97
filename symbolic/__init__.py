"""Symbolic side of ctxpatch: block specs, the controllability checker and the derivation of
exact context-to-parameter patch formulas (Dherin et al. 2025, arXiv:2507.16003; Goldwaser,
Munn, Gonzalvo, Dherin 2025, arXiv:2511.17864)."""

from symbolic.spec import BlockSpec, dump_toml, load_toml, loads_toml  # noqa: F401
