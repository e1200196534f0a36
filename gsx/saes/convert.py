"""Converters between gsx's reference `JumpReLUSAE` and SAELens 6.54.12's JumpReLU classes.

Every converter copies the tensors, so the two models never share storage, and keeps
the weights bit-identical. Float32 outputs are bit-identical too, except the skip term
of a skip transcoder: SAELens multiplies by its stored matrix transposed, which takes
another BLAS path and can differ in the last bit. Which SAELens class a gsx model maps to:

- d_out == d_in, no skip connection, not marked as a transcoder: `sae_lens.JumpReLUSAE`
  (or `JumpReLUTrainingSAE` through `training_saelens_from_scratch`);
- a transcoder without skip connection: `JumpReLUTranscoder`;
- a transcoder with skip connection: `JumpReLUSkipTranscoder`, whose `W_skip` is the
  transpose of gsx's (SAELens stores [d_out, d_in], gsx [d_in, d_out] as Gemma Scope 2).

SAELens has no JumpReLU transcoder with `apply_b_dec_to_input` and no training class
for JumpReLU transcoders; those conversions raise ValueError. The provenance fields
hook_name, hook_name_out and model_name travel through SAELens's `cfg.metadata`.
"""

from __future__ import annotations

from typing import Any

import torch
from sae_lens import (
    JumpReLUSAEConfig,
    JumpReLUSkipTranscoder,
    JumpReLUSkipTranscoderConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    JumpReLUTranscoder,
    JumpReLUTranscoderConfig,
)
from sae_lens import JumpReLUSAE as SAELensJumpReLUSAE
from sae_lens.saes.sae import SAE, SAEMetadata
from torch import Tensor

from gsx.saes.jumprelu import JumpReLUSAE, dtype_name
from gsx.training.scratch import ScratchTrainConfig

SAELensJumpReLU = SAELensJumpReLUSAE | JumpReLUTrainingSAE | JumpReLUTranscoder
PROVENANCE_FIELDS = ("hook_name", "hook_name_out", "model_name")


def saelens_from_scratch(
    sae: JumpReLUSAE, *, as_transcoder: bool | None = None
) -> SAELensJumpReLUSAE | JumpReLUTranscoder | JumpReLUSkipTranscoder:
    """Convert a gsx model to the matching SAELens inference class, on the same device and dtype.

    `as_transcoder=None` picks a transcoder class when d_out != d_in, the model has a
    skip connection, or `hook_name_out` is set. SAELens's inference classes keep the
    threshold in the compute dtype, so a bfloat16 model's float32 threshold is rounded.
    """
    if as_transcoder is None:
        as_transcoder = sae.d_out != sae.d_in or sae.affine_skip or sae.hook_name_out is not None
    if not as_transcoder and (sae.d_out != sae.d_in or sae.affine_skip):
        raise ValueError(
            f"invalid as_transcoder=False for d_in={sae.d_in}, d_out={sae.d_out}, affine_skip={sae.affine_skip}: "
            "sae_lens.JumpReLUSAE needs d_out == d_in and no skip connection"
        )
    if as_transcoder and sae.apply_b_dec_to_input:
        raise ValueError(
            "unsupported conversion: SAELens JumpReLU transcoders do not support apply_b_dec_to_input=True"
        )

    common = {
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": dtype_name(sae.dtype),
        "device": str(sae.device),
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none",
        "metadata": _saelens_metadata(sae),
    }
    state_dict = {key: tensor.clone() for key, tensor in sae.tensors().items()}
    if not as_transcoder:
        return _build_saelens_module(SAELensJumpReLUSAE, JumpReLUSAEConfig(**common), state_dict, sae)

    if sae.W_skip is None:
        return _build_saelens_module(
            JumpReLUTranscoder, JumpReLUTranscoderConfig(**common, d_out=sae.d_out), state_dict, sae
        )
    state_dict["W_skip"] = state_dict["W_skip"].T.contiguous()
    return _build_saelens_module(
        JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig(**common, d_out=sae.d_out), state_dict, sae
    )


