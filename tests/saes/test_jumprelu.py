"""Tests for the reference JumpReLU SAE: closed-form forward pass, folding, files, input checks."""

from __future__ import annotations

import json
from importlib import metadata

import pytest
import torch
from safetensors.torch import load_file

from gsx.saes.jumprelu import CONFIG_FILENAME, WEIGHTS_FILENAME, JumpReLUSAE


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    # These matrices are tiny, so threads only add hand-off cost, which dominates on a busy machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_tensors() -> dict[str, torch.Tensor]:
    """d_in=2, d_sae=3 weights whose outputs are worked out by hand in the tests below."""
    return {
        "W_enc": torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]),
        "b_enc": torch.tensor([0.0, 0.5, 0.0]),
        "W_dec": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
        "b_dec": torch.tensor([0.1, -0.1]),
        "threshold": torch.tensor([0.5, 1.0, 0.25]),
    }


def random_sae(d_in: int = 8, d_sae: int = 32, *, seed: int = 0, **options) -> JumpReLUSAE:
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "W_enc": torch.randn(d_in, d_sae, generator=generator) / d_in**0.5,
        "b_enc": 0.1 * torch.randn(d_sae, generator=generator),
        "W_dec": torch.randn(d_sae, d_in, generator=generator),
        "b_dec": 0.1 * torch.randn(d_in, generator=generator),
        "threshold": 0.3 * torch.rand(d_sae, generator=generator),
    }
    return JumpReLUSAE.from_tensors(tensors, **options)


# ---------------------------------------------------------------------- closed-form forward pass


def test_forward_closed_form():
    sae = JumpReLUSAE.from_tensors(tiny_tensors())
    x = torch.tensor([[1.0, 0.5], [-1.0, 2.0]])

    # Token 0: pre = [1*1 + 0.5*0, 0 + 0.5 + 0.5, 2 - 0.5] = [1.0, 1.0, 1.5].
    # Latent 1 equals its threshold 1.0 exactly, so it does not fire.
    # Token 1: pre = [-1, 2 + 0.5, -2 - 2] = [-1.0, 2.5, -4.0].
    expected_pre = torch.tensor([[1.0, 1.0, 1.5], [-1.0, 2.5, -4.0]])
    expected_features = torch.tensor([[1.0, 0.0, 1.5], [0.0, 2.5, 0.0]])
    # Token 0: 1.0*[1, 0] + 1.5*[1, 1] + [0.1, -0.1]; token 1: 2.5*[0, 1] + [0.1, -0.1].
    expected_reconstruction = torch.tensor([[2.6, 1.4], [0.1, 2.4]])

    assert torch.equal(sae.compute_pre_activations(x), expected_pre)
    assert torch.equal(sae.encode(x), expected_features)
    torch.testing.assert_close(sae(x), expected_reconstruction, rtol=0, atol=1e-6)


def test_threshold_equality_not_counted_in_l0():
    sae = JumpReLUSAE.from_tensors(tiny_tensors())
    x = torch.tensor([[1.0, 0.5]])

    l0 = (sae.encode(x) != 0).sum(dim=-1)

    assert l0.tolist() == [2]


def test_forward_with_b_dec_subtracted():
    sae = JumpReLUSAE.from_tensors(tiny_tensors(), apply_b_dec_to_input=True)
    x = torch.tensor([[1.0, 0.5]])

    # x - b_dec = [0.9, 0.6]; pre = [0.9, 0.6 + 0.5, 1.8 - 0.6] = [0.9, 1.1, 1.2]; all fire.
    expected_features = torch.tensor([[0.9, 1.1, 1.2]])
    # 0.9*[1, 0] + 1.1*[0, 1] + 1.2*[1, 1] + [0.1, -0.1] = [2.2, 2.2].
    expected_reconstruction = torch.tensor([[2.2, 2.2]])

    torch.testing.assert_close(sae.encode(x), expected_features, rtol=0, atol=1e-6)
    torch.testing.assert_close(sae(x), expected_reconstruction, rtol=0, atol=1e-6)


