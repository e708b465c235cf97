"""The proof kernel and the theorems: everything verifies, and wrong proofs are rejected."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ctxpatch.cli import main
from symbolic import catalog
from symbolic import theorems as T
from symbolic.algebra import Dot, MatVec, Vec
from symbolic.mutations import MUTATIONS, mutated
from symbolic.proof import VERIFIED, Step, Theorem, check, nonzero
from symbolic.prover import GENERAL, run, theorems_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prove_all():
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(["prove", "all", "--json"])
    return code, json.loads(buf.getvalue())


def test_prove_all_verifies_every_theorem(prove_all):
    code, out = prove_all
    assert code == 0 and out["failed"] == 0
    names = {t["name"] for t in out["theorems"]}
    assert set(GENERAL) <= names
    for arch in catalog.names():
        assert f"block_{arch}" in names and f"multilayer_{arch}" in names
    assert {"block_gemma3_down_rank1_norm_scalar", "block_gemma3_stable"} <= names
    for t in out["theorems"]:
        assert t["status"] == VERIFIED and t["generic"] and t["verified_steps"] == t["steps"] > 0, t
    print(f"prove all: {len(out['theorems'])} theorems in {out['seconds']} s")


def test_multilayer_carries_the_block_side_conditions():
    """The induction step cites the block theorem and lists its side conditions at layer l."""
    block = T.block_theorem(catalog.load("gemma3"))
    multi = T.multilayer_theorem(catalog.load("gemma3"), block)
    texts = {h.text() for h in multi.assumptions}
    assert {"z_l != 0", "every coordinate of f_C_l != 0"} <= texts, texts
    assert multi.steps[0].lemma == "block_gemma3" and multi.uses == ("block_gemma3",)
    lemmas = {"rank1_lemma": check(T.rank1_lemma(), instances=False)}
    lemmas["block_gemma3"] = check(block, lemmas, instances=False)
    assert check(multi, lemmas, instances=False).status == VERIFIED
    weaker = replace(multi, hypotheses=tuple(h for h in multi.hypotheses if h.text() != "z_l != 0"))
    res = check(weaker, lemmas, instances=False)
    assert res.status != VERIFIED and "z_l" in res.message


def test_negative_results_have_concrete_bounds():
    th = T.negative_bounded_activation()
    assert not th.rhs.free_symbols and check(th).status == VERIFIED


def test_block_theorems_keep_sigma_opaque():
    th = T.block_theorem(catalog.load("gemma3"))
    text = " ".join(h.text() for h in th.hypotheses)
    assert "sigma(" in text and "tanh" not in text and "every elementwise sigma" in th.title


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_every_mutation_is_rejected(name):
    th = mutated(name)
    builders = {k: b for lemma in th.uses for k, b in theorems_for(lemma).items()}
    lemmas = {r.theorem.name: r for r in run(builders, instances=False)}
    assert all(r.status == VERIFIED for r in lemmas.values())  # a kill must come from the mutation itself
    res = check(th, lemmas)
    assert res.status not in (VERIFIED, "unchecked"), (name, res.message)
    assert res.message.startswith("step ") or res.message.startswith("ill-formed")  # names the failing step


def test_at_least_ten_mutations():
    assert len(MUTATIONS) >= 10


def _toy(steps, hyps=None, lhs=None, rhs=None):
    z = Vec("z", "d")
    return Theorem("toy", "toy", hyps if hyps is not None else (nonzero(z),), lhs if lhs is not None else
                   steps[0].lhs, rhs if rhs is not None else steps[-1].rhs, tuple(steps))


def test_kernel_rejects_a_broken_chain():
    z = Vec("z", "d")
    th = _toy([Step(z * 2, z + z, "algebra"), Step(3 * z, 3 * z, "algebra")])
    res = check(th)
    assert res.status != VERIFIED and "does not start where step 1 ended" in res.message


def test_kernel_rejects_uncovered_division():
    z, W = Vec("z", "d"), T.Mat("W", "m", "d")
    e = MatVec(W, z) / Dot(z, z)  # (z / z would be cancelled by SymPy before the kernel sees it)
    th = _toy([Step(e, e, "algebra")], hyps=())
    res = check(th)
    assert res.status != VERIFIED and "no hypothesis declares nonzero" in res.message


def test_kernel_checks_lemma_instances_and_their_status():
    lem = check(T.rank1_lemma())
    W2, z, zc = T.Mat("W2", "m", "d"), Vec("z", "d"), Vec("z_C", "d")
    good = Step(MatVec(T.rank1_patch(W2, z, zc), z), MatVec(W2, zc), "rank-1 lemma", lemma="rank1_lemma",
                substitution=((T.W, W2),))
    assert check(_toy([good]), {"rank1_lemma": lem}).status == VERIFIED
    wrong = replace(good, rhs=MatVec(W2, z))
    assert check(_toy([wrong]), {"rank1_lemma": lem}).status != VERIFIED
    assert check(_toy([good]), {}).status == "unchecked"


def test_kernel_refutes_with_an_instance():
    z, zc = Vec("z", "d"), Vec("z_C", "d")
    res = check(_toy([Step(Dot(z, zc), Dot(z, z), "algebra")]))
    assert res.status == "refuted"


def test_inequality_relations_must_compose():
    th = T.negative_rmsnorm_ball()
    assert check(th).status == VERIFIED
    assert check(replace(th, relation="=")).status != VERIFIED
    assert check(replace(th, relation="<=")).status == VERIFIED  # < entails <=


def test_every_script_runs_and_exits_0():
    for script in sorted((ROOT / "proofs").glob("*.py")):
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, (script.name, proc.stdout[-2000:], proc.stderr[-2000:])
        assert "verified" in proc.stdout


def test_a_wrong_step_makes_a_script_exit_1():
    proc = subprocess.run([sys.executable, "proofs/rank1_lemma.py", "--mutate", "bad_algebra_step"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "refuted" in proc.stdout


def test_user_toml_gets_its_theorem(tmp_path, capsys):
    spec = tmp_path / "my_block.toml"
    spec.write_text(catalog.text("llama").replace('name = "llama"', 'name = "my_block"'))
    assert main(["prove", str(spec), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {t["name"] for t in out["theorems"]} >= {"block_my_block", "multilayer_my_block"}


def test_prove_rejects_a_block_without_perfect_patch(capsys):
    assert main(["prove", str(ROOT / "examples" / "tanh_output.toml")]) == 2
    assert "no perfect patch" in capsys.readouterr().err
