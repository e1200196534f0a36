"""From-scratch JumpReLU SAE trainer in plain PyTorch, matching SAELens 6.54.12's JumpReLU training.

The pieces follow SAELens's `JumpReLUTrainingSAE` and `SAETrainer` (sae_lens/saes/
jumprelu_sae.py, sae_lens/training/sae_trainer.py and optim.py), rewritten without
SAELens so that each step can be read and checked. The tests compare the losses and
gradients with SAELens term by term, and the weights after short training runs.

Loss on a batch x [n_tokens, d_in], with pre, f and x_hat as in `JumpReLUSAE`:

    mse      = mean over tokens of sum_j (x_hat_j - x_j)^2
    sparsity = mean over tokens of coefficient * s(x), where s(x) is
        "step":      L0 = sum_i H(pre_i - threshold_i)            (Rajamanoharan et al. 2024)
        "quadratic": 2 / target_l0 * (L0 - target_l0)^2           (Gemma Scope 2)
        "tanh":      sum_i tanh(tanh_scale * f_i * ||W_dec[i]||)  (Anthropic)
    (the attributions are SAELens's)
    pre_act  = pre_act_loss_coefficient * mean over tokens of
               sum_i relu(threshold_i - pre_i) * dead_i * ||W_dec[i]||
    loss     = mse + sparsity (+ pre_act when pre_act_loss_coefficient is set)

H has no useful derivative, so the backward pass uses straight-through estimators
with a rectangle kernel K(u) = 1 if -1/2 < u < 1/2 else 0 and bandwidth eps:

    d f_i / d threshold_i = -(threshold_i / eps) * K((pre_i - threshold_i) / eps)
    d H_i / d threshold_i = -(1 / eps) * K((pre_i - threshold_i) / eps)
    d f_i / d pre_i       = H(pre_i - threshold_i)    (ordinary gradient where firing)
    d H_i / d pre_i       = 0

With `jumprelu_ste_to_input` (Anthropic's variant) the pre-activation also receives
the negated threshold pseudo-gradient.

As in SAELens 6.54.12, the threshold is trained directly in float32, not as
log(threshold), and is clamped to >= 0 in place before every step.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from gsx.io import atomic_path, write_json_atomic
from gsx.saes.jumprelu import JumpReLUSAE, parse_float_dtype

logger = logging.getLogger(__name__)

SparsityLossMode = Literal["step", "tanh", "quadratic"]
SPARSITY_LOSS_MODES = ("step", "tanh", "quadratic")
NORMALIZE_ACTIVATIONS_MODES = ("none", "expected_average_only_in")
# SAELens's SAETrainer clips the global gradient norm to this value and has no setting for it.
GRAD_CLIP_MAX_NORM = 1.0
TRAINER_STATE_TENSORS_FILENAME = "trainer_state.safetensors"
TRAINER_STATE_JSON_FILENAME = "trainer_state.json"


# ---------------------------------------------------------------------- straight-through estimators


def rectangle(u: Tensor) -> Tensor:
    """Rectangle kernel K(u) = 1 where -1/2 < u < 1/2 (open interval), else 0, in u's dtype."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def _sum_over_tokens(per_token: Tensor) -> Tensor:
    """Sum [..., d_sae] over every leading dimension, giving [d_sae]."""
    if per_token.ndim == 1:
        return per_token
    return per_token.sum(dim=tuple(range(per_token.ndim - 1)))


