"""Map Gemma Scope sites to the TransformerLens hooks an SAE reads and writes.

A Gemma Scope 2 ``config.json`` names its site by a Hugging Face module path
(``hf_hook_point_in``). These are the TransformerLens hooks of a
HookedSAETransformer running Gemma 3 that carry the same tensor. Each pair was
checked on Gemma 3 270M against the Hugging Face model with forward hooks
(tests/loading/test_gemma_hooks.py):

========================  ==========================================  ==============================
site                      Hugging Face module output or input         TransformerLens hook
========================  ==========================================  ==============================
resid_post                ``model.layers.L`` output                   ``blocks.L.hook_resid_post``
attn_out                  ``model.layers.L.self_attn.o_proj`` input   ``blocks.L.attn.hook_z``, heads
                                                                      flattened head-major
mlp_out                   ``post_feedforward_layernorm`` output       ``blocks.L.hook_mlp_out``
transcoder input          ``pre_feedforward_layernorm`` output        ``blocks.L.mlp.hook_in``
transcoder output         ``post_feedforward_layernorm`` output       ``blocks.L.hook_mlp_out``
========================  ==========================================  ==============================

``blocks.L.mlp.hook_in`` is added to every MLP by SAELens's
HookedSAETransformer (sae_lens 6.54.12), not by TransformerLens. It carries
the MLP's input: ``ln2(resid_mid)`` with the norm weight applied. TransformerLens's own
``blocks.L.ln2.hook_normalized`` fires before that weight, and
``blocks.L.hook_mlp_in`` (the hook SAELens 6.54.12's Gemma Scope 2 loader
uses) is ``resid_mid`` before the norm. Neither is the transcoder input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gsx.loading.errors import SAEFormatError

SITES = ("resid_post", "attn_out", "mlp_out", "transcoder", "embedding")
"""Site names accepted by ``site=``; ``embedding`` exists only in Gemma Scope 1."""

# Last part of a Hugging Face hook point after "layers.L." -> Gemma Scope site.
_HF_HOOK_POINT_SITES = {
    "output": "resid_post",
    "self_attn.o_proj.input": "attn_out",
    "post_feedforward_layernorm.output": "mlp_out",
    "pre_feedforward_layernorm.output": "transcoder",
}
_HF_HOOK_POINT = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")
_LAYER_IN_NAME = re.compile(r"(?:^|[_/])layer_(\d+)(?:$|[_/])")
# Gemma Scope 1 repositories end in the site: google/gemma-scope-2b-pt-res, -att, -mlp.
_GEMMA_SCOPE_1_REPO = re.compile(r"gemma-scope-(\d+b)-(pt|it)-(res|att|mlp)(?![a-z])")
_GEMMA_SCOPE_1_SITES = {"res": "resid_post", "att": "attn_out", "mlp": "mlp_out"}


@dataclass(frozen=True)
class HookSite:
    """Hooks and activation layout of an SAE in a TransformerLens model."""

    kind: str
    """``resid_post``, ``attn_out``, ``mlp_out``, ``transcoder``, ``affine_transcoder`` or ``embedding``."""
    layer: int | None
    """Block index, or None for the embedding."""
    hook_name: str
    """Hook whose activations the SAE encodes."""
    hook_name_out: str
    """Hook whose activations the SAE output reconstructs or replaces; equals hook_name for SAEs."""
    reshape_activations: str
    """``hook_z`` when the hook contains [..., n_heads, d_head] that the SAE flattens, else ``none``."""


def hook_site(site: str, layer: int | None, *, affine: bool = False) -> HookSite:
    """Return the TransformerLens hooks of a Gemma Scope `site` at block `layer`."""
    if site == "embedding":
        return HookSite("embedding", None, "hook_embed", "hook_embed", "none")
    if site not in SITES:
        raise SAEFormatError(f"unknown SAE site {site!r}; use one of {', '.join(SITES)}")
    if layer is None:
        raise SAEFormatError(f"site {site!r} needs a layer index, but none was found")
    if site == "resid_post":
        name = f"blocks.{layer}.hook_resid_post"
        return HookSite("resid_post", layer, name, name, "none")
    if site == "attn_out":
        name = f"blocks.{layer}.attn.hook_z"
        return HookSite("attn_out", layer, name, name, "hook_z")
    if site == "mlp_out":
        name = f"blocks.{layer}.hook_mlp_out"
        return HookSite("mlp_out", layer, name, name, "none")
    kind = "affine_transcoder" if affine else "transcoder"
    return HookSite(kind, layer, f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.hook_mlp_out", "none")


def site_from_hf_hook_points(hook_in: str, hook_out: str | None) -> tuple[str, int] | None:
    """Return (site, layer) for the Gemma Scope 2 ``hf_hook_point_in/out`` pair, or None if unrecognised."""
    match = _HF_HOOK_POINT.search(hook_in)
    if match is None or match.group(2) not in _HF_HOOK_POINT_SITES:
        return None
    layer = int(match.group(1))
    site = _HF_HOOK_POINT_SITES[match.group(2)]
    if site != "transcoder":
        return site, layer
    # A transcoder reads the pre-feedforward norm and writes the post-feedforward norm.
    if hook_out is None or hook_out == hook_in:
        return None
    out_match = _HF_HOOK_POINT.search(hook_out)
    if out_match is None or out_match.group(2) != "post_feedforward_layernorm.output":
        return None
    return "transcoder", layer


def site_from_gemma_scope_2_folder(folder: str) -> tuple[str, int | None] | None:
    """Return (site, layer) from a Gemma Scope 2 path like ``resid_post_all/layer_3_width_16k_l0_small``."""
    parts = [part for part in folder.replace("\\", "/").split("/") if part]
    for part in reversed(parts[:-1]):
        base = part.removesuffix("_all")
        if base in ("resid_post", "attn_out", "mlp_out", "transcoder"):
            return base, layer_from_name(parts[-1])
    return None


def site_from_gemma_scope_1_path(repo_or_path: str, folder: str) -> tuple[str, int | None] | None:
    """Return (site, layer) for a Gemma Scope 1 SAE from its repo id (or a path that contains it) and folder."""
    match = _GEMMA_SCOPE_1_REPO.search(repo_or_path)
    if match is None:
        return None
    site = _GEMMA_SCOPE_1_SITES[match.group(3)]
    parts = [part for part in folder.replace("\\", "/").split("/") if part]
    if site == "resid_post" and "embedding" in parts:
        return "embedding", None
    return site, layer_from_name(folder)


def gemma_2_model_name(repo_or_path: str) -> str | None:
    """Return the Gemma 2 model name (``gemma-2-2b``, ``gemma-2-9b-it``) of a Gemma Scope 1 repository."""
    match = _GEMMA_SCOPE_1_REPO.search(repo_or_path)
    if match is None:
        return None
    size, variant = match.group(1), match.group(2)
    return f"gemma-2-{size}" + ("-it" if variant == "it" else "")


def layer_from_name(name: str) -> int | None:
    """Return N from the first ``layer_N`` component of a folder name, or None."""
    match = _LAYER_IN_NAME.search(name)
    return int(match.group(1)) if match else None
