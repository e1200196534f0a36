"""Load a pretrained or local SAE as a SAELens SAE, with the hooks it belongs to.

``load_sae`` accepts:

- a SAELens registry release with ``sae_id``:
  ``load_sae("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium")``;
- the same as one string ``RELEASE/SAE_ID``:
  ``load_sae("gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical")``;
- a local folder (or a file inside it): Gemma Scope 1 (``params.npz``), Gemma
  Scope 2 (``params.safetensors`` and ``config.json``), SAELens's format
  (``cfg.json`` and ``sae_weights.safetensors``), or a gsx scratch checkpoint
  (``cfg.json`` with ``"format": "gsx-scratch"`` and ``sae_weights.safetensors``).

An existing path wins over a release id of the same spelling. Gemma Scope 1
and 2 releases and SAELens-format releases are read by gsx from local files
(see gsx.loading.files for the search order), so they load offline. Other
registry loaders are handed to ``SAE.from_pretrained`` unchanged, which may
need the network.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gsx.loading import registry
from gsx.loading.errors import SAEFormatError, SAELoadError, SAENotFoundError
from gsx.loading.files import read_json, read_safetensors_shapes, resolve_release_files
from gsx.loading.gemma_scope import PreparedSAE, prepare_gemma_scope_1, prepare_gemma_scope_2
from gsx.loading.loaded import LoadedSAE, check_fits_model
from gsx.loading.sites import SITES

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)

SCRATCH_FORMAT = "gsx-scratch"


def load_sae(
    source: str | os.PathLike[str],
    sae_id: str | None = None,
    *,
    device: str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    model: HookedTransformer | None = None,
    local_dir: str | os.PathLike[str] | None = None,
    site: str | None = None,
) -> LoadedSAE:
    """Load an SAE from a SAELens release id or a local path (see the module docstring for the forms).

    `local_dir` is searched first for release files (then ``$GSX_SAE_DIR``,
    the Hugging Face cache, and the hub unless ``HF_HUB_OFFLINE`` is set).
    `site` (resid_post, attn_out, mlp_out, transcoder, embedding) names the hook
    site of a local Gemma Scope folder whose files and path do not name it.
    `dtype` is a torch dtype or its name (``"bfloat16"``).
    With `model`, the SAE's hook must exist in the model and match its size.

    Raises SAENotFoundError (a FileNotFoundError), UnknownSAEError or
    SAEFormatError (both ValueErrors), whose messages name the value and the fix.
    """
    if site is not None and site not in SITES:
        raise SAEFormatError(f"invalid site {site!r}; use one of {', '.join(SITES)}")
    if isinstance(dtype, str):
        from sae_lens.util import str_to_dtype

        dtype = str_to_dtype(dtype)

    path = Path(source).expanduser()
    if sae_id is None and path.exists():
        loaded = _load_local(path, device=device, dtype=dtype, site=site)
    elif sae_id is None and _looks_like_path(str(source)):
        raise SAENotFoundError(f"SAE path {path} does not exist")
    else:
        release, resolved_id = registry.split_release_and_id(str(source), sae_id)
        entry = registry.lookup(release, resolved_id)
        loaded = _load_release(entry, device=device, dtype=dtype, local_dir=local_dir)

    if model is not None:
        check_fits_model(loaded, model)
    logger.info("loaded SAE %s", loaded.describe())
    return loaded


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or text.endswith((".npz", ".safetensors", ".json"))


# ---------------------------------------------------------------------------
# Registry releases


def _load_release(
    entry: registry.ReleaseEntry, *, device: str, dtype: torch.dtype, local_dir: str | os.PathLike[str] | None
) -> LoadedSAE:
    describe = f"release {entry.release!r}, sae_id {entry.sae_id!r}"
    func = entry.conversion_func

    if func == "gemma_3":
        if "clt" in entry.folder:
            raise SAEFormatError(f"{describe}: cross-layer transcoders are not supported by gsx")
        files = resolve_release_files(
            entry.repo_id, entry.folder, ["params.safetensors"], ["config.json"], local_dir=local_dir, describe=describe
        )
        prepared = prepare_gemma_scope_2(
            files.folder,
            files.files["params.safetensors"],
            files.files.get("config.json"),
            folder_name=entry.folder,
            model_name=entry.model_name,
        )
        return _build_from_registry(entry, prepared, files.folder, device=device, dtype=dtype)

    if func == "gemma_2":
        files = resolve_release_files(
            entry.repo_id, entry.folder, ["params.npz"], local_dir=local_dir, describe=describe
        )
        prepared = prepare_gemma_scope_1(
            files.files["params.npz"],
            repo_or_path=entry.repo_id,
            folder_name=entry.folder,
            model_name=entry.model_name,
        )
        return _build_from_registry(entry, prepared, files.folder, device=device, dtype=dtype)

    if func in (None, "sae_lens"):
        files = resolve_release_files(
            entry.repo_id, entry.folder, ["cfg.json", "sae_weights.safetensors"], local_dir=local_dir, describe=describe
        )
        sae = _load_saelens_folder(files.folder, device=device, dtype=dtype)
        return _loaded_from_saelens(sae, files.folder, "saelens", entry.release, entry.sae_id, entry.model_name)

    return _load_with_saelens_loader(entry, device=device, dtype=dtype)


def _build_from_registry(
    entry: registry.ReleaseEntry, prepared: PreparedSAE, folder: Path, *, device: str, dtype: torch.dtype
) -> LoadedSAE:
    from sae_lens import SAE
    from sae_lens.util import dtype_to_str

    def converter(repo_id, folder_name, device, force_download, cfg_overrides):  # noqa: ARG001
        cfg = {**prepared.cfg, "device": device, **(cfg_overrides or {})}
        return cfg, dict(prepared.state_dict), None

    try:
        sae = SAE.from_pretrained(
            entry.release, entry.sae_id, device=device, dtype=dtype_to_str(dtype), converter=converter
        )
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise SAEFormatError(f"SAELens could not build the SAE from {folder}: {err}") from err
    return _loaded_from_prepared(sae, prepared, folder, entry.release, entry.sae_id)


def _load_with_saelens_loader(entry: registry.ReleaseEntry, *, device: str, dtype: torch.dtype) -> LoadedSAE:
    from sae_lens import SAE
    from sae_lens.util import dtype_to_str

    # NOTE: these loaders are SAELens's own; whether they work offline depends
    # on each of them (several fetch configs or shapes over HTTP).
    logger.info("loading %s/%s with SAELens's %s loader", entry.release, entry.sae_id, entry.conversion_func)
    try:
        sae = SAE.from_pretrained(entry.release, entry.sae_id, device=device, dtype=dtype_to_str(dtype))
    except OSError as err:
        raise SAENotFoundError(
            f"SAELens's {entry.conversion_func} loader could not fetch release {entry.release!r}, "
            f"sae_id {entry.sae_id!r} from {entry.repo_id}: {err}. Run the same load once while online "
            "so that the files land in the Hugging Face cache, then retry"
        ) from err
    return _loaded_from_saelens(sae, Path(entry.folder), "saelens", entry.release, entry.sae_id, entry.model_name)


# ---------------------------------------------------------------------------
# Local paths


def _load_local(path: Path, *, device: str, dtype: torch.dtype, site: str | None) -> LoadedSAE:
    folder = path.parent if path.is_file() else path
    if (folder / "params.safetensors").is_file():
        config_path = folder / "config.json"
        prepared = prepare_gemma_scope_2(
            folder,
            folder / "params.safetensors",
            config_path if config_path.is_file() else None,
            folder_name=str(folder),
            site_hint=site,
        )
        return _build_from_disk(prepared, folder, device=device, dtype=dtype)

    if (folder / "params.npz").is_file():
        prepared = prepare_gemma_scope_1(
            folder / "params.npz",
            repo_or_path=str(folder.resolve()),
            folder_name=str(folder),
            site_hint=site,
        )
        return _build_from_disk(prepared, folder, device=device, dtype=dtype)

    if (folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file():
        cfg = read_json(folder / "cfg.json")
        if cfg.get("format") == SCRATCH_FORMAT:
            return _load_scratch(folder, cfg, device=device, dtype=dtype)
        sae = _load_saelens_folder(folder, device=device, dtype=dtype)
        return _loaded_from_saelens(sae, folder, "saelens", None, None, None)

    present = sorted(child.name for child in folder.iterdir())[:10] if folder.is_dir() else []
    raise SAENotFoundError(
        f"no SAE files in {folder}: expected params.npz (Gemma Scope 1), params.safetensors and config.json "
        f"(Gemma Scope 2), or cfg.json and sae_weights.safetensors (SAELens or gsx scratch). "
        f"Found: {present or 'nothing'}"
    )


def _build_from_disk(prepared: PreparedSAE, folder: Path, *, device: str, dtype: torch.dtype) -> LoadedSAE:
    from sae_lens import SAE
    from sae_lens.util import dtype_to_str

    def converter(path, device, cfg_overrides):  # noqa: ARG001
        cfg = {**prepared.cfg, "device": device, **(cfg_overrides or {})}
        return cfg, dict(prepared.state_dict)

    try:
        sae = SAE.load_from_disk(folder, device=device, dtype=dtype_to_str(dtype), converter=converter)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise SAEFormatError(f"SAELens could not build the SAE from {folder}: {err}") from err
    return _loaded_from_prepared(sae, prepared, folder, None, None)


def _load_saelens_folder(folder: Path, *, device: str, dtype: torch.dtype) -> SAE:
    from sae_lens import SAE
    from sae_lens.util import dtype_to_str

    read_safetensors_shapes(folder / "sae_weights.safetensors")
    read_json(folder / "cfg.json")
    try:
        sae = SAE.load_from_disk(folder, device=device, dtype=dtype_to_str(dtype))
    except (RuntimeError, ValueError, KeyError, TypeError, OSError) as err:
        raise SAEFormatError(f"invalid SAELens SAE folder {folder}: {type(err).__name__}: {err}") from err
    _fold_checkpoint_scaler(sae, folder)
    return sae


def _fold_checkpoint_scaler(sae: SAE, folder: Path) -> None:
    """Fold a training checkpoint's activation scale into the weights, so the SAE takes raw activations.

    SAELens folds the scale only into the final SAE. Its mid-training checkpoints keep
    unscaled weights plus `activation_scaler.json`, and without folding every metric
    would be computed on inputs hundreds of times too large.
    """
    scaler_path = folder / "activation_scaler.json"
    if not scaler_path.is_file() or getattr(sae.cfg, "normalize_activations", "none") != "expected_average_only_in":
        return
    scaler = read_json(scaler_path)
    if scaler.get("has_whitening"):
        raise SAEFormatError(f"{folder} is a whitened SAELens checkpoint; gsx cannot fold whitening into the weights")
    factor = scaler.get("scaling_factor")
    if factor is not None:
        sae.fold_activation_norm_scaling_factor(float(factor))
        logger.info("folded the checkpoint's activation scaling factor %.6g into %s", factor, folder)


def _load_scratch(folder: Path, cfg: dict[str, Any], *, device: str, dtype: torch.dtype) -> LoadedSAE:
    try:
        from gsx.saes.convert import saelens_from_scratch
        from gsx.saes.jumprelu import JumpReLUSAE
    except ImportError as err:
        raise SAELoadError(
            f"{folder} is a gsx scratch checkpoint, but gsx.saes.jumprelu / gsx.saes.convert "
            f"cannot be imported ({err})"
        ) from err

    read_safetensors_shapes(folder / "sae_weights.safetensors")
    try:
        scratch = JumpReLUSAE.load(folder, device=device, dtype=dtype)
        sae = saelens_from_scratch(scratch)
    except (RuntimeError, ValueError, KeyError, TypeError, OSError) as err:
        raise SAEFormatError(f"invalid gsx scratch checkpoint {folder}: {type(err).__name__}: {err}") from err
    if (sae.cfg.metadata.hook_name or "").endswith("hook_z"):
        # Scratch models take flat inputs; a LoadedSAE at hook_z takes [..., n_heads, d_head]
        # like every other one, so that run_with_saes works.
        sae.cfg.reshape_activations = "hook_z"
        sae.turn_on_forward_pass_hook_z_reshaping()
    return _loaded_from_saelens(sae, folder, SCRATCH_FORMAT, None, None, cfg.get("model_name"))


# ---------------------------------------------------------------------------
# LoadedSAE construction and model checks


def _loaded_from_prepared(
    sae: SAE, prepared: PreparedSAE, folder: Path, release: str | None, sae_id: str | None
) -> LoadedSAE:
    return LoadedSAE(
        sae=sae,
        hook_name=prepared.site.hook_name,
        hook_name_out=prepared.site.hook_name_out,
        release=release,
        sae_id=sae_id,
        path=folder,
        d_in=prepared.d_in,
        d_sae=prepared.d_sae,
        d_out=prepared.d_out,
        kind=prepared.site.kind,
        model_name=prepared.model_name,
        layer=prepared.site.layer,
    )


def _loaded_from_saelens(
    sae: SAE, folder: Path, kind: str, release: str | None, sae_id: str | None, model_name: str | None
) -> LoadedSAE:
    from sae_lens.util import extract_layer_from_tlens_hook_name

    metadata = sae.cfg.metadata
    hook_name = metadata.hook_name or ""
    d_out = int(getattr(sae.cfg, "d_out", sae.cfg.d_in))
    return LoadedSAE(
        sae=sae,
        hook_name=hook_name,
        hook_name_out=metadata.hook_name_out or hook_name,
        release=release,
        sae_id=sae_id,
        path=folder,
        d_in=int(sae.cfg.d_in),
        d_sae=int(sae.cfg.d_sae),
        d_out=d_out,
        kind=kind,
        model_name=metadata.model_name or model_name,
        layer=extract_layer_from_tlens_hook_name(hook_name) if hook_name else None,
    )
