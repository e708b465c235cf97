"""Numeric side of ctxpatch, in rooms that follow the pipeline.

- `numeric.kernels`: the kernels generated from the derived formulas (NumPy and PyTorch) and their run-time
  helpers;
- `numeric.check`: validation on random instances (an independent reference block, the derivations
  evaluated numerically, counterexamples, mutation testing);
- `numeric.hf`: real Hugging Face models (the layout inferred and checked, patches absorbed from a context,
  generation without it, sequence patches saved as PEFT adapters, accelerate's offload, the model zoo).

Dependencies point one way: kernels <- check <- hf.
"""
