"""Deliberately wrong formulas and proofs: each must be rejected by the proof kernel.

A mutation rebuilds a theorem with one error of the kind people make (drop eps, |z_C|^2 for
|z|^2, z and z_C swapped, a transposed factor, a sign flip, Gemma's scale without its 1 + w
offset, a wrong top-k renormalization, an off-by-one layer, ...). `tests/test_proofs.py`
checks that every one fails, and the scripts in proofs/ accept `--mutate NAME` to show it.
"""

from __future__ import annotations

from dataclasses import replace

import sympy as sp

from symbolic import catalog
from symbolic import theorems as T
from symbolic.algebra import Dot, MatVec, Outer, Vec, side_conditions
from symbolic.derive import PatchFormula
from symbolic.proof import Hypothesis, Step, Theorem, covered

z, z_C = Vec("z", "d"), Vec("z_C", "d")


def _on_patch(param: str, fn):
    def mutate(patches, hyps):
        return [fn(p) if p.param == param else p for p in patches], hyps
    return mutate


def _on_definition(atom: str, fn):
    def mutate(patches, hyps):
        return patches, [Hypothesis(h.kind, h.expr, fn(h.rhs)) if h.kind == "definition" and
                         getattr(h.expr, "name", "") == atom else h for h in hyps]
    return mutate


def _eps_to_zero(e):
    return e.subs({s: 0 for s in e.free_symbols if s.name.startswith("epsilon")})


def _block(arch, strategy=None, mutate=None):
    return lambda: T.block_theorem(catalog.load(arch), output_strategy=strategy, mutate=mutate)


def _rank1_lemma_with(fn):
    def build():
        th = T.rank1_lemma()
        lhs = fn(th.lhs)
        steps = (replace(th.steps[0], lhs=lhs),) + th.steps[1:]
        return replace(th, lhs=lhs, steps=steps)
    return build


def _scale_without_offset(patches, hyps):
    # Gemma stores w with gamma = 1 + w; rescaling gamma by s must give w' = s (1 + w) - 1, not s w - ... :
    # express the wrong update as an additive vector patch w' = s w. The additive form of the
    # derivation (gamma -> s gamma_nz, i.e. w' = s gamma_nz - 1) forgets the same offset: w' = s gamma_nz.
    w = Vec("w_post", "d")
    out = []
    for p in patches:
        if p.param == "mlp_post_norm.scale" and p.kind == "scale":
            out.append(PatchFormula(p.param, "vector", p.value * w - w))
        elif p.param == "mlp_post_norm.scale" and p.kind == "vector":
            out.append(PatchFormula(p.param, "vector", p.value + 1))
        else:
            out.append(p)
    return out, hyps


def _multilayer_off_by_one():
    """The patches of layer l aim at the contextual MLP input of layer l - 1."""
    th = T.multilayer_theorem(catalog.load("gemma3"))
    lyr = sp.Symbol("l", integer=True, positive=True)
    wrong = {Vec("u_C_l", "d"): T.ATTN_C(lyr - 1, Vec("c_prev", "d"))}
    hyps = tuple(Hypothesis(h.kind, h.expr, h.rhs.xreplace(wrong)) if h.kind == "definition" and "'" in str(h.expr)
                 else h for h in th.hypotheses)
    return replace(th, hypotheses=hyps)


def _missing_hypothesis():
    th = T.rank1_lemma()
    return replace(th, hypotheses=())  # divides by z^T z with no z != 0


def _bad_step():
    th = T.rank1_lemma()
    bad = Step(th.steps[1].lhs, MatVec(T.W, z) + MatVec(T.W, z_C - z) / 2, "cancel z^T z (wrongly)")
    steps = (th.steps[0], bad, replace(th.steps[2], lhs=bad.rhs))
    return replace(th, steps=steps)


MUTATIONS: dict[str, tuple[str, object]] = {
    "drop_eps": ("gemma3 Theorem 1 with eps dropped from f(h_C)", _block("gemma3", mutate=_on_definition(
        "f_C", _eps_to_zero))),
    "norm_of_z_C": ("rank-1 lemma dividing by |z_C|^2 instead of |z|^2", _rank1_lemma_with(
        lambda e: e.subs(Dot(z, z), Dot(z_C, z_C)))),
    "swap_z_z_C": ("rank-1 patch with z and z_C swapped", _block("llama", mutate=_on_patch(
        "W_gate", lambda p: replace(p, value=p.value.xreplace({z: z_C, z_C: z}))))),
    "transposed_factor": ("rank-1 patch outer(right, left) on W_down", _block("vanilla_skip", "down_rank1",
                          _on_patch("W_down", lambda p: replace(p, value=p.right, right=p.value)))),
    "sign_flip": ("post-norm scale patch with the wrong sign", _block("gemma3", mutate=_on_patch(
        "mlp_post_norm.scale", lambda p: replace(p, value=-p.value)))),
    "scale_without_one_plus": ("Gemma scale update w' = s w instead of s (1 + w) - 1",
                               _block("gemma3", "down_rank1_norm_scalar", _scale_without_offset)),
    "topk_not_renormalized": ("OLMoE expert share delta instead of delta / sum of gates", _block(
        "olmoe", mutate=_on_patch("experts.W_down", lambda p: replace(
            p, value=p.value * sp.Add(*[a for a in p.value.atoms(sp.Sum)]))))),
    "wrong_denominator": ("W_down patch divided by |a_C| instead of |a_C|^2", _block(
        "llama", mutate=_on_patch("W_down", lambda p: replace(p, value=p.value * sp.sqrt(
            Dot(p.right, p.right)))))),
    "right_factor_z_C": ("rank-1 input patch with right factor z_C", _block("gpt2", mutate=_on_patch(
        "W_up", lambda p: replace(p, right=z_C)))),
    "bias_misses_delta": ("GPT-2 output bias patch 2 delta", _block("gpt2", mutate=_on_patch(
        "b_down", lambda p: replace(p, value=2 * p.value)))),
    "stable_remainder_dropped": ("stable update without the remainder in the scale", _block(
        "gemma3", "stable", lambda ps, hs: ([p for p in ps if p.param != "mlp_post_norm.scale"], hs))),
    "multilayer_off_by_one": ("layer l patched from the contextual state of layer l-1", _multilayer_off_by_one),
    "missing_hypothesis": ("rank-1 lemma without z != 0", _missing_hypothesis),
    "bad_algebra_step": ("a step that halves instead of cancelling z^T z", _bad_step),
    "outer_on_wrong_side": ("rank-1 patch x z^T applied as z x^T", _rank1_lemma_with(
        lambda e: e.replace(Outer, lambda a, b: Outer(b, a)))),
}


KEEP_HYPOTHESES = {"missing_hypothesis"}  # the point of that one is the uncovered denominator


def mutated(name: str) -> Theorem:
    """The mutated theorem; new denominators get hypotheses, so the error must show in the algebra."""
    th = MUTATIONS[name][1]()
    return th if name in KEEP_HYPOTHESES else _cover(th)


def _cover(th: Theorem) -> Theorem:
    extra = []
    exprs = [e for st in th.steps for e in (st.lhs, st.rhs)] + [h.rhs for h in th.hypotheses if h.kind == "definition"]
    for e in exprs:
        for c in side_conditions(e):
            if not covered(c, th) and all(h.expr != c.expr for h in extra):
                extra.append(Hypothesis("coords" if c.kind == "coords" else "nonzero", c.expr))
    return replace(th, hypotheses=th.hypotheses + tuple(extra))
