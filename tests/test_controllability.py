"""Controllability verdicts: every catalog entry, the paper's Theorem 1, and counterexamples that
a numeric search confirms (while the same search reaches the target on controllable blocks)."""

from __future__ import annotations

import json

import pytest

from ctxpatch.cli import main
from numeric.check.counterexample import best_residual, witness
from symbolic import catalog
from symbolic.derivation import Restriction
from tests.conftest import EXAMPLES, verdict

JSON_KEYS = {"arch", "perfect_patch", "input_controllable", "output_controllable", "patches", "conditions",
             "counterexample"}
KINDS = {"rank1", "rank_k", "scale", "vector", "bias"}


def test_every_catalog_entry_gets_a_verified_verdict(arch):
    v = verdict(arch)
    out = v.to_json()
    assert JSON_KEYS <= set(out)
    assert out["perfect_patch"] is True, out
    assert v.derivation.hidden_match is True and v.derivation.output_match is True
    assert all(p["kind"] in KINDS for p in out["patches"])
    assert out["counterexample"] is None


def test_gemma3_is_the_papers_theorem_1(capsys):
    assert main(["check", "gemma3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["perfect_patch"] and out["input_controllable"] and out["output_controllable"]
    patches = {(p["param"], p["kind"]) for p in out["patches"]}
    assert patches == {("W_gate", "rank1"), ("W_up", "rank1"), ("mlp_post_norm.scale", "vector")}
    assert "W_down" not in {p["param"] for p in out["patches"]}
    assert "z != 0" in out["conditions"]
    assert "every coordinate of f_C != 0" in out["conditions"]
    assert {"down_rank1_norm_scalar", "stable"} <= set(out["strategies"]["output"])


@pytest.mark.parametrize(("strategy", "expected"), [
    ("down_rank1_norm_scalar", {("W_down", "rank1"), ("mlp_post_norm.scale", "vector")}),  # s gamma_nz - gamma
    ("stable", {("W_down", "rank1"), ("mlp_post_norm.scale", "vector")}),
])
def test_gemma3_alternative_strategies(strategy, expected, capsys):
    assert main(["check", "gemma3", "--strategy", strategy, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["perfect_patch"] and out["output_strategy"] == strategy
    assert expected <= {(p["param"], p["kind"]) for p in out["patches"]}


@pytest.mark.parametrize(("arch", "output"), [
    ("gpt2", "down_bias"), ("bert", "down_bias"), ("llama", "down_rank1"), ("olmo2", "norm_vector"),
    ("gptj", "down_bias"), ("falcon", "down_rank1"), ("mixtral", "down_rank1"), ("vanilla", "none"),
])
def test_default_strategies_follow_the_documented_order(arch, output):
    v = verdict(arch)
    assert v.output_strategy == output
    assert v.input_strategy == ("none" if catalog.load(arch).residual == "parallel" else "rank1")


def test_mixtral_shares_delta_evenly_but_olmoe_divides_by_the_gate_sum():
    mixtral = verdict("mixtral").derivation.formula("experts.W_down")
    olmoe = verdict("olmoe").derivation.formula("experts.W_down")
    assert "Sum" not in str(mixtral.value)  # renormalized top-k: the gates sum to one
    assert "Sum" in str(olmoe.value)  # softmax before top-k, not renormalized


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_without_perfect_patch_has_a_confirmed_counterexample(path):
    v = verdict(str(path))
    out = v.to_json()
    assert out["perfect_patch"] is False
    ce = out["counterexample"]
    assert ce is not None and ce["invariant"] and ce["note"]
    assert (ce["side"] == "input") == (not out["input_controllable"])
    # Every allowed parameter of that side free (whole tensors): the target stays out of reach.
    assert best_residual(v.spec, ce, ce["side"]) > 0.1


@pytest.mark.parametrize("arch", ["gemma3", "bert", "gpt2", "olmo2"])
def test_the_same_search_reaches_the_target_when_a_patch_exists(arch):
    spec = catalog.load(arch)
    wit = witness(spec, Restriction("output", "fixed", "outer", "", "down_rank1"))
    assert best_residual(spec, wit, "output") < 1e-6
    assert best_residual(spec, wit, "input") < 1e-6


#: Why each example spec has no perfect patch: (reason, side, the stage whose invariant rules it out).
NEGATIVE = {"bert_input_only": ("fixed", "output", "outer"), "layernorm_scalar": ("scalar", "output", "mlp_post_norm"),
            "llama_frozen_up": ("range", "input", "activation"), "rmsnorm_frozen": ("range", "output", "mlp_post_norm"),
            "rmsnorm_scalar_only": ("scalar", "output", "mlp_post_norm"),
            "tanh_output": ("range", "output", "out_activation")}


def test_each_negative_example_is_refused_for_its_own_reason():
    """Every example without a perfect patch is refused for the reason it was written to show, on its side and
    at its stage, and together they cover the three reasons the checker knows (a bounded range, a scalar, a
    fixed parameter)."""
    got = {p.stem: tuple(verdict(str(p)).counterexample[k] for k in ("reason", "side", "stage")) for p in EXAMPLES}
    assert got == NEGATIVE
    assert {r for r, _, _ in NEGATIVE.values()} == {"range", "scalar", "fixed"}


def test_check_human_output_names_the_counterexample(capsys):
    path = next(p for p in EXAMPLES if p.stem == "tanh_output")
    assert main(["check", str(path)]) == 0
    text = capsys.readouterr().out
    assert "no perfect patch" in text and "tanh" in text
