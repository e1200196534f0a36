"""Bad input to load_sae: one clear error that names the value and the fix, and nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gsx.loading import SAEFormatError, SAELoadError, SAENotFoundError, UnknownSAEError, load_sae

from .hub_layout import (
    GEMMA_SCOPE_2,
    add_to_hf_cache,
    gemma_scope_1_files,
    gemma_scope_2_config,
    gemma_scope_2_files,
    lowercase,
    random_tensors,
    tree,
    write_files,
)
from safetensors.numpy import save as safetensors_bytes

RELEASE = "gemma-scope-2-270m-pt-res"
SAE_ID = "layer_12_width_16k_l0_medium"
FOLDER = "resid_post/layer_12_width_16k_l0_medium"


@pytest.fixture
def load_fails(tmp_path):
    """Return a function that calls load_sae and expects `error`.

    It checks that nothing under tmp_path changed, and returns the error message.
    """

    def call(error: type[Exception], *args, match: str | None = None, **kwargs) -> str:
        before = tree(tmp_path)
        with pytest.raises(error, match=match) as info:
            load_sae(*args, **kwargs)
        assert tree(tmp_path) == before
        return str(info.value)

    return call


def _install(cache, files: dict[str, bytes]) -> None:
    add_to_hf_cache(cache, GEMMA_SCOPE_2, files)


def _good_files(**overrides) -> dict[str, bytes]:
    tensors = random_tensors(64, 32)
    tensors.update(overrides)
    return gemma_scope_2_files(FOLDER, tensors, gemma_scope_2_config("resid_post", 12, 32))


def test_error_types_subclass_builtins():
    assert issubclass(SAENotFoundError, FileNotFoundError)
    assert issubclass(UnknownSAEError, ValueError)
    assert issubclass(SAEFormatError, ValueError)
    for error in (SAENotFoundError, UnknownSAEError, SAEFormatError):
        assert issubclass(error, SAELoadError)


def test_unknown_release_suggests_nearest(hf_cache, load_fails):
    message = load_fails(UnknownSAEError, "gemma-scope-2-270m-pt-rse", SAE_ID)
    assert "unknown SAE release 'gemma-scope-2-270m-pt-rse'" in message
    assert "Did you mean: gemma-scope-2-270m-pt-res" in message


def test_unknown_sae_id_suggests_nearest(hf_cache, load_fails):
    message = load_fails(UnknownSAEError, RELEASE, "layer_12_width_16k_l0_medum")
    assert "unknown sae_id 'layer_12_width_16k_l0_medum' in release 'gemma-scope-2-270m-pt-res'" in message
    assert "layer_12_width_16k_l0_medium" in message.split("Did you mean:")[1]


def test_unknown_source_in_one_string(hf_cache, load_fails):
    load_fails(
        UnknownSAEError,
        "gemma-scope-2-27Om-pt-res/layer_12_width_16k_l0_medium",
        match="'gemma-scope-2-27Om-pt-res' is not a release id.*Did you mean",
    )
    load_fails(UnknownSAEError, f"{RELEASE}/layer_99", match="unknown sae_id 'layer_99' in release")


def test_release_without_sae_id(hf_cache, load_fails):
    load_fails(UnknownSAEError, RELEASE, match=r"release 'gemma-scope-2-270m-pt-res' has 52 SAEs; name one")


def test_missing_files_offline_names_path_and_command(hf_cache, load_fails, monkeypatch, tmp_path):
    monkeypatch.setenv("GSX_SAE_DIR", str(tmp_path / "saes"))

    message = load_fails(SAENotFoundError, RELEASE, SAE_ID)
    assert f"release '{RELEASE}', sae_id '{SAE_ID}'" in message
    assert f"{FOLDER}/params.safetensors from the hub repository {GEMMA_SCOPE_2}" in message
    assert f"GSX_SAE_DIR {tmp_path / 'saes' / FOLDER}" in message
    assert f"Hugging Face cache {hf_cache}" in message
    assert "skipped because HF_HUB_OFFLINE is set" in message
    assert f'hf download {GEMMA_SCOPE_2} --include "{FOLDER}/*"' in message
    assert f'hf download {GEMMA_SCOPE_2} --include "{FOLDER}/*" --local-dir DIR' in message


def test_missing_gemma_scope_1_files(hf_cache, load_fails):
    message = load_fails(SAENotFoundError, "gemma-scope-2b-pt-res-canonical", "layer_20/width_16k/canonical")
    assert "layer_20/width_16k/average_l0_71/params.npz from the hub repository google/gemma-scope-2b-pt-res" in message
    assert 'hf download google/gemma-scope-2b-pt-res --include "layer_20/width_16k/average_l0_71/*"' in message


def test_truncated_safetensors(hf_cache, load_fails):
    files = _good_files()
    params = files[f"{FOLDER}/params.safetensors"]
    files[f"{FOLDER}/params.safetensors"] = params[: len(params) // 2]
    _install(hf_cache, files)

    message = load_fails(SAEFormatError, RELEASE, SAE_ID)
    assert "invalid safetensors file" in message
    assert f"{FOLDER}/params.safetensors" in message
    assert "truncated file" in message


def test_safetensors_with_garbage_header(hf_cache, load_fails):
    files = _good_files()
    files[f"{FOLDER}/params.safetensors"] = b"\xff" * 64
    _install(hf_cache, files)

    load_fails(SAEFormatError, RELEASE, SAE_ID, match="header length field is")


def test_corrupt_npz(hf_cache, load_fails):
    folder = "layer_20/width_16k/average_l0_71"
    files = gemma_scope_1_files(folder, random_tensors(64, 32))
    files[f"{folder}/params.npz"] = files[f"{folder}/params.npz"][:200]
    add_to_hf_cache(hf_cache, "google/gemma-scope-2b-pt-res", files)

    load_fails(
        SAEFormatError,
        "gemma-scope-2b-pt-res-canonical",
        "layer_20/width_16k/canonical",
        match=r"invalid npz file .*average_l0_71/params\.npz: BadZipFile",
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"b_enc": np.zeros(31, np.float32)}, r"b_enc has shape \[31\], expected \[32\]"),
        ({"threshold": np.zeros((32, 1), np.float32)}, r"threshold has shape \[32, 1\], expected \[32\]"),
        ({"W_dec": np.zeros((32, 48), np.float32)}, r"b_dec has shape \[64\], expected \[48\]"),
        ({"W_enc": np.zeros(64, np.float32)}, r"W_enc \[64\] and W_dec \[32, 64\] must both be 2-D"),
    ],
    ids=["b_enc", "threshold", "W_dec", "W_enc_1d"],
)
def test_shape_mismatch_names_tensor(hf_cache, load_fails, override, message):
    _install(hf_cache, _good_files(**override))
    load_fails(SAEFormatError, RELEASE, SAE_ID, match=message)


def test_sae_must_reconstruct_its_input(hf_cache, load_fails):
    tensors = random_tensors(64, 32, d_out=48)
    _install(hf_cache, gemma_scope_2_files(FOLDER, tensors, gemma_scope_2_config("resid_post", 12, 32)))
    load_fails(SAEFormatError, RELEASE, SAE_ID, match="W_dec maps to 48 dimensions but W_enc reads 64")


def test_missing_tensor(hf_cache, load_fails):
    tensors = random_tensors(64, 32)
    del tensors["threshold"]
    _install(hf_cache, gemma_scope_2_files(FOLDER, tensors, gemma_scope_2_config("resid_post", 12, 32)))
    load_fails(SAEFormatError, RELEASE, SAE_ID, match=r"missing tensors \['threshold'\]")


def test_key_in_two_cases(hf_cache, load_fails):
    tensors = lowercase(random_tensors(64, 32))
    tensors["W_enc"] = tensors["w_enc"]
    files = {
        f"{FOLDER}/params.safetensors": safetensors_bytes(tensors),
        f"{FOLDER}/config.json": json.dumps(gemma_scope_2_config("resid_post", 12, 32)).encode(),
    }
    _install(hf_cache, files)
    load_fails(SAEFormatError, RELEASE, SAE_ID, match="contains 'W_enc' twice under different cases")


def test_affine_flag_contradicts_tensors(hf_cache, load_fails):
    release, sae_id = "gemma-scope-2-270m-pt-transcoders-all", "layer_0_width_16k_l0_small_affine"
    folder = "transcoder_all/layer_0_width_16k_l0_small_affine"
    tensors = random_tensors(64, 32)
    _install(hf_cache, gemma_scope_2_files(folder, tensors, gemma_scope_2_config("transcoder", 0, 32, affine=True)))
    load_fails(SAEFormatError, release, sae_id, match="affine_connection=True, but .* lacks affine_skip_connection")


def test_affine_tensor_on_plain_sae(hf_cache, load_fails):
    tensors = random_tensors(64, 32, affine=True)
    _install(hf_cache, gemma_scope_2_files(FOLDER, tensors, gemma_scope_2_config("resid_post", 12, 32)))
    load_fails(SAEFormatError, RELEASE, SAE_ID, match="affine_skip_connection is only valid for transcoders")


def test_bad_config_json(hf_cache, load_fails):
    files = _good_files()
    files[f"{FOLDER}/config.json"] = b"{not json"
    _install(hf_cache, files)
    load_fails(SAEFormatError, RELEASE, SAE_ID, match=r"invalid JSON in .*config\.json")


def test_unsupported_architecture(hf_cache, load_fails):
    files = _good_files()
    config = gemma_scope_2_config("resid_post", 12, 32)
    config["architecture"] = "topk"
    files[f"{FOLDER}/config.json"] = json.dumps(config).encode()
    _install(hf_cache, files)
    load_fails(SAEFormatError, RELEASE, SAE_ID, match="unsupported Gemma Scope 2 architecture 'topk'")


def test_unknown_hook_point(hf_cache, load_fails):
    files = _good_files()
    config = gemma_scope_2_config("resid_post", 12, 32)
    config["hf_hook_point_in"] = "model.layers.12.mlp.down_proj.output"
    files[f"{FOLDER}/config.json"] = json.dumps(config).encode()
    _install(hf_cache, files)
    load_fails(
        SAEFormatError, RELEASE, SAE_ID, match="unrecognised hook point .*'model.layers.12.mlp.down_proj.output'"
    )


def test_missing_local_path(tmp_path, load_fails):
    load_fails(SAENotFoundError, str(tmp_path / "nope"), match="SAE path .*nope does not exist")


def test_local_folder_without_sae_files(tmp_path, load_fails):
    (tmp_path / "empty" / "notes.txt").parent.mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    load_fails(
        SAENotFoundError,
        tmp_path / "empty",
        match=r"no SAE files in .*empty: expected params\.npz .*Found: \['notes\.txt'\]",
    )


def test_local_folder_site_unknown(tmp_path, load_fails):
    write_files(tmp_path, gemma_scope_1_files("layer_3", random_tensors(64, 8)))
    load_fails(SAEFormatError, tmp_path / "layer_3", match="cannot tell which hook .* pass site=")
    write_files(tmp_path, gemma_scope_2_files("layer_3_width_16k_l0_small", random_tensors(64, 8), None))
    load_fails(SAEFormatError, tmp_path / "layer_3_width_16k_l0_small", match="cannot tell which hook .*Pass site=")


def test_invalid_site_argument(tmp_path, load_fails):
    load_fails(SAEFormatError, tmp_path, site="resid", match="invalid site 'resid'; use one of resid_post")


def test_corrupt_saelens_folder(tmp_path, load_fails):
    folder = tmp_path / "saelens"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({"architecture": "jumprelu", "d_in": 64, "d_sae": 8}))
    (folder / "sae_weights.safetensors").write_bytes(safetensors_bytes({"W_enc": np.zeros((64, 4), np.float32)}))
    load_fails(SAEFormatError, folder, match="invalid SAELens SAE folder .*saelens")
