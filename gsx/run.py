"""Command line for the main job: `python -m gsx.run RECIPE.yaml [--set SECTION.KEY=VALUE ...]`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gsx.recipe import RecipeError, load_recipe

# The smoke test's recipe, kept in the package so `--smoke-test` works from any folder.
SMOKE_RECIPE = Path(__file__).parent / "recipes" / "smoke.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gsx.run",
        description="Train a JumpReLU SAE on a Gemma 3 hook with SAELens, evaluate it on held-out text, write a report.",
    )
    parser.add_argument("recipe", nargs="?", help="recipe YAML file, e.g. recipes/gemma3-270m-l5.yaml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one recipe key, e.g. --set training.lr=1e-3 (repeatable)",
    )
    parser.add_argument(
        "--smoke-test", action="store_true",
        help="run the whole pipeline on a tiny random model and a few packaged documents (under a minute)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.smoke_test and args.recipe:
        print("error: give either a recipe file or --smoke-test, not both", file=sys.stderr)
        return 2
    if not args.smoke_test and not args.recipe:
        print("error: missing recipe file; e.g. python -m gsx.run recipes/gemma3-270m-l5.yaml", file=sys.stderr)
        return 2

    from gsx.models import ModelNotFoundError
    from gsx.pipeline import RunFolderExistsError, run_recipe
    from gsx.training.saelens_runner import TrainingInterrupted

    try:
        recipe = load_recipe(SMOKE_RECIPE if args.smoke_test else args.recipe, args.overrides)
        summary = run_recipe(recipe)
    except (RecipeError, ModelNotFoundError, RunFolderExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as err:
        print(f"\n{err}; load it with sae_lens.SAE.load_from_disk or gsx.loading.load_sae", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted before training started; nothing was trained", file=sys.stderr)
        return 130

    from gsx.reporting.report import format_summary_line

    print(f"\nSAE written to {summary.sae_dir}")
    print(f"report: {summary.run_dir / 'report.md'}")
    print(f"held-out: {format_summary_line(summary.report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
