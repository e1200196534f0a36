"""The held-out evaluation behind every report: at the end of `gsx.run`, and in `gsx.eval`.

`evaluation_sections` runs `gsx.evaluation.splice.evaluate_sae` and
`gsx.evaluation.features.summarize_features` and returns the report's `eval`
and `features` sections. `evaluate_and_report` adds the run's own sections and
writes report.md, report.json and the plots into the run folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from gsx.data import TokenizedCorpus, special_token_ids
from gsx.evaluation.features import summarize_features
from gsx.evaluation.resources import measure_resources
from gsx.evaluation.splice import EvalResult, evaluate_sae
from gsx.io import library_versions
from gsx.recipe import EvalConfig, Recipe
from gsx.reporting.report import write_report_files

logger = logging.getLogger(__name__)

def evaluation_sections(
    model: Any,
    sae: Any,
    eval_tokens: torch.Tensor,
    eval_config: EvalConfig,
    *,
    hook_name: str,
    hook_name_out: str | None = None,
    progress: bool = True,
) -> tuple[EvalResult, dict[str, Any], dict[str, Any]]:
    """Evaluate `sae` on `eval_tokens` and return (result, the report's `eval` section, its `features` section)."""
    special_ids = special_token_ids(model.tokenizer)
    ce_sequences = eval_config.ce_sequences
    top_features = eval_config.top_features
    with measure_resources() as usage:
        result = evaluate_sae(
            model,
            sae,
            hook_name,
            eval_tokens,
            special_ids=special_ids,
            batch_size=eval_config.batch_size,
            ce_chunk_tokens=eval_config.ce_chunk_tokens,
            dense_threshold=eval_config.dense_threshold,
            include_special_tokens=eval_config.include_special_tokens,
            hook_name_out=hook_name_out,
            ce_sequences=ce_sequences,
            progress=progress,
        )
    logger.info("evaluated %d tokens in %.1f s, peak RSS %s MiB", result.reconstruction.n_tokens, usage.seconds,
                f"{usage.peak_rss_mib:.0f}" if usage.peak_rss_mib is not None else "unknown")
    eval_section = {
        **result.to_dict(),
        "distributions": result.stats.distributions(),
        "settings": {
            "batch_size": eval_config.batch_size,
            "ce_chunk_tokens": eval_config.ce_chunk_tokens,
            "dense_threshold": eval_config.dense_threshold,
            "include_special_tokens": eval_config.include_special_tokens,
            "special_token_ids": special_ids,
        },
        "resources": usage.to_dict(),
    }
    features = summarize_features(result.features, model, sae, hook_name_out or hook_name, eval_tokens,
                                  n_top=top_features)
    return result, eval_section, features


def _load_trained_sae(sae_dir: Path, device: str) -> Any:
    """Load the SAE a trainer wrote (SAELens or gsx scratch format) as a SAELens SAE."""
    try:
        from gsx.loading import load_sae
    except ImportError:
        from sae_lens import SAE

        return SAE.load_from_disk(str(sae_dir), device=device)
    return load_sae(str(sae_dir), device=device).sae


def evaluate_and_report(
    recipe: Recipe, model: Any, corpus: TokenizedCorpus, result: Any, run_dir: Path, run_info: dict[str, Any]
) -> dict[str, Any]:
    """Evaluate the SAE in `result.sae_dir` on held-out tokens, write report.md / report.json and plots, return the report."""
    sae = _load_trained_sae(result.sae_dir, recipe.model.device)
    eval_tokens = corpus.eval_tokens[: recipe.eval.n_sequences]
    evaluation, eval_section, features = evaluation_sections(
        model, sae, eval_tokens, recipe.eval, hook_name=recipe.sae.hook_name
    )
    report = {
        "kind": "run",
        "run": {**run_info, "eval_s": round(eval_section["resources"]["seconds"], 1)},
        "model": {"name": recipe.model.name, "source": recipe.model.source, "hook_name": recipe.sae.hook_name,
                  "hook_name_out": recipe.sae.hook_name, "d_in": int(sae.cfg.d_in)},
        "sae": {"path": str(result.sae_dir), "architecture": "jumprelu", "d_sae": recipe.sae.d_sae,
                "trainer": recipe.training.trainer, "lr": recipe.training.lr,
                "l0_coefficient": recipe.sae.l0_coefficient,
                "jumprelu_sparsity_loss_mode": recipe.sae.jumprelu_sparsity_loss_mode,
                "jumprelu_init_threshold": recipe.sae.jumprelu_init_threshold,
                "train_batch_size_tokens": recipe.training.train_batch_size_tokens},
        "data": {"corpus": corpus.source, "documents": corpus.n_documents, "duplicates_dropped": corpus.n_duplicates,
                 "eval_documents": corpus.n_eval_documents, "context_size": corpus.context_size,
                 "training_tokens": recipe.training.training_tokens,
                 "eval_sequences": int(eval_tokens.shape[0]),
                 "ce_sequences": evaluation.splice.n_sequences if evaluation.splice else 0},
        "training": {"steps": recipe.training.total_steps,
                     "first": result.history[0] if result.history else None,
                     "last": result.history[-1] if result.history else None,
                     "checkpoints": [str(p) for p in result.checkpoints]},
        "eval": eval_section,
        "features": features,
        "versions": library_versions(),
    }
    written, _, _ = write_report_files(run_dir, report)
    return written
