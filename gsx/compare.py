"""Compare two SAEs on the same held-out text: metrics side by side and decoder-direction matching.

Usage::

    python -m gsx.compare runs/gemma3-270m-l5/sae runs/gemma3-270m-l5/scratch_sae
    python -m gsx.compare runs/mine/sae gemma-scope-2-270m-pt-res --sae-id-b layer_5_width_16k_l0_medium
    python -m gsx.compare A_FOLDER B_FOLDER --set model.source=random --n-sequences 16 --out /tmp/cmp

A and B are anything `gsx.loading.load_sae` accepts: a gsx scratch checkpoint, a
SAELens SAE folder, a Gemma Scope folder, or a SAELens release id (RELEASE/SAE_ID,
or RELEASE with --sae-id-a / --sae-id-b). The model and the held-out corpus come
from the recipe (default: the built-in recipe, Gemma 3 270M on BBC News). The
hook comes from the SAEs, so the recipe's `sae` section is not used.

Writes `comparison.md` and `comparison.json` (keys in `gsx.comparison`) into
--out, by default `<run.output_dir>/compare-<A>-vs-<B>/`, and prints a table.
Exit status: 0 on success, 2 on bad input, with the message on stderr and no
file written.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gsx.comparison import ComparisonResult
    from gsx.loading import LoadedSAE
    from gsx.recipe import Recipe

logger = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2


class InputError(Exception):
    """Bad command-line input; main prints the message and exits with status 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {value}: expected a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``python -m gsx.compare``."""
    parser = argparse.ArgumentParser(
        prog="python -m gsx.compare",
        description="Evaluate two SAEs that read the same hook on the same held-out tokens, "
        "match their decoder directions, and write comparison.md and comparison.json.",
    )
    parser.add_argument("a", metavar="A", help="first SAE: a local SAE folder, RELEASE/SAE_ID, or RELEASE with --sae-id-a")
    parser.add_argument("b", metavar="B", help="second SAE, in the same forms as A")

    parser.add_argument("--sae-id-a", help="sae_id within the release given as A")
    parser.add_argument("--sae-id-b", help="sae_id within the release given as B")

    parser.add_argument(
        "--recipe",
        help="recipe YAML whose model, data and eval sections, run.seed and run.output_dir are used "
        "(default: the built-in recipe)",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one recipe key, e.g. --set model.source=random (repeatable)",
    )

    parser.add_argument(
        "--n-sequences", type=_positive_int,
        help="held-out sequences to evaluate on (default: the recipe's eval.n_sequences; fewer if the split is smaller)",
    )
    parser.add_argument(
        "--block-size", type=_positive_int, default=1024,
        help="decoder rows per block when matching decoder directions (bounds memory; default 1024)",
    )
    parser.add_argument(
        "--local-dir",
        help="folder searched first for release files, laid out like the hub repository (default: $GSX_SAE_DIR)",
    )

    parser.add_argument("--out", help="output folder (default: <run.output_dir>/compare-<A>-vs-<B>)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log progress messages")
    return parser


# ---------------------------------------------------------------------------
# Names and recipe


def _clean_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "sae"


def display_names(loaded_a: LoadedSAE, loaded_b: LoadedSAE) -> tuple[str, str]:
    """Return short file-name-safe names: the sae_id of a release, else the folder name.

    Two folders of the same name get their parent folder's name in front
    (runs/x/sae and runs/y/sae give x-sae and y-sae). When that does not tell them
    apart either (the same folder twice), the folder names get "-A" and "-B" appended.
    """

    def name(loaded: LoadedSAE, with_parent: bool) -> str:
        if loaded.release:
            return _clean_name(str(loaded.sae_id).replace("/", "-"))
        path = Path(loaded.path).resolve()
        return _clean_name(f"{path.parent.name}-{path.name}" if with_parent else path.name)

    names = name(loaded_a, False), name(loaded_b, False)
    if names[0] != names[1]:
        return names
    with_parents = name(loaded_a, True), name(loaded_b, True)
    if with_parents[0] != with_parents[1]:
        return with_parents
    return f"{names[0]}-A", f"{names[1]}-B"


def _load_recipe(args: argparse.Namespace, hook_name: str | None) -> Recipe:
    from gsx.recipe import HOOK_PATTERN, load_recipe

    overrides = list(args.overrides)
    # The recipe's sae.hook_name is checked against the model's layer count, but the
    # comparison uses the SAEs' hook, so the SAEs' hook goes in first and a --set still wins.
    # NOTE: a hook outside HOOK_PATTERN (attn.hook_z, mlp.hook_in) cannot go in, so a
    # recipe hook that does not fit the model still fails validation; --set sae.hook_name fixes it.
    if hook_name is not None and HOOK_PATTERN.match(hook_name):
        overrides.insert(0, f"sae.hook_name={hook_name}")
    return load_recipe(args.recipe, overrides)


def _load_both(args: argparse.Namespace) -> tuple[LoadedSAE, LoadedSAE]:
    from gsx.loading import SAELoadError, load_sae

    # Loaded on the CPU and moved once the recipe names the device.
    loaded = []
    for label, source, sae_id in (("A", args.a, args.sae_id_a), ("B", args.b, args.sae_id_b)):
        try:
            loaded.append(load_sae(source, sae_id, local_dir=args.local_dir))
        except SAELoadError as err:
            raise InputError(f"failed to load SAE {label}: {err}") from err
    return loaded[0], loaded[1]


def _out_dir(args: argparse.Namespace, recipe: Recipe, names: tuple[str, str]) -> Path:
    out = Path(args.out) if args.out else Path(recipe.run.output_dir) / f"compare-{names[0]}-vs-{names[1]}"
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is an existing file; pass a folder path")
    return out


# ---------------------------------------------------------------------------
# Entry point


def run(args: argparse.Namespace) -> tuple[ComparisonResult, Path, Path]:
    """Load both SAEs, the model and the held-out tokens, compare, and write the report.

    Returns (ComparisonResult, md_path, json_path).
    """
    from gsx.comparison import check_comparable, compare_saes, write_comparison_report
    from gsx.data import build_corpus, special_token_ids
    from gsx.loading import check_fits_model
    from gsx.models import load_model

    loaded_a, loaded_b = _load_both(args)
    names = display_names(loaded_a, loaded_b)
    recorded_hook = loaded_a.hook_name or loaded_b.hook_name or None
    recipe = _load_recipe(args, recorded_hook)
    if recorded_hook is None:
        logger.warning("neither SAE records its hook; using the recipe's sae.hook_name %s", recipe.sae.hook_name)
    hook_name = check_comparable(loaded_a, loaded_b, None if recorded_hook else recipe.sae.hook_name, names=names)
    out_dir = _out_dir(args, recipe, names)

    try:
        model = load_model(recipe.model)
    except ValueError as err:
        # TransformerLens raises ValueError for model names it does not support.
        raise InputError(f"failed to load model {recipe.model.name!r}: {err}") from err
    for loaded in (loaded_a, loaded_b):
        loaded.sae.to(recipe.model.device)
        if loaded.hook_name:
            check_fits_model(loaded, model)

    try:
        corpus = build_corpus(recipe.data, model.tokenizer, recipe.run.seed)
    except (FileNotFoundError, ValueError) as err:
        raise InputError(f"failed to build the held-out corpus from the recipe's data section: {err}") from err
    n_sequences = args.n_sequences or recipe.eval.n_sequences
    tokens = corpus.eval_tokens[:n_sequences]
    if args.n_sequences and tokens.shape[0] < n_sequences:
        logger.warning("the held-out split has %d sequences, fewer than the %d requested", tokens.shape[0], n_sequences)

    result = compare_saes(
        model,
        loaded_a,
        loaded_b,
        hook_name,
        tokens,
        special_ids=special_token_ids(model.tokenizer),
        names=names,
        batch_size=recipe.eval.batch_size,
        ce_chunk_tokens=recipe.eval.ce_chunk_tokens,
        dense_threshold=recipe.eval.dense_threshold,
        include_special_tokens=recipe.eval.include_special_tokens,
        block_size=args.block_size,
        progress=args.verbose,
    )
    try:
        md_path, json_path = write_comparison_report(result, out_dir)
    except OSError as err:
        raise InputError(f"failed to write the report into --out {out_dir}: {err}") from err
    return result, md_path, json_path


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (0, or 2 for bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )

    from gsx.comparison import ComparisonError, format_comparison_table
    from gsx.loading import SAELoadError
    from gsx.models import ModelNotFoundError
    from gsx.recipe import RecipeError

    try:
        result, md_path, json_path = run(args)
    except (InputError, SAELoadError, ModelNotFoundError, RecipeError, ComparisonError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(format_comparison_table(result))
    print(f"\nwrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
