"""Train a JumpReLU SAE with SAELens's training runner, driven by a gsx recipe.

gsx keeps SAELens's runner, activation store and trainer, and changes three things.
The progress bar shows live loss, L0 and FVU. Checkpoints are taken every
`checkpoint_every_steps` steps, where SAELens spaces a fixed count evenly. Every
checkpoint and the final SAE are written to a temporary folder and renamed into
place, so an interrupted run never leaves half a checkpoint.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sae_lens import JumpReLUTrainingSAEConfig, LanguageModelSAERunnerConfig, LoggingConfig
from sae_lens.constants import RUNNER_CFG_FILENAME, SPARSITY_FILENAME
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner
from sae_lens.training.sae_trainer import SAETrainer
from safetensors.torch import save_file

from gsx.data import special_token_ids, to_hf_dataset
from gsx.training.activations import iterate_batches
from gsx.io import atomic_path, write_text_atomic
from gsx.recipe import Recipe

logger = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    """Outputs of one training run: the final SAE folder, the training log and the checkpoints."""

    sae_dir: Path
    """Folder of the final SAE in SAELens format (`cfg.json`, `sae_weights.safetensors`)."""
    history: list[dict[str, float]] = field(default_factory=list)
    """One entry per logged step: step, tokens, loss, mse, l0, fvu, lr, l0_coefficient."""
    checkpoints: list[Path] = field(default_factory=list)
    """Checkpoint folders written during training, oldest first."""
    trainer: str = "saelens"
    """Implementation that trained the SAE: `saelens` or `scratch`."""


def build_runner_config(recipe: Recipe, d_in: int, checkpoint_root: Path) -> LanguageModelSAERunnerConfig:
    """Translate a gsx recipe into SAELens's runner configuration."""
    sae, training, data = recipe.sae, recipe.training, recipe.data
    sae_cfg = JumpReLUTrainingSAEConfig(
        d_in=d_in,
        d_sae=sae.d_sae,
        dtype=sae.dtype,
        device=recipe.model.device,
        apply_b_dec_to_input=sae.apply_b_dec_to_input,
        normalize_activations=sae.normalize_activations,
        jumprelu_init_threshold=sae.jumprelu_init_threshold,
        jumprelu_bandwidth=sae.jumprelu_bandwidth,
        jumprelu_sparsity_loss_mode=sae.jumprelu_sparsity_loss_mode,
        jumprelu_tanh_scale=sae.jumprelu_tanh_scale,
        target_l0=sae.target_l0,
        l0_coefficient=sae.l0_coefficient,
        l0_warm_up_steps=sae.l0_warm_up_steps,
        pre_act_loss_coefficient=sae.pre_act_loss_coefficient,
    )
    return LanguageModelSAERunnerConfig(
        sae=sae_cfg,
        model_name=recipe.model.name,
        hook_name=sae.hook_name,
        # The dataset is passed in as tokens; this name only lands in metadata.
        dataset_path=f"gsx:{data.corpus}" + (f":{data.path}" if data.path else ""),
        dataset_trust_remote_code=False,
        streaming=False,
        is_dataset_tokenized=True,
        context_size=data.context_size,
        training_tokens=training.training_tokens,
        train_batch_size_tokens=training.train_batch_size_tokens,
        store_batch_size_prompts=training.store_batch_size_prompts,
        n_batches_in_buffer=training.n_batches_in_buffer,
        n_batches_for_norm_estimate=training.n_batches_for_norm_estimate,
        lr=training.lr,
        adam_beta1=training.adam_beta1,
        adam_beta2=training.adam_beta2,
        lr_scheduler_name="constant",
        lr_warm_up_steps=training.lr_warm_up_steps,
        lr_decay_steps=training.lr_decay_steps,
        dead_feature_window=training.dead_feature_window,
        feature_sampling_window=max(training.dead_feature_window, training.log_every_steps),
        device=recipe.model.device,
        seed=recipe.run.seed,
        dtype=sae.dtype,
        prepend_bos=True,
        exclude_special_tokens=True,
        logger=LoggingConfig(
            log_to_wandb=training.wandb,
            wandb_project=training.wandb_project,
            run_name=recipe.run.name,
        ),
        checkpoint_path=str(checkpoint_root),
        n_checkpoints=0,
        output_path=None,
        verbose=False,
    )


