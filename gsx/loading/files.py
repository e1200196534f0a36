"""Find SAE files on disk or on the hub, and read them with checks.

Files of a registry release are looked up in this order, and the first place
that has every required file wins:

1. the folder given as ``local_dir=``, then the folder in ``$GSX_SAE_DIR``.
   Either may hold the repository's files directly (as
   ``hf download REPO --include "FOLDER/*" --local-dir DIR`` writes them), or
   one subfolder per repository named like ``gemma-scope-2-270m-pt``.
2. the Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``), read
   without any network access.
3. a hub download into that cache, unless ``HF_HUB_OFFLINE`` is set.

The readers check safetensors headers and npz archives before trusting them,
and turn every failure into an SAEFormatError that names the file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gsx.loading.errors import SAEFormatError, SAENotFoundError

logger = logging.getLogger(__name__)

SAE_DIR_ENV = "GSX_SAE_DIR"

# A safetensors header is JSON; real SAE headers are a few hundred bytes. The
# safetensors format caps it at 100 MB, so a larger length means a corrupt file.
_MAX_HEADER_BYTES = 100_000_000
_SAFETENSORS_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U64": 8, "I32": 4, "U32": 4,
    "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip


# ---------------------------------------------------------------------------
# Locating files of a registry release


@dataclass
class ResolvedFiles:
    """Local copies of one SAE's files, all from the same place."""

    folder: Path
    """Folder holding the files."""
    files: dict[str, Path]
    """File name (e.g. ``params.safetensors``) -> local path; optional files that were absent are left out."""
    origin: str
    """Source of the files: ``local_dir``, ``GSX_SAE_DIR``, ``hf_cache`` or ``download``."""


@dataclass
class _Attempts:
    places: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        logger.debug("SAE files not at %s", text)
        self.places.append(text)


def hub_offline() -> bool:
    """Return whether ``HF_HUB_OFFLINE`` forbids network access, read at call time."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hf_hub_cache_dir() -> Path:
    """Return the Hugging Face hub cache folder, read from the environment at call time.

    huggingface_hub reads these variables once at import, so tests and callers
    that set them later would otherwise be ignored.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "huggingface" / "hub"


def download_command(repo_id: str, folder: str, local_dir: str | None = None) -> str:
    """Return the ``hf download`` command (huggingface_hub's CLI) that fetches one SAE folder."""
    command = f'hf download {repo_id} --include "{folder}/*"'
    if local_dir is not None:
        command += f" --local-dir {local_dir}"
    return command


def _local_dirs(local_dir: str | os.PathLike[str] | None) -> list[tuple[str, Path]]:
    dirs = []
    if local_dir is not None:
        dirs.append(("local_dir", Path(local_dir).expanduser()))
    if os.environ.get(SAE_DIR_ENV):
        dirs.append((SAE_DIR_ENV, Path(os.environ[SAE_DIR_ENV]).expanduser()))
    return dirs


def _find_in_local_dir(root: Path, repo_id: str, folder: str, required: Sequence[str]) -> Path | None:
    repo_name = repo_id.split("/")[-1]
    for candidate in (root / folder, root / repo_name / folder):
        if all((candidate / name).is_file() for name in required):
            return candidate
    return None


def _find_in_hf_cache(repo_id: str, folder: str, names: Sequence[str]) -> dict[str, Path]:
    from huggingface_hub import try_to_load_from_cache

    found = {}
    for name in names:
        cached = try_to_load_from_cache(repo_id, f"{folder}/{name}", cache_dir=hf_hub_cache_dir())
        # try_to_load_from_cache returns a path string, None, or a sentinel for "known missing".
        if isinstance(cached, str) and Path(cached).is_file():
            found[name] = Path(cached)
    return found


def _download(repo_id: str, folder: str, name: str) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, f"{folder}/{name}", cache_dir=hf_hub_cache_dir()))


def resolve_release_files(
    repo_id: str,
    folder: str,
    required: Sequence[str],
    optional: Sequence[str] = (),
    *,
    local_dir: str | os.PathLike[str] | None = None,
    describe: str,
) -> ResolvedFiles:
    """Find the files `required` (and `optional`, where present) of `folder` in the hub repository `repo_id`.

    `describe` names the SAE in the error message, e.g. "release 'X', sae_id 'Y'".
    Raises SAENotFoundError listing every place tried and the download command.
    """
    attempts = _Attempts()

    for origin, root in _local_dirs(local_dir):
        found = _find_in_local_dir(root, repo_id, folder, required)
        if found is not None:
            files = {name: found / name for name in [*required, *optional] if (found / name).is_file()}
            return ResolvedFiles(found, files, origin)
        attempts.add(f"{origin} {root / folder} (also tried {root / repo_id.split('/')[-1] / folder})")

    cache_dir = hf_hub_cache_dir()
    cached = _find_in_hf_cache(repo_id, folder, [*required, *optional])
    if all(name in cached for name in required):
        return ResolvedFiles(cached[required[0]].parent, cached, "hf_cache")
    attempts.add(f"Hugging Face cache {cache_dir} (repository {repo_id}, folder {folder})")

    if hub_offline():
        attempts.add("hub download: skipped because HF_HUB_OFFLINE is set")
    else:
        downloaded = _download_all(repo_id, folder, required, optional, attempts)
        if downloaded is not None:
            return downloaded

    expected = ", ".join(f"{folder}/{name}" for name in required)
    tried = "\n".join(f"  - {place}" for place in attempts.places)
    raise SAENotFoundError(
        f"SAE files for {describe} not found: expected {expected} from the hub repository {repo_id}.\n"
        f"Looked in:\n{tried}\n"
        f"Download them into the Hugging Face cache with:\n  {download_command(repo_id, folder)}\n"
        f"or into a folder that local_dir= or ${SAE_DIR_ENV} names with:\n"
        f"  {download_command(repo_id, folder, 'DIR')}"
    )


