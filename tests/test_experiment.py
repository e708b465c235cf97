"""The seed paper's generation experiment on the committed trained model (a small Gemma 3 trained on
the Python standard library): float32 and the stable bfloat16 update reproduce the model WITH the
prompt; the naive bfloat16 figure is reported with where it loses precision."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from ctxpatch.cli import main  # noqa: E402
from numeric.experiment import FIXTURE, run  # noqa: E402


def test_fixture_is_committed_small_and_documented():
    weights = FIXTURE / "model.safetensors"
    assert weights.exists() and weights.stat().st_size <= 10 * 2**20
    recipe = json.loads((FIXTURE / "training.json").read_text())
    assert recipe["valid_loss_nats_per_byte"] < 2.0 and recipe["config"]["num_hidden_layers"] == 4
    layer_types = json.loads((FIXTURE / "config.json").read_text())["layer_types"]
    assert "sliding_attention" in layer_types and "full_attention" in layer_types


def test_float32_reproduces_the_model_with_the_prompt():
    out = run(dtype="float32")
    assert out["agreement"] == 1.0 and out["max_linf"] <= 1e-3, out["max_linf"]
    assert len(out["prompts"]) == 5 and all(len(r["steps"]) == 20 for r in out["prompts"])
    assert all(r["first_divergence"] is None for r in out["prompts"])


def test_stable_bfloat16_agrees_on_every_token():
    out = run(dtype="bfloat16", strategy="stable", patch_dtype="float32")
    assert out["agreement"] == 1.0
    assert out["largest_scale_patch"]["ratio"] < 10  # the remainder in the scale stays small


def test_naive_bfloat16_is_reported_with_its_loss_of_precision():
    out = run(dtype="bfloat16")
    worst = out["largest_scale_patch"]
    # Theorem 1's dw = delta / f_C is huge where f_C is tiny: that is where bfloat16 loses precision.
    assert worst["param"] == "mlp_post_norm.scale" and worst["ratio"] > 1e3
    assert out["ill_conditioned_warnings"] > 0
    assert 0.0 <= out["agreement"] <= 1.0 and out["max_linf"] > 1e-2


def test_experiment_command_and_any_local_model(tmp_path, capsys):
    """`--model PATH` takes any saved causal LM with an adapter: here a small random Llama that uses
    the fixture's byte tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.for_model("llama", vocab_size=259, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                               pad_token_id=0)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "llama")
    AutoTokenizer.from_pretrained(FIXTURE).save_pretrained(tmp_path / "llama")
    assert main(["experiment", "--model", str(tmp_path / "llama"), "--tokens", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("agreement", "max_linf", "mean_linf", "prompts", "largest_scale_patch"):
        assert key in out
    assert out["model_type"] == "llama" and out["agreement"] == 1.0
    assert main(["experiment", "--model", str(tmp_path / "nothing")]) == 2
    assert main(["experiment", "--tokens", "0"]) == 2
