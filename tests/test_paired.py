"""Generation as one forward of batch 2 per step (`numeric.hf.paired`): the same ids as the two one-token passes and
as the model's own greedy run with the context, the batched path taken where `batch_refusal` allows it, the two
passes where a model keeps recurrent or convolution state or positions of its own."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

from numeric.hf import generate, generate_without_context, paired, zoo  # noqa: E402
from numeric.hf.compat import cached, check_ids, kv_cache  # noqa: E402
from numeric.hf.hfcheck import greedy_with_context, random_ids  # noqa: E402
from numeric.hf.layout import layer_params  # noqa: E402
from numeric.hf.offload import get  # noqa: E402
from numeric.hf.paired import batch_refusal, pair, paired_cache, paired_mask  # noqa: E402
from numeric.hf.selection import Patcher, resolve  # noqa: E402


def _gemma3_window(dtype: torch.dtype, window: int = 3):
    """A tiny Gemma 3 whose sliding window (3) is shorter than context + query: the padded row's window layer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("gemma3_text", hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=64,
                                  max_position_embeddings=64, sliding_window=window,
                                  layer_types=["sliding_attention", "full_attention"], pad_token_id=0)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager").eval()


def _model(kind: str, dtype: torch.dtype = torch.float32):
    return _gemma3_window(dtype) if kind == "gemma3_window" else zoo.tiny_model(kind, 2, dtype, 0)


def _run(model, ctx, q, tokens: int, monkeypatch=None) -> tuple[torch.Tensor, dict]:
    """(ids, the steps each path ran) of `generate_without_context`; two passes forced with ``monkeypatch``."""
    if monkeypatch is not None:
        monkeypatch.setattr(generate, "batch_refusal", lambda *args: "forced")
    before = dict(generate.STEPS)
    ids = generate_without_context(model, ctx, q, tokens)
    if monkeypatch is not None:
        monkeypatch.undo()
    return ids, {k: v - before.get(k, 0) for k, v in generate.STEPS.items() if v - before.get(k, 0)}


@pytest.mark.parametrize("kind", ["llama", "gemma3_window", "gpt2", "gptj", "opt", "qwen2_moe"])
def test_one_batched_forward_per_step_gives_the_two_passes_ids(kind, monkeypatch):
    """Sequential, sliding-window (context 6 + query 3 > window 3), learned positions, parallel, a split branch
    (OPT) and a mixture: the batched steps' ids are the two passes' and the model's own with the context."""
    model = _model(kind)
    gen = torch.Generator().manual_seed(5)
    ctx, q = random_ids(6, 64, gen), random_ids(3, 64, gen)
    ours, ran = _run(model, ctx, q, 16)
    assert ran == {"batched": 15}
    two, ran = _run(model, ctx, q, 16, monkeypatch)
    assert ran == {"two_pass": 15}
    assert torch.equal(ours, two)
    assert torch.equal(ours, greedy_with_context(model, torch.cat([ctx, q], 1), 16))


@pytest.mark.parametrize("kind", ["llama", "gemma3_window", "gptj"])
def test_the_row_with_the_context_by_the_kernel_gives_the_same_ids(kind, monkeypatch):
    """``CONTEXT_ROW = "kernel"``: the model's MLP modules swapped out, `pair` computes row 0 by the kernel's
    forward too (the slot of a kernel that reads the MLP once for both rows): the same ids, still batched."""
    model = _model(kind)
    gen = torch.Generator().manual_seed(5)
    ctx, q = random_ids(6, 64, gen), random_ids(3, 64, gen)
    ours, _ = _run(model, ctx, q, 12)
    monkeypatch.setattr(paired, "CONTEXT_ROW", "kernel")
    before = generate.STEPS["batched"]
    assert torch.equal(generate_without_context(model, ctx, q, 12), ours)
    assert generate.STEPS["batched"] - before == 11


@pytest.mark.parametrize("kind", ["llama", "gemma3_window"])
def test_the_padded_row_never_reads_its_padding(kind):
    """Row 1's cache is left-padded by c entries the mask hides: filled with noise instead of zeros, the batched
    step gives both rows the logits of their own one-row steps (float64 round-off)."""
    model = _model(kind, torch.float64)
    gen = torch.Generator().manual_seed(1)
    ctx, q = random_ids(6, 64, gen), random_ids(4, 64, gen)
    c, n = ctx.shape[1], ctx.shape[1] + q.shape[1]
    check_ids(ctx, q, model)
    with torch.no_grad():
        out_C, out_P = model(torch.cat([ctx, q], 1), use_cache=True), model(q, use_cache=True)
        cache_C, cache_P = kv_cache(out_C, model), kv_cache(out_P, model)
        assert batch_refusal(model, (cache_C, cache_P)) is None
        token = torch.tensor([[7]])
        alone_C = model(token, **cached(model, copy.deepcopy(cache_C), n)).logits[0, -1]
        alone_P = model(token, **cached(model, copy.deepcopy(cache_P), q.shape[1])).logits[0, -1]
        both = paired_cache(cache_C, cache_P)
        for layer in both.layers:  # row 1's padding: noise where its own run had no token
            pad = layer.keys.shape[-2] - cache_P.layers[both.layers.index(layer)].keys.shape[-2]
            layer.keys[1, :, :pad] = torch.randn_like(layer.keys[1, :, :pad]) * 10
            layer.values[1, :, :pad] = torch.randn_like(layer.values[1, :, :pad]) * 10
        mask = paired_mask(c, n + 1)
        out = model(torch.cat([token, token]), attention_mask=mask, position_ids=torch.tensor([[n], [q.shape[1]]]),
                    **cached(model, both))
    assert float((out.logits[0, -1] - alone_C).abs().max()) <= 1e-12
    assert float((out.logits[1, -1] - alone_P).abs().max()) <= 1e-12


