"""load_sae on random weights in the hub layouts, offline: metadata, hooks and outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from .hub_layout import (
    CASE_IDS,
    COMMIT,
    GEMMA_SCOPE_2,
    GEMMA_SCOPE_2_CASES,
    add_to_hf_cache,
    install_gemma_scope_2,
    gemma_scope_1_files,
    gemma_scope_2_config,
    gemma_scope_2_files,
    random_tensors,
    reference_forward,
    write_files,
)
from safetensors.numpy import save as safetensors_bytes
from sae_lens import JumpReLUSAE

from gsx.loading import LoadedSAE, load_sae

def _flat_input(loaded: LoadedSAE, x: torch.Tensor) -> torch.Tensor:
    """Shape flat test inputs as the SAE's hook contains them ([..., 4 heads, 16] for hook_z)."""
    return x.reshape(*x.shape[:-1], 4, 16) if loaded.hook_name.endswith("hook_z") else x


@pytest.mark.parametrize("case", GEMMA_SCOPE_2_CASES, ids=CASE_IDS)
def test_gemma_scope_2_release_metadata(hf_cache, case):
    release, sae_id, folder, _, layer, _, kind, hook_in, hook_out, sae_class = case
    install_gemma_scope_2(hf_cache, case)

    loaded = load_sae(release, sae_id)

    assert type(loaded.sae) is sae_class
    assert loaded.kind == kind
    assert loaded.hook_name == hook_in
    assert loaded.hook_name_out == hook_out
    assert loaded.sae.cfg.metadata.hook_name == hook_in
    assert (loaded.d_in, loaded.d_sae, loaded.d_out) == (64, 32, 64)
    assert (loaded.release, loaded.sae_id, loaded.layer) == (release, sae_id, layer)
    assert loaded.model_name == "google/gemma-3-270m"
    snapshots = hf_cache / "models--google--gemma-scope-2-270m-pt" / "snapshots"
    assert loaded.path == snapshots / COMMIT / folder
    assert loaded.sae.cfg.apply_b_dec_to_input is False
    assert loaded.sae.cfg.normalize_activations == "none"


@pytest.mark.parametrize("case", GEMMA_SCOPE_2_CASES, ids=CASE_IDS)
def test_gemma_scope_2_release_forward(hf_cache, case):
    tensors = install_gemma_scope_2(hf_cache, case, seed=11)
    loaded = load_sae(case[0], case[1])
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0)) * 2

    with torch.no_grad():
        latents = loaded.sae.encode(_flat_input(loaded, x))
        output = loaded.sae(_flat_input(loaded, x))

    expected_latents, expected_output = reference_forward(tensors, x)
    assert 0 < (expected_latents > 0).float().mean() < 1
    torch.testing.assert_close(latents, expected_latents)
    torch.testing.assert_close(output.reshape(x.shape), expected_output)
    assert output.shape == _flat_input(loaded, x).shape


def test_release_and_id_in_one_string(hf_cache):
    case = GEMMA_SCOPE_2_CASES[0]
    tensors = install_gemma_scope_2(hf_cache, case)

    loaded = load_sae(f"{case[0]}/{case[1]}")

    assert (loaded.release, loaded.sae_id) == (case[0], case[1])
    torch.testing.assert_close(loaded.sae.W_dec.detach(), torch.from_numpy(tensors["W_dec"]))


def test_sae_id_with_slash_in_one_string(hf_cache):
    release, sae_id = "gemma-scope-2-270m-pt-transcoders", "transcoder/layer_9_width_16k_l0_small_affine"
    tensors = random_tensors(64, 32, affine=True)
    files = gemma_scope_2_files(sae_id, tensors, gemma_scope_2_config("transcoder", 9, 32, affine=True))
    add_to_hf_cache(hf_cache, GEMMA_SCOPE_2, files)

    loaded = load_sae(f"{release}/{sae_id}")

    assert (loaded.release, loaded.sae_id, loaded.kind) == (release, sae_id, "affine_transcoder")
    assert (loaded.hook_name, loaded.hook_name_out) == ("blocks.9.mlp.hook_in", "blocks.9.hook_mlp_out")
    # Stored [d_in, d_out] and applied as x @ A; SAELens keeps the transpose.
    torch.testing.assert_close(loaded.sae.W_skip.detach(), torch.from_numpy(tensors["affine_skip_connection"]).T)


