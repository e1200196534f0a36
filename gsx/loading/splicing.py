"""TransformerLens hooks that splice a loaded SAE or transcoder into a model run.

``HookedSAETransformer.run_with_saes`` in sae_lens 6.54.12 runs an attached
SAE as ``decode(encode(x))``. For ``JumpReLUSkipTranscoder`` that leaves out the
affine skip term ``x @ W_skip.T``, which only ``forward`` adds, so an affine
Gemma Scope 2 transcoder spliced that way is wrong. The hooks built here call
``forward`` and are right for every kind that load_sae returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gsx.loading.loaded import LoadedSAE, flat_inputs

HookFunction = Callable[[torch.Tensor, Any], torch.Tensor]


def splice_hooks(loaded: LoadedSAE, keep: torch.Tensor | None = None) -> list[tuple[str, HookFunction]]:
    """Return ``fwd_hooks`` for ``model.run_with_hooks`` that replace the output hook with the SAE's output.

    An SAE reads and replaces ``hook_name``. A transcoder's input is captured at
    ``hook_name`` and its output replaces ``hook_name_out``. `keep` is a
    [batch, pos] bool mask: where it is False (for example at BOS), the model's
    own activations are kept.
    """
    sae = loaded.sae
    captured: dict[str, torch.Tensor] = {}

    def capture_input(activation: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001
        captured["input"] = activation
        return activation

    def replace_output(activation: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001
        source = captured.pop("input") if loaded.hook_name != loaded.hook_name_out else activation
        flat = source.reshape(*source.shape[:2], -1).to(sae.W_enc.dtype)
        with flat_inputs(sae):
            output = sae(flat)
        output = output.to(activation.dtype).reshape(activation.shape)
        if keep is None:
            return output
        mask = keep.to(activation.device).reshape(*keep.shape, *([1] * (activation.dim() - keep.dim())))
        return torch.where(mask, output, activation)

    if loaded.hook_name == loaded.hook_name_out:
        return [(loaded.hook_name, replace_output)]
    return [(loaded.hook_name, capture_input), (loaded.hook_name_out, replace_output)]