def test_forward_affine_skip_closed_form():
    tensors = tiny_tensors() | {"W_skip": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
    sae = JumpReLUSAE.from_tensors(tensors)
    x = torch.tensor([[1.0, 0.5]])

    # Decoder part [2.6, 1.4] (as above) plus x @ W_skip = [1 + 1.5, 2 + 2] = [2.5, 4.0].
    expected = torch.tensor([[5.1, 5.4]])

    assert sae.affine_skip
    torch.testing.assert_close(sae(x), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(sae.decode(sae.encode(x)), sae(x) - x @ sae.W_skip, rtol=0, atol=1e-6)


def test_transcoder_output_width():
    tensors = tiny_tensors() | {"W_dec": torch.ones(3, 5), "b_dec": torch.zeros(5)}
    sae = JumpReLUSAE.from_tensors(tensors)
    x = torch.tensor([[1.0, 0.5]])

    # Features [1.0, 0.0, 1.5] summed onto every output unit.
    assert sae.d_out == 5
    assert torch.equal(sae(x), torch.full((1, 5), 2.5))


def test_encode_keeps_leading_dimensions():
    sae = random_sae()
    x = torch.randn(2, 3, 8)

    features = sae.encode(x)

    assert features.shape == (2, 3, 32)
    # A matrix-vector product may round differently from the batched product.
    torch.testing.assert_close(features[1, 2], sae.encode(x[1, 2]), rtol=0, atol=1e-6)


def test_input_width_checked():
    sae = random_sae()

    with pytest.raises(ValueError, match=r"invalid input shape \(4, 7\).*d_in=8"):
        sae.encode(torch.zeros(4, 7))


def test_threshold_stays_float32_under_to():
    sae = random_sae().to(torch.bfloat16)

    assert sae.W_enc.dtype == torch.bfloat16
    assert sae.threshold.dtype == torch.float32
    assert sae.encode(torch.randn(4, 8)).dtype == torch.bfloat16
    assert sae.cfg.dtype == "bfloat16"


# ---------------------------------------------------------------------- folding


@pytest.mark.parametrize("apply_b_dec_to_input", [False, True])
def test_fold_W_dec_norm_keeps_outputs(apply_b_dec_to_input):
    sae = random_sae(apply_b_dec_to_input=apply_b_dec_to_input)
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(1))
    reconstruction_before = sae(x)
    active_before = sae.encode(x) != 0

    norms = sae.fold_W_dec_norm_()

    # Tolerance: float32 rounding of a rescale-and-undo, 1e-5 relative / 1e-5 absolute.
    torch.testing.assert_close(sae(x), reconstruction_before, rtol=1e-5, atol=1e-5)
    assert torch.equal(sae.encode(x) != 0, active_before)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(32), rtol=0, atol=1e-6)
    assert not torch.allclose(norms, torch.ones(32))


def test_fold_W_dec_norm_scales_threshold():
    sae = random_sae()
    threshold_before = sae.threshold.detach().clone()
    b_enc_before = sae.b_enc.detach().clone()

    norms = sae.fold_W_dec_norm_()

    torch.testing.assert_close(sae.threshold.detach(), threshold_before * norms, rtol=1e-6, atol=0)
    torch.testing.assert_close(sae.b_enc.detach(), b_enc_before * norms, rtol=1e-6, atol=0)
    assert sae.threshold.dtype == torch.float32


@pytest.mark.parametrize("apply_b_dec_to_input", [False, True])
def test_fold_scaling_factor_maps_raw_inputs(apply_b_dec_to_input):
    sae = random_sae(apply_b_dec_to_input=apply_b_dec_to_input)
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(2))
    scale = 3.7
    features_scaled = sae.encode(scale * x)
    reconstruction_scaled = sae(scale * x)

    sae.fold_activation_norm_scaling_factor_(scale)

    # Tolerance: float32 rounding, 1e-5 relative / 1e-5 absolute.
    torch.testing.assert_close(sae.encode(x), features_scaled, rtol=1e-5, atol=1e-5)
    assert torch.equal(sae.encode(x) != 0, features_scaled != 0)
    torch.testing.assert_close(sae(x), reconstruction_scaled / scale, rtol=1e-5, atol=1e-5)


