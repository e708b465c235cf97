"""Adversarial proofs: each is false or ill-formed, and the kernel must reject it, saying why.

Every attack is a proof a user could write against `symbolic.proof` the way proofs/ and
`symbolic.theorems` do. The test asserts the verdict is not "verified" AND that the message
names the reason (so an attack rejected for an unrelated reason does not count).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import sympy as sp

from symbolic import theorems as T
from symbolic.activations import x as X
from symbolic.algebra import Dot, Mat, MatVec, Vec
from symbolic.proof import (
    _TOKEN,
    VERIFIED,
    Hypothesis,
    ProofError,
    Result,
    Step,
    Theorem,
    check,
    coords_nonzero,
    definition,
    equation,
    nonzero,
    positive,
)

z, zc, y = Vec("z", "d"), Vec("z_C", "d"), Vec("y", "m")
W, A = T.W, Mat("A", "m", "d")
a, c = sp.symbols("a c", real=True)
i, l_, j = (sp.Symbol(n, integer=True, positive=True) for n in ("i", "l", "j"))
k = sp.Symbol("k", integer=True, positive=True)
w = sp.Symbol("w")  # no assumptions: possibly complex
F, P_ = sp.Function("F"), sp.Wild("P")


def toy(steps, hyps=(), lhs=None, rhs=None, relation="=", chain=True, name="attack"):
    steps = tuple(steps)
    return Theorem(name, name, tuple(hyps), steps[0].lhs if lhs is None else lhs,
                   steps[-1].rhs if rhs is None else rhs, steps, relation=relation, chain=chain)


@pytest.fixture(scope="module")
def lemmas():
    out = {}
    for build in (T.rank1_lemma, T.rank1_min_norm_split, T.negative_rmsnorm_ball, sum_lemma):
        th = build()
        out[th.name] = check(th, out)
        assert out[th.name].status == VERIFIED, out[th.name].message
    return out


def sum_lemma() -> Theorem:
    """sum_{j<=k} a j = a sum_{j<=k} j: a true lemma with a bound variable, to attack capture."""
    s1 = sp.Sum(a * j, (j, 1, k))
    return toy([Step(s1, a * sp.Sum(j, (j, 1, k)), "linearity")], name="sum_lemma")


def rank1_at(sub, lhs_z=z, rhs=None):
    patched = MatVec(T.rank1_patch(W, lhs_z, zc), lhs_z)
    return Step(patched, MatVec(W, zc) if rhs is None else rhs, "rank-1 lemma", lemma="rank1_lemma",
                substitution=sub)


def forged(th: Theorem) -> Result:
    return Result(th, VERIFIED, (), "", 0.0, _TOKEN)


# Each attack: (id, builder(lemmas) -> (theorem, lemmas to pass), the reason the message must name)
ATTACKS = [
    ("range_step_proves_1_eq_0", lambda L: (toy([Step(sp.S.One, sp.S.Zero, "tanh is bounded",
                                                      range_check=sp.tanh(X))]), {}), "cannot prove an equation"),
    ("range_step_ignores_its_sides", lambda L: (toy([Step(sp.S.One, sp.S.Zero, "tanh is bounded", relation="<=",
                                                          range_check=sp.tanh(X))], relation="<="), {}),
     "is not tanh(x) at some argument"),
    ("range_bound_too_small", lambda L: (toy([Step(sp.tanh(X), sp.Rational(1, 2), "tanh is bounded", relation="<",
                                                   range_check=sp.tanh(X))], relation="<"), {}), "does not give"),
    ("range_at_complex_argument", lambda L: (toy([Step(sp.tanh(w), sp.S.One, "tanh is bounded",
                                                       relation="<", range_check=sp.tanh(X))], relation="<"), {}),
     "not known to be a real scalar"),
    ("unknown_relation_in_step", lambda L: (toy([Step(sp.S.Zero, sp.S.One, "greater", relation="!=")]), {}),
     "unknown relation '!='"),
    ("unknown_relation_in_statement", lambda L: (toy([Step(a, a, "algebra")], relation="=="), {}),
     "unknown relation '=='"),
    ("greater_step_proves_x_eq_x_plus_1", lambda L: (toy([Step(a, a + 1, "claimed", relation=">")]), {}),
     "cannot establish lhs > rhs"),
    ("strict_step_composed_as_equality", lambda L: (toy([Step(a, a + 1, "true", relation="<")]), {}),
     "does not give the stated '='"),
    ("mixed_directions_compose", lambda L: (toy([Step(a, a + 1, "up", relation="<"), Step(a + 1, a, "down",
                                                                                           relation=">")],
                                                relation="<"), {}), "mix < and >"),
    ("lemma_at_z_equal_0", lambda L: (toy([Step(MatVec(W, zc), MatVec(W, zc), "rank-1 lemma at z = 0",
                                                lemma="rank1_lemma", substitution=((z, sp.S.Zero),))]), L),
     "needs nonzero(0)"),
    ("lemma_hypothesis_not_discharged", lambda L: (toy([Step(L["rank1_min_norm_split"].theorem.lhs, sp.S.Zero,
                                                             "split without D z = W (z_C - z)",
                                                             lemma="rank1_min_norm_split")], hyps=(nonzero(z),)), L),
     "rank1_min_norm_split needs (D @ z) = "),
    ("lemma_relation_ignored", lambda L: (toy([Step(L["negative_rmsnorm_ball"].theorem.lhs, sp.S.One,
                                                    "rmsnorm ball as an equation",
                                                    lemma="negative_rmsnorm_ball")]), L),
     "not an instance of negative_rmsnorm_ball (<)"),
    ("lemma_used_backwards", lambda L: (toy([Step(sp.S.One, L["negative_rmsnorm_ball"].theorem.lhs,
                                                  "rmsnorm ball reversed", relation="<",
                                                  lemma="negative_rmsnorm_ball")], relation="<"), L),
     "not an instance of negative_rmsnorm_ball (<)"),
    ("compound_term_substituted", lambda L: (toy([rank1_at(((Dot(z, z), sp.S.One),))], hyps=(nonzero(z),)), L),
     "is not a variable of the lemma"),
    ("lemma_with_m_vectors", lambda L: (toy([Step(MatVec(T.rank1_patch(W, y, Vec("y_C", "m")), y),
                                                  MatVec(W, Vec("y_C", "m")), "rank-1 lemma on m-vectors",
                                                  lemma="rank1_lemma",
                                                  substitution=((z, y), (zc, Vec("y_C", "m"))))],
                                            hyps=(nonzero(y),)), L), "ill-typed"),
    ("lemma_variable_with_a_matrix", lambda L: (toy([Step(a, a, "rank-1 lemma", lemma="rank1_lemma",
                                                          substitution=((z, W),))]), L),
     "is a vector of length d but is instantiated with a m x d matrix".replace(" x ", "x")),
    ("lemma_capture", lambda L: (toy([Step(sp.Sum(j * j, (j, 1, k)), j * sp.Sum(j, (j, 1, k)), "captured",
                                           lemma="sum_lemma", substitution=((a, j),))]), L),
     "capture a bound variable"),
    ("lemma_not_checked", lambda L: (toy([rank1_at(())], hyps=(nonzero(z),)), {}), "was not checked"),
    ("forged_lemma_result", lambda L: (toy([Step(sp.S.Zero, sp.S.One, "forged lemma 0 = 1", lemma="zero_one")]),
                                       {"zero_one": forged(toy([Step(sp.S.Zero, sp.S.One, "x")],
                                                               name="zero_one"))}), "not made by the kernel"),
    ("altered_lemma_result", lambda L: (toy([Step(sp.S.Zero, sp.S.One, "altered", lemma="zero_one")]),
                                        {"zero_one": _altered()}), "or was altered"),
    ("lemma_result_of_another_theorem", lambda L: (toy([rank1_at(())], hyps=(nonzero(z),)),
                                                   {"rank1_lemma": L["negative_rmsnorm_ball"]}), "is that of"),
    ("unverified_lemma", lambda L: (toy([Step(sp.S.Zero, sp.S.One, "by a failed lemma", lemma="zero_one")]),
                                    {"zero_one": check(toy([Step(sp.S.Zero, sp.S.One, "x")], name="zero_one"))}),
     "not verified"),
    ("definition_of_a_number", lambda L: (toy([Step(a + 1, a, "by 1 := 0")], hyps=(definition(sp.S.One, sp.S.Zero),)),
                                          {}), "must define a fresh symbol"),
    ("definition_of_a_used_symbol", lambda L: (toy([Step(MatVec(W, z), sp.S.Zero, "z := 0")],
                                                   hyps=(nonzero(z), definition(z, sp.S.Zero))), {}), "not fresh"),
    ("definition_twice", lambda L: (toy([Step(a, sp.S.One, "a := 0, a := 1")],
                                        hyps=(definition(a, sp.S.Zero), definition(a, sp.S.One))), {}), "not fresh"),
    ("recursive_definition", lambda L: (toy([Step(a, a + 1, "a := a + 1")], hyps=(definition(a, a + 1),)), {}),
     "occurs in its own definition"),
    ("definition_of_a_compound_term", lambda L: (toy([Step(Dot(z, z), sp.S.Zero, "|z|^2 := 0")],
                                                     hyps=(definition(Dot(z, z), sp.S.Zero),)), {}),
     "must define a fresh symbol"),
    ("sum_normaliser_captures", lambda L: (toy([Step(sp.Sum(i * sp.Sum((i + l_) ** 2, (l_, 1, k)), (i, 1, k)),
                                                     sp.Sum(4 * j**2, (j, 1, k)) * sp.Sum(j, (j, 1, k)),
                                                     "rename bound variables")]), {}),
     "does not normalize to zero"),
    ("dot_of_d_and_m_vectors", lambda L: (toy([Step(Dot(z, y), Dot(y, z), "symmetry")]), {}),
     "dotted with one of length"),
    ("vector_times_matrix", lambda L: (toy([Step(MatVec(y * A, z), y * MatVec(A, z), "pull x out")]), {}),
     "not a scalar multiple of one matrix"),
    ("matrix_used_as_value", lambda L: (toy([Step(W + a, W + a, "matrix plus scalar")]), {}), "ill-typed"),
    ("vectors_of_two_lengths_added", lambda L: (toy([Step(z + y, y + z, "commutativity")]), {}),
     "combined elementwise"),
    ("inequality_between_vectors", lambda L: (toy([Step(z, z + 1, "coordinatewise", relation="<")], relation="<"),
                                              {}), "inequalities relate scalars"),
    ("statement_denominator_uncovered", lambda L: (toy([Step(MatVec(W, z) / Dot(z, z), MatVec(W, z) / Dot(z, z),
                                                             "reflexivity")]), {}), "the statement divides by z"),
    ("definition_denominator_uncovered", lambda L: (toy([Step(a, a, "reflexivity")],
                                                        hyps=(definition(c, a / Dot(z, z)),)), {}),
     "hypothesis 1 divides by"),
    ("contradictory_hypotheses", lambda L: (toy([Step(MatVec(W, z), sp.S.Zero, "z = 0 since |z|^2 = 0?")],
                                                hyps=(nonzero(z), equation(Dot(z, z), sp.S.Zero),
                                                      equation(MatVec(W, z), sp.S.Zero))), {}), "vacuous"),
    ("contradictory_pattern_hypotheses", lambda L: (toy([Step(F(a) + F(c), F(a) + F(c), "reflexivity")],
                                                        hyps=(equation(F(P_), sp.S.Zero), equation(F(P_), sp.S.One))),
                                                    {}), "vacuous: no instance satisfies the hypothesis"),
    ("unknown_hypothesis_kind", lambda L: (toy([Step(a, sp.S.Zero, "by axiom")],
                                               hyps=(Hypothesis("axiom", a, sp.S.Zero),)), {}), "unknown kind"),
    ("positive_condition_on_a_vector", lambda L: (toy([Step(z, z, "reflexivity")], hyps=(positive(z),)), {}),
     "positive condition on a vector"),
    ("two_justifications", lambda L: (toy([Step(sp.tanh(X), sp.S.One, "both", relation="<", lemma="rank1_lemma",
                                                range_check=sp.tanh(X))], relation="<"), L), "one justification"),
    ("substitution_without_lemma", lambda L: (toy([Step(a, a, "x", substitution=((a, c),))]), {}),
     "substitution without a lemma"),
    ("broken_chain", lambda L: (toy([Step(2 * a, a + a, "algebra"), Step(3 * a, 3 * a, "algebra")]), {}),
     "does not start where step 1 ended"),
    ("last_fact_is_not_the_statement", lambda L: (toy([Step(a + a, 2 * a, "algebra")], lhs=a, rhs=a + 1,
                                                      chain=False), {}), "the last step is not the statement"),
    ("no_steps", lambda L: (Theorem("attack", "attack", (), a, a, ()), {}), "the proof has no steps"),
    ("coords_from_a_nonzero_hypothesis", lambda L: (toy([Step(zc / z, zc / z, "reflexivity")], hyps=(nonzero(z),)),
                                                    {}), "divides by every coordinate of z"),
]


def _altered() -> Result:
    res = check(toy([Step(sp.S.Zero, sp.S.One, "x")], name="zero_one"))
    object.__setattr__(res, "status", VERIFIED)
    return res


def test_at_least_25_distinct_attacks():
    assert len({name for name, _, _ in ATTACKS}) == len(ATTACKS) >= 25


@pytest.mark.parametrize("name,build,reason", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_is_rejected_with_its_reason(name, build, reason, lemmas):
    th, given = build(lemmas)
    res = check(th, given)
    assert res.status != VERIFIED, (name, res.message)
    assert reason in res.message + " ".join(s.message for s in res.steps), (name, res.status, res.message)


def test_results_cannot_be_made_outside_the_kernel():
    th = toy([Step(sp.S.Zero, sp.S.One, "x")])
    with pytest.raises(ProofError, match="made only by the kernel"):
        Result(th, VERIFIED)


def test_the_sum_attack_is_false_at_k_2():
    lhs = sp.Sum(i * sp.Sum((i + l_) ** 2, (l_, 1, k)), (i, 1, k)).subs(k, 2).doit()
    rhs = (sp.Sum(4 * j**2, (j, 1, k)) * sp.Sum(j, (j, 1, k))).subs(k, 2).doit()
    assert (lhs, rhs) == (63, 60)


def test_a_true_lemma_instance_is_accepted(lemmas):
    """The rules reject attacks, not proofs: a correct instantiation (W := A, dimensions renamed) verifies."""
    A2 = Mat("A", "n", "d")
    step = Step(MatVec(T.rank1_patch(A2, z, zc), z), MatVec(A2, zc), "rank-1 lemma", lemma="rank1_lemma",
                substitution=((W, A2),))
    assert check(toy([step], hyps=(nonzero(z),)), lemmas).status == VERIFIED
    backwards = replace(step, lhs=step.rhs, rhs=step.lhs)
    assert check(toy([backwards], hyps=(nonzero(z),)), lemmas).status == VERIFIED


def test_coords_hypothesis_covers_elementwise_division():
    th = toy([Step(zc / z + zc, (zc + zc * z) / z, "common denominator")], hyps=(coords_nonzero(z),))
    assert check(th).status == VERIFIED
