"""Command line: evaluate any SAE gsx can load on held-out text and write a report.

    python -m gsx.eval --checkpoint PATH_OR_RELEASE [--sae-id ID] [--recipe RECIPE.yaml]
                       [--set SECTION.KEY=VALUE ...] [--out DIR]

The checkpoint is a SAELens release id (with --sae-id, or as RELEASE/SAE_ID), a
Gemma Scope or SAELens folder, or a gsx run's `sae/`, `scratch_sae/` or
checkpoint folder. The recipe decides the model, the corpus and its held-out
split, and the `eval` settings. Without --recipe, an SAE inside a gsx run folder
is evaluated with that run's `recipe.yaml` (the same held-out documents as its
training), and any other SAE with the built-in defaults (`gsx.recipe.load_recipe(None)`).

The report is the same as the one at the end of `gsx.run` (see
`gsx.reporting.report`), written as `report_<UTC timestamp>.json`, `.md` and
`_*.png` into --out: by default the SAE's run folder when it has one, else
`<run.output_dir>/eval-<name>/`. Invalid input stops the command with exit
status 2 and a message on stderr, before anything is written.
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gsx.recipe import KNOWN_MODELS, Recipe, RecipeError, load_recipe

logger = logging.getLogger(__name__)


class EvalInputError(ValueError):
    """Invalid command-line input; the message names the value and the fix."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gsx.eval",
        description="Evaluate an SAE on held-out text of the recipe's corpus and write a report with plots.",
    )
    parser.add_argument(
        "--checkpoint", required=True, metavar="PATH_OR_RELEASE",
        help="SAE folder (SAELens, Gemma Scope or gsx run) or SAELens release id, e.g. gemma-scope-2-270m-pt-res",
    )
    parser.add_argument("--sae-id", help="SAE id within a release, e.g. layer_5_width_16k_l0_small")
    parser.add_argument("--recipe", help="recipe YAML deciding model, corpus and eval settings (default: see --help text above)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one recipe key, e.g. --set eval.n_sequences=32 (repeatable)",
    )
    parser.add_argument("--out", help="folder for the report files (default: the SAE's run folder, else runs/eval-NAME)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")
    return parser


# ---------------------------------------------------------------------------
# Inputs


def find_run_folder(sae_path: Path) -> Path | None:
    """Return the gsx run folder holding the SAE at `sae_path`, or None.

    A run folder contains a recipe.yaml, and the SAE one level down (`sae/`,
    `scratch_sae/`) or two (`checkpoints/step_N/`).
    """
    folder = sae_path if sae_path.is_dir() else sae_path.parent
    for candidate in (folder.parent, folder.parent.parent):
        if (candidate / "recipe.yaml").is_file():
            return candidate
    return None


def _local_path(checkpoint: str, sae_id: str | None) -> Path | None:
    path = Path(checkpoint).expanduser()
    return path if sae_id is None and path.exists() else None


def resolve_recipe(args: argparse.Namespace) -> tuple[Recipe, str]:
    """Return the recipe for this evaluation and a description of where it came from."""
    if args.recipe:
        return load_recipe(args.recipe, args.overrides), args.recipe
    local = _local_path(args.checkpoint, args.sae_id)
    run_folder = find_run_folder(local) if local is not None else None
    if run_folder is not None:
        return load_recipe(run_folder / "recipe.yaml", args.overrides), str(run_folder / "recipe.yaml")
    return load_recipe(None, args.overrides), "built-in defaults"


def default_out_dir(recipe: Recipe, loaded: Any, checkpoint: str) -> Path:
    """Return the SAE's run folder when it has one, else `<run.output_dir>/eval-<name>`."""
    if loaded.release is None:
        run_folder = find_run_folder(Path(loaded.path))
        if run_folder is not None:
            return run_folder
        name = Path(loaded.path).name
    else:
        name = f"{loaded.release}-{loaded.sae_id}"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name or checkpoint).strip("-.") or "sae"
    return Path(recipe.run.output_dir) / f"eval-{name}"


def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise EvalInputError(f"--out {str(out)!r} is a file, not a folder; give a folder path")


def load_checkpoint(checkpoint: str, sae_id: str | None, device: str) -> Any:
    """Load the SAE as a gsx.loading.LoadedSAE; raise EvalInputError for input that names no loadable SAE."""
    from gsx.loading import SAELoadError, load_sae

    try:
        return load_sae(checkpoint, sae_id, device=device)
    except SAELoadError as err:
        hint = ""
        if isinstance(err, FileNotFoundError) and sae_id is None:
            hint = " (give an existing SAE folder, or a SAELens release id with --sae-id)"
        raise EvalInputError(f"--checkpoint {checkpoint!r}: {err}{hint}") from err


def _short_model_name(name: str | None) -> str:
    return (name or "").rsplit("/", 1)[-1].lower()