class GsxSAETrainer(SAETrainer):
    """SAELens's trainer with live metrics, step-based checkpoints and atomic saves."""

    def __init__(self, *args: Any, log_every_steps: int, checkpoint_every_steps: int, checkpoint_root: Path, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.log_every_steps = log_every_steps
        self.checkpoint_every_steps = checkpoint_every_steps
        self.checkpoint_root = checkpoint_root
        self.history: list[dict[str, float]] = []
        self.checkpoints: list[Path] = []

    @torch.no_grad()
    def _update_pbar(self, step_output: Any, pbar: Any, update_interval: int = 0) -> None:
        # SAELens calls this after incrementing n_training_steps.
        pbar.update(self.cfg.train_batch_size_samples)
        step = self.n_training_steps
        if step % self.log_every_steps != 0 and step != 1:
            return
        sae_in = step_output.sae_in.float()
        sae_out = step_output.sae_out.float()
        residual = (sae_out - sae_in).pow(2).sum()
        variance = (sae_in - sae_in.mean(0)).pow(2).sum()
        entry = {
            "step": step,
            "tokens": self.n_training_samples,
            "loss": float(step_output.loss.item()),
            "mse": float(residual / sae_in.shape[0]),
            "l0": float((step_output.feature_acts > 0).float().sum(-1).mean()),
            "fvu": float(residual / variance),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "l0_coefficient": float(next(iter(self.get_coefficients().values()), 0.0)),
        }
        self.history.append(entry)
        pbar.set_postfix(loss=f"{entry['loss']:.4g}", l0=f"{entry['l0']:.1f}", fvu=f"{entry['fvu']:.3f}", refresh=False)
        logger.debug("step %d: %s", step, entry)

    @torch.no_grad()
    def _checkpoint_if_needed(self) -> None:
        # Called before n_training_steps is incremented: the step just finished is n + 1.
        step = self.n_training_steps + 1
        if self.checkpoint_every_steps and step % self.checkpoint_every_steps == 0:
            self.save_checkpoint(checkpoint_name=f"step_{step:07d}")

    def save_checkpoint(self, checkpoint_name: str, base_path: Path | str | None = None) -> None:
        target = Path(base_path or self.checkpoint_root) / checkpoint_name
        with atomic_path(target) as tmp:
            tmp.mkdir(parents=True)
            # SAELens writes <base>/<name>; give it a scratch base beside the target.
            super().save_checkpoint(checkpoint_name="checkpoint", base_path=tmp)
            for item in (tmp / "checkpoint").iterdir():
                shutil.move(str(item), str(tmp / item.name))
            (tmp / "checkpoint").rmdir()
        self.checkpoints.append(target)
        logger.info("checkpoint written to %s", target)


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT / SIGTERM; `checkpoint` is the folder holding the progress so far."""

    def __init__(self, checkpoint: Path, step: int):
        super().__init__(f"training interrupted at step {step}; progress saved in {checkpoint}")
        self.checkpoint = checkpoint
        self.step = step


class GsxRunner(LanguageModelSAETrainingRunner):
    """SAELens's runner using GsxSAETrainer and writing the final SAE atomically."""

    def __init__(self, cfg: LanguageModelSAERunnerConfig, *, recipe: Recipe, checkpoint_root: Path, **kwargs: Any):
        super().__init__(cfg, **kwargs)
        self.recipe = recipe
        self.checkpoint_root = checkpoint_root

    def train(self, data_provider: Iterator[torch.Tensor] | None = None) -> GsxSAETrainer:
        """Fit the SAE and return the trainer (its `sae` is trained, normalisation folded in).

        `data_provider` yields `[train_batch_size_tokens, d_in]` activation batches; by
        default SAELens's activation store harvests them from the model as it goes.
        """
        import wandb

        self._set_sae_metadata()
        if self.cfg.logger.log_to_wandb:
            wandb.init(project=self.cfg.logger.wandb_project, config=self.cfg.to_dict(), name=self.cfg.logger.run_name)
        trainer = GsxSAETrainer(
            sae=self.sae,
            data_provider=data_provider if data_provider is not None else self.activations_store,
            evaluator=self.evaluator,
            save_checkpoint_fn=self.save_checkpoint,
            cfg=self.cfg.to_sae_trainer_config(),
            log_every_steps=self.recipe.training.log_every_steps,
            checkpoint_every_steps=self.recipe.training.checkpoint_every_steps,
            checkpoint_root=self.checkpoint_root,
        )
        self.run_trainer_with_interruption_handling(trainer)
        if self.cfg.logger.log_to_wandb:
            wandb.finish()
        return trainer

    def run_trainer_with_interruption_handling(self, trainer: GsxSAETrainer) -> Any:
        """Fit, turning SIGINT / SIGTERM into a checkpoint in the run folder and TrainingInterrupted."""
        from sae_lens.training._interruption import InterruptedException, interrupt_callback

        signal.signal(signal.SIGINT, interrupt_callback)
        signal.signal(signal.SIGTERM, interrupt_callback)
        try:
            return trainer.fit()
        except (KeyboardInterrupt, InterruptedException) as err:
            name = f"interrupted_step_{trainer.n_training_steps:07d}"
            trainer.save_checkpoint(checkpoint_name=name)
            raise TrainingInterrupted(self.checkpoint_root / name, trainer.n_training_steps) from err
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def save_final_sae_atomic(self, trainer: GsxSAETrainer, target: Path) -> Path:
        """Write the trained SAE in SAELens inference format to `target`."""
        with atomic_path(target) as tmp:
            tmp.mkdir(parents=True)
            trainer.sae.save_inference_model(str(tmp))
            save_file({"sparsity": trainer.log_feature_sparsity.contiguous()}, str(tmp / SPARSITY_FILENAME))
            (tmp / RUNNER_CFG_FILENAME).write_text(json.dumps(self.cfg.to_dict(), default=str))
        return target


def train_with_saelens(
    recipe: Recipe,
    model: Any,
    train_tokens: torch.Tensor,
    run_dir: Path,
    activations: torch.Tensor | None = None,
) -> TrainingResult:
    """Train a JumpReLU SAE with SAELens and save it under `run_dir/sae`.

    Activations come from SAELens's activation store over `train_tokens`, or from
    the pre-harvested `[n, d_in]` tensor `activations` when given.
    """
    torch.manual_seed(recipe.run.seed)
    hook_size = _hook_size(model, recipe.sae.hook_name)
    checkpoint_root = run_dir / "checkpoints"
    cfg = build_runner_config(recipe, hook_size, checkpoint_root)
    # SAELens re-derives checkpoint paths from this; a fixed path keeps them in the run folder.
    cfg.checkpoint_path = str(checkpoint_root)
    cfg.exclude_special_tokens = special_token_ids(model.tokenizer)

    runner = GsxRunner(
        cfg,
        recipe=recipe,
        checkpoint_root=checkpoint_root,
        override_model=model,
        override_dataset=to_hf_dataset(train_tokens),
    )
    logger.info(
        "training %s on %s: d_in %d, d_sae %d, %d tokens in %d steps of %d",
        type(runner.sae).__name__, recipe.sae.hook_name, hook_size, recipe.sae.d_sae,
        recipe.training.training_tokens, recipe.training.total_steps, recipe.training.train_batch_size_tokens,
    )
    provider = None
    if activations is not None:
        batch_size = recipe.training.train_batch_size_tokens
        # SAELens spends the first batches on the normalisation estimate and then draws
        # fresh ones; the scratch trainer trains on its estimate batches. Serving the
        # estimate batches twice lines the two trainers up batch for batch.
        n_estimate = recipe.training.n_batches_for_norm_estimate if recipe.sae.normalize_activations != "none" else 0
        provider = itertools.chain(
            itertools.islice(iterate_batches(activations, batch_size), n_estimate),
            iterate_batches(activations, batch_size),
        )
    trainer = runner.train(provider)
    sae_dir = runner.save_final_sae_atomic(trainer, run_dir / "sae")
    history_text = "".join(json.dumps(entry) + "\n" for entry in trainer.history)
    write_text_atomic(run_dir / "training_log.jsonl", history_text)
    return TrainingResult(sae_dir=sae_dir, history=trainer.history, checkpoints=trainer.checkpoints, trainer="saelens")


def _hook_size(model: Any, hook_name: str) -> int:
    """Return the width of the activations at `hook_name` (d_model for residual hooks)."""
    if hook_name not in model.hook_dict:
        raise ValueError(f"hook {hook_name!r} does not exist on {model.cfg.model_name}")
    return int(model.cfg.d_model)