class JumpReLUFunction(torch.autograd.Function):
    """JumpReLU `pre * H(pre - threshold)` with the straight-through threshold gradient.

    forward(pre [..., d_sae], threshold [d_sae], bandwidth: float, ste_to_input: bool)
    returns [..., d_sae]. The threshold gradient is summed over the leading dimensions.
    """

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float, ste_to_input: bool) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        ctx.ste_to_input = ste_to_input
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, Tensor, None, None]:
        pre, threshold = ctx.saved_tensors
        bandwidth = ctx.bandwidth
        # d/d threshold of pre * H(pre - threshold), with the Dirac delta replaced by K / eps.
        threshold_pseudo_grad = (threshold / bandwidth) * rectangle((pre - threshold) / bandwidth) * grad_output
        grad_threshold = -_sum_over_tokens(threshold_pseudo_grad)
        grad_pre = (pre > threshold).to(grad_output.dtype) * grad_output
        if ctx.ste_to_input:
            # The output depends on pre through pre - threshold, so the estimator's
            # pre gradient is the negated threshold gradient.
            grad_pre = grad_pre + threshold_pseudo_grad
        return grad_pre, grad_threshold, None, None


class StepFunction(torch.autograd.Function):
    """Heaviside step `H(pre - threshold)` (1 where pre > threshold) with the straight-through threshold gradient.

    forward(pre [..., d_sae], threshold [d_sae], bandwidth: float, ste_to_input: bool)
    returns [..., d_sae] of 0 and 1 in pre's dtype. `pre` gets no gradient unless
    ste_to_input is set.
    """

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float, ste_to_input: bool) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        ctx.ste_to_input = ste_to_input
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, Tensor, None, None]:
        pre, threshold = ctx.saved_tensors
        bandwidth = ctx.bandwidth
        threshold_pseudo_grad = (1.0 / bandwidth) * rectangle((pre - threshold) / bandwidth) * grad_output
        grad_threshold = -_sum_over_tokens(threshold_pseudo_grad)
        grad_pre = threshold_pseudo_grad if ctx.ste_to_input else None
        return grad_pre, grad_threshold, None, None


# ---------------------------------------------------------------------- configuration


