"""Atomic file writes and the provenance stamped beside every artifact.

Every file gsx writes goes to a temporary file in the destination folder first
and is then renamed over the target, so an interrupted run leaves either the old
file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

# Libraries whose versions decide what a run computes; recorded in run folders.
TRACKED_PACKAGES = (
    "gsx",
    "torch",
    "sae-lens",
    "transformer-lens",
    "transformers",
    "safetensors",
    "gguf",
    "numpy",
)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` on success.

    The caller writes the temporary path (file or folder). On an exception the
    temporary path is removed and `target` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if tmp.is_dir() and target.exists():
            # os.replace cannot overwrite a non-empty folder: move the old one aside first.
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_text_atomic(target: str | Path, text: str) -> Path:
    """Write `text` as UTF-8 to `target` atomically and return the path."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json_atomic(target: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON to `target` atomically and return the path."""
    return write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def library_versions() -> dict[str, str]:
    """Return the installed version of each tracked package ("not installed" if absent)."""
    versions = {}
    for name in TRACKED_PACKAGES:
        if name == "gsx":
            from gsx import __version__

            versions[name] = __version__
            continue
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
