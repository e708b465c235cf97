"""No verdict without its measurement: every patch set measures itself against the run with the context
(`numeric.hf.accuracy`), judged by one bound per dtype (`numeric.hf.bounds`); a figure outside it is said once,
naming the layer and the tokens; inputs the arithmetic cannot carry are refused by name. Tiny random models;
the real models' cases are in tests/test_real_models.py."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from ctxpatch.cli import main  # noqa: E402
from numeric.hf import PatchAccuracyWarning, absorb_context, absorb_sequence, generate_without_context  # noqa: E402
from numeric.hf.bounds import (  # noqa: E402
    MARGIN,
    MEASURED,
    Float64Throughout,
    forward_error,
    logit_bound,
    storage_eps,
)
from numeric.hf.hfcheck import logit_error, random_ids, tiny_model  # noqa: E402
from numeric.kernels.runtime import IllConditionedPatchWarning  # noqa: E402
from symbolic.errors import ModelInputError  # noqa: E402

PROTOCOLS = {"one pass": ({}, "factored"), "each at its position": ({"keep_positions": True}, "factored"),
             "model": ({"computed_in": "model"}, "materialized"),
             "model, each at its position": ({"computed_in": "model", "keep_positions": True}, "materialized")}


def _pair(seed: int = 2, c: int = 6, q: int = 4):
    gen = torch.Generator().manual_seed(seed)
    return random_ids(c, 64, gen), random_ids(q, 64, gen)


@torch.no_grad()
def _contextual(model, ctx, q):
    return model(torch.cat([ctx, q], 1)).logits[0, ctx.shape[1]:]


def test_bounds_are_the_forward_error_of_two_runs_with_a_margin_and_ordered_by_precision():
    """`numeric.hf.bounds`: twice the modelled forward error, which covers the largest one measured with its margin."""
    dtypes = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
    bounds = [logit_bound(d) for d in dtypes]
    assert bounds == sorted(bounds)  # more precision, a tighter bound
    for d in dtypes:
        name = str(d).removeprefix("torch.")
        assert logit_bound(d) == 2 * forward_error(d) == logit_bound(name)  # two runs, each with its own error
        # the model covers the largest forward error measured (benchmarks/forward_error.py) with its margin
        assert forward_error(d) >= MARGIN * MEASURED[name] * storage_eps(d) > 0
    # float64 through transformers is rounded to float32 at the norms, rotary tables, softmaxes: float32's units
    assert logit_bound(torch.float64) < logit_bound(torch.float32) < 1e-4 < logit_bound(torch.bfloat16) < 0.2


def test_the_exact_run_is_float64_throughout_and_the_float64_run_is_not():
    """`Float64Throughout`, what the bounds are measured against: no float32 tensor is left in it, and the plain
    float64 run differs from it by transformers' float32 norms, rotary tables and softmaxes, by less than its
    modelled forward error."""
    model = tiny_model("gemma3_text", layers=2, dtype="float64")
    ids = torch.cat(_pair(), 1)
    with torch.no_grad():
        with Float64Throughout() as exact_run:
            exact = model(ids).logits[0]
        plain = model(ids).logits[0]
    assert exact_run.left == 0 and exact.dtype == plain.dtype == torch.float64
    assert 0 < logit_error(plain, exact) <= forward_error(torch.float64)


@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_every_protocol_measures_itself_and_its_exact_replay_reproduces_the_figure(protocol, dtype):
    """The replay in the arithmetic the patches were computed in is the run absorb_context measured, bit for bit:
    in bfloat16 too, where a sum whose terms come in another order differs in the last place (the kernels' fused
    `patched` output did, and Algorithm 1 then fitted the next layers' patches to a run no replay reproduces)."""
    options, exact = PROTOCOLS[protocol]
    model = tiny_model("gemma3_text", layers=2, dtype=dtype)
    ctx, q = _pair()
    ps = absorb_context(model, ctx, q, **options)
    acc = ps.accuracy
    assert acc.exact == exact and set(acc.figures) == {exact} and acc.bound == logit_bound(model.dtype)
    measured = acc.error(exact)
    replay = ps.logits() if exact == "factored" else ps.materialized_logits()
    assert logit_error(replay[0], _contextual(model, ctx, q)) == acc.error(exact) == measured  # bit for bit
    assert 0 < measured <= acc.bound and acc.ok
    figure = acc.figures[exact]
    assert len(figure.tokens) == q.shape[1] and len(figure.drift) == model.config.num_hidden_layers
    assert figure.top1 == 1.0


def test_a_replay_that_leaves_its_bound_warns_once_naming_the_layer_and_the_tokens():
    """A patch of layer 1 spoilt on purpose (its stored dense factors): the materialized replay leaves the bound,
    and the one warning names layer 1 as where the patched state leaves the contextual one."""
    model = tiny_model("llama", layers=3, dtype="float64")
    ctx, q = _pair(q=5)
    ps = absorb_context(model, ctx, q)
    U, V = next(iter(ps.layers[1].rank1.values()))
    U[2] *= 1.01  # token 2 only
    with pytest.warns(PatchAccuracyWarning) as caught:
        ps.materialized_logits()
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "first leaves the contextual one at layer 1" in text and "query tokens 2 (" in text
    assert "a replay in another arithmetic" in text and "computed_in='model'" in text
    assert not ps.accuracy.ok and ps.accuracy.error("materialized") > ps.accuracy.bound
    assert ps.accuracy.figures["materialized"].first_layer(ps.accuracy.bound) == 1
    assert ps.accuracy.figures["materialized"].worst(1) == [2]


def test_ill_conditioned_patches_are_one_verdict_not_a_warning_per_layer():
    """Theorem 1 in bfloat16 on 4 layers: the patches of several layers are ill-conditioned. absorb_context folds
    that into its figure (within the bound: no warning at all); the replay in the other arithmetic says so once."""
    model = tiny_model("gemma3_text", layers=4, dtype="bfloat16")
    ctx, q = _pair(q=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ps = absorb_context(model, ctx, q, strategy="norm_vector", computed_in="kernel")
    assert [w.category for w in caught] == []
    ill = sorted(ps.accuracy.ill)
    assert len(ill) >= 2 and set(ill) <= set(range(model.config.num_hidden_layers)) and ps.accuracy.ok
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ps.materialized_logits()
        ids = generate_without_context(model, ctx, q, 4, strategy="norm_vector")
    categories = [w.category for w in caught]
    assert IllConditionedPatchWarning not in categories and categories.count(PatchAccuracyWarning) <= 2
    told = [str(w.message) for w in caught if w.category is PatchAccuracyWarning]
    assert all("ill-conditioned patches at layers" in text for text in told)  # the layers named, in one line
    assert ids.shape == (1, 4)


def test_the_check_is_not_ok_when_a_figure_it_prints_is_above_its_bound(capsys):
    """hf-check prints the factored and the materialized figure; Theorem 1's factored replay in bfloat16 leaves
    the bound, so the verdict is FAILED (exit 1) with the figure named, even though the run the patches were
    computed in is within it."""
    argv = ["hf-check", "gemma3_text", "--strategy", "norm_vector", "--dtype", "bfloat16", "--layers", "4",
            "--seed", "1"]
    assert main(argv) == 1
    assert "FAILED" in capsys.readouterr().out
    assert main([*argv, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["exact"] == "materialized" and out["bound"] == logit_bound(torch.bfloat16)
    assert out["max_rel_error"] > out["bound"] >= out["materialized_rel_error"]
    assert out["problems"] == [f"factored error {out['max_rel_error']:.2e} > bound {out['bound']:.1e}"]
    assert any("this factored run is a replay in another arithmetic" in w for w in out["warnings"])
    assert main(["hf-check", "gemma3_text", "--dtype", "bfloat16", "--layers", "4", "--seed", "1"]) == 0  # the default


def test_float16_overflow_is_refused_by_name_and_float32_patches_are_checked():
    """A residual stream past 256 squares to infinity in float16 inside the patch formulas' norms (the model's own
    norms compute in float32): refused by name, not a misleading `z != 0`; float32 patches are computed, applied
    and checked like any other."""
    model = tiny_model("llama", layers=2, dtype="float16")
    with torch.no_grad():
        for name in ("up_proj", "down_proj"):
            getattr(model.model.layers[0].mlp, name).weight.mul_(300)
    ctx, q = _pair()
    with pytest.raises(ModelInputError, match=r"layer 1: the residual stream reaches .* overflows float16.*"
                                              r"patch_dtype=torch.float32"):
        absorb_context(model, ctx, q)
    ps = absorb_context(model, ctx, q, patch_dtype=torch.float32)
    assert ps.accuracy.dtype == "float16" and ps.accuracy.ok
    assert logit_error(ps.logits()[0], _contextual(model, ctx, q)) <= logit_bound(torch.float16)
    with torch.no_grad():
        model.model.norm.weight.fill_(6e4)  # the model's own final norm overflows float16: nothing to reproduce
    for call in (absorb_context, absorb_sequence):
        with pytest.raises(ModelInputError, match=r"non-finite outputs in float16.*another dtype: float64, float32, "
                                                  r"bfloat16$"):
            call(model, ctx, q, patch_dtype=torch.float32) if call is absorb_context else call(model, ctx, q)


def test_inputs_the_arithmetic_cannot_carry_are_refused_by_name(tmp_path):
    ctx, q = _pair()
    with pytest.raises(ModelInputError, match="must be a transformers model.*got torch.nn.modules.linear.Linear"):
        absorb_context(torch.nn.Linear(3, 3), ctx, q)
    model = tiny_model("llama", layers=1, dtype="float64")
    classifier = transformers.LlamaForSequenceClassification(model.config).double().eval()
    for call in (absorb_context, absorb_sequence, lambda *a: generate_without_context(*a, 2)):
        with pytest.raises(ModelInputError, match="LlamaForSequenceClassification is not a language model"):
            call(classifier, ctx, q)
    assert absorb_context(model.model, ctx, q).accuracy.ok  # a base model: its hidden states, measured
    for call in (absorb_sequence, lambda *a: generate_without_context(*a, 2)):  # these need the logits
        with pytest.raises(ModelInputError, match="LlamaModel is a base model without its language-model head"):
            call(model.model, ctx, q)
    model.train()
    for call in (lambda: absorb_context(model, ctx, q), lambda: absorb_sequence(model, ctx, q),
                 lambda: generate_without_context(model, ctx, q, 2)):
        with pytest.raises(ModelInputError, match=r"training mode.*model.eval\(\)"):
            call()
    model.eval()
    dropout = torch.nn.Dropout(0.1)  # a module left training inside an evaluated model
    model.model.layers[0].mlp.act_fn = torch.nn.Sequential(model.model.layers[0].mlp.act_fn, dropout)
    with pytest.raises(ModelInputError, match=r"dropout active at model.layers.0.mlp.act_fn.1"):
        absorb_context(model, ctx, q)
    with pytest.raises(ModelInputError, match="patch_dtype torch.bfloat16 for a torch.float32 model"):
        absorb_context(tiny_model("llama", layers=1, dtype="float32"), ctx, q, patch_dtype=torch.bfloat16)
    with pytest.raises(ModelInputError, match="computes in torch.float8_e4m3fn; allowed: float64, float32"):
        absorb_context(tiny_model("llama", layers=1, dtype="float64").to(torch.float8_e4m3fn), ctx, q)
    gpt2 = tiny_model("gpt2", layers=1, dtype="float64")  # a learned table of 128 positions
    long_ctx, _ = _pair(c=125)
    with pytest.raises(ModelInputError, match=r"needs 129 positions .* more than the 128"):
        absorb_context(gpt2, long_ctx, q)
    with pytest.raises(ModelInputError, match=r"needs 131 positions \(context 6 \+ query 4 \+ 121 generated\)"):
        generate_without_context(gpt2, ctx, q, 122)
    sp = absorb_sequence(tiny_model("llama", layers=1, dtype="float64"), ctx, q)
    (tmp_path / "a_file").write_text("")
    for path in (tmp_path / "a_file", tmp_path / "a_file" / "adapter"):
        with pytest.raises(ModelInputError, match="a_file is a file; name a folder"):
            sp.save_peft(path)