def training_saelens_from_scratch(sae: JumpReLUSAE, train_cfg: ScratchTrainConfig | None = None) -> JumpReLUTrainingSAE:
    """Convert a gsx SAE to SAELens's `JumpReLUTrainingSAE` (float32 threshold, as gsx).

    `train_cfg` supplies the JumpReLU training options (bandwidth, sparsity mode and
    coefficient, tanh scale, target L0, pre-activation loss, STE to input, decoder
    init norm). Without it SAELens's defaults apply. Raises ValueError for a
    transcoder, which SAELens cannot train, or a `train_cfg` whose d_in, d_sae or
    apply_b_dec_to_input differ from the model.
    """
    if sae.d_out != sae.d_in or sae.affine_skip:
        raise ValueError(
            f"unsupported conversion: SAELens has no JumpReLU training transcoder "
            f"(d_in={sae.d_in}, d_out={sae.d_out}, affine_skip={sae.affine_skip})"
        )
    options: dict[str, Any] = {}
    if train_cfg is not None:
        for name in ("d_in", "d_sae", "apply_b_dec_to_input"):
            if getattr(train_cfg, name) != getattr(sae, name):
                raise ValueError(
                    f"invalid train_cfg.{name}={getattr(train_cfg, name)!r}: "
                    f"the model has {name}={getattr(sae, name)!r}"
                )
        options = {
            "jumprelu_init_threshold": train_cfg.jumprelu_init_threshold,
            "jumprelu_bandwidth": train_cfg.jumprelu_bandwidth,
            "jumprelu_sparsity_loss_mode": train_cfg.jumprelu_sparsity_loss_mode,
            "l0_coefficient": train_cfg.l0_coefficient,
            "l0_warm_up_steps": train_cfg.l0_warm_up_steps,
            "pre_act_loss_coefficient": train_cfg.pre_act_loss_coefficient,
            "jumprelu_tanh_scale": train_cfg.jumprelu_tanh_scale,
            "jumprelu_ste_to_input": train_cfg.jumprelu_ste_to_input,
            "target_l0": train_cfg.target_l0,
            "decoder_init_norm": train_cfg.decoder_init_norm,
        }
    cfg = JumpReLUTrainingSAEConfig(
        d_in=sae.d_in,
        d_sae=sae.d_sae,
        dtype=dtype_name(sae.dtype),
        device=str(sae.device),
        apply_b_dec_to_input=sae.apply_b_dec_to_input,
        normalize_activations="none",
        metadata=_saelens_metadata(sae),
        **options,
    )
    state_dict = {key: tensor.clone() for key, tensor in sae.tensors().items()}
    return _build_saelens_module(JumpReLUTrainingSAE, cfg, state_dict, sae)


def scratch_from_saelens(sae: SAELensJumpReLU) -> JumpReLUSAE:
    """Convert a SAELens JumpReLU SAE, training SAE or (skip) transcoder to a gsx `JumpReLUSAE`.

    A state dict with `log_threshold` instead of `threshold` (older SAELens
    JumpReLU training checkpoints) gets `threshold = exp(log_threshold)`. Raises TypeError for other classes and
    ValueError when the SAELens model normalises or reshapes activations at run time,
    which gsx does not: fold the normalisation into the weights first.
    """
    if not isinstance(sae, (SAELensJumpReLUSAE, JumpReLUTrainingSAE, JumpReLUTranscoder)):
        raise TypeError(
            f"unsupported SAELens class {type(sae).__name__}: expected JumpReLUSAE, JumpReLUTrainingSAE, "
            "JumpReLUTranscoder or JumpReLUSkipTranscoder"
        )
    if sae.cfg.normalize_activations != "none":
        raise ValueError(
            f"unsupported normalize_activations={sae.cfg.normalize_activations!r}: fold the normalisation into "
            "the weights first (for example fold_activation_norm_scaling_factor)"
        )
    if sae.cfg.reshape_activations != "none":
        raise ValueError(
            f"unsupported reshape_activations={sae.cfg.reshape_activations!r}: gsx models take flat [..., d_in] inputs"
        )

    state_dict = sae.state_dict()
    tensors: dict[str, Tensor] = {
        key: state_dict[key].detach().clone() for key in ("W_enc", "b_enc", "W_dec", "b_dec")
    }
    tensors["threshold"] = threshold_from_saelens_state_dict(state_dict)
    if isinstance(sae, JumpReLUSkipTranscoder):
        tensors["W_skip"] = state_dict["W_skip"].detach().T.contiguous()

    metadata = sae.cfg.metadata
    provenance = {name: metadata.get(name) for name in PROVENANCE_FIELDS}
    if provenance["hook_name_out"] is None:
        # SAELens's Gemma Scope 2 transcoder loader puts hook_name_out in the config dict.
        provenance["hook_name_out"] = getattr(sae.cfg, "hook_name_out", None)
    return JumpReLUSAE.from_tensors(tensors, apply_b_dec_to_input=sae.cfg.apply_b_dec_to_input, **provenance)


def threshold_from_saelens_state_dict(state_dict: dict[str, Tensor]) -> Tensor:
    """Return a float32 copy of the threshold [d_sae], from `threshold` or else `exp(log_threshold)`."""
    if "threshold" in state_dict:
        return state_dict["threshold"].detach().float().clone()
    if "log_threshold" in state_dict:
        return torch.exp(state_dict["log_threshold"].detach().float())
    raise ValueError(
        f"missing threshold: the state dict has neither threshold nor log_threshold, only {sorted(state_dict)}"
    )


def _saelens_metadata(sae: JumpReLUSAE) -> SAEMetadata:
    provenance = {name: getattr(sae, name) for name in PROVENANCE_FIELDS if getattr(sae, name) is not None}
    return SAEMetadata(**provenance)


def _build_saelens_module(
    sae_class: type[SAE[Any]], cfg: Any, state_dict: dict[str, Tensor], source: JumpReLUSAE
) -> Any:
    """Construct `sae_class` on the meta device, assign `state_dict`, and move it to the source's device and dtype.

    Building on the meta device skips SAELens's random initialisation, so a conversion
    neither allocates throwaway weights nor advances the global torch RNG.
    """
    device = cfg.device
    cfg.device = "meta"
    module = sae_class(cfg)
    module.cfg.device = device
    module.load_state_dict(state_dict, assign=True)
    return module.to(device=source.device, dtype=source.dtype)
