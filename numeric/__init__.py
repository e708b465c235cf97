"""Numeric side of ctxpatch: a reference block, runtime helpers for the generated kernels,
validation on random instances and on Hugging Face models."""
