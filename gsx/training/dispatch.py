"""Run the trainer a recipe names: SAELens's runner, the scratch trainer, or both.

Outputs in the run folder: `sae/` (SAELens format) for `saelens`, `scratch_sae/`
(gsx-scratch format) for `scratch`, both for `both`. With `both`, activations are
harvested once and the two trainers see the same batches in the same order, with
the same hyper-parameters and seed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from gsx.data import special_token_ids
from gsx.io import write_text_atomic
from gsx.recipe import Recipe
from gsx.training.activations import harvest_activations, iterate_batches
from gsx.training.saelens_runner import TrainingResult, train_with_saelens

logger = logging.getLogger(__name__)


def scratch_config(recipe: Recipe, d_in: int, checkpoint_dir: Path):
    """Translate a recipe into the scratch trainer's configuration (same settings as the SAELens path)."""
    from gsx.training.scratch import ScratchTrainConfig

    sae, training = recipe.sae, recipe.training
    return ScratchTrainConfig(
        d_in=d_in,
        d_sae=sae.d_sae,
        lr=training.lr,
        lr_warm_up_steps=training.lr_warm_up_steps,
        lr_decay_steps=training.lr_decay_steps,
        l0_coefficient=sae.l0_coefficient,
        l0_warm_up_steps=sae.l0_warm_up_steps,
        jumprelu_init_threshold=sae.jumprelu_init_threshold,
        jumprelu_bandwidth=sae.jumprelu_bandwidth,
        jumprelu_sparsity_loss_mode=sae.jumprelu_sparsity_loss_mode,
        jumprelu_tanh_scale=sae.jumprelu_tanh_scale,
        target_l0=sae.target_l0,
        pre_act_loss_coefficient=sae.pre_act_loss_coefficient,
        dead_feature_window=training.dead_feature_window,
        apply_b_dec_to_input=sae.apply_b_dec_to_input,
        normalize_activations=sae.normalize_activations,
        n_batches_for_norm_estimate=training.n_batches_for_norm_estimate,
        adam_beta1=training.adam_beta1,
        adam_beta2=training.adam_beta2,
        seed=recipe.run.seed,
        device=recipe.model.device,
        dtype=sae.dtype,
        log_every_steps=training.log_every_steps,
        checkpoint_every_steps=training.checkpoint_every_steps,
        checkpoint_dir=checkpoint_dir,
        hook_name=sae.hook_name,
        model_name=recipe.model.name,
    )


def train_with_scratch(recipe: Recipe, activations: torch.Tensor, run_dir: Path) -> TrainingResult:
    """Train the scratch JumpReLU SAE on pre-harvested `[n, d_in]` activations; save it under `run_dir/scratch_sae`."""
    from gsx.training.scratch import train_scratch_sae

    cfg = scratch_config(recipe, int(activations.shape[1]), run_dir / "scratch_checkpoints")
    batches = iterate_batches(activations, recipe.training.train_batch_size_tokens)
    result = train_scratch_sae(batches, cfg, recipe.training.total_steps)
    sae_dir = run_dir / "scratch_sae"
    result.sae.save(sae_dir)
    history_text = "".join(json.dumps(entry) + "\n" for entry in result.history)
    write_text_atomic(run_dir / "scratch_training_log.jsonl", history_text)
    return TrainingResult(sae_dir=sae_dir, history=result.history, checkpoints=result.checkpoint_paths, trainer="scratch")


def train_recipe(recipe: Recipe, model: Any, train_tokens: torch.Tensor, run_dir: Path) -> list[TrainingResult]:
    """Train what `recipe.training.trainer` names; return one result per trained SAE (SAELens first)."""
    trainer = recipe.training.trainer
    if trainer == "saelens":
        return [train_with_saelens(recipe, model, train_tokens, run_dir)]

    torch.manual_seed(recipe.run.seed)
    activations = harvest_activations(
        model,
        train_tokens,
        recipe.sae.hook_name,
        recipe.training.training_tokens,
        special_ids=special_token_ids(model.tokenizer),
        batch_size_prompts=recipe.training.store_batch_size_prompts,
        seed=recipe.run.seed,
    )
    logger.info("harvested %d activations of width %d at %s", *activations.shape, recipe.sae.hook_name)
    results = []
    if trainer == "both":
        results.append(train_with_saelens(recipe, model, train_tokens, run_dir, activations=activations))
    results.append(train_with_scratch(recipe, activations, run_dir))
    return results
