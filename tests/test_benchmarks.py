"""The benchmarks compute what they say: the honest floor's forwards give the contextual run's query logits,
a scaling point's operations agree with each other, its plot is written. (Their speed is measured by the
benchmarks themselves, never asserted here.)"""

from __future__ import annotations

import json

import pytest
import torch

from numeric.hf.hfcheck import random_ids, tiny_model
from tests.conftest import benchmark

pytest.importorskip("transformers")


@pytest.mark.parametrize("model_type", ["gemma3_text", "llama"])
def test_the_floor_computes_the_query_logits_with_and_without_the_context(model_type):
    """`floor_forwards`: the contextual forward's logits at the query positions only (the head on those rows),
    the plain forward's on the query; the same values as the full forwards', in float64 to round-off."""
    run = benchmark("run")
    model = tiny_model(model_type, layers=2)
    gen = torch.Generator().manual_seed(2)
    ctx, q = random_ids(7, 64, gen), random_ids(4, 64, gen)
    full = torch.cat([ctx, q], 1)
    contextual, plain = run.floor_forwards(model, full, q)
    with torch.no_grad():
        got, want = contextual(), model(full).logits[:, ctx.shape[1]:]
        assert got.shape == want.shape == (1, 4, model.config.vocab_size)
        assert torch.allclose(got, want, rtol=0, atol=1e-12 * float(want.abs().max()))
        assert torch.allclose(plain(), model(q).logits, rtol=0, atol=1e-12)


def test_a_scaling_point_and_its_plot(tmp_path):
    """One (context, query) point of `scaling.py` on a tiny model: every operation timed, the ratios are of
    those times, generation without the context gives the ids of `model.generate` with it; the plot is a PNG."""
    scaling = benchmark("scaling")
    model = tiny_model("llama", layers=2, dtype="float32")
    res = scaling.point(model, context_len=6, query_len=3, runs=1, generation=True)
    sec = res["seconds"]
    assert set(sec) == {"contextual_forward", "plain_forward", "extraction", "generate", "generation"}
    assert res["floor_seconds"] == sec["contextual_forward"] + sec["plain_forward"]
    assert res["extraction_over_floor"] == sec["extraction"] / res["floor_seconds"]
    assert res["generation_identical"] is True
    json.dumps(res)  # what scaling.json holds
    results = {"tiny": {"context": [res], "query": [scaling.point(model, 6, 2, 1, False)]}}
    scaling.plot(results, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
