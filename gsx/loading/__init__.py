"""Load pretrained Gemma Scope SAEs by SAELens release id, or SAE folders from disk, offline-first."""

from gsx.loading.api import load_sae
from gsx.loading.errors import SAEFormatError, SAELoadError, SAENotFoundError, UnknownSAEError
from gsx.loading.files import read_safetensors_shapes
from gsx.loading.loaded import LoadedSAE, check_fits_model, flat_inputs, hook_size
from gsx.loading.sites import SITES, HookSite, hook_site
from gsx.loading.splicing import splice_hooks

__all__ = [
    "SITES",
    "HookSite",
    "LoadedSAE",
    "SAEFormatError",
    "SAELoadError",
    "SAENotFoundError",
    "UnknownSAEError",
    "check_fits_model",
    "flat_inputs",
    "hook_site",
    "hook_size",
    "load_sae",
    "read_safetensors_shapes",
    "splice_hooks",
]
