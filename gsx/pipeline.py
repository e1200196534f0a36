"""The main job: model → corpus → SAELens training → held-out evaluation → report.

`run_recipe` is what `python -m gsx.run` calls; tests call it directly.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gsx.data import TokenizedCorpus, build_corpus
from gsx.io import library_versions, write_json_atomic, write_text_atomic
from gsx.models import load_model, resolve_hf_folder
from gsx.recipe import Recipe, RecipeError, check_recipe_against_model, dump_recipe_yaml

logger = logging.getLogger(__name__)


# Outputs that mark a folder as containing a run. A folder with only recipe.yaml
# and versions.json is a run that stopped before training, so it may be reused.
RUN_OUTPUTS = ("sae", "scratch_sae", "checkpoints", "scratch_checkpoints", "report.json")


class RunFolderExistsError(FileExistsError):
    """The run folder already contains outputs and the recipe does not allow overwriting them."""


@dataclass
class RunSummary:
    """Paths and headline numbers of a finished run."""

    run_dir: Path
    sae_dir: Path
    report: dict[str, Any]


def prepare_run_dir(recipe: Recipe) -> Path:
    """Create the run folder, or raise if it already contains a run and overwriting is off."""
    run_dir = recipe.run_dir
    if run_dir.exists() and recipe.run.overwrite:
        # The user asked for a fresh run: drop the old one whole, so no stale SAE,
        # log or comparison is left beside the new outputs.
        shutil.rmtree(run_dir)
    elif run_dir.exists() and any((run_dir / name).exists() for name in RUN_OUTPUTS):
        raise RunFolderExistsError(
            f"run folder {str(run_dir)!r} already contains a run; choose another name with "
            f"--set run.name=NEW_NAME, or replace it with --set run.overwrite=true"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def run_recipe(recipe: Recipe) -> RunSummary:
    """Run the whole main job for `recipe` and return where its outputs are."""
    from gsx.reporting.run_report import evaluate_and_report
    from gsx.training.dispatch import train_recipe

    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    timings: dict[str, float] = {}
    # Find the weights before writing anything, so a missing model stops the run at once.
    if recipe.model.source != "random":
        resolve_hf_folder(recipe.model)
    run_dir = prepare_run_dir(recipe)
    write_text_atomic(run_dir / "recipe.yaml", dump_recipe_yaml(recipe))
    write_json_atomic(run_dir / "versions.json", library_versions())

    clock = time.perf_counter()
    model = load_model(recipe.model)
    check_recipe_against_model(recipe, model.cfg.n_layers)
    timings["load_model_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    corpus = build_corpus(recipe.data, model.tokenizer, recipe.run.seed)
    _check_token_budget(recipe, corpus)
    timings["tokenize_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    results = train_recipe(recipe, model, corpus.train_tokens, run_dir)
    result = results[0]
    timings["train_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    report = evaluate_and_report(
        recipe, model, corpus, result, run_dir,
        run_info={"name": recipe.run.name, "folder": str(run_dir), "started_at": started_at,
                  **{k: round(v, 1) for k, v in timings.items()}},
    )
    logger.info("evaluation and report took %.1f s", time.perf_counter() - clock)
    if len(results) == 2:
        _compare_trainers(recipe, model, corpus, results, run_dir)
    return RunSummary(run_dir=run_dir, sae_dir=result.sae_dir, report=report)


def _compare_trainers(recipe: Recipe, model: Any, corpus: TokenizedCorpus, results: list, run_dir: Path) -> None:
    """Write comparison.md / comparison.json for the SAELens and scratch SAEs of a `trainer: both` run."""
    from gsx.comparison import compare_saes, write_comparison_report
    from gsx.data import special_token_ids
    from gsx.loading import load_sae

    # LoadedSAE objects carry their folder and kind into the comparison report.
    saes = [load_sae(str(r.sae_dir), device=recipe.model.device) for r in results]
    comparison = compare_saes(
        model,
        saes[0],
        saes[1],
        recipe.sae.hook_name,
        corpus.eval_tokens[: recipe.eval.n_sequences],
        special_ids=special_token_ids(model.tokenizer),
        names=("saelens", "scratch"),
        batch_size=recipe.eval.batch_size,
        ce_chunk_tokens=recipe.eval.ce_chunk_tokens,
        dense_threshold=recipe.eval.dense_threshold,
    )
    write_comparison_report(comparison, run_dir, stem="comparison")


def _check_token_budget(recipe: Recipe, corpus: TokenizedCorpus) -> None:
    available = corpus.train_tokens.numel()
    if recipe.training.training_tokens > available:
        # SAELens loops over the dataset again, so warn rather than hide the repetition.
        logger.warning(
            "training.training_tokens (%d) exceeds the corpus's %d training tokens; sequences will repeat",
            recipe.training.training_tokens, available,
        )
    if corpus.eval_tokens.shape[0] == 0:
        raise RecipeError("the held-out split is empty; raise data.eval_fraction or add documents")