@dataclass
class ScratchTrainConfig:
    """Settings of `train_scratch_sae`. Names and defaults follow SAELens unless noted.

    Attributes:
        d_in: width of the input activations (dimensions).
        d_sae: number of latents.
        lr: peak Adam learning rate (per step).
        lr_warm_up_steps: steps of linear warm-up from lr / lr_warm_up_steps to lr.
        lr_decay_steps: final steps of linear decay from lr towards 0.
        l0_coefficient: final sparsity-loss coefficient (dimensionless).
        l0_warm_up_steps: steps of linear warm-up of the coefficient from 0.
        jumprelu_init_threshold: initial threshold of every latent (activation units
            after normalisation).
        jumprelu_bandwidth: STE kernel width eps (activation units after normalisation).
        jumprelu_sparsity_loss_mode: "step", "tanh" or "quadratic" (see module docstring).
        jumprelu_tanh_scale: scale inside tanh for the "tanh" mode (per activation unit).
        target_l0: target number of active latents per token, required for "quadratic".
        pre_act_loss_coefficient: coefficient of the pre-activation loss on dead latents,
            None to disable (SAELens suggests 3e-6 to match Anthropic).
        jumprelu_ste_to_input: also pass the STE gradient to the pre-activations.
        dead_feature_window: a latent is dead after not firing for more than this many steps.
        decoder_init_norm: norm of every decoder row at initialisation, None to keep
            the Kaiming-uniform rows.
        apply_b_dec_to_input: subtract b_dec from the input before encoding. False,
            as in Gemma Scope, where SAELens defaults to True.
        normalize_activations: "none", or "expected_average_only_in" to multiply the
            activations by sqrt(d_in) / mean ||x|| during training and fold that scalar
            into the weights at the end.
        n_batches_for_norm_estimate: batches used to estimate the normalisation scalar
            (SAELens defaults to 1000). These batches are also trained on, where
            SAELens draws fresh ones for training.
        adam_beta1: Adam beta1.
        adam_beta2: Adam beta2.
        seed: seed of the weight initialisation.
        device: torch device string.
        dtype: compute dtype name ("float32", "bfloat16", ...). The threshold stays float32.
        log_every_steps: steps between log messages and progress-bar updates of the metrics.
        checkpoint_every_steps: steps between checkpoints, 0 for none.
        checkpoint_dir: folder that receives `step_{N}/` checkpoints.
        show_progress: show a tqdm progress bar.
        hook_name: provenance stamped on the SAE (TransformerLens hook of the activations).
        model_name: provenance stamped on the SAE.
    """

    d_in: int
    d_sae: int
    lr: float = 3e-4
    lr_warm_up_steps: int = 0
    lr_decay_steps: int = 0
    l0_coefficient: float = 1.0
    l0_warm_up_steps: int = 0
    jumprelu_init_threshold: float = 0.01
    jumprelu_bandwidth: float = 0.05
    jumprelu_sparsity_loss_mode: SparsityLossMode = "step"
    jumprelu_tanh_scale: float = 4.0
    target_l0: float | None = None
    pre_act_loss_coefficient: float | None = None
    jumprelu_ste_to_input: bool = False
    dead_feature_window: int = 1000
    decoder_init_norm: float | None = 0.1
    apply_b_dec_to_input: bool = False
    normalize_activations: Literal["none", "expected_average_only_in"] = "none"
    n_batches_for_norm_estimate: int = 10
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    seed: int = 42
    device: str = "cpu"
    dtype: str = "float32"
    log_every_steps: int = 100
    checkpoint_every_steps: int = 0
    checkpoint_dir: str | Path | None = None
    show_progress: bool = True
    hook_name: str | None = None
    model_name: str | None = None

    def __post_init__(self) -> None:
        _check_int(self, "d_in", minimum=1)
        _check_int(self, "d_sae", minimum=1)

        _check_number(self, "lr", lambda value: value > 0, "a finite number > 0")
        _check_int(self, "lr_warm_up_steps", minimum=0)
        _check_int(self, "lr_decay_steps", minimum=0)
        _check_number(self, "l0_coefficient", lambda value: value >= 0, "a finite number >= 0")
        _check_int(self, "l0_warm_up_steps", minimum=0)

        _check_number(self, "jumprelu_init_threshold", lambda value: value >= 0, "a finite number >= 0")
        _check_number(self, "jumprelu_bandwidth", lambda value: value > 0, "a finite number > 0")
        _check_choice(self, "jumprelu_sparsity_loss_mode", SPARSITY_LOSS_MODES)
        _check_number(self, "jumprelu_tanh_scale", lambda value: value > 0, "a finite number > 0")
        if self.jumprelu_sparsity_loss_mode == "quadratic":
            if self.target_l0 is None:
                raise ValueError(
                    "invalid target_l0=None: jumprelu_sparsity_loss_mode='quadratic' needs a target_l0 in (0, d_sae]"
                )
            _check_number(
                self, "target_l0", lambda value: 0 < value <= self.d_sae, f"a number in (0, d_sae={self.d_sae}]"
            )
        if self.pre_act_loss_coefficient is not None:
            _check_number(
                self, "pre_act_loss_coefficient", lambda value: value >= 0, "None or a finite number >= 0"
            )
        _check_choice(self, "jumprelu_ste_to_input", (False, True))

        _check_int(self, "dead_feature_window", minimum=0)
        if self.decoder_init_norm is not None:
            _check_number(self, "decoder_init_norm", lambda value: value > 0, "None or a finite number > 0")
        _check_choice(self, "apply_b_dec_to_input", (False, True))
        _check_choice(self, "normalize_activations", NORMALIZE_ACTIVATIONS_MODES)
        _check_int(self, "n_batches_for_norm_estimate", minimum=1)

        _check_number(self, "adam_beta1", lambda value: 0 <= value < 1, "a number in [0, 1)")
        _check_number(self, "adam_beta2", lambda value: 0 <= value < 1, "a number in [0, 1)")
        _check_int(self, "seed", minimum=0)

        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"invalid device={self.device!r}: expected a torch device string such as 'cpu'") from error
        try:
            parse_float_dtype(self.dtype)
        except ValueError as error:
            message = f"invalid dtype={self.dtype!r}: expected a floating dtype name such as 'float32'"
            raise ValueError(message) from error

        _check_int(self, "log_every_steps", minimum=1)
        _check_int(self, "checkpoint_every_steps", minimum=0)
        if self.checkpoint_every_steps > 0 and self.checkpoint_dir is None:
            raise ValueError(
                f"invalid checkpoint_dir=None: checkpoint_every_steps={self.checkpoint_every_steps} needs a folder"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-serialisable dict."""
        fields = dataclasses.asdict(self)
        if fields["checkpoint_dir"] is not None:
            fields["checkpoint_dir"] = str(fields["checkpoint_dir"])
        return fields


def _check_int(cfg: ScratchTrainConfig, name: str, *, minimum: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"invalid {name}={value!r}: expected an int >= {minimum}")


def _check_number(cfg: ScratchTrainConfig, name: str, in_range: Callable[[float], bool], allowed: str) -> None:
    value = getattr(cfg, name)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not is_number or not in_range(value):
        raise ValueError(f"invalid {name}={value!r}: expected {allowed}")


def _check_choice(cfg: ScratchTrainConfig, name: str, allowed: tuple[Any, ...]) -> None:
    value = getattr(cfg, name)
    if not any(value is option or (type(value) is type(option) and value == option) for option in allowed):
        raise ValueError(f"invalid {name}={value!r}: expected one of {allowed}")


# ---------------------------------------------------------------------- initialisation and schedules


@torch.no_grad()
def initialize_like_saelens_(
    sae: JumpReLUSAE,
    *,
    jumprelu_init_threshold: float,
    decoder_init_norm: float | None = 0.1,
    generator: torch.Generator | None = None,
) -> None:
    """Initialise `sae` in place as SAELens's `JumpReLUTrainingSAE` does.

    W_dec [d_sae, d_in] is Kaiming-uniform, then every row is scaled to norm
    `decoder_init_norm` (unless None). W_enc is W_dec transposed. b_enc and b_dec are
    zero, and every threshold is `jumprelu_init_threshold`. With
    `torch.Generator().manual_seed(s)` the weights equal SAELens's after
    `torch.manual_seed(s)` on CPU.
    """
    if sae.d_out != sae.d_in or sae.W_skip is not None:
        raise ValueError(
            f"invalid model for SAELens initialisation: d_in={sae.d_in}, d_out={sae.d_out}, "
            f"affine_skip={sae.affine_skip}; only an SAE with d_out == d_in and no skip connection is supported"
        )
    # NOTE: the draw happens on CPU. SAELens draws on the SAE's device, so on a GPU the
    # same seed gives different (equally distributed) weights there.
    W_dec = torch.empty(sae.d_sae, sae.d_in, dtype=sae.dtype, device="cpu")
    nn.init.kaiming_uniform_(W_dec, generator=generator)
    if decoder_init_norm is not None:
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        W_dec *= decoder_init_norm
    sae.W_dec.copy_(W_dec)
    sae.W_enc.copy_(W_dec.T)
    sae.b_enc.zero_()
    sae.b_dec.zero_()
    sae.threshold.fill_(jumprelu_init_threshold)


def lr_at_step(step: int, *, lr: float, warm_up_steps: int, decay_steps: int, total_steps: int) -> float:
    """Return the learning rate of 0-based `step`, as SAELens's "constant" scheduler gives it.

    Warm-up: lr * (step + 1) / warm_up_steps for step < warm_up_steps. Decay over the
    last decay_steps steps: lr * (1 - k / decay_steps) at the k-th of them (k from 0).
    """
    if warm_up_steps > 0 and step < warm_up_steps:
        return lr * (step + 1) / warm_up_steps
    decay_start = total_steps - decay_steps
    if decay_steps > 0 and step >= decay_start:
        return lr * (1.0 - (step - decay_start) / decay_steps)
    return lr


def l0_coefficient_at_step(step: int, *, l0_coefficient: float, warm_up_steps: int) -> float:
    """Return the sparsity coefficient of 0-based `step`: l0_coefficient * min(step / warm_up_steps, 1).

    This is SAELens's CoefficientScheduler, which starts at 0 on the first step.
    """
    if warm_up_steps <= 0:
        return l0_coefficient
    return l0_coefficient * min(step / warm_up_steps, 1.0)


# ---------------------------------------------------------------------- loss


@dataclass
class ScratchLossOutput:
    """Loss terms (scalars) and intermediate tensors of one training forward pass."""

    loss: Tensor
    mse_loss: Tensor
    sparsity_loss: Tensor
    pre_act_loss: Tensor | None
    pre_activations: Tensor
    features: Tensor
    reconstruction: Tensor


def compute_training_loss(
    sae: JumpReLUSAE,
    x: Tensor,
    cfg: ScratchTrainConfig,
    *,
    l0_coefficient: float,
    dead_latent_mask: Tensor | None = None,
) -> ScratchLossOutput:
    """Compute the training loss of `sae` on the batch x [n_tokens, d_in] (see the module docstring).

    `l0_coefficient` is the sparsity coefficient of this step (after warm-up).
    `dead_latent_mask` [d_sae] (bool) selects the latents that the pre-activation loss
    pushes up. `pre_act_loss` is None when `cfg.pre_act_loss_coefficient` is None and 0
    when no latent is dead. The threshold is not clamped here: the trainer does that.
    """
    if sae.d_out != sae.d_in or sae.W_skip is not None:
        raise ValueError(
            f"invalid model for training: d_in={sae.d_in}, d_out={sae.d_out}, affine_skip={sae.affine_skip}; "
            "the trainer reconstructs its input, so it needs d_out == d_in and no skip connection"
        )
    x = x.to(sae.dtype)
    pre = sae.compute_pre_activations(x)
    threshold = sae.threshold.to(pre.dtype)
    bandwidth = cfg.jumprelu_bandwidth
    ste_to_input = cfg.jumprelu_ste_to_input
    features = JumpReLUFunction.apply(pre, threshold, bandwidth, ste_to_input)
    reconstruction = sae.decode(features)

    mse_loss = (reconstruction - x).pow(2).sum(dim=-1).mean()

    W_dec_norm = sae.W_dec.norm(dim=1)
    mode = cfg.jumprelu_sparsity_loss_mode
    if mode in ("step", "quadratic"):
        l0 = StepFunction.apply(pre, threshold, bandwidth, ste_to_input).sum(dim=-1)
        if mode == "quadratic":
            assert cfg.target_l0 is not None  # checked by ScratchTrainConfig
            per_token_sparsity = 2 / cfg.target_l0 * (l0 - cfg.target_l0) ** 2
        else:
            per_token_sparsity = l0
    else:
        per_token_sparsity = torch.tanh(cfg.jumprelu_tanh_scale * features * W_dec_norm).sum(dim=-1)
    sparsity_loss = (l0_coefficient * per_token_sparsity).mean()
    loss = mse_loss + sparsity_loss

    pre_act_loss = None
    if cfg.pre_act_loss_coefficient is not None:
        if dead_latent_mask is None or not bool(dead_latent_mask.any()):
            pre_act_loss = pre.new_tensor(0.0)
        else:
            per_token = ((threshold - pre).relu() * dead_latent_mask * W_dec_norm).sum(dim=-1)
            pre_act_loss = cfg.pre_act_loss_coefficient * per_token.mean()
        loss = loss + pre_act_loss

    return ScratchLossOutput(
        loss=loss,
        mse_loss=mse_loss,
        sparsity_loss=sparsity_loss,
        pre_act_loss=pre_act_loss,
        pre_activations=pre,
        features=features,
        reconstruction=reconstruction,
    )


# ---------------------------------------------------------------------- training loop


@dataclass
class ScratchTrainResult:
    """Output of `train_scratch_sae`.

    Attributes:
        sae: trained model with the activation normalisation folded in, so it takes raw activations.
        history: one dict per step with keys step (1-based), loss, mse, sparsity_loss,
            pre_act_loss (0 when disabled), l0, fvu, sparsity_coefficient, lr and
            dead_latents. Each is measured on the batch of that step before the update.
            Losses are in normalised units, and fvu and l0 are unit-free.
        checkpoint_paths: folders written, in order.
        activation_scaling_factor: the folded normalisation scalar, None without normalisation.
    """

    sae: JumpReLUSAE
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint_paths: list[Path] = field(default_factory=list)
    activation_scaling_factor: float | None = None


def train_scratch_sae(batches: Iterable[Tensor], cfg: ScratchTrainConfig, total_steps: int) -> ScratchTrainResult:
    """Train a JumpReLU SAE for `total_steps` Adam steps, one batch [train_batch_size_tokens, d_in] per step.

    Each step clamps the threshold to >= 0, computes `compute_training_loss`, clips
    the gradient norm to 1.0 and takes an Adam step with the scheduled learning rate
    and sparsity coefficient, as SAELens's SAETrainer does. Raises ValueError if
    `batches` runs out before `total_steps` or a batch has the wrong shape.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"invalid total_steps={total_steps!r}: expected an int >= 1")
    if cfg.lr_warm_up_steps + cfg.lr_decay_steps > total_steps:
        raise ValueError(
            f"invalid schedule: lr_warm_up_steps={cfg.lr_warm_up_steps} + lr_decay_steps={cfg.lr_decay_steps} "
            f"exceeds total_steps={total_steps}"
        )
    device = torch.device(cfg.device)
    dtype = parse_float_dtype(cfg.dtype)

    sae = JumpReLUSAE(
        cfg.d_in,
        cfg.d_sae,
        apply_b_dec_to_input=cfg.apply_b_dec_to_input,
        dtype=dtype,
        device=device,
        hook_name=cfg.hook_name,
        model_name=cfg.model_name,
        metadata={"training": cfg.to_dict(), "total_steps": total_steps},
    )
    initialize_like_saelens_(
        sae,
        jumprelu_init_threshold=cfg.jumprelu_init_threshold,
        decoder_init_norm=cfg.decoder_init_norm,
        generator=torch.Generator().manual_seed(cfg.seed),
    )

    batch_iterator: Iterator[Tensor] = iter(batches)
    scaling_factor = None
    if cfg.normalize_activations == "expected_average_only_in":
        estimate_batches, scaling_factor = _estimate_scaling_factor(batch_iterator, cfg)
        batch_iterator = itertools.chain(estimate_batches, batch_iterator)
        logger.info("activation scaling factor %.6g from %d batches", scaling_factor, len(estimate_batches))
    sae.metadata["activation_scaling_factor"] = scaling_factor

    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    steps_since_fired = torch.zeros(cfg.d_sae, device=device)
    result = ScratchTrainResult(sae=sae, activation_scaling_factor=scaling_factor)

    logger.info("training JumpReLU SAE d_in=%d d_sae=%d for %d steps on %s", cfg.d_in, cfg.d_sae, total_steps, device)
    with tqdm(total=total_steps, desc="Training JumpReLU SAE", disable=not cfg.show_progress) as progress:
        for step in range(total_steps):
            batch = next(batch_iterator, None)
            if batch is None:
                raise ValueError(f"batches ran out after {step} of total_steps={total_steps} steps; pass more batches")
            _check_batch(batch, cfg, step)
            # Scale before the cast to the compute dtype, in SAELens's order.
            x = batch.to(device)
            if scaling_factor is not None:
                x = x * scaling_factor
            x = x.to(dtype)

            lr = lr_at_step(
                step,
                lr=cfg.lr,
                warm_up_steps=cfg.lr_warm_up_steps,
                decay_steps=cfg.lr_decay_steps,
                total_steps=total_steps,
            )
            coefficient = l0_coefficient_at_step(
                step, l0_coefficient=cfg.l0_coefficient, warm_up_steps=cfg.l0_warm_up_steps
            )
            record = _train_step(sae, optimizer, x, cfg, steps_since_fired, lr=lr, l0_coefficient=coefficient)
            completed = step + 1
            record["step"] = completed
            result.history.append(record)

            progress.update(1)
            if completed % cfg.log_every_steps == 0 or completed == total_steps:
                _report_progress(progress, record, total_steps)
            if cfg.checkpoint_every_steps > 0 and completed % cfg.checkpoint_every_steps == 0:
                assert cfg.checkpoint_dir is not None  # checked by ScratchTrainConfig
                folder = Path(cfg.checkpoint_dir) / f"step_{completed}"
                _write_checkpoint(folder, sae, optimizer, steps_since_fired, completed, total_steps, scaling_factor)
                result.checkpoint_paths.append(folder)
                logger.info("wrote checkpoint %s", folder)

    if scaling_factor is not None:
        sae.fold_activation_norm_scaling_factor_(scaling_factor)
    logger.info("finished training after %d steps", total_steps)
    return result