def check_sae_against_recipe(loaded: Any, recipe: Recipe) -> None:
    """Raise EvalInputError when the SAE cannot run on the recipe's model, as far as known without loading it."""
    if not loaded.hook_name:
        raise EvalInputError(
            f"the SAE at {loaded.path} names no hook (metadata.hook_name in its cfg.json is empty); "
            "add the TransformerLens hook it was trained on, e.g. blocks.5.hook_resid_post"
        )
    model_name = recipe.model.name
    if loaded.model_name and _short_model_name(loaded.model_name) != _short_model_name(model_name):
        logger.warning("the SAE was trained on %s but is evaluated on %s", loaded.model_name, model_name)
    shape = KNOWN_MODELS.get(model_name)
    if shape is None:
        return
    n_layers, d_model = shape
    match = re.match(r"^blocks\.(\d+)\.", loaded.hook_name or "")
    if match and int(match.group(1)) >= n_layers:
        raise EvalInputError(
            f"the SAE reads {loaded.hook_name}, but {model_name} has {n_layers} layers (0..{n_layers - 1}); "
            "choose the SAE's model with --recipe or --set model.name=..."
        )
    residual_hooks = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_mlp_out", "hook_attn_out")
    if (loaded.hook_name or "").endswith(residual_hooks) and loaded.d_in != d_model:
        raise EvalInputError(
            f"the SAE has d_in {loaded.d_in} at {loaded.hook_name}, but {model_name}'s residual stream has "
            f"{d_model} dimensions; choose the SAE's model with --recipe or --set model.name=..."
        )


def check_sae_fits_model(loaded: Any, model: Any) -> None:
    """Raise EvalInputError unless the SAE's hooks exist in the loaded model with the SAE's widths."""
    try:
        from gsx.loading import check_fits_model
    except ImportError:
        return
    try:
        check_fits_model(loaded, model)
    except ValueError as err:
        raise EvalInputError(str(err)) from err


def _sae_section(checkpoint: str, loaded: Any) -> dict[str, Any]:
    return {
        "source": checkpoint,
        "release": loaded.release,
        "sae_id": loaded.sae_id,
        "path": str(loaded.path),
        "kind": loaded.kind,
        "architecture": type(loaded.sae).__name__,
        "d_sae": int(loaded.d_sae),
        "d_out": int(loaded.d_out),
        "model_name": loaded.model_name,
        "dtype": str(getattr(loaded.sae.cfg, "dtype", "")),
    }


# ---------------------------------------------------------------------------
# Main


def _report_stem(out: Path) -> str:
    stem = "report_" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    candidate, suffix = stem, 2
    while (out / f"{candidate}.json").exists():
        candidate, suffix = f"{stem}-{suffix}", suffix + 1
    return candidate


def evaluate_checkpoint(args: argparse.Namespace, argv: list[str]) -> tuple[dict[str, Any], Path, Path]:
    """Run the evaluation the arguments describe; return the report and the Markdown and JSON paths."""
    from gsx.data import build_corpus
    from gsx.io import library_versions
    from gsx.models import load_model
    from gsx.reporting.report import write_report_files
    from gsx.reporting.run_report import evaluation_sections

    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    timings: dict[str, float] = {}
    recipe, recipe_source = resolve_recipe(args)
    if args.out:
        check_out_dir(Path(args.out))

    clock = time.perf_counter()
    loaded = load_checkpoint(args.checkpoint, args.sae_id, recipe.model.device)
    timings["load_sae_s"] = time.perf_counter() - clock
    check_sae_against_recipe(loaded, recipe)
    out = Path(args.out) if args.out else default_out_dir(recipe, loaded, args.checkpoint)
    check_out_dir(out)

    clock = time.perf_counter()
    model = load_model(recipe.model)
    timings["load_model_s"] = time.perf_counter() - clock
    check_sae_fits_model(loaded, model)

    clock = time.perf_counter()
    try:
        corpus = build_corpus(recipe.data, model.tokenizer, recipe.run.seed)
    except (ValueError, FileNotFoundError) as err:
        raise EvalInputError(str(err)) from err
    timings["tokenize_s"] = time.perf_counter() - clock
    eval_tokens = corpus.eval_tokens[: recipe.eval.n_sequences]

    evaluation, eval_section, features = evaluation_sections(
        model, loaded.sae, eval_tokens, recipe.eval, hook_name=loaded.hook_name,
        hook_name_out=loaded.hook_name_out, progress=not args.no_progress,
    )
    timings["eval_s"] = eval_section["resources"]["seconds"]
    report = {
        "kind": "eval",
        "run": {"name": out.name, "folder": str(out), "started_at": started_at,
                "command": "python -m gsx.eval " + shlex.join(argv), "recipe": recipe_source,
                **{key: round(value, 1) for key, value in timings.items()}},
        "model": {"name": recipe.model.name, "source": recipe.model.source, "hook_name": loaded.hook_name,
                  "hook_name_out": loaded.hook_name_out, "d_in": int(loaded.d_in)},
        "sae": _sae_section(args.checkpoint, loaded),
        "data": {"corpus": corpus.source, "documents": corpus.n_documents, "duplicates_dropped": corpus.n_duplicates,
                 "eval_documents": corpus.n_eval_documents, "context_size": corpus.context_size,
                 "split_seed": recipe.run.seed, "eval_sequences": int(eval_tokens.shape[0]),
                 "ce_sequences": evaluation.splice.n_sequences if evaluation.splice else 0},
        "eval": eval_section,
        "features": features,
        "versions": library_versions(),
    }
    written, json_path, md_path = write_report_files(out, report, _report_stem(out))
    return written, md_path, json_path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from gsx.models import ModelNotFoundError

    try:
        report, md_path, json_path = evaluate_checkpoint(args, argv)
    except (EvalInputError, RecipeError, ModelNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from gsx.reporting.report import format_summary_line

    print(f"\nreport: {md_path}")
    print(f"json:   {json_path}")
    print(format_summary_line(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
