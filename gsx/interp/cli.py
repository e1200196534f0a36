"""Arguments and loading shared by the `gsx.dashboard` and `gsx.steer` command lines."""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gsx.loading import LoadedSAE
    from gsx.recipe import Recipe

logger = logging.getLogger(__name__)


def add_sae_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --sae, --sae-id, --recipe, --set and --verbose to `parser`."""
    parser.add_argument(
        "--sae", required=True, metavar="PATH_OR_RELEASE",
        help="SAE folder (SAELens format, Gemma Scope files or a gsx checkpoint), or a SAELens release id "
        "such as gemma-scope-2-270m-pt-res (with --sae-id) or RELEASE/SAE_ID",
    )
    parser.add_argument("--sae-id", help="sae_id within the release given by --sae, e.g. layer_5_width_16k_l0_small")
    parser.add_argument(
        "--recipe", metavar="YAML",
        help="recipe whose model (and, for dashboards, corpus) to use; default: gsx's built-in defaults "
        "(the packaged Gemma 3 270M and the BBC News corpus)",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one recipe key, e.g. --set data.context_size=64 or --set model.device=cuda (repeatable)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def user_errors() -> tuple[type[BaseException], ...]:
    """Return the exception types whose messages a command line prints as `error: ...` (exit status 2)."""
    from gsx.loading import SAELoadError
    from gsx.models import ModelNotFoundError
    from gsx.recipe import RecipeError

    return (RecipeError, ModelNotFoundError, SAELoadError, FileNotFoundError, ValueError)


@dataclass
class ModelAndSAE:
    """A recipe with its model loaded and an SAE loaded to run on it."""

    recipe: Recipe
    model: Any
    loaded: LoadedSAE


def load_model_and_sae(recipe_path: str | None, overrides: list[str], sae: str, sae_id: str | None) -> ModelAndSAE:
    """Load the recipe, its model, and the SAE (checked against the model's hook sizes)."""
    from gsx.loading import load_sae
    from gsx.models import load_model, torch_dtype
    from gsx.recipe import load_recipe

    recipe = load_recipe(recipe_path, overrides)
    model = load_model(recipe.model)
    loaded = load_sae(sae, sae_id, device=recipe.model.device, dtype=torch_dtype(recipe.model.dtype), model=model)
    if loaded.hook_name != recipe.sae.hook_name:
        logger.info("using the SAE's hook %s (the recipe's sae.hook_name is %s)", loaded.hook_name, recipe.sae.hook_name)
    return ModelAndSAE(recipe=recipe, model=model, loaded=loaded)


def sae_slug(loaded: LoadedSAE) -> str:
    """Return a file-name-safe name for the SAE: release and sae_id, or the last two parts of its path."""
    if loaded.release:
        name = f"{loaded.release}-{loaded.sae_id}"
    else:
        path = Path(loaded.path).resolve()
        name = f"{path.parent.name}-{path.name}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "sae"


def hook_layer_of(hook_name: str) -> int | None:
    """Return L from ``blocks.L.*``, or None for hooks outside the blocks."""
    match = re.match(r"^blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) if match else None
