"""The theorems: everything in `prove all` verifies, wrong proofs and mutants are rejected, the scripts run,
and the Coq export is checked by coqc."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ctxpatch.cli import main
from proofs import multilayer, negative_results, rank1_lemma, sequence_patch
from proofs.mutations import MUTATIONS, check_mutant
from proofs.registry import GENERAL, run, theorems_for
from symbolic import catalog
from symbolic import theorems as T
from symbolic.kernel import VERIFIED, Lit, Step, Theorem, check, dot, mat, matvec, nonzero, vec
from symbolic.kernel.coq import coq_source, coq_statement, write_coq_project

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
    assert len(names) == len(out["theorems"]) == 72
    for t in out["theorems"]:
        assert t["status"] == VERIFIED and t["generic"] and t["verified_steps"] == t["steps"] > 0, t
    print(f"prove all: {len(out['theorems'])} theorems in {out['seconds']} s")


def test_multilayer_carries_the_block_side_conditions():
    """The induction step cites the block theorem and lists its side conditions at layer l."""
    block = T.block_theorem(catalog.load("gemma3"))
    multi = T.multilayer_theorem(catalog.load("gemma3"), block)
    texts = {h.text() for h in multi.assumptions}
    assert {"z_l != 0", "every coordinate of f_C_l != 0", "epsilon_pre > 0"} <= texts, texts
    assert multi.steps[0].lemma == "block_gemma3" and multi.uses == ("block_gemma3",)
    lemmas = {"rank1_lemma": check(rank1_lemma.rank1_lemma(), instances=False)}
    lemmas["block_gemma3"] = check(block, lemmas, instances=False)
    assert check(multi, lemmas, instances=False).status == VERIFIED
    weaker = replace(multi, hypotheses=tuple(h for h in multi.hypotheses if h.text() != "z_l != 0"))
    res = check(weaker, lemmas, instances=False)
    assert res.status != VERIFIED and "z_l" in res.message


def test_multilayer_with_eps_zero_states_each_norm_input_nonzero_at_layer_l(tmp_path):
    """eps = 0: z_C_l := (1 + w) u_C_l / sqrt(mean(u_C_l^2)) needs u_C_l != 0, the block's u_C != 0 at layer l
    (it was left as u_C, so the theorem was ill-formed); without it the definition is refused, naming why."""
    path = tmp_path / "gemma3_eps0.toml"
    path.write_text(catalog.text("gemma3").replace('name = "gemma3"', 'name = "gemma3_eps0"').replace(
        "eps = 1e-6", "eps = 0"))
    spec = catalog.resolve(str(path))
    block = T.block_theorem(spec)
    multi = T.multilayer_theorem(spec, block)
    texts = {h.text() for h in multi.assumptions}
    assert {"u_l != 0", "u_C_l != 0", "h_C_l != 0"} <= texts and "u_C != 0" not in texts, texts
    lemmas = {"rank1_lemma": check(rank1_lemma.rank1_lemma())}
    lemmas["block_gemma3_eps0"] = check(block, lemmas)
    assert lemmas["block_gemma3_eps0"].status == VERIFIED, lemmas["block_gemma3_eps0"].message
    res = check(multi, lemmas)
    assert res.status == VERIFIED, res.message
    weaker = replace(multi, hypotheses=tuple(h for h in multi.hypotheses if h.text() != "u_C_l != 0"))
    res = check(weaker, lemmas, instances=False)
    assert res.status != VERIFIED and "divides by sqrt(mean(u_C_l**2))" in res.message


@pytest.mark.parametrize("arch,condition", [("falcon", "-mean(s_prev) + s_prev != 0"),
                                            ("gptj", "-mean(s_prev) + s_prev != 0"),
                                            ("gpt2", "-mean(u_C_l) + u_C_l != 0")])
def test_multilayer_with_a_layernorm_at_eps_zero_states_its_input_is_not_constant(tmp_path, arch, condition):
    """A LayerNorm with eps = 0 divides by the deviation of its input: z_l := LN(s_prev) (a parallel block's MLP
    sees the layer input) needs s_prev - mean(s_prev) != 0 at layer l, and a sequential block's u_C_l needs the
    same, not u_C_l != 0 (a constant u_C_l = c 1 has 0 deviation). Each was missing: prove exited 1 on such specs."""
    path = tmp_path / f"{arch}_eps0.toml"
    text = re.sub(r"(?m)^eps = .*", "eps = 0", catalog.text(arch))
    path.write_text(text.replace(f'name = "{arch}"', f'name = "{arch}_eps0"'))
    spec = catalog.resolve(str(path))
    block = T.block_theorem(spec)
    multi = T.multilayer_theorem(spec, block)
    assert condition in {h.text() for h in multi.assumptions}
    lemmas = {"rank1_lemma": check(rank1_lemma.rank1_lemma(), instances=False)}
    lemmas[block.name] = check(block, lemmas, instances=False)
    assert lemmas[block.name].status == VERIFIED, lemmas[block.name].message
    assert check(multi, lemmas).status == VERIFIED
    weaker = replace(multi, hypotheses=tuple(h for h in multi.hypotheses if h.text() != condition))
    res = check(weaker, lemmas, instances=False)
    assert res.status != VERIFIED and "divides by sqrt(mean((-mean(" in res.message, res.message


def test_block_theorems_state_eps_positive_and_keep_sigma_opaque():
    th = T.block_theorem(catalog.load("gemma3"))
    text = " ".join(h.text() for h in th.hypotheses)
    assert "sigma(" in text and "tanh" not in text and "every elementwise sigma" in th.title
    assert "epsilon_post > 0" in text
    without = replace(th, hypotheses=tuple(h for h in th.hypotheses if h.text() != "epsilon_post > 0"))
    res = check(without, {"rank1_lemma": check(rank1_lemma.rank1_lemma())})
    assert res.status != VERIFIED and "epsilon_post" in res.message  # the square root needs it


def test_negative_results_have_concrete_bounds():
    th = negative_results.negative_bounded_activation()
    assert th.rhs == Lit(1) and check(th).status == VERIFIED


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_every_mutation_is_rejected(name):
    status, message = check_mutant(name)
    assert status not in (VERIFIED, "unchecked"), (name, message)
    assert re.search(r"step \d+|ill-formed|constructors refuse|rule instances", message), message


def test_mutations_cover_the_formula_kinds():
    described = " ".join(d for d, _ in MUTATIONS.values())
    for kind in ("eps", "swapped", "outer", "sign", "1 + w", "sum of gates", "layer l-1", "without z != 0", "halves"):
        assert kind in described, kind


def _toy(steps, hyps=None, lhs=None, rhs=None):
    z = vec("z", "d")
    return Theorem("toy", "toy", hyps if hyps is not None else (nonzero(z),), lhs if lhs is not None else
                   steps[0].lhs, rhs if rhs is not None else steps[-1].rhs, tuple(steps))


def test_kernel_rejects_a_broken_chain():
    z = vec("z", "d")
    res = check(_toy([Step(z * 2, z + z, "algebra"), Step(3 * z, 3 * z, "algebra")]))
    assert res.status != VERIFIED and "does not start where step 1 ended" in res.message


def test_kernel_rejects_uncovered_division():
    z, W = vec("z", "d"), mat("W", "m", "d")
    e = matvec(W, z) / dot(z, z)
    res = check(_toy([Step(e, e, "algebra")], hyps=()))
    assert res.status != VERIFIED and "divides by dot(z, z)" in res.message


def test_kernel_checks_lemma_instances_and_their_status():
    lem = check(rank1_lemma.rank1_lemma())
    W2, z, zc = mat("W2", "m", "d"), vec("z", "d"), vec("z_C", "d")
    good = Step(matvec(rank1_lemma.rank1_patch(W2, z, zc), z), matvec(W2, zc), "rank-1 lemma", lemma="rank1_lemma",
                substitution=((rank1_lemma.W, W2),))
    assert check(_toy([good]), {"rank1_lemma": lem}).status == VERIFIED
    wrong = replace(good, rhs=matvec(W2, z))
    assert check(_toy([wrong]), {"rank1_lemma": lem}).status != VERIFIED
    assert check(_toy([good]), {}, instances=False).status == "unchecked"


def test_kernel_refutes_with_an_instance():
    z, zc = vec("z", "d"), vec("z_C", "d")
    res = check(_toy([Step(dot(z, zc), dot(z, z), "algebra")]))
    assert res.status == "refuted"


def test_inequality_relations_must_compose():
    th = negative_results.negative_rmsnorm_ball()
    assert check(th).status == VERIFIED
    assert check(replace(th, relation="=")).status != VERIFIED
    assert check(replace(th, relation="<=")).status == VERIFIED  # < entails <=


def test_the_sequence_theorems_verify_and_a_wrong_one_does_not():
    results = run(dict(sequence_patch.THEOREMS))
    assert [r.status for r in results] == [VERIFIED] * len(sequence_patch.THEOREMS), [r.message for r in results]
    lemma = sequence_patch.sequence_lemma()  # B c = y + W Z c: the sign of the correction flipped
    h1, h2 = lemma.hypotheses
    flipped = (h1, replace(h2, rhs=lemma.rhs + (lemma.rhs - h2.rhs)))
    assert check(replace(lemma, hypotheses=flipped)).status != VERIFIED


SCRIPTS = {"rank1_lemma": [], "controllability": [], "negative_results": [], "sequence_patch": [],
           "blocks": ["gemma3", "vanilla", "vanilla_skip"], "multilayer": ["gemma3"]}


def test_every_family_has_a_script():
    assert {p.stem for p in (ROOT / "proofs").glob("*.py")} - {"__init__", "registry", "writing", "mutations"} == set(
        SCRIPTS)
    assert multilayer.__doc__.startswith("The layer-by-layer algorithm")


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_script_runs_and_exits_0(script):
    proc = subprocess.run([sys.executable, f"proofs/{script}.py", *SCRIPTS[script]], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, (script, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "verified" in proc.stdout


def test_a_wrong_step_makes_a_script_exit_1():
    proc = subprocess.run([sys.executable, "-m", "proofs.rank1_lemma", "--mutate", "bad_algebra_step"],
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


# --------------------------------------------------------------------------- the second prover


def test_coq_statement_is_printed_from_the_kernel_theorem():
    text = coq_statement(rank1_lemma.rank1_lemma())
    assert text.splitlines()[0] == "Theorem rank1_lemma (d m : nat)"
    assert "(H1 : z != 0) :" in text
    assert text.rstrip().endswith("matvec (madd W (outer (vscale (sinv (dot z z)) (matvec W (vsub z_C z))) z)) z "
                                  "= matvec W z_C.")
    stated = coq_statement(negative_results.negative_rmsnorm_ball())
    assert "(H1 : 0 < epsilon) :" in stated and stated.rstrip().endswith("< 1.")
    bounded = coq_statement(negative_results.negative_bounded_activation())
    assert "(H1 : forall x : R, - 1 < tanh x < 1)" in bounded  # a fact of the table is a hypothesis


COQ = coq_source()
needs_coq = pytest.mark.skipif(not (COQ / "_CoqProject").exists() or shutil.which("coqc") is None,
                               reason="proofs/coq (the Coq scripts) or coqc is missing; `make install-system`")


@pytest.fixture(scope="module")
def core_theorems():
    results = run(theorems_for("rank1_lemma") | {"rank1_min_norm": rank1_lemma.rank1_min_norm} |
                  dict(negative_results.THEOREMS) | theorems_for("block_gemma3"), instances=False)
    assert all(r.status == VERIFIED for r in results)
    return [r.theorem for r in results]


@needs_coq
def test_prove_coq_writes_a_project_that_coqc_checks(tmp_path, capsys):
    assert main(["prove", "rank1_lemma", "--coq", str(tmp_path), "--json", "--no-instances"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["coq"] == [{"name": "rank1_lemma", "checked": True, "reason": ""}]
    assert (tmp_path / "_CoqProject").exists() and "Admitted" not in (tmp_path / "Theorems.v").read_text()


@needs_coq
def test_the_core_theorems_are_checked_by_coqc_and_a_mutated_statement_is_refused(tmp_path, core_theorems):
    rows = write_coq_project(tmp_path / "good", core_theorems)
    checked = {r["name"] for r in rows if r["checked"]}
    assert {"rank1_lemma", "rank1_min_norm", "negative_rmsnorm_ball", "block_gemma3"} <= checked, rows
    rank1 = next(th for th in core_theorems if th.name == "rank1_lemma")
    mutated = replace(rank1, rhs=matvec(rank1_lemma.W, vec("z", "d")))  # W z instead of W z_C
    rows = write_coq_project(tmp_path / "bad", [mutated])
    assert rows[0]["checked"] is False and "coqc refuses" in rows[0]["reason"]