def _train_step(
    sae: JumpReLUSAE,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    cfg: ScratchTrainConfig,
    steps_since_fired: Tensor,
    *,
    lr: float,
    l0_coefficient: float,
) -> dict[str, float]:
    """Run one optimisation step in place and return its metrics (without "step")."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    dead_latent_mask = steps_since_fired > cfg.dead_feature_window
    with torch.no_grad():
        # Projected on the data, as SAELens does: a clamp inside the graph would zero
        # the gradient of a threshold that reaches 0 and pin it there.
        sae.threshold.clamp_(min=0.0)

    output = compute_training_loss(sae, x, cfg, l0_coefficient=l0_coefficient, dead_latent_mask=dead_latent_mask)
    output.loss.backward()
    nn.utils.clip_grad_norm_(sae.parameters(), max_norm=GRAD_CLIP_MAX_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    with torch.no_grad():
        active = output.features != 0
        fired = active.any(dim=0)
        steps_since_fired += 1
        steps_since_fired[fired] = 0

        x32 = x.float()
        squared_error = (output.reconstruction.float() - x32).pow(2).sum(dim=-1)
        total_variance = (x32 - x32.mean(dim=0)).pow(2).sum(dim=-1)
        fvu = squared_error.mean() / total_variance.mean()
        pre_act_loss = output.pre_act_loss
        return {
            "loss": float(output.loss),
            "mse": float(output.mse_loss),
            "sparsity_loss": float(output.sparsity_loss),
            "pre_act_loss": float(pre_act_loss) if pre_act_loss is not None else 0.0,
            "l0": float(active.sum(dim=-1).float().mean()),
            "fvu": float(fvu),
            "sparsity_coefficient": float(l0_coefficient),
            "lr": float(lr),
            "dead_latents": float(dead_latent_mask.sum()),
        }


def _report_progress(progress: tqdm, record: dict[str, float], total_steps: int) -> None:
    progress.set_postfix(loss=f"{record['loss']:.4g}", l0=f"{record['l0']:.1f}", fvu=f"{record['fvu']:.3f}")
    logger.info(
        "step %d/%d: loss %.5g, mse %.5g, L0 %.2f, FVU %.4f, dead latents %d, lr %.3g",
        record["step"],
        total_steps,
        record["loss"],
        record["mse"],
        record["l0"],
        record["fvu"],
        record["dead_latents"],
        record["lr"],
    )


def _check_batch(batch: Any, cfg: ScratchTrainConfig, index: int) -> None:
    if not isinstance(batch, Tensor) or batch.ndim != 2 or batch.shape[1] != cfg.d_in:
        shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
        raise ValueError(f"invalid batch {index}: got {shape}, expected a tensor [n_tokens, d_in={cfg.d_in}]")


@torch.no_grad()
def _estimate_scaling_factor(batch_iterator: Iterator[Tensor], cfg: ScratchTrainConfig) -> tuple[list[Tensor], float]:
    """Return the batches read and sqrt(d_in) / mean ||x|| over them, as SAELens's ActivationScaler.

    After scaling, the mean L2 norm of an activation is sqrt(d_in). The mean squared
    norm is then at least d_in, and close to it when the norms vary little.
    """
    batches = []
    total_norm = 0.0
    total_count = 0
    for index in range(cfg.n_batches_for_norm_estimate):
        batch = next(batch_iterator, None)
        if batch is None:
            break
        _check_batch(batch, cfg, index)
        batches.append(batch)
        norms = batch.norm(dim=-1)
        total_norm += norms.float().sum().item()
        total_count += norms.numel()
    if total_count == 0 or total_norm == 0:
        raise ValueError("invalid batches for the activation norm estimate: none were given, or all are zero")
    return batches, cfg.d_in**0.5 / (total_norm / total_count)


# ---------------------------------------------------------------------- checkpoints


@dataclass
class ScratchCheckpoint:
    """A checkpoint read back by `load_checkpoint`.

    Attributes:
        sae: model with the activation normalisation folded in, ready for raw activations.
        trainer_tensors: `{name}.exp_avg`, `{name}.exp_avg_sq` and `{name}.step` for every
            parameter (Adam state) and `steps_since_fired` [d_sae].
        trainer_info: the contents of trainer_state.json.
    """

    sae: JumpReLUSAE
    trainer_tensors: dict[str, Tensor]
    trainer_info: dict[str, Any]


def _write_checkpoint(
    folder: Path,
    sae: JumpReLUSAE,
    optimizer: torch.optim.Optimizer,
    steps_since_fired: Tensor,
    step: int,
    total_steps: int,
    scaling_factor: float | None,
) -> None:
    """Write one checkpoint folder atomically: the folded SAE plus the trainer state.

    The SAE files follow the gsx-scratch format. The Adam moments refer to the
    unfolded parameters, in normalised-activation units.
    """
    snapshot = copy.deepcopy(sae)
    if scaling_factor is not None:
        snapshot.fold_activation_norm_scaling_factor_(scaling_factor)
    snapshot.metadata["checkpoint_step"] = step

    parameter_names = [name for name, _ in sae.named_parameters()]
    trainer_tensors = {"steps_since_fired": steps_since_fired.detach().clone()}
    optimizer_state = optimizer.state_dict()["state"]
    for index, name in enumerate(parameter_names):
        for key, value in optimizer_state.get(index, {}).items():
            trainer_tensors[f"{name}.{key}"] = value.detach().clone().contiguous()
    group = optimizer.param_groups[0]
    trainer_info = {
        "step": step,
        "total_steps": total_steps,
        "activation_scaling_factor": scaling_factor,
        "parameter_names": parameter_names,
        "adam": {"lr": group["lr"], "betas": list(group["betas"]), "eps": group["eps"]},
        "note": "Adam moments refer to the parameters before the activation scaling factor is folded in.",
    }
    with atomic_path(folder) as tmp:
        snapshot.save(tmp)
        save_file(trainer_tensors, str(tmp / TRAINER_STATE_TENSORS_FILENAME))
        write_json_atomic(tmp / TRAINER_STATE_JSON_FILENAME, trainer_info)


def load_checkpoint(folder: str | Path, *, device: torch.device | str = "cpu") -> ScratchCheckpoint:
    """Read a checkpoint folder written by `train_scratch_sae` (safetensors and JSON only, no pickle)."""
    folder = Path(folder)
    sae = JumpReLUSAE.load(folder, device=device)
    trainer_tensors = load_file(str(folder / TRAINER_STATE_TENSORS_FILENAME), device=str(device))
    trainer_info = json.loads((folder / TRAINER_STATE_JSON_FILENAME).read_text(encoding="utf-8"))
    return ScratchCheckpoint(sae=sae, trainer_tensors=trainer_tensors, trainer_info=trainer_info)
