"""Look up releases and sae_ids in SAELens's registry of pretrained SAEs.

The registry is ``sae_lens/pretrained_saes.yaml`` (read through
``get_pretrained_saes_directory``). It maps a release id such as
``gemma-scope-2-270m-pt-res`` to a hub repository, the model the SAEs were
trained on, a loader name (``conversion_func``), and for every sae_id the
folder inside the repository. Canonical ids like ``layer_20/width_16k/canonical``
are entries whose folder is one concrete ``average_l0_N``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from gsx.loading.errors import UnknownSAEError

# Number of close matches an error message suggests.
_SUGGESTIONS = 5


@dataclass(frozen=True)
class ReleaseEntry:
    """One SAE of the SAELens registry."""

    release: str
    sae_id: str
    repo_id: str
    """Hub repository, e.g. ``google/gemma-scope-2-270m-pt``."""
    folder: str
    """Folder inside the repository, e.g. ``resid_post/layer_12_width_16k_l0_medium``."""
    model_name: str
    """Model the SAE was trained on, as the registry spells it."""
    conversion_func: str | None
    """SAELens loader name: ``gemma_2``, ``gemma_3``, None for SAELens's own format, or another loader."""


def _directory():
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def release_ids() -> list[str]:
    """Return every release id in the SAELens registry."""
    return list(_directory())


def is_release(name: str) -> bool:
    """Return whether `name` is a release id in the SAELens registry."""
    return name in _directory()


def nearest(word: str, choices: list[str]) -> list[str]:
    """Return up to five entries of `choices` closest to `word` (difflib ratio), best first."""
    matches = difflib.get_close_matches(word, choices, n=_SUGGESTIONS, cutoff=0.5)
    if matches:
        return matches
    # Long ids differ mostly in a suffix; fall back to the ids sharing the longest prefix.
    def shared_prefix(choice: str) -> int:
        length = 0
        for a, b in zip(word, choice):
            if a != b:
                break
            length += 1
        return length

    ranked = sorted(choices, key=shared_prefix, reverse=True)
    return [choice for choice in ranked[:_SUGGESTIONS] if shared_prefix(choice) > 0]


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = nearest(word, choices)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def lookup(release: str, sae_id: str) -> ReleaseEntry:
    """Return the registry entry of `sae_id` in `release`; raise UnknownSAEError naming the nearest ids."""
    directory = _directory()
    if release not in directory:
        raise UnknownSAEError(
            f"unknown SAE release {release!r}: it is not in the SAELens {_sae_lens_version()} registry "
            f"and is not a local path.{_did_you_mean(release, list(directory))}"
        )
    info = directory[release]
    if sae_id not in info.saes_map:
        raise UnknownSAEError(
            f"unknown sae_id {sae_id!r} in release {release!r} ({len(info.saes_map)} ids, "
            f"repository {info.repo_id}).{_did_you_mean(sae_id, list(info.saes_map))}"
        )
    return ReleaseEntry(
        release=release,
        sae_id=sae_id,
        repo_id=info.repo_id,
        folder=info.saes_map[sae_id],
        model_name=info.model,
        conversion_func=info.conversion_func,
    )


def split_release_and_id(source: str, sae_id: str | None) -> tuple[str, str]:
    """Split `source` into (release, sae_id).

    With `sae_id` given, `source` must be a release id. Without it, `source` is
    ``RELEASE/SAE_ID``: release ids contain no ``/`` (true of every id in the
    SAELens 6.54.12 registry), so the text before the first ``/`` is the release
    and the rest, which may contain ``/`` itself, is the sae_id.
    """
    if sae_id is not None:
        return source, sae_id
    directory = _directory()
    if source in directory:
        ids = list(directory[source].saes_map)
        raise UnknownSAEError(
            f"release {source!r} has {len(ids)} SAEs; name one with sae_id= or as {source}/SAE_ID, "
            f"e.g. {', '.join(ids[:3])}"
        )
    # Every prefix ending before a "/" that is a release id; normally there is one.
    releases = [source[:i] for i, char in enumerate(source) if char == "/" and source[:i] in directory]
    if not releases:
        release = source.split("/", 1)[0]
        raise UnknownSAEError(
            f"unknown SAE source {source!r}: it is not a local path, and {release!r} is not a release id "
            f"in the SAELens {_sae_lens_version()} registry.{_did_you_mean(release, list(directory))}"
        )
    for release in releases:
        if source[len(release) + 1 :] in directory[release].saes_map:
            return release, source[len(release) + 1 :]
    release = releases[0]
    return release, source[len(release) + 1 :]


def _sae_lens_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("sae-lens")
    except metadata.PackageNotFoundError:
        return "(unknown version)"
