"""Random-instance checks of the derivations and the generated kernels, independent of any model.

`reference` is a PyTorch reference of a declared block written apart from the derivation; `numeval` and
`lambdified` evaluate the symbolic formulas on numbers; `validate` runs Algorithm 1 on stacks of random
layers; `counterexample` gives concrete numbers for a negative verdict; `mutants` checks that wrong formulas,
proofs and kernels are caught.
"""