@pytest.mark.parametrize("kind, reason", [("lfm2", "LinearAttentionLayer"), ("jamba", "LinearAttentionLayer"),
                                          ("camembert", "0-based positions"), ("bloom", "no position_ids")])
def test_models_with_state_or_positions_of_their_own_take_the_two_passes(kind, reason):
    """A convolution (LFM2) or SSM (Jamba) state would carry row 1's padding into its state; RoBERTa-family models
    count positions from ``padding_idx + 1``; BLOOM takes no ``position_ids``: `batch_refusal` names why, and the
    generation runs the two passes, with the model's own ids."""
    model = _model(kind)
    gen = torch.Generator().manual_seed(5)
    ctx, q = random_ids(6, 64, gen), random_ids(3, 64, gen)
    check_ids(ctx, q, model)
    with torch.no_grad():
        cache = kv_cache(model(q, use_cache=True), model)
    assert reason in batch_refusal(model, (cache, cache))
    ours, ran = _run(model, ctx, q, 6)
    assert ran == {"two_pass": 5}
    assert torch.equal(ours, greedy_with_context(model, torch.cat([ctx, q], 1), 6))


@pytest.mark.parametrize("kind", ["llama", "gemma3_text", "qwen2_moe"])
def test_pair_patches_the_row_without_context_into_the_row_with_it(kind):
    """`pair` at one layer of a sequential block: the patched sub-block on u gives the contextual sub-block's
    output on u_C (float64), which ``contextual=True`` computes by the kernel's forward; the patches are the
    Patcher's choice."""
    model = zoo.tiny_model(kind, 2, torch.float64, 0)
    layout, candidates = resolve(model)
    patcher = Patcher(model, layout, candidates)
    gen = torch.Generator().manual_seed(3)
    u_C, u = (torch.randn(1, 32, generator=gen, dtype=torch.float64) for _ in range(2))
    kernels = candidates[layout[0].spec]
    params = layer_params(get(model, layout.layers)[0], layout[0])
    seen = []

    def patches_for(u, u_C, x, given, plain=None):
        seen.append(sorted(plain or {}))
        return patcher.layer(0, u, u_C, x, given, plain)
    y_C, y, patches = pair(kernels, params, u_C, u, patches_for, contextual=True)
    assert patches.strategies and patches.strategies[0] in kernels
    assert float((y - y_C).abs().max() / y_C.abs().max()) <= 1e-12
    unpatched = next(iter(kernels.values())).forward(params, u)
    assert float((unpatched - y_C).abs().max() / y_C.abs().max()) >= 1e-3  # the patch did the work
    assert pair(kernels, params, u_C, u, lambda *a: patches)[0] is None  # row 0 left to the model's modules
    default = next(iter(kernels.values()))
    if default.TWINS:  # the modules' products of row 1 (here the kernel's own, of u) taken as the plain products
        twins = default.products(params, u)
        _, y_twins, _ = pair(kernels, params, u_C, u, patches_for, twins=twins)
        assert seen[-1] == sorted({k for kern in kernels.values() for k in kern.TWINS.values()})
        assert float((y_twins - y).abs().max() / y.abs().max()) <= 1e-13
        # really taken, by the patch formulas and apply alike: skewed, the patches move, and apply's use of the
        # same products cancels the skew (W z + (W z_C - W z) = W z_C), so the output stays exact
        skewed = {m: v * (1 + 1e-3 * v) for m, v in twins.items()}
        _, y_skewed, moved = pair(kernels, params, u_C, u, patches_for, twins=skewed)
        _, _, fair = pair(kernels, params, u_C, u, patches_for, twins=twins)
        left = [(moved.factored[m]["left"], fair.factored[m]["left"]) for m in twins if m in fair.factored]
        assert left and max(float((a - b).abs().max() / b.abs().max()) for a, b in left) >= 1e-6
        assert float((y_skewed - y_C).abs().max() / y_C.abs().max()) <= 1e-12


def test_the_batched_generation_leaves_the_model_as_it_was():
    """The batched step swaps nothing: every module keeps its class's forward (hooks only, removed on exit)."""
    model = zoo.tiny_model("llama", 2, torch.float32, 0)
    gen = torch.Generator().manual_seed(5)
    ctx, q = random_ids(6, 64, gen), random_ids(3, 64, gen)
    generate_without_context(model, ctx, q, 4)
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
