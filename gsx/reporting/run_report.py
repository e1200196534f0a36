"""The evaluation every run ends with: held-out metrics of the final SAE, then the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gsx.data import TokenizedCorpus, special_token_ids
from gsx.evaluation.splice import evaluate_sae
from gsx.io import library_versions
from gsx.recipe import Recipe
from gsx.reporting.report import write_report


def evaluate_and_report(
    recipe: Recipe, model: Any, corpus: TokenizedCorpus, result: Any, run_dir: Path, run_info: dict[str, Any]
) -> dict[str, Any]:
    """Evaluate the SAE in `result.sae_dir` on held-out tokens, write report.md / report.json, return the report."""
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(result.sae_dir), device=recipe.model.device)
    eval_tokens = corpus.eval_tokens[: recipe.eval.n_sequences]
    evaluation = evaluate_sae(
        model,
        sae,
        recipe.sae.hook_name,
        eval_tokens,
        special_ids=special_token_ids(model.tokenizer),
        batch_size=recipe.eval.batch_size,
        ce_chunk_tokens=recipe.eval.ce_chunk_tokens,
        dense_threshold=recipe.eval.dense_threshold,
        include_special_tokens=recipe.eval.include_special_tokens,
    )
    report = {
        "run": run_info,
        "model": {"name": recipe.model.name, "source": recipe.model.source, "hook_name": recipe.sae.hook_name,
                  "d_in": int(sae.cfg.d_in)},
        "sae": {"path": str(result.sae_dir), "architecture": "jumprelu", "d_sae": recipe.sae.d_sae,
                "trainer": recipe.training.trainer, "lr": recipe.training.lr,
                "l0_coefficient": recipe.sae.l0_coefficient,
                "jumprelu_sparsity_loss_mode": recipe.sae.jumprelu_sparsity_loss_mode,
                "jumprelu_init_threshold": recipe.sae.jumprelu_init_threshold,
                "train_batch_size_tokens": recipe.training.train_batch_size_tokens},
        "data": {"corpus": corpus.source, "documents": corpus.n_documents, "duplicates_dropped": corpus.n_duplicates,
                 "eval_documents": corpus.n_eval_documents, "context_size": corpus.context_size,
                 "training_tokens": recipe.training.training_tokens,
                 "eval_sequences": int(eval_tokens.shape[0])},
        "training": {"steps": recipe.training.total_steps,
                     "first": result.history[0] if result.history else None,
                     "last": result.history[-1] if result.history else None,
                     "checkpoints": [str(p) for p in result.checkpoints]},
        "eval": evaluation.to_dict(),
        "versions": library_versions(),
    }
    write_report(run_dir, report)
    return report
