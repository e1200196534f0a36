"""Tests for the converters between gsx's JumpReLUSAE and SAELens's JumpReLU classes."""

from __future__ import annotations

import pytest
import torch
from sae_lens import (
    JumpReLUSAEConfig,
    JumpReLUSkipTranscoder,
    JumpReLUTrainingSAE,
    JumpReLUTranscoder,
    StandardSAE,
    StandardSAEConfig,
)
from sae_lens import JumpReLUSAE as SAELensJumpReLUSAE

from gsx.saes.convert import (
    saelens_from_scratch,
    scratch_from_saelens,
    threshold_from_saelens_state_dict,
    training_saelens_from_scratch,
)
from gsx.saes.jumprelu import JumpReLUSAE
from gsx.training.scratch import ScratchTrainConfig


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    # These matrices are tiny, so threads only add hand-off cost, which dominates on a busy machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def random_tensors(d_in: int = 8, d_sae: int = 32, d_out: int | None = None, *, skip: bool = False, seed: int = 0):
    d_out = d_in if d_out is None else d_out
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "W_enc": torch.randn(d_in, d_sae, generator=generator) / d_in**0.5,
        "b_enc": 0.1 * torch.randn(d_sae, generator=generator),
        "W_dec": torch.randn(d_sae, d_out, generator=generator),
        "b_dec": 0.1 * torch.randn(d_out, generator=generator),
        "threshold": 0.3 * torch.rand(d_sae, generator=generator),
    }
    if skip:
        tensors["W_skip"] = torch.randn(d_in, d_out, generator=generator) / d_in**0.5
    return tensors


def assert_same_model(actual: JumpReLUSAE, expected: JumpReLUSAE) -> None:
    assert actual.cfg == expected.cfg
    assert sorted(actual.tensors()) == sorted(expected.tensors())
    for key, tensor in expected.tensors().items():
        assert torch.equal(actual.tensors()[key], tensor), key
        assert actual.tensors()[key].dtype == tensor.dtype, key


CASES = {
    "sae": ({}, {}, SAELensJumpReLUSAE),
    "sae_b_dec_input": ({}, {"apply_b_dec_to_input": True}, SAELensJumpReLUSAE),
    "transcoder": ({"d_out": 12}, {"hook_name_out": "blocks.3.hook_mlp_out"}, JumpReLUTranscoder),
    "square_transcoder": ({}, {"hook_name_out": "blocks.3.hook_mlp_out"}, JumpReLUTranscoder),
    "skip_transcoder": ({"d_out": 12, "skip": True}, {}, JumpReLUSkipTranscoder),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_exact(case):
    shape_options, options, expected_class = CASES[case]
    sae = JumpReLUSAE.from_tensors(
        random_tensors(**shape_options), hook_name="blocks.3.hook_mlp_in", model_name="google/gemma-3-270m", **options
    )

    converted = saelens_from_scratch(sae)
    back = scratch_from_saelens(converted)

    assert type(converted) is expected_class
    assert_same_model(back, sae)


@pytest.mark.parametrize("case", sorted(CASES))
def test_saelens_outputs_match(case):
    shape_options, options, _ = CASES[case]
    sae = JumpReLUSAE.from_tensors(random_tensors(**shape_options), **options)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(5))

    converted = saelens_from_scratch(sae)

    with torch.no_grad():
        assert torch.equal(converted.encode(x), sae.encode(x))
        if sae.W_skip is None:
            assert torch.equal(converted(x), sae(x))
        else:
            # SAELens multiplies by its [d_out, d_in] W_skip transposed and gsx by the
            # [d_in, d_out] original. The weights are equal, but the two memory layouts
            # reach different BLAS kernels, which round differently: 1e-6 absolute.
            torch.testing.assert_close(converted(x), sae(x), rtol=0, atol=1e-6)


def test_skip_transcoder_transposes_W_skip():
    sae = JumpReLUSAE.from_tensors(random_tensors(d_out=12, skip=True))

    converted = saelens_from_scratch(sae)

    assert converted.W_skip.shape == (12, 8)
    assert torch.equal(converted.W_skip, sae.W_skip.T)


def test_metadata_carried():
    sae = JumpReLUSAE.from_tensors(
        random_tensors(d_out=12),
        hook_name="blocks.3.hook_mlp_in",
        hook_name_out="blocks.3.hook_mlp_out",
        model_name="m",
    )

    converted = saelens_from_scratch(sae)

    assert converted.cfg.metadata.hook_name == "blocks.3.hook_mlp_in"
    assert converted.cfg.metadata.hook_name_out == "blocks.3.hook_mlp_out"
    assert converted.cfg.metadata.model_name == "m"
    assert converted.cfg.d_out == 12