def test_uppercase_keys_in_safetensors(hf_cache):
    case = GEMMA_SCOPE_2_CASES[0]
    tensors = random_tensors(64, 32, seed=3)
    files = {
        f"{case[2]}/params.safetensors": safetensors_bytes(tensors),
        f"{case[2]}/config.json": gemma_scope_2_files(case[2], tensors, gemma_scope_2_config("resid_post", 1, 32))[
            f"{case[2]}/config.json"
        ],
    }
    add_to_hf_cache(hf_cache, GEMMA_SCOPE_2, files)

    loaded = load_sae(case[0], case[1])

    x = torch.randn(4, 64)
    torch.testing.assert_close(loaded.sae(x), reference_forward(tensors, x)[1])


def test_dtype_and_device(hf_cache):
    case = GEMMA_SCOPE_2_CASES[0]
    tensors = install_gemma_scope_2(hf_cache, case)

    loaded = load_sae(case[0], case[1], dtype=torch.bfloat16, device="cpu")

    assert loaded.sae.W_enc.dtype == torch.bfloat16
    assert loaded.sae.cfg.dtype == "bfloat16"
    expected = torch.from_numpy(tensors["W_enc"])
    torch.testing.assert_close(loaded.sae.W_enc.detach().float(), expected, rtol=1e-2, atol=1e-2)


def test_registry_model_name_and_neuronpedia_id(hf_cache):
    release, sae_id = "gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium"
    folder = "resid_post/layer_12_width_16k_l0_medium"
    config = gemma_scope_2_config("resid_post", 12, 32)
    add_to_hf_cache(hf_cache, GEMMA_SCOPE_2, gemma_scope_2_files(folder, random_tensors(64, 32), config))

    loaded = load_sae(release, sae_id)

    assert loaded.hook_name == "blocks.12.hook_resid_post"
    assert loaded.sae.cfg.metadata.neuronpedia_id == "gemma-3-270m/12-gemmascope-2-res-16k"
    assert loaded.sae.cfg.metadata.model_name == "google/gemma-3-270m"


# ---------------------------------------------------------------------------
# Gemma Scope 1 (params.npz)


@pytest.mark.parametrize(
    ("release", "sae_id", "repo", "folder", "kind", "hook"),
    [
        (
            "gemma-scope-2b-pt-res-canonical", "layer_20/width_16k/canonical", "google/gemma-scope-2b-pt-res",
            "layer_20/width_16k/average_l0_71", "resid_post", "blocks.20.hook_resid_post",
        ),
        (
            "gemma-scope-2b-pt-att-canonical", "layer_1/width_16k/canonical", "google/gemma-scope-2b-pt-att",
            "layer_1/width_16k/average_l0_79", "attn_out", "blocks.1.attn.hook_z",
        ),
        (
            "gemma-scope-2b-pt-mlp-canonical", "layer_1/width_16k/canonical", "google/gemma-scope-2b-pt-mlp",
            "layer_1/width_16k/average_l0_105", "mlp_out", "blocks.1.hook_mlp_out",
        ),
    ],
    ids=["res", "att", "mlp"],
)  # fmt: skip
def test_gemma_scope_1_canonical(hf_cache, release, sae_id, repo, folder, kind, hook):
    tensors = random_tensors(64, 32, seed=5)
    add_to_hf_cache(hf_cache, repo, gemma_scope_1_files(folder, tensors))

    loaded = load_sae(release, sae_id)

    assert type(loaded.sae) is JumpReLUSAE
    assert (loaded.kind, loaded.hook_name, loaded.hook_name_out) == (kind, hook, hook)
    assert loaded.path.parts[-3:] == tuple(folder.split("/"))
    assert loaded.model_name == "gemma-2-2b"
    x = torch.randn(3, 7, 64)
    with torch.no_grad():
        output = loaded.sae(_flat_input(loaded, x)).reshape(x.shape)
    torch.testing.assert_close(output, reference_forward(tensors, x)[1])


def test_gemma_scope_1_embedding_rescaled(hf_cache):
    folder = "embedding/width_4k/average_l0_6"
    tensors = random_tensors(64, 32, seed=6)
    add_to_hf_cache(hf_cache, "google/gemma-scope-2b-pt-res", gemma_scope_1_files(folder, tensors))

    loaded = load_sae("gemma-scope-2b-pt-res", folder)

    assert (loaded.kind, loaded.hook_name, loaded.layer) == ("embedding", "hook_embed", None)
    # hook_embed carries embeddings times sqrt(d_model); the SAE was trained without that factor.
    x = torch.randn(5, 64)
    scale = math.sqrt(64)
    expected_latents, expected_output = reference_forward(tensors, x / scale)
    with torch.no_grad():
        torch.testing.assert_close(loaded.sae.encode(x), expected_latents)
        torch.testing.assert_close(loaded.sae(x), expected_output * scale)


