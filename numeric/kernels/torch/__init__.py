"""Generated kernels (see `ctxpatch codegen`)."""
