"""The tiny models of numeric.hf.zoo: configs transformers' defaults cannot build small, float64 throughout,
and `Float64Mode` widening float tensors created in the default dtype."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from numeric.hf import zoo  # noqa: E402
from numeric.hf.probe import Float64Mode  # noqa: E402


@pytest.mark.parametrize("model_type", ["dbrx", "dots1", "lfm2_moe", "cohere_compass_text"])
def test_tiny_configs_that_the_defaults_cannot_build_run(model_type):
    """Each default config fails in its own modelling code (a missing rope_theta, n_shared_experts None,
    layer_types None, an empty per-layer rope); with the zoo's fixes the tiny model builds and runs."""
    model = zoo.tiny_model(model_type, layers=2)
    assert sum(p.numel() for p in model.parameters()) <= zoo.MAX_PARAMETERS
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 2]])).logits
    assert logits.shape == (1, 4, zoo.VOCAB) and bool(torch.isfinite(logits).all())


@pytest.mark.parametrize("model_type", ["ernie4_5_moe", "hunyuan_v1_moe"])
def test_float64_tiny_models_have_no_float32_parameters(model_type):
    """transformers keeps these routers in float32 (written for half precision) even in a float64 model;
    the patch kernels then met a float32 parameter against float64 inputs."""
    model = zoo.tiny_model(model_type, layers=2)
    narrow = [k for k, v in model.state_dict().items() if v.is_floating_point() and v.dtype != torch.float64]
    assert narrow == []


def test_float64_mode_widens_default_dtype_creations():
    with Float64Mode() as mode:
        floor = torch.full((), torch.finfo(torch.float64).min)  # float32 without the mode: an overflow
        zeros = torch.zeros(3)
        ints = torch.full((2,), 1)
        told = torch.ones(2, dtype=torch.float16)
    assert floor.dtype == zeros.dtype == torch.float64 and float(floor) == torch.finfo(torch.float64).min
    assert ints.dtype == torch.int64 and told.dtype == torch.float16  # an integer fill, an explicit dtype: kept
    assert {"full()", "zeros()"} <= mode.widened


def test_xglm_runs_in_float64_and_the_mode_ends_with_the_forward():
    """The zoo's XGLM runs its forward under Float64Mode (its modelling code creates a float tensor in the default
    dtype, float32, whose minimum float64's overflows): float64 throughout, and the mode ends with the forward, a
    failing one included."""
    model = zoo.tiny_model("xglm", layers=2)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    with torch.no_grad():
        assert model(torch.tensor([[1, 5, 9]])).logits.dtype == torch.float64
        with pytest.raises(IndexError):
            model(torch.tensor([[1, 5, 10 ** 6]]))  # a token outside the vocabulary
    assert torch.zeros(1).dtype == torch.get_default_dtype()  # no mode left behind


def test_sizes_named_by_a_suffix_are_shrunk():
    """ergo names its dense and shared widths first_dense_intermediate_size and shared_intermediate_size, which
    `SIZES` does not list: left at 32768 and 8192 its tiny model was refused as too large (ergo is new in
    transformers 5.25)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if "ergo" not in CONFIG_MAPPING_NAMES:
        pytest.skip("this transformers has no ergo")
    cfg = zoo.tiny_config("ergo")
    for key in ("first_dense_intermediate_size", "shared_intermediate_size", "moe_intermediate_size"):
        assert getattr(cfg, key) <= zoo.SIZES["intermediate_size"], key


def test_a_latent_head_stays_the_sum_of_its_parts_in_per_layer_overrides():
    """dots3_note_text's sliding layers override qk_nope_head_dim and require head_dim = nope + rope; the shrunk
    override keeps that (its validator refused the tiny config before)."""
    cfg = zoo.tiny_config("dots3_note_text")
    sliding = cfg.per_layer_config["sliding_attention"]
    assert "sliding_attention" in cfg.layer_types
    assert sliding.head_dim == sliding.qk_nope_head_dim + sliding.qk_rope_head_dim


def test_widths_equal_to_a_hidden_size_follow_it_in_a_composite():
    """dots3_note's vision and audio adapters declare widths equal to their own and the text model's hidden size;
    shrunk with them, the composite config validates."""
    cfg = zoo.tiny_config("dots3_note")
    assert cfg.vision_config.adapter_in_dim == cfg.vision_config.hidden_size == zoo.SIZES["hidden_size"]


def test_top_k_never_above_the_familys_own():
    """ZAYA's validator allows one expert per token; the zoo's top-2 made its tiny config a refusal of the zoo's
    own making."""
    assert zoo.tiny_config("zaya").num_experts_per_tok == 1


def test_a_default_config_transformers_refuses_is_named_not_quoted():
    """gemma4_assistant's own default config fails its validator: the refusal names the validator and keeps the
    exception's text in the chain, not in the reason."""
    from symbolic.errors import ModelInputError

    with pytest.raises(ModelInputError, match="validator validate_architecture refuses it") as info:
        zoo.tiny_config("gemma4_assistant")
    assert "ValueError" not in str(info.value) and info.value.__cause__ is not None