def _download_all(
    repo_id: str, folder: str, required: Sequence[str], optional: Sequence[str], attempts: _Attempts
) -> ResolvedFiles | None:
    from huggingface_hub.errors import RemoteEntryNotFoundError

    files: dict[str, Path] = {}
    for name in [*required, *optional]:
        try:
            files[name] = _download(repo_id, folder, name)
        # Only the remote variant means "no such file on the hub". LocalEntryNotFoundError,
        # also an EntryNotFoundError, means the hub could not be reached.
        except RemoteEntryNotFoundError:
            if name in required:
                attempts.add(f"hub download: {repo_id} has no file {folder}/{name}")
                return None
        # Network failures come as many exception types (requests, httpx, OSError,
        # huggingface_hub's own); each means the download is not possible now.
        except Exception as err:  # noqa: BLE001
            logger.warning("download of %s/%s from %s failed: %s", folder, name, repo_id, err)
            if name in required:
                attempts.add(f"hub download of {repo_id} {folder}/{name}: failed ({type(err).__name__}: {err})")
                return None
    logger.info("downloaded %s from %s", folder, repo_id)
    return ResolvedFiles(files[required[0]].parent, files, "download")


# ---------------------------------------------------------------------------
# Reading files with checks


def read_safetensors_shapes(path: str | os.PathLike[str]) -> dict[str, list[int]]:
    """Return tensor name -> shape from the header of a local safetensors file, without reading tensor data.

    This is the offline counterpart of sae_lens's ``get_safetensors_tensor_shapes``,
    which fetches the same header from the hub with HTTP range requests. The
    header is checked: its length, its JSON, and that every tensor's byte range
    lies inside the file and matches its shape and dtype. A truncated or
    corrupt file raises SAEFormatError.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        length_bytes = f.read(8)
        if len(length_bytes) < 8:
            raise SAEFormatError(
                f"invalid safetensors file {path}: it is {size} bytes, too short for the 8-byte header length"
            )
        header_length = int.from_bytes(length_bytes, "little")
        if header_length > min(size - 8, _MAX_HEADER_BYTES):
            raise SAEFormatError(
                f"invalid safetensors file {path}: the header length field is {header_length} bytes, "
                f"but the file has {size - 8} bytes after it (truncated or not a safetensors file)"
            )
        raw_header = f.read(header_length)

    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SAEFormatError(f"invalid safetensors file {path}: the header is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise SAEFormatError(f"invalid safetensors file {path}: the header is not a JSON object")

    data_bytes = size - 8 - header_length
    shapes = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shapes[name] = _check_tensor_entry(path, name, info, data_bytes)
    return shapes


def _check_tensor_entry(path: Path, name: str, info: object, data_bytes: int) -> list[int]:
    def invalid(reason: str) -> SAEFormatError:
        return SAEFormatError(f"invalid safetensors file {path}: tensor {name!r} {reason}")

    if not isinstance(info, dict):
        raise invalid("has no dtype/shape/data_offsets entry")
    shape = info.get("shape")
    offsets = info.get("data_offsets")
    dtype = info.get("dtype")
    if not isinstance(shape, list) or not all(isinstance(dim, int) and dim >= 0 for dim in shape):
        raise invalid(f"has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(offset, int) for offset in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise invalid(f"has invalid data_offsets {offsets!r}")
    if offsets[1] > data_bytes:
        raise invalid(
            f"ends at byte {offsets[1]} of the data, but the file contains only {data_bytes} data bytes (truncated file)"
        )
    itemsize = _SAFETENSORS_ITEMSIZE.get(str(dtype))
    if itemsize is not None and offsets[1] - offsets[0] != math.prod(shape) * itemsize:
        raise invalid(f"of shape {shape} and dtype {dtype} does not fill its {offsets[1] - offsets[0]} bytes")
    return shape


def load_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load every tensor of a checked safetensors file to CPU, as float32."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    read_safetensors_shapes(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise SAEFormatError(f"invalid safetensors file {path}: {err}") from err
    return {name: tensor.to(torch.float32) for name, tensor in tensors.items()}


def load_npz(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load every array of an npz archive (Gemma Scope 1's ``params.npz``) as float32 tensors."""
    path = Path(path)
    npz_errors = (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError)
    try:
        archive = np.load(path, allow_pickle=False)
    except npz_errors as err:
        raise SAEFormatError(f"invalid npz file {path}: {type(err).__name__}: {err}") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise SAEFormatError(f"invalid npz file {path}: it contains a single array, not named arrays")
    try:
        with archive:
            arrays = {name: archive[name] for name in archive.files}
    except npz_errors as err:
        raise SAEFormatError(f"invalid npz file {path}: {type(err).__name__}: {err}") from err
    tensors = {}
    for name, array in arrays.items():
        if not np.issubdtype(array.dtype, np.floating):
            raise SAEFormatError(f"invalid npz file {path}: array {name!r} has dtype {array.dtype}, not a float type")
        tensors[name] = torch.from_numpy(array.astype(np.float32))
    return tensors


def read_json(path: str | os.PathLike[str]) -> dict:
    """Read a JSON object from `path`, raising SAEFormatError if it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SAEFormatError(f"invalid JSON in {path}: {err}") from err
    if not isinstance(data, dict):
        raise SAEFormatError(f"invalid {path.name} at {path}: expected a JSON object, got {type(data).__name__}")
    return data
