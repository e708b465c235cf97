"""The Coq export: mixtures of experts and clamps printed in the vocabulary of proofs/coq, one file per
theorem (a refused proof costs only itself), and block theorems checked by coqc with their mutants refused.

The coqc tests share one project (`project`, below): every theorem they ask about is written and checked
in one `write_coq_project` call, so the vocabulary is compiled once and the files are checked two at a time."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace

import pytest

from proofs import rank1_lemma
from proofs.registry import run, theorems_for
from symbolic.kernel import VERIFIED, matvec, vec
from symbolic.kernel.coq import coq_source, coq_statement, write_coq_project

needs_coq = pytest.mark.skipif(not (coq_source() / "CtxPatch.v").exists() or shutil.which("coqc") is None,
                               reason="proofs/coq (the Coq scripts) or coqc is missing; `make install-system`")


def _theorem(name):
    return theorems_for(name)[name]()


def _verified(name):
    """`name` as the kernel checked it (with the lemmas it cites)."""
    results = run(theorems_for(name), instances=False)
    assert all(r.status == VERIFIED for r in results), [(r.theorem.name, r.status) for r in results]
    return next(r.theorem for r in results if r.theorem.name == name)


def _without(th, name, keep):
    """`th` renamed `name`, without the hypotheses `keep` rejects."""
    return replace(th, name=name, hypotheses=tuple(h for h in th.hypotheses if keep(h)))


def test_a_mixture_of_experts_is_printed_with_its_router_maps_and_their_facts():
    text = coq_statement(_theorem("block_mixtral"))
    assert "(gate : 'cV[R]_n_E.+1 -> nat -> R)" in text and "(sel : 'cV[R]_n_E.+1 -> nat -> nat)" in text
    assert "(H1 : (0 < k <= n_E.+1)%N)" in text  # the number of selected experts is an index in 1..n_E
    assert "forall (l : 'cV[R]_n_E.+1) (j : nat), 0 < gate l j <= 1" in text  # the table's fact
    assert "\\sum_(1 <= j < k.+1)" in text and "(W'_down (sel (matvec W'_router z) j))" in text
    assert "forall e : nat, W'_down e = madd (W_down e)" in text  # a family definition


def test_a_clamp_is_printed_with_max_and_min():
    text = coq_statement(_theorem("block_gpt_oss"))
    assert "(vmax (vconst (sneg (snat 7))) (vmin (vconst (snat 7))" in text


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """One project: the rank-1 lemma, a wrong copy of it (given the lemma's script) and an unscripted copy;
    Mixtral's block theorem and a mutant without the output patch of its experts (the default script); the
    stable Gemma-3 block theorem and a mutant without mean(y^2) = 1 (given the theorem's own script)."""
    base = tmp_path_factory.mktemp("coq")
    source = base / "source"
    shutil.copytree(coq_source(), source)
    scripts = source / "scripts"
    shutil.copy(scripts / "rank1_lemma.ltac", scripts / "rank1_wrong.ltac")
    shutil.copy(scripts / "block_gemma3_stable.ltac", scripts / "block_gemma3_stable_any_scale.ltac")
    good = rank1_lemma.rank1_lemma()
    mixtral, stable = _verified("block_mixtral"), _verified("block_gemma3_stable")
    theorems = [
        good,
        replace(good, name="rank1_wrong", rhs=matvec(rank1_lemma.W, vec("z", "d"))),  # W z instead of W z_C
        replace(good, name="rank1_unscripted"),
        mixtral,
        _without(mixtral, "block_mixtral_no_output_patch", lambda h: getattr(h.expr, "name", "") != "W'_down"),
        stable,
        _without(stable, "block_gemma3_stable_any_scale", lambda h: h.kind != "equation"),
    ]
    assert sum(h.kind == "equation" for h in stable.hypotheses) == 1  # the mutant drops mean(y^2) = 1 only
    out = base / "out"
    rows = write_coq_project(out, theorems, source=source, timeout=300)
    return out, {r["name"]: r for r in rows}


@needs_coq
def test_a_refused_theorem_costs_only_itself_and_the_project_builds(project):
    out, rows = project
    assert rows["rank1_lemma"] == {"name": "rank1_lemma", "checked": True, "reason": ""}
    # no script for rank1_unscripted: it is named, not exported
    assert rows["rank1_unscripted"]["checked"] is False and "no proof script" in rows["rank1_unscripted"]["reason"]
    assert not (out / "theorems" / "rank1_unscripted.v").exists()
    # the lemma's script on a wrong statement: coqc refuses it, and only it
    wrong = rows["rank1_wrong"]
    assert wrong["checked"] is False and wrong["reason"].startswith("coqc refuses the proof")
    assert (out / "refused" / "rank1_wrong.v").exists() and not (out / "theorems" / "rank1_wrong.v").exists()
    listed = (out / "_CoqProject").read_text()
    assert "theorems/rank1_lemma.v" in listed
    assert "rank1_wrong" not in listed + (out / "Theorems.v").read_text()
    subprocess.run(["coq_makefile", "-f", "_CoqProject", "-o", "Makefile.coq"], cwd=out, check=True,
                   capture_output=True)
    build = subprocess.run(["make", "-f", "Makefile.coq"], cwd=out, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    # Theorems.v requires every checked theorem and prints its assumptions: none
    checked = [n for n, r in rows.items() if r["checked"]]
    assert sorted(re.findall(r"^Print Assumptions theorems\.\w+\.(\w+)\.$", (out / "Theorems.v").read_text(),
                             re.M)) == sorted(checked) == ["block_gemma3_stable", "block_mixtral", "rank1_lemma"]
    assert build.stdout.count("Closed under the global context") >= len(checked), build.stdout
    assert "Axioms:" not in build.stdout


@needs_coq
def test_a_mixture_of_experts_block_is_checked_by_coqc_and_its_mutant_refused(project):
    _, rows = project
    assert rows["block_mixtral"] == {"name": "block_mixtral", "checked": True, "reason": ""}
    # the output patch of every expert without its share of delta: y' = y_C no longer holds
    mutant = rows["block_mixtral_no_output_patch"]
    assert mutant["checked"] is False and mutant["reason"].startswith("coqc refuses the proof")


@needs_coq
def test_a_stable_gemma_block_is_checked_by_coqc_and_refused_without_a_unit_mean_square(project):
    out, rows = project
    assert rows["block_gemma3_stable"] == {"name": "block_gemma3_stable", "checked": True, "reason": ""}
    text = (out / "theorems" / "block_gemma3_stable.v").read_text()
    assert "(H7 : h_star = vscale (ssqrt (mean (vpow h_C 2))) y)" in text and "mean (vpow y 2) = 1)" in text
    # without mean(y^2) = 1 the patched norm is sqrt(mean h_C^2 mean y^2 + eps): y' = y_C no longer holds,
    # and the script's step that uses the hypothesis (rewrite mulr1 after it) finds nothing to rewrite
    mutant = rows["block_gemma3_stable_any_scale"]
    assert mutant["checked"] is False and mutant["reason"].startswith("coqc refuses the proof")
    assert "mean (vpow y 2) = 1" not in (out / "refused" / "block_gemma3_stable_any_scale.v").read_text()
