"""Safetensors header reading, npz reading, and the order in which release files are looked up."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from .hub_layout import (
    add_to_hf_cache,
    gemma_scope_2_config,
    gemma_scope_2_files,
    random_tensors,
    reference_forward,
    tree,
    write_files,
)
from safetensors import safe_open
from safetensors.numpy import save_file

import gsx.loading.files as files_module
from gsx.loading import SAEFormatError, SAENotFoundError, load_sae, read_safetensors_shapes
from gsx.loading.files import load_npz, resolve_release_files

REPO = "google/gemma-scope-2-270m-pt"
RELEASE = "gemma-scope-2-270m-pt-res-all"
SAE_ID = "layer_1_width_16k_l0_small"
FOLDER = "resid_post_all/layer_1_width_16k_l0_small"


def _repo_files(seed: int) -> tuple[dict, dict[str, bytes]]:
    tensors = random_tensors(64, 32, seed=seed)
    return tensors, gemma_scope_2_files(FOLDER, tensors, gemma_scope_2_config("resid_post", 1, 32))


def _assert_loaded_weights(loaded, tensors) -> None:
    torch.testing.assert_close(loaded.sae.W_enc.detach(), torch.from_numpy(tensors["W_enc"]))


# ---------------------------------------------------------------------------
# Safetensors header


def test_header_shapes_match_safetensors(tmp_path):
    path = tmp_path / "params.safetensors"
    arrays = {
        "w_enc": np.zeros((5, 7), np.float32),
        "b_enc": np.zeros(7, np.float32),
        "threshold": np.zeros(7, np.float16),
        "scalar": np.zeros((), np.float64),
    }
    save_file(arrays, str(path), metadata={"note": "x"})

    shapes = read_safetensors_shapes(path)

    with safe_open(str(path), framework="numpy") as f:
        expected = {name: list(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    assert shapes == expected
    assert shapes["w_enc"] == [5, 7]
    assert shapes["scalar"] == []


def _header_file(tmp_path, header: bytes, data: bytes = b"", length: int | None = None):
    path = tmp_path / "params.safetensors"
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return path


@pytest.mark.parametrize(
    ("header", "data", "length", "message"),
    [
        (b"", b"", None, "not valid JSON"),
        (b"[1, 2]", b"", None, "not a JSON object"),
        (b"{}", b"", 10_000, "header length field is 10000 bytes"),
        (b'{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}', b"\0" * 8, None, "truncated file"),
        (b'{"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}', b"\0" * 16, None, "does not fill"),
        (b'{"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 0]}}', b"", None, "invalid shape"),
        (b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}', b"", None, "invalid data_offsets"),
        (b'{"w": [1, 2]}', b"", None, "no dtype/shape/data_offsets"),
    ],
)
def test_header_rejects_corrupt_files(tmp_path, header, data, length, message):
    path = _header_file(tmp_path, header, data, length)
    with pytest.raises(SAEFormatError, match=message) as info:
        read_safetensors_shapes(path)
    assert str(path) in str(info.value)


def test_header_rejects_file_shorter_than_length_field(tmp_path):
    path = tmp_path / "params.safetensors"
    path.write_bytes(b"\x01\x02\x03")
    with pytest.raises(SAEFormatError, match="3 bytes, too short"):
        read_safetensors_shapes(path)


def test_load_npz_rejects_truncated_and_non_float(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, W_enc=np.ones((4, 3), np.float32))
    truncated = tmp_path / "params.npz"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(SAEFormatError, match=r"invalid npz file .*params\.npz.*BadZipFile"):
        load_npz(truncated)

    ints = tmp_path / "ints.npz"
    np.savez(ints, W_enc=np.ones((4, 3), np.int64))
    with pytest.raises(SAEFormatError, match="'W_enc' has dtype int64"):
        load_npz(ints)

    single = tmp_path / "single.npz"
    with single.open("wb") as f:
        np.save(f, np.ones(3, np.float32))
    with pytest.raises(SAEFormatError, match="single array"):
        load_npz(single)


# ---------------------------------------------------------------------------
# Search order: local_dir, then GSX_SAE_DIR, then the HF cache, then a download


def test_local_dir_wins_over_env_and_cache(hf_cache, tmp_path, monkeypatch):
    local_tensors, local_files = _repo_files(seed=1)
    env_tensors, env_files = _repo_files(seed=2)
    cache_tensors, cache_files = _repo_files(seed=3)
    write_files(tmp_path / "local", local_files)
    write_files(tmp_path / "env", env_files)
    add_to_hf_cache(hf_cache, REPO, cache_files)
    monkeypatch.setenv("GSX_SAE_DIR", str(tmp_path / "env"))

    loaded = load_sae(RELEASE, SAE_ID, local_dir=tmp_path / "local")
    assert loaded.path == tmp_path / "local" / FOLDER
    _assert_loaded_weights(loaded, local_tensors)

    loaded = load_sae(RELEASE, SAE_ID)
    assert loaded.path == tmp_path / "env" / FOLDER
    _assert_loaded_weights(loaded, env_tensors)

    monkeypatch.delenv("GSX_SAE_DIR")
    loaded = load_sae(RELEASE, SAE_ID)
    assert loaded.path.is_relative_to(hf_cache / "models--google--gemma-scope-2-270m-pt" / "snapshots")
    _assert_loaded_weights(loaded, cache_tensors)


def test_sae_dir_with_one_folder_per_repo(hf_cache, tmp_path, monkeypatch):
    tensors, files = _repo_files(seed=4)
    write_files(tmp_path / "saes" / "gemma-scope-2-270m-pt", files)
    monkeypatch.setenv("GSX_SAE_DIR", str(tmp_path / "saes"))

    loaded = load_sae(RELEASE, SAE_ID)

    assert loaded.path == tmp_path / "saes" / "gemma-scope-2-270m-pt" / FOLDER
    _assert_loaded_weights(loaded, tensors)


def test_incomplete_local_dir_uses_cache(hf_cache, tmp_path):
    cache_tensors, cache_files = _repo_files(seed=5)
    add_to_hf_cache(hf_cache, REPO, cache_files)
    (tmp_path / "local" / FOLDER).mkdir(parents=True)
    (tmp_path / "local" / FOLDER / "config.json").write_text("{}")

    loaded = load_sae(RELEASE, SAE_ID, local_dir=tmp_path / "local")

    _assert_loaded_weights(loaded, cache_tensors)


def test_download_used_only_when_online(hf_cache, monkeypatch):
    tensors, files = _repo_files(seed=6)
    requests = []

    def fake_download(repo_id, folder, name):
        requests.append((repo_id, folder, name))
        snapshot = add_to_hf_cache(hf_cache, repo_id, {f"{folder}/{name}": files[f"{folder}/{name}"]})
        return snapshot / folder / name

    monkeypatch.setattr(files_module, "_download", fake_download)
    with pytest.raises(SAENotFoundError, match="skipped because HF_HUB_OFFLINE is set"):
        load_sae(RELEASE, SAE_ID)
    assert requests == []

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    loaded = load_sae(RELEASE, SAE_ID)

    assert requests == [(REPO, FOLDER, "params.safetensors"), (REPO, FOLDER, "config.json")]
    _assert_loaded_weights(loaded, tensors)
    x = torch.randn(3, 64)
    torch.testing.assert_close(loaded.sae(x), reference_forward(tensors, x)[1])


def test_failed_download_is_reported(hf_cache, monkeypatch):
    def failing_download(repo_id, folder, name):
        raise ConnectionError("connection refused")

    monkeypatch.setattr(files_module, "_download", failing_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    before = tree(hf_cache.parent)

    with pytest.raises(SAENotFoundError) as info:
        load_sae(RELEASE, SAE_ID)

    message = str(info.value)
    assert "failed (ConnectionError: connection refused)" in message
    assert f'hf download {REPO} --include "{FOLDER}/*"' in message
    assert tree(hf_cache.parent) == before


def _hub_404(path: str):
    import httpx2
    from huggingface_hub.errors import RemoteEntryNotFoundError

    response = httpx2.Response(404, request=httpx2.Request("GET", f"https://huggingface.co/{REPO}/{path}"))
    return RemoteEntryNotFoundError(f"404 Client Error: Entry Not Found for {path}", response=response)


def test_download_without_optional_config(hf_cache, monkeypatch):
    tensors, files = _repo_files(seed=8)

    def fake_download(repo_id, folder, name):
        if name == "config.json":
            raise _hub_404(f"{folder}/{name}")
        snapshot = add_to_hf_cache(hf_cache, repo_id, {f"{folder}/{name}": files[f"{folder}/{name}"]})
        return snapshot / folder / name

    monkeypatch.setattr(files_module, "_download", fake_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    loaded = load_sae(RELEASE, SAE_ID)

    # Without config.json the site comes from the folder name resid_post_all/layer_1_...
    assert (loaded.kind, loaded.hook_name) == ("resid_post", "blocks.1.hook_resid_post")
    _assert_loaded_weights(loaded, tensors)


def test_download_reports_file_missing_on_hub(hf_cache, monkeypatch):
    def fake_download(repo_id, folder, name):
        raise _hub_404(f"{folder}/{name}")

    monkeypatch.setattr(files_module, "_download", fake_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    with pytest.raises(SAENotFoundError, match=f"hub download: {REPO} has no file {FOLDER}/params.safetensors"):
        load_sae(RELEASE, SAE_ID)


def test_download_unreachable_hub_is_a_failure(hf_cache, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def fake_download(repo_id, folder, name):
        raise LocalEntryNotFoundError("cannot reach the hub and the file is not in the cache")

    monkeypatch.setattr(files_module, "_download", fake_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    with pytest.raises(SAENotFoundError, match="failed \\(LocalEntryNotFoundError: cannot reach the hub"):
        load_sae(RELEASE, SAE_ID)


def test_optional_file_absent_is_left_out(hf_cache, tmp_path):
    write_files(tmp_path / "local", {f"{FOLDER}/params.safetensors": b"x"})
    resolved = resolve_release_files(
        REPO, FOLDER, ["params.safetensors"], ["config.json"], local_dir=tmp_path / "local", describe="test"
    )
    assert resolved.origin == "local_dir"
    assert set(resolved.files) == {"params.safetensors"}


def test_config_json_is_read_from_the_same_place(hf_cache, tmp_path):
    """A config.json in the cache must not be paired with params from local_dir."""
    tensors, files = _repo_files(seed=7)
    write_files(tmp_path / "local", {f"{FOLDER}/params.safetensors": files[f"{FOLDER}/params.safetensors"]})
    add_to_hf_cache(hf_cache, REPO, {f"{FOLDER}/config.json": json.dumps({"bad": 1}).encode()})

    resolved = resolve_release_files(
        REPO, FOLDER, ["params.safetensors"], ["config.json"], local_dir=tmp_path / "local", describe="test"
    )

    assert "config.json" not in resolved.files