def test_gemma_scope_1_lowercase_keys(hf_cache):
    folder = "layer_20/width_16k/average_l0_71"
    tensors = random_tensors(64, 32, seed=8)
    lower = {name.lower(): array for name, array in tensors.items()}
    add_to_hf_cache(hf_cache, "google/gemma-scope-2b-pt-res", gemma_scope_1_files(folder, lower))

    loaded = load_sae("gemma-scope-2b-pt-res-canonical", "layer_20/width_16k/canonical")

    x = torch.randn(5, 64)
    torch.testing.assert_close(loaded.sae(x), reference_forward(tensors, x)[1])


# ---------------------------------------------------------------------------
# Local folders


def test_local_gemma_scope_2_folder(tmp_path):
    folder = tmp_path / "any_name"
    tensors = random_tensors(64, 16, affine=True, seed=9)
    config = gemma_scope_2_config("transcoder", 4, 16, affine=True)
    files = gemma_scope_2_files("x", tensors, config)
    write_files(folder, {name.removeprefix("x/"): data for name, data in files.items()})

    loaded = load_sae(folder)

    assert (loaded.release, loaded.sae_id, loaded.path) == (None, None, folder)
    assert (loaded.kind, loaded.hook_name, loaded.hook_name_out) == (
        "affine_transcoder",
        "blocks.4.mlp.hook_in",
        "blocks.4.hook_mlp_out",
    )
    assert loaded.model_name == "google/gemma-3-270m"
    x = torch.randn(6, 64)
    torch.testing.assert_close(loaded.sae(x), reference_forward(tensors, x)[1])

    # A path to the params file itself loads the same folder.
    assert load_sae(folder / "params.safetensors").path == folder


def test_local_gemma_scope_2_folder_without_config(tmp_path):
    tensors = random_tensors(64, 16)
    path = write_files(tmp_path, gemma_scope_2_files("mlp_out/layer_1_width_16k_l0_small", tensors, None))
    loaded = load_sae(path / "mlp_out/layer_1_width_16k_l0_small")
    assert (loaded.kind, loaded.hook_name) == ("mlp_out", "blocks.1.hook_mlp_out")
    assert loaded.model_name is None

    write_files(tmp_path / "plain", gemma_scope_2_files("layer_0_width_16k_l0_small", tensors, None))
    loaded = load_sae(tmp_path / "plain" / "layer_0_width_16k_l0_small", site="attn_out")
    assert (loaded.kind, loaded.hook_name) == ("attn_out", "blocks.0.attn.hook_z")


def test_local_gemma_scope_1_folder(tmp_path):
    tensors = random_tensors(64, 16, seed=10)
    repo_copy = tmp_path / "gemma-scope-2b-pt-att"
    write_files(repo_copy, gemma_scope_1_files("layer_3/width_16k/average_l0_12", tensors))

    loaded = load_sae(repo_copy / "layer_3/width_16k/average_l0_12")

    assert (loaded.kind, loaded.hook_name, loaded.model_name) == ("attn_out", "blocks.3.attn.hook_z", "gemma-2-2b")
    x = torch.randn(2, 3, 4, 16)
    torch.testing.assert_close(loaded.sae(x).flatten(-2), reference_forward(tensors, x.flatten(-2))[1])

    write_files(tmp_path / "plain", gemma_scope_1_files("layer_5", tensors))
    loaded = load_sae(tmp_path / "plain" / "layer_5" / "params.npz", site="resid_post")
    assert (loaded.kind, loaded.hook_name) == ("resid_post", "blocks.5.hook_resid_post")


def test_local_saelens_folder(tmp_path):
    from sae_lens import SAE

    cfg = {
        "architecture": "jumprelu",
        "d_in": 64,
        "d_sae": 24,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "metadata": {"hook_name": "blocks.0.hook_resid_post", "model_name": "gsx/random-tiny"},
    }
    sae = SAE.from_dict(cfg)
    tensors = random_tensors(64, 24, seed=12)
    with torch.no_grad():
        for name, array in tensors.items():
            getattr(sae, name).copy_(torch.from_numpy(array))
    sae.save_model(tmp_path / "saelens")

    loaded = load_sae(tmp_path / "saelens")

    assert (loaded.kind, loaded.hook_name, loaded.hook_name_out) == (
        "saelens",
        "blocks.0.hook_resid_post",
        "blocks.0.hook_resid_post",
    )
    assert (loaded.d_in, loaded.d_sae, loaded.layer, loaded.model_name) == (64, 24, 0, "gsx/random-tiny")
    x = torch.randn(4, 64)
    torch.testing.assert_close(loaded.sae(x), reference_forward(tensors, x)[1])


