"""ctxpatch: exact context-to-parameter patches for transformer blocks (the package face)."""
