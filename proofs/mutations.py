"""Deliberately wrong formulas and proofs: each must be rejected by the proof kernel.

A mutation rebuilds a theorem with one error of the kind people make (drop eps, |z_C|^2 for |z|^2,
z and z_C swapped, a transposed factor, a sign flip, Gemma's scale without its 1 + w offset, a wrong
top-k renormalization, an off-by-one layer, ...). Block theorems are mutated on the derivation's side
(the patch formulas) before they are stated; the hand-written ones in the kernel's terms.
`tests/test_proofs.py` checks that every one fails, `ctxpatch mutate` runs them, and the scripts in
proofs/ accept `--mutate NAME` to show one.
"""

from __future__ import annotations

from dataclasses import replace

import sympy as sp

from proofs import rank1_lemma as R
from symbolic import catalog
from symbolic import kernel as K
from symbolic import theorems as T
from symbolic.derivation import PatchFormula
from symbolic.terms import Dot, Vec

z, z_C = R.z, R.z_C


def _on_patch(param: str, fn):
    def mutate(patches, hyps):
        return [fn(p) if p.param == param else p for p in patches], hyps
    return mutate


def _on_definition(atom: str, fn):
    def mutate(patches, hyps):
        return patches, [replace(h, rhs=fn(h.rhs)) if h.kind == "definition" and getattr(h.expr, "name", "") == atom
                         else h for h in hyps]
    return mutate


def _eps_to_zero(e):
    return e.subs({s: 0 for s in e.free_symbols if s.name.startswith("epsilon")})


def _block(arch, strategy=None, mutate=None):
    return lambda: T.block_theorem(catalog.load(arch), output_strategy=strategy, mutate=mutate)


def replace_in(t: K.Term, fn) -> K.Term:
    """Rebuild t bottom-up, replacing each subterm s by fn(s) (fn returns s to keep it)."""
    if isinstance(t, K.App):
        t = K.App(t.op, tuple(replace_in(a, fn) for a in t.args))
    elif isinstance(t, K.Sum):
        t = K.Sum(replace_in(t.hi, fn), replace_in(t.body, fn))
    return fn(t)


def _rank1_lemma_with(fn, th=None):
    def build():
        base = th() if th else R.rank1_lemma()
        lhs = replace_in(base.lhs, fn)
        return replace(base, lhs=lhs, steps=(replace(base.steps[0], lhs=lhs),) + base.steps[1:])
    return build


def _square_rank1_lemma():
    """The rank-1 lemma for a square W (so that a transposed outer product still type-checks)."""
    return R.rank1_lemma(K.mat("W", "d", "d"))


def _swap_outer(t):
    return K.outer(t.args[1], t.args[0]) if isinstance(t, K.App) and t.op == "outer" else t


def _z_norm_to_z_C(t):
    return K.dot(z_C, z_C) if t == K.dot(z, z) else t


def _scale_without_offset(patches, hyps):
    # Gemma stores w with gamma = 1 + w; rescaling gamma by s must give w' = s (1 + w) - 1, not s w: express
    # the wrong update as an additive vector patch w' = s w (for the additive form: w' = s gamma_nz).
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
    return T.multilayer_theorem(catalog.load("gemma3"),
                                attention_c=lambda lyr, c: K.apply(T.ATTN_C, lyr - 1, c))


def _missing_hypothesis():
    return replace(R.rank1_lemma(), hypotheses=())  # divides by z^T z with no z != 0


def _bad_step():
    th = R.rank1_lemma()
    bad = K.Step(th.steps[1].lhs, K.matvec(R.W, z) + K.matvec(R.W, z_C - z) / 2, "cancel z^T z (wrongly)")
    return replace(th, steps=(th.steps[0], bad, replace(th.steps[2], lhs=bad.rhs)))


MUTATIONS: dict[str, tuple[str, object]] = {
    "drop_eps": ("gemma3 Theorem 1 with eps dropped from f(h_C)", _block("gemma3", mutate=_on_definition(
        "f_C", _eps_to_zero))),
    "norm_of_z_C": ("rank-1 lemma dividing by |z_C|^2 instead of |z|^2", _rank1_lemma_with(_z_norm_to_z_C)),
    "swap_z_z_C": ("rank-1 patch with z and z_C swapped", _block("llama", mutate=_on_patch(
        "W_gate", lambda p: replace(p, value=p.value.xreplace({Vec("z", "d"): Vec("z_C", "d"),
                                                                Vec("z_C", "d"): Vec("z", "d")}))))),
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
        "llama", mutate=_on_patch("W_down", lambda p: replace(p, value=p.value * sp.sqrt(Dot(p.right, p.right)))))),
    "right_factor_z_C": ("rank-1 input patch with right factor z_C", _block("gpt2", mutate=_on_patch(
        "W_up", lambda p: replace(p, right=Vec("z_C", "d"))))),
    "bias_misses_delta": ("GPT-2 output bias patch 2 delta", _block("gpt2", mutate=_on_patch(
        "b_down", lambda p: replace(p, value=2 * p.value)))),
    "stable_remainder_dropped": ("stable update without the remainder in the scale", _block(
        "gemma3", "stable", lambda ps, hs: ([p for p in ps if p.param != "mlp_post_norm.scale"], hs))),
    "multilayer_off_by_one": ("layer l patched from the contextual state of layer l-1", _multilayer_off_by_one),
    "missing_hypothesis": ("rank-1 lemma without z != 0", _missing_hypothesis),
    "bad_algebra_step": ("a step that halves instead of cancelling z^T z", _bad_step),
    "outer_on_wrong_side": ("rank-1 patch x z^T applied as z x^T (square W)",
                            _rank1_lemma_with(_swap_outer, _square_rank1_lemma)),
}


KEEP_HYPOTHESES = {"missing_hypothesis"}  # the point of that one is the uncovered denominator


def mutated(name: str) -> K.Theorem:
    """The mutated theorem; new side conditions get hypotheses, so the error must show in the algebra."""
    th = MUTATIONS[name][1]()
    return th if name in KEEP_HYPOTHESES else _cover(th)


def _cover(th: K.Theorem) -> K.Theorem:
    extra = []
    for ob in K.side_conditions(th):
        if isinstance(ob.term.ty, K.Vector) or ob.kind == "coords":
            h = K.coords_nonzero(ob.term)
        else:
            h = K.positive(ob.term)
        if h not in extra:
            extra.append(h)
    return replace(th, hypotheses=th.hypotheses + tuple(extra))


def check_mutant(name: str, instances: bool = True) -> tuple[str, str]:
    """(status, message) of the mutant: the kernel's verdict, with the lemmas it cites checked unmutated
    (a kill must come from the mutation itself); "ill-typed" when the kernel's constructors refuse the
    mutated formula (a transposed factor of a non-square matrix cannot even be written)."""
    from proofs.registry import run, theorems_for

    try:
        th = mutated(name)
    except K.TypeError_ as exc:
        return "ill-typed", f"the kernel's constructors refuse the mutated term: {exc}"
    builders = {k: b for lemma in th.uses for k, b in theorems_for(lemma).items()}
    lemmas = {r.theorem.name: r for r in run(builders, instances=False)}
    if not all(r.status == K.VERIFIED for r in lemmas.values()):
        return "unchecked", "a lemma the mutant cites does not verify unmutated"
    res = K.check(th, lemmas, instances)
    return res.status, res.message
