"""Command line for feature dashboards.

    python -m gsx.dashboard --sae PATH_OR_RELEASE [--sae-id ID] [--recipe recipes/x.yaml]
        [--features 1,2,3 | --top N] [--n-sequences 64] [--out DIR] [--screenshot]

Writes ``dashboard.html`` (self-contained, renders offline), ``neuronpedia.json``
and ``features.json`` to the output folder; see gsx.interp.dashboard.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gsx.interp.cli import add_sae_arguments, configure_logging, hook_layer_of, load_model_and_sae, sae_slug, user_errors

logger = logging.getLogger(__name__)


def parse_feature_list(text: str) -> list[int]:
    """Parse "1,2,3" into [1, 2, 3]."""
    try:
        features = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"invalid feature list {text!r}; use comma-separated indices such as 1,2,3") from err
    if not features:
        raise argparse.ArgumentTypeError("empty feature list; use comma-separated indices such as 1,2,3")
    return features


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}; use a positive integer") from err
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid count {value}; use a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    from gsx.interp.dashboard import RANK_BY_CHOICES

    parser = argparse.ArgumentParser(
        prog="python -m gsx.dashboard",
        description="Write sae-dashboard feature pages (self-contained HTML) and Neuronpedia-format JSON "
        "for features of an SAE, on held-out text of a recipe's corpus.",
    )
    add_sae_arguments(parser)
    selection = parser.add_mutually_exclusive_group()
    selection.add_argument("--features", type=parse_feature_list, metavar="1,2,3", help="feature indices to show")
    selection.add_argument("--top", type=positive_int, metavar="N", help="show the N most active features (default: 8)")
    parser.add_argument(
        "--rank-by", choices=RANK_BY_CHOICES, default="mean",
        help="statistic --top ranks by: mean activation, firing frequency, or max activation (default: mean)",
    )
    parser.add_argument(
        "--n-sequences", type=positive_int, default=64,
        help="held-out sequences to compute the dashboards on, each data.context_size tokens long (default: 64)",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: RUN_OUTPUT_DIR/dashboards/SAE_NAME)")
    parser.add_argument("--no-neuronpedia", action="store_true", help="skip the Neuronpedia-format JSON")
    parser.add_argument(
        "--fold-decoder-norm", action="store_true",
        help="show activations scaled by each feature's decoder-row norm, as sae-dashboard does by default "
        "(default: the SAE's own units, which gsx.steer --value uses)",
    )
    parser.add_argument(
        "--screenshot", action="store_true",
        help="render the page in headless Chromium without network, save dashboard.png, and check that "
        "the histograms and example sequences were drawn",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)

    try:
        return _run(args)
    except user_errors() as err:
        logger.debug("failed", exc_info=True)
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from gsx.data import build_corpus, special_token_ids
    from gsx.interp.dashboard import generate_dashboard
    from gsx.interp.neuronpedia import model_id_for

    setup = load_model_and_sae(args.recipe, args.overrides, args.sae, args.sae_id)
    recipe, model, loaded = setup.recipe, setup.model, setup.loaded

    corpus = build_corpus(recipe.data, model.tokenizer, recipe.run.seed)
    tokens = corpus.eval_tokens[: args.n_sequences]
    if len(tokens) < args.n_sequences:
        logger.warning("the held-out split has %d sequences; using all of them instead of %d", len(tokens), args.n_sequences)

    slug = sae_slug(loaded)
    out_dir = args.out or Path(recipe.run.output_dir) / "dashboards" / slug
    neuronpedia = None
    if not args.no_neuronpedia:
        neuronpedia = {
            "model_id": model_id_for(recipe.model.name),
            "layer": loaded.layer if loaded.layer is not None else (hook_layer_of(loaded.hook_name) or 0),
            "sae_set": slug,
            "dataset": corpus.source,
        }
    top_n = None if args.features is not None else (args.top or 8)
    result = generate_dashboard(
        model, loaded.sae, loaded.hook_name, tokens, out_dir,
        special_ids=special_token_ids(model.tokenizer),
        features=args.features,
        top_n=top_n,
        rank_by=args.rank_by,
        neuronpedia=neuronpedia,
        fold_decoder_norm=args.fold_decoder_norm,
    )

    print(f"SAE: {loaded.describe()}")
    print(f"features: {', '.join(map(str, result.features))}")
    print(f"tokens: {result.n_sequences} held-out sequences x {result.context_size} ({corpus.source})")
    print(f"dashboard: {result.html_path} ({result.html_path.stat().st_size / 1e6:.1f} MB, renders offline)")
    if result.neuronpedia_path:
        print(f"Neuronpedia JSON: {result.neuronpedia_path}")
    print(f"feature list and activity: {result.features_path}")
    if result.inactive_features:
        print(f"warning: features {result.inactive_features} never fire on these tokens; their panels are empty")

    if args.screenshot:
        return _check_render(result.html_path, len(result.features))
    return 0


def _check_render(html_path: Path, n_features: int) -> int:
    from gsx.interp.browser import BrowserError, dashboard_dom_summary, render_page

    try:
        page = render_page(html_path, screenshot=html_path.with_name("dashboard.png"))
    except BrowserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = dashboard_dom_summary(page.dom)
    print(
        f"rendered offline in Chromium: {summary.plotly_plots} plots, {summary.bars('histogram-acts')} activation "
        f"histogram bars, {summary.sequence_groups} sequence groups, {summary.tokens} tokens; screenshot {page.screenshot}"
    )
    drawn = summary.plotly_plots > 0 and summary.bars("histogram-acts") > 0 and summary.bold_tokens > 0
    if n_features > 1 and len(summary.feature_options) != n_features:
        drawn = False
    if not drawn:
        print("error: the page did not draw its histograms, example sequences or feature dropdown; open the screenshot", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
