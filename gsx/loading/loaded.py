"""LoadedSAE, the result of load_sae, and checks of an SAE against a model.

Activation layout: a LoadedSAE whose hook is ``attn.hook_z`` has a SAELens SAE
with ``reshape_activations="hook_z"``. It takes and returns [..., n_heads, d_head],
which is what ``HookedSAETransformer.run_with_saes`` passes. Code that flattens
activations itself wraps its calls in ``flat_inputs``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gsx.loading.errors import SAEFormatError

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)


@dataclass
class LoadedSAE:
    """A loaded SAE with the metadata needed to run it on a model."""

    sae: SAE
    """SAELens module: JumpReLUSAE, JumpReLUTranscoder or JumpReLUSkipTranscoder for Gemma Scope.

    NOTE: sae_lens 6.54.12's ``run_with_saes`` leaves out the affine skip term of
    a JumpReLUSkipTranscoder; splice affine transcoders with ``splice_hooks``."""
    hook_name: str
    """TransformerLens hook whose activations the SAE encodes."""
    hook_name_out: str
    """Hook whose activations the output reconstructs; differs from hook_name only for transcoders."""
    release: str | None
    """SAELens release id, or None for a local path."""
    sae_id: str | None
    """sae_id within the release, or None for a local path."""
    path: Path
    """Local folder the weights were read from.

    For releases that SAELens's own loaders read (not Gemma Scope or SAELens's
    format), the folder inside the hub repository instead."""
    d_in: int
    """Input width, from W_enc (n_heads * d_head for attn_out)."""
    d_sae: int
    """Number of latents."""
    d_out: int
    """Output width, from W_dec; equals d_in except for transcoders."""
    kind: str
    """``resid_post``, ``attn_out``, ``mlp_out``, ``transcoder``, ``affine_transcoder``, ``embedding``,
    ``saelens`` (any other SAELens SAE) or ``gsx-scratch``."""
    model_name: str | None
    """Model the SAE was trained on, from the registry or the SAE's own config."""
    layer: int | None = None
    """Block index of the hook, or None for hook_embed or when the hook name has none."""

    def to_scratch(self) -> Any:
        """Convert to a gsx scratch JumpReLUSAE via ``gsx.saes.convert.scratch_from_saelens``.

        The scratch model takes flat [..., d_in] inputs. For an attn_out SAE that
        is ``hook_z`` with its heads flattened to [..., n_heads * d_head].
        """
        from gsx.saes.convert import scratch_from_saelens

        with flat_inputs(self.sae):
            return scratch_from_saelens(self.sae)

    def describe(self) -> str:
        """Return a one-line description: source, kind, sizes and hook."""
        source = f"{self.release}/{self.sae_id}" if self.release else str(self.path)
        hooks = self.hook_name if self.hook_name == self.hook_name_out else f"{self.hook_name} -> {self.hook_name_out}"
        return f"{source} ({self.kind}, d_in {self.d_in}, d_sae {self.d_sae}, {hooks})"


@contextlib.contextmanager
def flat_inputs(sae: SAE) -> Iterator[SAE]:
    """Make `sae` take and return flat [..., d_in] activations inside the block, also for hook_z SAEs.

    A SAELens SAE with ``reshape_activations="hook_z"`` expects [..., n_heads, d_head]
    (what ``attn.hook_z`` contains, and what ``run_with_saes`` passes). Code that
    flattens activations itself needs the reshaping off; it is restored on exit.
    """
    if sae.cfg.reshape_activations != "hook_z":
        yield sae
        return
    sae.turn_off_forward_pass_hook_z_reshaping()
    sae.cfg.reshape_activations = "none"
    try:
        yield sae
    finally:
        sae.cfg.reshape_activations = "hook_z"
        sae.turn_on_forward_pass_hook_z_reshaping()


def hook_size(model: HookedTransformer, hook_name: str) -> int | None:
    """Return the width of the activations at `hook_name` in the flat layout an SAE encodes, or None if unknown.

    ``attn.hook_z`` contains [..., n_heads, d_head], which the SAE encodes flattened.
    """
    cfg = model.cfg
    if hook_name.endswith("attn.hook_z"):
        return cfg.n_heads * cfg.d_head
    d_model_hooks = (
        "hook_resid_post",
        "hook_resid_pre",
        "hook_resid_mid",
        "hook_mlp_out",
        "hook_attn_out",
        "mlp.hook_in",
    )
    if hook_name == "hook_embed" or hook_name.endswith(d_model_hooks):
        return cfg.d_model
    return None


def check_fits_model(loaded: LoadedSAE, model: HookedTransformer) -> None:
    """Raise SAEFormatError unless the SAE's hooks exist in `model` and their widths match d_in and d_out."""
    model_name = model.cfg.model_name
    checks = (("reads", loaded.hook_name, loaded.d_in), ("writes", loaded.hook_name_out, loaded.d_out))
    for role, hook_name, width in checks:
        if hook_name not in model.hook_dict:
            extra = ""
            if hook_name.endswith("mlp.hook_in"):
                extra = " (SAELens's HookedSAETransformer adds mlp.hook_in; a plain HookedTransformer lacks it)"
            raise SAEFormatError(
                f"SAE {loaded.describe()} {role} hook {hook_name!r}, which model {model_name} "
                f"({model.cfg.n_layers} layers) does not have{extra}"
            )
        expected = hook_size(model, hook_name)
        if expected is not None and expected != width:
            raise SAEFormatError(
                f"SAE {loaded.describe()} does not fit model {model_name}: it {role} {width} dimensions at "
                f"{hook_name}, but the model's activations there have {expected}. Load the model the SAE "
                f"was trained on ({loaded.model_name or 'see the SAE config'})"
            )
    if loaded.model_name and loaded.model_name.split("/")[-1] != model_name.split("/")[-1]:
        logger.warning(
            "SAE %s was trained on %s, but runs on model %s", loaded.describe(), loaded.model_name, model_name
        )