def test_fold_scaling_factor_rejects_zero():
    sae = random_sae()

    with pytest.raises(ValueError, match=r"scaling_factor=0"):
        sae.fold_activation_norm_scaling_factor_(0)


# ---------------------------------------------------------------------- from_tensors checks


def test_from_tensors_copies():
    tensors = tiny_tensors()
    sae = JumpReLUSAE.from_tensors(tensors)

    tensors["W_enc"].zero_()

    assert sae.W_enc[0, 0].item() == 1.0
    assert (sae.d_in, sae.d_sae, sae.d_out) == (2, 3, 2)


@pytest.mark.parametrize(
    ("key", "bad", "message"),
    [
        ("b_enc", torch.zeros(4), r"b_enc: got \(4,\), expected \(3,\)"),
        ("W_dec", torch.zeros(4, 2), r"W_dec: got \(4, 2\), expected \(3, 2\)"),
        ("b_dec", torch.zeros(3), r"b_dec: got \(3,\), expected \(2,\)"),
        ("threshold", torch.zeros(3, 1), r"threshold: got \(3, 1\), expected \(3,\)"),
        ("W_skip", torch.zeros(2, 3), r"W_skip: got \(2, 3\), expected \(2, 2\)"),
        ("W_enc", torch.zeros(6), r"W_enc \(6,\) and W_dec \(3, 2\) must both be 2-D"),
    ],
)
def test_from_tensors_rejects_shape(key, bad, message):
    tensors = tiny_tensors() | {key: bad}

    with pytest.raises(ValueError, match=message):
        JumpReLUSAE.from_tensors(tensors)


def test_from_tensors_rejects_missing_key():
    tensors = tiny_tensors()
    del tensors["threshold"]

    with pytest.raises(ValueError, match=r"missing \['threshold'\]"):
        JumpReLUSAE.from_tensors(tensors)


def test_from_tensors_rejects_unknown_key():
    tensors = tiny_tensors() | {"log_threshold": torch.zeros(3)}

    with pytest.raises(ValueError, match=r"unknown \['log_threshold'\]"):
        JumpReLUSAE.from_tensors(tensors)


def test_from_tensors_rejects_negative_threshold():
    tensors = tiny_tensors() | {"threshold": torch.tensor([0.5, -0.25, 0.1])}

    with pytest.raises(ValueError, match=r"1 of 3 entries are negative \(min -0.25\)"):
        JumpReLUSAE.from_tensors(tensors)


def test_from_tensors_rejects_integer_tensor():
    tensors = tiny_tensors() | {"b_enc": torch.zeros(3, dtype=torch.int64)}

    with pytest.raises(ValueError, match=r"invalid tensor b_enc: expected a floating-point"):
        JumpReLUSAE.from_tensors(tensors)


def test_from_tensors_rejects_conflicting_d_in():
    with pytest.raises(ValueError, match=r"d_in.*d_in=2"):
        JumpReLUSAE.from_tensors(tiny_tensors(), d_in=5)


def test_from_tensors_rejects_affine_skip_without_W_skip():
    with pytest.raises(ValueError, match=r"affine_skip.*W_skip present: False"):
        JumpReLUSAE.from_tensors(tiny_tensors(), affine_skip=True)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"d_in": 0, "d_sae": 3}, r"invalid d_in=0"),
        ({"d_in": 2, "d_sae": -1}, r"invalid d_sae=-1"),
        ({"d_in": 2, "d_sae": 3, "d_out": 2.5}, r"invalid d_out=2.5"),
        ({"d_in": 2, "d_sae": 3, "d_out": 4, "apply_b_dec_to_input": True}, r"d_in=2 != d_out=4"),
        ({"d_in": 2, "d_sae": 3, "dtype": "int32"}, r"invalid dtype torch.int32"),
        ({"d_in": 2, "d_sae": 3, "dtype": "float33"}, r"invalid dtype 'float33'"),
    ],
)
def test_constructor_rejects_invalid(options, message):
    with pytest.raises(ValueError, match=message):
        JumpReLUSAE(**options)


