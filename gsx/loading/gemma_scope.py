"""Turn Gemma Scope files into a SAELens config dict and state dict.

Gemma Scope 1 (Gemma 2) stores one ``params.npz`` per SAE with ``W_enc [d_in, d_sae]``,
``W_dec [d_sae, d_in]``, ``b_enc``, ``b_dec`` and ``threshold``. Gemma Scope 2 (Gemma 3)
stores ``params.safetensors`` with the same tensors in lowercase (``w_enc``, ``w_dec``)
plus, for affine transcoders, ``affine_skip_connection [d_in, d_out]``, next to a
``config.json`` that names the hook point.

Both compute ``pre = x @ W_enc + b_enc``, ``f = pre * (pre > threshold)``,
``x_hat = f @ W_dec + b_dec`` (plus ``x @ affine_skip_connection`` for affine
transcoders), with no b_dec subtraction and no input normalisation. The configs
built here set SAELens's switches to match: ``apply_b_dec_to_input`` False,
``normalize_activations`` "none".
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gsx.loading.errors import SAEFormatError
from gsx.loading.files import load_npz, load_safetensors, read_json, read_safetensors_shapes
from gsx.loading.sites import (
    HookSite,
    gemma_2_model_name,
    hook_site,
    layer_from_name,
    site_from_gemma_scope_1_path,
    site_from_gemma_scope_2_folder,
    site_from_hf_hook_points,
)

logger = logging.getLogger(__name__)

# Lowercased stored name -> name in the SAELens state dict. Gemma Scope 1 writes
# W_enc/W_dec, Gemma Scope 2 writes w_enc/w_dec; both are accepted in either file.
_STATE_DICT_NAMES = {
    "w_enc": "W_enc",
    "w_dec": "W_dec",
    "b_enc": "b_enc",
    "b_dec": "b_dec",
    "threshold": "threshold",
    "affine_skip_connection": "affine_skip_connection",
}
_REQUIRED = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


@dataclass
class PreparedSAE:
    """Everything needed to build a SAELens SAE, plus where it sits in the model."""

    cfg: dict[str, Any]
    """SAELens config dict (pre-6.0 flat form, which SAELens's config defaulting accepts)."""
    state_dict: dict[str, torch.Tensor]
    site: HookSite
    model_name: str | None
    d_in: int
    d_sae: int
    d_out: int


def _canonical_names(names: list[str], path: Path) -> dict[str, str]:
    """Map stored tensor names to state-dict names; raise on duplicates like both W_enc and w_enc."""
    mapping: dict[str, str] = {}
    for name in names:
        canonical = _STATE_DICT_NAMES.get(name.lower())
        if canonical is None:
            logger.warning("ignoring unexpected tensor %r in %s", name, path)
            continue
        if canonical in mapping.values():
            raise SAEFormatError(f"invalid SAE file {path}: it contains {canonical!r} twice under different cases")
        mapping[name] = canonical
    return mapping


def check_shapes(
    shapes: dict[str, list[int] | tuple[int, ...]], path: Path, *, transcoder: bool
) -> tuple[int, int, int]:
    """Check JumpReLU tensor shapes (state-dict names) and return (d_in, d_sae, d_out).

    Expected: W_enc [d_in, d_sae], W_dec [d_sae, d_out], b_enc and threshold
    [d_sae], b_dec [d_out], affine_skip_connection [d_in, d_out]. An SAE (not a
    transcoder) must have d_out == d_in.
    """
    missing = [name for name in _REQUIRED if name not in shapes]
    if missing:
        raise SAEFormatError(
            f"invalid SAE file {path}: missing tensors {missing}; found {sorted(shapes)} "
            "(expected W_enc, W_dec, b_enc, b_dec, threshold in either case)"
        )
    w_enc, w_dec = list(shapes["W_enc"]), list(shapes["W_dec"])
    if len(w_enc) != 2 or len(w_dec) != 2:
        raise SAEFormatError(f"invalid SAE file {path}: W_enc {w_enc} and W_dec {w_dec} must both be 2-D")
    d_in, d_sae = w_enc
    d_out = w_dec[1]
    expected = {
        "W_dec": [d_sae, d_out],
        "b_enc": [d_sae],
        "threshold": [d_sae],
        "b_dec": [d_out],
        "affine_skip_connection": [d_in, d_out],
    }
    for name, shape in expected.items():
        if name in shapes and list(shapes[name]) != shape:
            raise SAEFormatError(
                f"invalid SAE file {path}: {name} has shape {list(shapes[name])}, expected {shape} "
                f"from W_enc {w_enc} and W_dec {w_dec}"
            )
    if not transcoder and d_out != d_in:
        raise SAEFormatError(
            f"invalid SAE file {path}: W_dec maps to {d_out} dimensions but W_enc reads {d_in}; "
            "an SAE must reconstruct its own input"
        )
    return d_in, d_sae, d_out


def _rename(tensors: dict[str, torch.Tensor], mapping: dict[str, str]) -> dict[str, torch.Tensor]:
    return {mapping[name]: tensor for name, tensor in tensors.items() if name in mapping}


def _warn_negative_threshold(threshold: torch.Tensor, path: Path) -> None:
    negative = int((threshold < 0).sum())
    if negative:
        # SAELens computes relu(pre) * (pre > threshold), which equals
        # pre * (pre > threshold) only where threshold >= 0.
        logger.warning(
            "%s: %d of %d thresholds are negative; SAELens's JumpReLU outputs 0 for pre-activations "
            "in (threshold, 0]",
            path,
            negative,
            threshold.numel(),
        )


def _base_cfg(site: HookSite, d_in: int, d_sae: int, model_name: str | None) -> dict[str, Any]:
    return {
        "architecture": "jumprelu",
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "model_name": model_name,
        "hook_name": site.hook_name,
        "hook_head_index": None,
        "prepend_bos": True,
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": site.reshape_activations,
        "finetuning_scaling_factor": False,
        "sae_lens_training_version": None,
    }


# ---------------------------------------------------------------------------
# Gemma Scope 2


def gemma_3_model_name(raw_name: str) -> str:
    """Return the Hugging Face Gemma 3 name for the ``model_name`` of a Gemma Scope 2 config.json.

    The hub name of Gemma 3 270M has no ``-pt`` suffix (``google/gemma-3-270m``),
    unlike the 1B and larger base models. Names without an owner get ``google/``.
    """
    name = raw_name if "/" in raw_name else f"google/{raw_name}"
    name = name.replace("gemma-v3", "gemma-3")
    if "gemma-3-270m-pt" in name:
        name = name.replace("gemma-3-270m-pt", "gemma-3-270m")
    return name


def prepare_gemma_scope_2(
    folder: Path,
    params_path: Path,
    config_path: Path | None,
    *,
    folder_name: str,
    model_name: str | None = None,
    site_hint: str | None = None,
) -> PreparedSAE:
    """Read a Gemma Scope 2 SAE or transcoder.

    The site comes from ``hf_hook_point_in/out`` in config.json, else from
    `folder_name` (``resid_post/layer_12_...``), else from `site_hint`.
    `model_name` overrides the config's model name.
    """
    config = read_json(config_path) if config_path is not None else {}
    if config and config.get("architecture", "jump_relu") != "jump_relu":
        raise SAEFormatError(
            f"unsupported Gemma Scope 2 architecture {config.get('architecture')!r} in {config_path}; "
            "gsx loads only jump_relu"
        )

    site_and_layer = None
    if "hf_hook_point_in" in config:
        site_and_layer = site_from_hf_hook_points(config["hf_hook_point_in"], config.get("hf_hook_point_out"))
        if site_and_layer is None:
            raise SAEFormatError(
                f"unrecognised hook point in {config_path}: hf_hook_point_in {config['hf_hook_point_in']!r}, "
                f"hf_hook_point_out {config.get('hf_hook_point_out')!r}"
            )
    if site_and_layer is None:
        site_and_layer = site_from_gemma_scope_2_folder(folder_name)
    if site_and_layer is None and site_hint is not None:
        site_and_layer = (site_hint, layer_from_name(folder_name))
    if site_and_layer is None:
        raise SAEFormatError(
            f"cannot tell which hook the SAE in {folder} reads: config.json has no hf_hook_point_in and "
            "the folder is not under resid_post, attn_out, mlp_out or transcoder. Pass site= "
            "(resid_post, attn_out, mlp_out or transcoder)"
        )
    site_name, layer = site_and_layer

    stored_shapes = read_safetensors_shapes(params_path)
    mapping = _canonical_names(list(stored_shapes), params_path)
    shapes = {mapping[name]: shape for name, shape in stored_shapes.items() if name in mapping}
    transcoder = site_name == "transcoder"
    d_in, d_sae, d_out = check_shapes(shapes, params_path, transcoder=transcoder)

    affine = "affine_skip_connection" in shapes
    if affine and not transcoder:
        raise SAEFormatError(f"invalid SAE file {params_path}: affine_skip_connection is only valid for transcoders")
    if "affine_connection" in config and bool(config["affine_connection"]) != affine:
        raise SAEFormatError(
            f"invalid Gemma Scope 2 folder: {config_path} sets affine_connection={config['affine_connection']}, "
            f"but {params_path} {'contains' if affine else 'lacks'} affine_skip_connection"
        )
    site = hook_site(site_name, layer, affine=affine)

    tensors = _rename(load_safetensors(params_path), mapping)
    _warn_negative_threshold(tensors["threshold"], params_path)
    state_dict = {name: tensors[name].contiguous() for name in _REQUIRED}
    if affine:
        # Stored as [d_in, d_out] and applied as x @ A; SAELens's W_skip is [d_out, d_in], applied as x @ W_skip.T.
        state_dict["W_skip"] = tensors["affine_skip_connection"].T.contiguous()

    if model_name is None and config.get("model_name"):
        model_name = gemma_3_model_name(str(config["model_name"]))
    cfg = _base_cfg(site, d_in, d_sae, model_name)
    cfg["hf_hook_name"] = config.get("hf_hook_point_in")
    if transcoder:
        cfg["architecture"] = "jumprelu_skip_transcoder" if affine else "jumprelu_transcoder"
        cfg["d_out"] = d_out
        cfg["hook_name_out"] = site.hook_name_out
        cfg["hf_hook_name_out"] = config.get("hf_hook_point_out")
    return PreparedSAE(cfg, state_dict, site, model_name, d_in, d_sae, d_out)


# ---------------------------------------------------------------------------
# Gemma Scope 1


def prepare_gemma_scope_1(
    params_path: Path,
    *,
    repo_or_path: str,
    folder_name: str,
    model_name: str | None = None,
    site_hint: str | None = None,
) -> PreparedSAE:
    """Read a Gemma Scope 1 ``params.npz``.

    The site comes from the repository name (``gemma-scope-2b-pt-res``, ``-att``,
    ``-mlp``) found in `repo_or_path`, else from `site_hint`; the layer from the
    ``layer_N`` part of `folder_name`.
    """
    site_and_layer = site_from_gemma_scope_1_path(repo_or_path, folder_name)
    if site_and_layer is None and site_hint is not None:
        site_and_layer = (site_hint, layer_from_name(folder_name))
    if site_and_layer is None:
        raise SAEFormatError(
            f"cannot tell which hook the Gemma Scope 1 SAE at {params_path} reads: no part of its path names a "
            "repository like gemma-scope-2b-pt-res, -att or -mlp. Load it by release id, or pass site= "
            "(resid_post, attn_out, mlp_out or embedding)"
        )
    site = hook_site(*site_and_layer)

    raw = load_npz(params_path)
    mapping = _canonical_names(list(raw), params_path)
    tensors = _rename(raw, mapping)
    if "affine_skip_connection" in tensors:
        raise SAEFormatError(f"invalid Gemma Scope 1 file {params_path}: unexpected affine_skip_connection")
    d_in, d_sae, d_out = check_shapes({k: list(v.shape) for k, v in tensors.items()}, params_path, transcoder=False)
    _warn_negative_threshold(tensors["threshold"], params_path)
    state_dict = {name: tensors[name].contiguous() for name in _REQUIRED}

    if site.kind == "embedding":
        # NOTE: SAELens 6.54.12 rescales Gemma Scope embedding SAEs this way,
        # because they were trained on embeddings before Gemma's sqrt(d_model)
        # multiplier, which TransformerLens folds into W_E. b_dec is rescaled
        # too, so the output lands in hook_embed's scale. Not checked on Gemma 2 here.
        scale = math.sqrt(d_in)
        state_dict["W_enc"] = state_dict["W_enc"] / scale
        state_dict["W_dec"] = state_dict["W_dec"] * scale
        state_dict["b_dec"] = state_dict["b_dec"] * scale

    if model_name is None:
        model_name = gemma_2_model_name(repo_or_path)
    cfg = _base_cfg(site, d_in, d_sae, model_name)
    return PreparedSAE(cfg, state_dict, site, model_name, d_in, d_sae, d_out)