def test_local_gsx_scratch_checkpoint(tmp_path):
    jumprelu = pytest.importorskip("gsx.saes.jumprelu")
    pytest.importorskip("gsx.saes.convert")
    arrays = random_tensors(64, 16, seed=13)
    tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
    scratch = jumprelu.JumpReLUSAE.from_tensors(
        tensors, hook_name="blocks.1.hook_resid_post", model_name="gsx/random-tiny"
    )
    scratch.save(tmp_path / "scratch")

    loaded = load_sae(tmp_path / "scratch")

    assert loaded.kind == "gsx-scratch"
    assert (loaded.hook_name, loaded.hook_name_out, loaded.layer) == (
        "blocks.1.hook_resid_post",
        "blocks.1.hook_resid_post",
        1,
    )
    assert (loaded.d_in, loaded.d_sae, loaded.model_name) == (64, 16, "gsx/random-tiny")
    x = torch.randn(4, 64)
    torch.testing.assert_close(loaded.sae(x), reference_forward(arrays, x)[1])


def test_scratch_checkpoint_at_hook_z(tmp_path):
    jumprelu = pytest.importorskip("gsx.saes.jumprelu")
    pytest.importorskip("gsx.saes.convert")
    arrays = random_tensors(64, 16, seed=14)
    tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
    jumprelu.JumpReLUSAE.from_tensors(tensors, hook_name="blocks.0.attn.hook_z").save(tmp_path / "scratch")

    loaded = load_sae(tmp_path / "scratch")

    # Like every SAE at hook_z, it takes [..., n_heads, d_head] as run_with_saes passes it.
    x = torch.randn(2, 3, 4, 16)
    with torch.no_grad():
        output = loaded.sae(x)
    assert output.shape == x.shape
    torch.testing.assert_close(output.flatten(-2), reference_forward(arrays, x.flatten(-2))[1])


@pytest.mark.parametrize(
    "case", [GEMMA_SCOPE_2_CASES[1], GEMMA_SCOPE_2_CASES[4]], ids=["attn_out", "affine_transcoder"]
)
def test_to_scratch_round_trip(hf_cache, case):
    pytest.importorskip("gsx.saes.convert")
    tensors = install_gemma_scope_2(hf_cache, case)
    loaded = load_sae(case[0], case[1])

    scratch = loaded.to_scratch()

    assert (scratch.hook_name, scratch.hook_name_out) == (case[7], case[8] if case[7] != case[8] else None)
    x = torch.randn(4, 64)
    with torch.no_grad():
        torch.testing.assert_close(scratch(x), reference_forward(tensors, x)[1])
    # The loaded SAE keeps its hook_z layout after the conversion.
    assert loaded.sae.cfg.reshape_activations == ("hook_z" if case[3] == "attn_out" else "none")


def test_negative_threshold_is_logged(hf_cache, caplog):
    case = GEMMA_SCOPE_2_CASES[0]
    tensors = random_tensors(64, 32)
    tensors["threshold"] = np.full(32, -0.1, np.float32)
    config = gemma_scope_2_config("resid_post", 1, 32)
    add_to_hf_cache(hf_cache, GEMMA_SCOPE_2, gemma_scope_2_files(case[2], tensors, config))

    load_sae(case[0], case[1])

    assert "32 of 32 thresholds are negative" in caplog.text


def test_checkpoint_scaler_folded(tmp_path):
    """A SAELens training checkpoint's activation scale is folded in, so raw inputs give the trained outputs."""
    import json

    from sae_lens import JumpReLUSAE as SAELensJumpReLU
    from sae_lens import JumpReLUSAEConfig

    torch.manual_seed(0)
    sae = SAELensJumpReLU(JumpReLUSAEConfig(d_in=8, d_sae=16, normalize_activations="expected_average_only_in"))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.W_dec.normal_()
        sae.threshold.fill_(0.1)
    sae.save_model(str(tmp_path))
    factor = 0.01
    (tmp_path / "activation_scaler.json").write_text(json.dumps({"scaling_factor": factor, "has_whitening": False}))

    loaded = load_sae(str(tmp_path)).sae
    x = torch.randn(5, 8) * 100
    expected = sae.decode(sae.encode(x * factor)) / factor
    torch.testing.assert_close(loaded.decode(loaded.encode(x)), expected, rtol=1e-5, atol=1e-4)
    assert loaded.cfg.normalize_activations == "none"