# ---------------------------------------------------------------------- save and load


def test_save_load_round_trip(tmp_path):
    sae = random_sae(apply_b_dec_to_input=True)
    sae.hook_name = "blocks.5.hook_resid_post"
    sae.model_name = "google/gemma-3-270m"
    sae.metadata["note"] = "round trip"

    sae.save(tmp_path / "sae")
    loaded = JumpReLUSAE.load(tmp_path / "sae")

    assert loaded.cfg == sae.cfg
    assert loaded.metadata == {"note": "round trip"}
    for key, tensor in sae.tensors().items():
        assert torch.equal(loaded.tensors()[key], tensor), key
    x = torch.randn(16, 8)
    assert torch.equal(loaded(x), sae(x))


def test_save_writes_documented_format(tmp_path):
    sae = JumpReLUSAE.from_tensors(tiny_tensors() | {"W_skip": torch.eye(2)}, hook_name="blocks.0.hook_mlp_in")

    sae.save(tmp_path)

    cfg = json.loads((tmp_path / CONFIG_FILENAME).read_text())
    assert cfg["format"] == "gsx-scratch"
    assert cfg["format_version"] == 1
    assert (cfg["d_in"], cfg["d_sae"], cfg["d_out"]) == (2, 3, 2)
    assert cfg["affine_skip"] is True
    assert cfg["apply_b_dec_to_input"] is False
    assert cfg["hook_name"] == "blocks.0.hook_mlp_in"
    assert cfg["library_versions"]["torch"] == metadata.version("torch")
    weights = load_file(str(tmp_path / WEIGHTS_FILENAME))
    assert sorted(weights) == ["W_dec", "W_enc", "W_skip", "b_dec", "b_enc", "threshold"]
    assert torch.equal(weights["W_skip"], torch.eye(2))


def test_save_load_bfloat16(tmp_path):
    sae = random_sae().to(torch.bfloat16)

    sae.save(tmp_path)
    loaded = JumpReLUSAE.load(tmp_path)
    weights = load_file(str(tmp_path / WEIGHTS_FILENAME))

    assert weights["W_enc"].dtype == torch.bfloat16
    assert weights["threshold"].dtype == torch.float32
    assert loaded.dtype == torch.bfloat16
    assert torch.equal(loaded.threshold, sae.threshold)


def test_save_keeps_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("kept")

    random_sae().save(tmp_path)

    assert (tmp_path / "notes.txt").read_text() == "kept"


def test_load_dtype_override(tmp_path):
    random_sae().save(tmp_path)

    loaded = JumpReLUSAE.load(tmp_path, dtype="float64")

    assert loaded.dtype == torch.float64
    assert loaded.threshold.dtype == torch.float32


def test_load_rejects_other_format(tmp_path):
    random_sae().save(tmp_path)
    cfg = json.loads((tmp_path / CONFIG_FILENAME).read_text())
    cfg["format"] = "sae_lens"
    (tmp_path / CONFIG_FILENAME).write_text(json.dumps(cfg))

    with pytest.raises(ValueError, match=r"invalid checkpoint format 'sae_lens'"):
        JumpReLUSAE.load(tmp_path)


def test_load_rejects_mismatched_config(tmp_path):
    random_sae().save(tmp_path)
    cfg = json.loads((tmp_path / CONFIG_FILENAME).read_text())
    cfg["d_sae"] = 64
    (tmp_path / CONFIG_FILENAME).write_text(json.dumps(cfg))

    with pytest.raises(ValueError, match=r"d_sae=64 in cfg.json but the weights give 32"):
        JumpReLUSAE.load(tmp_path)


def test_load_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing checkpoint file"):
        JumpReLUSAE.load(tmp_path / "absent")