def test_training_round_trip_exact():
    sae = JumpReLUSAE.from_tensors(random_tensors(), apply_b_dec_to_input=True, hook_name="blocks.1.hook_resid_post")
    train_cfg = ScratchTrainConfig(
        d_in=8,
        d_sae=32,
        apply_b_dec_to_input=True,
        jumprelu_bandwidth=0.2,
        jumprelu_sparsity_loss_mode="quadratic",
        target_l0=4,
        l0_coefficient=0.3,
        pre_act_loss_coefficient=1e-3,
        jumprelu_ste_to_input=True,
    )

    converted = training_saelens_from_scratch(sae, train_cfg)
    back = scratch_from_saelens(converted)

    assert type(converted) is JumpReLUTrainingSAE
    assert converted.threshold.dtype == torch.float32
    assert converted.cfg.jumprelu_bandwidth == 0.2
    assert converted.cfg.jumprelu_sparsity_loss_mode == "quadratic"
    assert converted.cfg.target_l0 == 4
    assert converted.cfg.l0_coefficient == 0.3
    assert converted.cfg.pre_act_loss_coefficient == 1e-3
    assert converted.cfg.jumprelu_ste_to_input is True
    assert converted.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert_same_model(back, sae)


def test_bfloat16_threshold_dtypes():
    sae = JumpReLUSAE.from_tensors(random_tensors()).to(torch.bfloat16)

    inference = saelens_from_scratch(sae)
    training = training_saelens_from_scratch(sae)

    assert inference.W_enc.dtype == torch.bfloat16
    assert inference.threshold.dtype == torch.bfloat16
    assert training.W_enc.dtype == torch.bfloat16
    assert training.threshold.dtype == torch.float32
    assert torch.equal(scratch_from_saelens(training).threshold, sae.threshold)


def test_native_saelens_sae_converted():
    torch.manual_seed(0)
    native = SAELensJumpReLUSAE(JumpReLUSAEConfig(d_in=8, d_sae=32, apply_b_dec_to_input=False))
    with torch.no_grad():
        native.b_enc.normal_(std=0.1)
        native.b_dec.normal_(std=0.1)
        native.threshold.uniform_(0.0, 0.3)
    x = torch.randn(64, 8)

    sae = scratch_from_saelens(native)

    with torch.no_grad():
        assert torch.equal(sae.encode(x), native.encode(x))
        assert torch.equal(sae(x), native(x))


def test_conversion_leaves_global_rng():
    sae = JumpReLUSAE.from_tensors(random_tensors())
    state = torch.get_rng_state()

    saelens_from_scratch(sae)
    training_saelens_from_scratch(sae)

    assert torch.equal(torch.get_rng_state(), state)


def test_converted_tensors_not_shared():
    sae = JumpReLUSAE.from_tensors(random_tensors())

    converted = saelens_from_scratch(sae)
    with torch.no_grad():
        converted.W_enc.zero_()
        converted.threshold.zero_()

    assert sae.W_enc.abs().sum() > 0
    assert sae.threshold.abs().sum() > 0


def test_log_threshold_state_dict():
    log_threshold = torch.tensor([-1.0, 0.0, 0.5])

    threshold = threshold_from_saelens_state_dict({"log_threshold": log_threshold})

    torch.testing.assert_close(threshold, torch.exp(log_threshold), rtol=0, atol=0)


def test_missing_threshold_state_dict():
    with pytest.raises(ValueError, match=r"neither threshold nor log_threshold, only \['W_enc'\]"):
        threshold_from_saelens_state_dict({"W_enc": torch.zeros(1)})


def test_transcoder_with_b_dec_input_rejected():
    sae = JumpReLUSAE.from_tensors(random_tensors(), apply_b_dec_to_input=True)

    with pytest.raises(ValueError, match=r"do not support apply_b_dec_to_input=True"):
        saelens_from_scratch(sae, as_transcoder=True)


def test_wide_output_as_sae_rejected():
    sae = JumpReLUSAE.from_tensors(random_tensors(d_out=12))

    with pytest.raises(ValueError, match=r"as_transcoder=False for d_in=8, d_out=12"):
        saelens_from_scratch(sae, as_transcoder=False)


def test_training_transcoder_rejected():
    sae = JumpReLUSAE.from_tensors(random_tensors(skip=True))

    with pytest.raises(ValueError, match=r"no JumpReLU training transcoder"):
        training_saelens_from_scratch(sae)


def test_training_config_mismatch_rejected():
    sae = JumpReLUSAE.from_tensors(random_tensors())

    with pytest.raises(ValueError, match=r"train_cfg.d_sae=16: the model has d_sae=32"):
        training_saelens_from_scratch(sae, ScratchTrainConfig(d_in=8, d_sae=16))


def test_standard_sae_rejected():
    standard = StandardSAE(StandardSAEConfig(d_in=8, d_sae=32))

    with pytest.raises(TypeError, match=r"unsupported SAELens class StandardSAE"):
        scratch_from_saelens(standard)


def test_unfolded_normalisation_rejected():
    sae = saelens_from_scratch(JumpReLUSAE.from_tensors(random_tensors()))
    sae.cfg.normalize_activations = "expected_average_only_in"

    with pytest.raises(ValueError, match=r"normalize_activations='expected_average_only_in'"):
        scratch_from_saelens(sae)
