"""The Coq export: mixtures of experts and clamps printed in the vocabulary of proofs/coq, one file per
theorem (a refused proof costs only itself), and a block theorem of a mixture of experts checked by coqc."""

from __future__ import annotations

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


@needs_coq
def test_a_refused_theorem_costs_only_itself_and_the_project_builds(tmp_path):
    good = rank1_lemma.rank1_lemma()
    bad = replace(good, name="rank1_wrong", rhs=matvec(rank1_lemma.W, vec("z", "d")))  # W z instead of W z_C
    rows = write_coq_project(tmp_path, [good, bad], timeout=300)
    assert rows[0] == {"name": "rank1_lemma", "checked": True, "reason": ""}
    # no script for rank1_wrong: it is named, not exported
    assert rows[1]["checked"] is False and "no proof script" in rows[1]["reason"]
    source = tmp_path / "source"
    shutil.copytree(coq_source(), source)
    shutil.copy(source / "scripts" / "rank1_lemma.ltac", source / "scripts" / "rank1_wrong.ltac")
    rows = write_coq_project(tmp_path / "out", [good, bad], source=source, timeout=300)
    assert [r["checked"] for r in rows] == [True, False]
    assert rows[1]["reason"].startswith("coqc refuses the proof")
    out = tmp_path / "out"
    assert (out / "refused" / "rank1_wrong.v").exists() and not (out / "theorems" / "rank1_wrong.v").exists()
    assert "theorems/rank1_lemma.v" in (out / "_CoqProject").read_text()
    assert "rank1_wrong" not in (out / "_CoqProject").read_text() + (out / "Theorems.v").read_text()
    subprocess.run(["coq_makefile", "-f", "_CoqProject", "-o", "Makefile.coq"], cwd=out, check=True,
                   capture_output=True)
    build = subprocess.run(["make", "-f", "Makefile.coq"], cwd=out, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    assert "Closed under the global context" in build.stdout


@needs_coq
def test_a_mixture_of_experts_block_is_checked_by_coqc_and_its_mutant_refused(tmp_path):
    results = run(theorems_for("block_mixtral"), instances=False)
    assert all(r.status == VERIFIED for r in results)
    th = next(r.theorem for r in results if r.theorem.name == "block_mixtral")
    # the output patch of every expert without its share of delta: y' = y_C no longer holds
    mutated = replace(th, hypotheses=tuple(h for h in th.hypotheses if getattr(h.expr, "name", "") != "W'_down"))
    rows = write_coq_project(tmp_path / "good", [th], timeout=300)
    assert rows == [{"name": "block_mixtral", "checked": True, "reason": ""}]
    rows = write_coq_project(tmp_path / "bad", [mutated], timeout=300)
    assert rows[0]["checked"] is False and "coqc refuses" in rows[0]["reason"]
