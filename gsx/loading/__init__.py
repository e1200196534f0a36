"""Load pretrained Gemma Scope SAEs by SAELens release id, or SAE folders from disk, offline-first."""

from gsx.loading.api import LoadedSAE, check_fits_model, hook_size, load_sae
from gsx.loading.errors import SAEFormatError, SAELoadError, SAENotFoundError, UnknownSAEError
from gsx.loading.files import read_safetensors_shapes
from gsx.loading.sites import SITES, HookSite, hook_site

__all__ = [
    "SITES",
    "HookSite",
    "LoadedSAE",
    "SAEFormatError",
    "SAELoadError",
    "SAENotFoundError",
    "UnknownSAEError",
    "check_fits_model",
    "hook_site",
    "hook_size",
    "load_sae",
    "read_safetensors_shapes",
]
