"""Write random SAE weights in the exact file layouts of the Gemma Scope hub repositories.

Gemma Scope 1: ``layer_L/width_W/average_l0_N/params.npz`` with W_enc, W_dec,
b_enc, b_dec, threshold. Gemma Scope 2: ``<site>/layer_L_width_W_l0_SIZE[_affine]/``
with ``params.safetensors`` (lowercase w_enc, w_dec, plus affine_skip_connection
for affine transcoders) and ``config.json``. ``add_to_hf_cache`` stores files the
way huggingface_hub does: ``models--OWNER--NAME/blobs/<sha256>``, symlinked from
``snapshots/<commit>/<path>``, with the commit in ``refs/main``.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from sae_lens import JumpReLUSAE, JumpReLUSkipTranscoder, JumpReLUTranscoder
from safetensors.numpy import save as safetensors_bytes

COMMIT = "0123456789abcdef0123456789abcdef01234567"

HF_HOOK_POINTS = {
    "resid_post": ("model.layers.{layer}.output", None),
    "attn_out": ("model.layers.{layer}.self_attn.o_proj.input", None),
    "mlp_out": ("model.layers.{layer}.post_feedforward_layernorm.output", None),
    "transcoder": (
        "model.layers.{layer}.pre_feedforward_layernorm.output",
        "model.layers.{layer}.post_feedforward_layernorm.output",
    ),
}


def random_tensors(d_in: int, d_sae: int, *, d_out: int | None = None, affine: bool = False, seed: int = 0):
    """Return JumpReLU weights (uppercase W_enc/W_dec names) whose latents fire on about a third of inputs."""
    rng = np.random.default_rng(seed)
    d_out = d_in if d_out is None else d_out
    tensors = {
        "W_enc": (rng.normal(size=(d_in, d_sae)) / np.sqrt(d_in)).astype(np.float32),
        "W_dec": rng.normal(size=(d_sae, d_out)).astype(np.float32) * 0.2,
        "b_enc": rng.normal(size=d_sae).astype(np.float32) * 0.1,
        "b_dec": rng.normal(size=d_out).astype(np.float32) * 0.1,
        "threshold": rng.uniform(0.05, 0.5, size=d_sae).astype(np.float32),
    }
    if affine:
        tensors["affine_skip_connection"] = rng.normal(size=(d_in, d_out)).astype(np.float32) * 0.1
    return tensors


def lowercase(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename W_enc/W_dec to the w_enc/w_dec spelling of Gemma Scope 2."""
    return {name.lower() if name.startswith("W_") else name: array for name, array in tensors.items()}


def reference_forward(tensors: dict[str, np.ndarray], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (latents, output) of the Gemma Scope forward pass, written out by hand."""
    t = {name.lower(): torch.from_numpy(array) for name, array in tensors.items()}
    pre = x @ t["w_enc"] + t["b_enc"]
    latents = pre * (pre > t["threshold"])
    out = latents @ t["w_dec"] + t["b_dec"]
    if "affine_skip_connection" in t:
        out = out + x @ t["affine_skip_connection"]
    return latents, out


def gemma_scope_2_config(
    site: str, layer: int, d_sae: int, *, affine: bool = False, model_name: str = "gemma-v3-270m-pt"
) -> dict:
    """Return a config.json body with the keys of a Gemma Scope 2 folder."""
    hook_in, hook_out = HF_HOOK_POINTS[site]
    config = {
        "model_name": model_name,
        "architecture": "jump_relu",
        "hf_hook_point_in": hook_in.format(layer=layer),
        "hf_hook_point_out": (hook_out or hook_in).format(layer=layer),
        "width": d_sae,
        "type": "transcoder" if site == "transcoder" else "sae",
        "l0": 20,
    }
    if site == "transcoder":
        config["affine_connection"] = affine
    return config


def gemma_scope_2_files(folder: str, tensors: dict[str, np.ndarray], config: dict | None) -> dict[str, bytes]:
    """Return {repo path: bytes} for one Gemma Scope 2 folder."""
    files = {f"{folder}/params.safetensors": safetensors_bytes(lowercase(tensors))}
    if config is not None:
        files[f"{folder}/config.json"] = json.dumps(config).encode()
    return files


def gemma_scope_1_files(folder: str, tensors: dict[str, np.ndarray]) -> dict[str, bytes]:
    """Return {repo path: bytes} for one Gemma Scope 1 folder (params.npz)."""
    buffer = io.BytesIO()
    np.savez(buffer, **tensors)
    return {f"{folder}/params.npz": buffer.getvalue()}


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    """Write {relative path: bytes} under `root` (a --local-dir style copy) and return `root`."""
    for relative, data in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def add_to_hf_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Store files in a Hugging Face hub cache as huggingface_hub lays it out; return the snapshot folder."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / COMMIT
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    for relative, data in files.items():
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (len(Path(relative).parts) + 1), "blobs", blob.name))
    return snapshot


def tree(root: Path) -> list[str]:
    """Return every path under `root`, sorted, to check that nothing was written."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


GEMMA_SCOPE_2 = "google/gemma-scope-2-270m-pt"

# release, sae_id, repo folder, site, layer, affine, kind, hook in, hook out, SAELens class
GEMMA_SCOPE_2_CASES = [
    (
        "gemma-scope-2-270m-pt-res-all", "layer_1_width_16k_l0_small", "resid_post_all/layer_1_width_16k_l0_small",
        "resid_post", 1, False, "resid_post", "blocks.1.hook_resid_post", "blocks.1.hook_resid_post", JumpReLUSAE,
    ),
    (
        "gemma-scope-2-270m-pt-att-all", "layer_0_width_16k_l0_small", "attn_out_all/layer_0_width_16k_l0_small",
        "attn_out", 0, False, "attn_out", "blocks.0.attn.hook_z", "blocks.0.attn.hook_z", JumpReLUSAE,
    ),
    (
        "gemma-scope-2-270m-pt-mlp-all", "layer_1_width_16k_l0_big", "mlp_out_all/layer_1_width_16k_l0_big",
        "mlp_out", 1, False, "mlp_out", "blocks.1.hook_mlp_out", "blocks.1.hook_mlp_out", JumpReLUSAE,
    ),
    (
        "gemma-scope-2-270m-pt-transcoders-all", "layer_0_width_16k_l0_small",
        "transcoder_all/layer_0_width_16k_l0_small",
        "transcoder", 0, False, "transcoder", "blocks.0.mlp.hook_in", "blocks.0.hook_mlp_out", JumpReLUTranscoder,
    ),
    (
        "gemma-scope-2-270m-pt-transcoders-all", "layer_0_width_16k_l0_small_affine",
        "transcoder_all/layer_0_width_16k_l0_small_affine",
        "transcoder", 0, True, "affine_transcoder", "blocks.0.mlp.hook_in", "blocks.0.hook_mlp_out",
        JumpReLUSkipTranscoder,
    ),
]  # fmt: skip
CASE_IDS = ["resid_post", "attn_out", "mlp_out", "transcoder", "affine_transcoder"]


def install_gemma_scope_2(cache: Path, case: tuple, *, d_in: int = 64, d_sae: int = 32, seed: int = 0):
    """Store random weights for one GEMMA_SCOPE_2_CASES entry in the HF cache and return them."""
    _, _, folder, site, layer, affine, *_ = case
    tensors = random_tensors(d_in, d_sae, affine=affine, seed=seed)
    config = gemma_scope_2_config(site, layer, d_sae, affine=affine)
    add_to_hf_cache(cache, GEMMA_SCOPE_2, gemma_scope_2_files(folder, tensors, config))
    return tensors
