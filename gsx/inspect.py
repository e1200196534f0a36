"""Inspect an SAE on a piece of text: L0, FVU, CE loss with the SAE spliced in, and top latents per token.

Usage::

    python -m gsx.inspect --sae gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_medium --text "Paris is"
    python -m gsx.inspect --sae path/to/sae_folder --model random --file notes.txt --top-k 3

The model is the one the SAE's metadata names, unless ``--model`` names another.
BOS, EOS and PAD tokens are excluded from every metric: the SAE is not applied at
those positions, and a next-token prediction counts only when neither its input
nor its target token is special. Exit status: 0 on success, 2 on bad input (the
message goes to stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gsx.data import special_token_ids
from gsx.evaluation.metrics import ReconstructionMetrics, ReconstructionStats
from gsx.evaluation.splice import evaluate_sae, loss_mask, token_mask
from gsx.loading import LoadedSAE, SAELoadError, check_fits_model, flat_inputs, load_sae, splice_hooks
from gsx.loading.sites import SITES
from gsx.models import RANDOM_MODEL_NAME, ModelNotFoundError, ModelSpec, load_model

logger = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2


class InputError(Exception):
    """Bad command-line input; main prints the message and exits with status 2."""


@dataclass
class InspectionResult:
    """Metrics, tokens and top latents of one inspection."""

    reconstruction: ReconstructionMetrics
    ce_loss_clean: float
    ce_loss_spliced: float
    n_loss_tokens: int
    tokens: list[str]
    special: list[bool]
    top_latents: list[list[tuple[int, float]]]
    """Per token, up to k (latent id, activation) pairs with activation > 0, largest first."""


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``python -m gsx.inspect``."""
    parser = argparse.ArgumentParser(
        prog="python -m gsx.inspect",
        description="Run an SAE on text and print L0, FVU, CE loss clean vs spliced, and the top latents per token.",
    )
    parser.add_argument(
        "--sae",
        required=True,
        help="SAE to load: RELEASE/SAE_ID (a SAELens release id), RELEASE with --sae-id, or a local SAE folder",
    )
    parser.add_argument("--sae-id", help="sae_id within the release given by --sae")
    parser.add_argument(
        "--local-dir",
        help="folder searched first for release files, laid out like the hub repository "
        "($GSX_SAE_DIR is searched next)",
    )
    parser.add_argument(
        "--site",
        choices=SITES,
        help="hook site of a local Gemma Scope folder whose files and path do not name it",
    )

    parser.add_argument(
        "--model",
        help="model to run: a Hugging Face / TransformerLens name, or 'random' for the tiny random model "
        "(default: the model named in the SAE's metadata)",
    )
    parser.add_argument(
        "--model-source",
        default="auto",
        choices=["auto", "packaged", "local", "hub"],
        help="source of the model weights: auto (the packaged Gemma 3 270M for google/gemma-3-270m, "
        "else --model-path, else the Hugging Face cache), packaged, local or hub (default: auto)",
    )
    parser.add_argument(
        "--model-path",
        help="local folder with the model in Hugging Face layout (used by --model-source local and auto)",
    )

    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="text to run the model on")
    text.add_argument("--file", type=Path, help="UTF-8 text file to run the model on")

    parser.add_argument("--top-k", type=int, default=5, help="number of latents listed per token (default: 5)")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=256,
        help="number of tokens kept from the start of the text, BOS included (default: 256)",
    )
    parser.add_argument("--device", default="cpu", help="torch device for the model and the SAE (default: cpu)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level to stderr")
    return parser


# ---------------------------------------------------------------------------
# Measuring


def _top_latents(features: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    """Return, per row of `features` [n, d_sae], up to `k` (latent, activation) pairs with activation > 0."""
    values, indices = features.topk(min(k, features.shape[-1]), dim=-1)
    rows = []
    for row_values, row_indices in zip(values.tolist(), indices.tolist()):
        rows.append([(index, value) for index, value in zip(row_indices, row_values) if value > 0])
    return rows


def _mean_cross_entropy(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean next-token cross-entropy (nats) over the predictions where `mask` [batch, pos - 1] is True."""
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target_log_probs = log_probs.gather(-1, tokens[:, 1:, None])[..., 0]
    return float(-target_log_probs[mask].mean())


def _evaluate_transcoder(
    model: Any, loaded: LoadedSAE, tokens: torch.Tensor, special_ids: list[int]
) -> tuple[ReconstructionMetrics, float, float, int]:
    """Return (metrics, CE clean, CE spliced, predictions counted) for a transcoder.

    gsx.evaluation.splice.evaluate_sae reads and writes one hook, so it cannot
    run a transcoder. This follows its definitions: x is the activation at
    hook_name_out, x_hat the transcoder output from hook_name, both at
    non-special positions, and the same loss mask.
    """
    sae = loaded.sae
    positions = token_mask(tokens, special_ids)
    clean_logits, cache = model.run_with_cache(tokens, names_filter=[loaded.hook_name, loaded.hook_name_out])
    source = cache[loaded.hook_name].reshape(*tokens.shape, -1)[positions].to(sae.W_enc.dtype)
    target = cache[loaded.hook_name_out].reshape(*tokens.shape, -1)[positions].to(sae.W_enc.dtype)
    with flat_inputs(sae):
        features = sae.encode(source)
        output = sae(source)
    stats = ReconstructionStats(loaded.d_out, loaded.d_sae)
    stats.update(target, output, features)

    spliced_logits = model.run_with_hooks(tokens, fwd_hooks=splice_hooks(loaded, keep=positions))
    mask = loss_mask(tokens, special_ids)
    n_loss = int(mask.sum())
    if n_loss == 0:
        return stats.result(), float("nan"), float("nan"), 0
    return (
        stats.result(),
        _mean_cross_entropy(clean_logits, tokens, mask),
        _mean_cross_entropy(spliced_logits, tokens, mask),
        n_loss,
    )


@torch.no_grad()
def inspect_sae(model: Any, loaded: LoadedSAE, text: str, *, top_k: int = 5, max_tokens: int = 256) -> InspectionResult:
    """Run `model` on `text` with and without `loaded` spliced in, and collect the metrics and top latents."""
    tokens = model.to_tokens(text, truncate=False)
    limit = min(max_tokens, model.cfg.n_ctx)
    if tokens.shape[1] > limit:
        logger.warning("text has %d tokens; keeping the first %d", tokens.shape[1], limit)
        tokens = tokens[:, :limit]
    special_ids = special_token_ids(model.tokenizer)
    special = ~token_mask(tokens, special_ids)[0]
    if bool(special.all()):
        raise InputError("the text has no tokens besides special ones (BOS/EOS/PAD); give a longer text")
    if tokens.shape[1] < 2:
        raise InputError("the text must give at least two tokens so that a next-token loss exists")

    if loaded.hook_name == loaded.hook_name_out:
        with flat_inputs(loaded.sae):
            result = evaluate_sae(model, loaded.sae, loaded.hook_name, tokens, special_ids=special_ids, progress=False)
        reconstruction = result.reconstruction
        if result.splice is None:
            ce_clean = ce_spliced = float("nan")
            n_loss = 0
        else:
            ce_clean, ce_spliced = result.splice.ce_loss_clean, result.splice.ce_loss_spliced
            n_loss = result.splice.n_loss_tokens
    else:
        reconstruction, ce_clean, ce_spliced, n_loss = _evaluate_transcoder(model, loaded, tokens, special_ids)

    _, cache = model.run_with_cache(tokens, names_filter=[loaded.hook_name])
    activations = cache[loaded.hook_name][0].reshape(tokens.shape[1], -1).to(loaded.sae.W_enc.dtype)
    with flat_inputs(loaded.sae):
        features = loaded.sae.encode(activations)
    return InspectionResult(
        reconstruction=reconstruction,
        ce_loss_clean=ce_clean,
        ce_loss_spliced=ce_spliced,
        n_loss_tokens=n_loss,
        tokens=model.to_str_tokens(tokens[0]),
        special=special.tolist(),
        top_latents=_top_latents(features, top_k),
    )


# ---------------------------------------------------------------------------
# Output


def format_report(loaded: LoadedSAE, model_name: str, result: InspectionResult) -> str:
    """Return the printed report: a header with the metrics and a table of the top latents per token."""
    metrics = result.reconstruction
    delta = result.ce_loss_spliced - result.ce_loss_clean
    lines = [
        f"SAE       {loaded.describe()}",
        f"model     {model_name}",
        f"tokens    {len(result.tokens)} ({metrics.n_tokens} scored; BOS/EOS/PAD excluded)",
        f"L0        {metrics.l0:.2f}",
        f"FVU       {metrics.fvu:.4f}",
        f"CE loss   clean {result.ce_loss_clean:.4f}  spliced {result.ce_loss_spliced:.4f}  "
        f"delta {delta:+.4f}  ({result.n_loss_tokens} predictions)",
        "",
    ]
    token_width = min(max(len(repr(token)) for token in result.tokens), 24)
    lines.append(f"{'pos':>4}  {'token':<{token_width}}  top latents (id: activation)")
    for position, (token, is_special, top) in enumerate(zip(result.tokens, result.special, result.top_latents)):
        shown = repr(token)
        if len(shown) > token_width:
            shown = shown[: token_width - 3] + "..."
        if is_special:
            cells = "(special token, excluded)"
        elif not top:
            cells = "(no active latent)"
        else:
            cells = "  ".join(f"{index:>6}: {value:7.3f}" for index, value in top)
        lines.append(f"{position:>4}  {shown:<{token_width}}  {cells}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Entry point


def _read_text(args: argparse.Namespace) -> str:
    if args.text is not None:
        text = args.text
    else:
        try:
            text = args.file.read_text(encoding="utf-8")
        except FileNotFoundError as err:
            raise InputError(f"--file {args.file} does not exist") from err
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"--file {args.file} could not be read as UTF-8 text: {err}") from err
    if not text.strip():
        raise InputError("the text is empty; pass --text with some words or --file with a non-empty file")
    return text


def _model_spec(args: argparse.Namespace, loaded: LoadedSAE) -> ModelSpec:
    if args.model == "random":
        return ModelSpec(name=RANDOM_MODEL_NAME, source="random", device=args.device)
    name = args.model or loaded.model_name
    if not name:
        raise InputError(f"the SAE at {loaded.path} names no model; pass --model NAME (or --model random)")
    return ModelSpec(name=name, source=args.model_source, path=args.model_path, device=args.device)


def run(args: argparse.Namespace) -> str:
    """Load the SAE and the model named by `args`, inspect the text, and return the report."""
    if args.top_k < 1:
        raise InputError(f"--top-k must be at least 1, got {args.top_k}")
    if args.max_tokens < 2:
        raise InputError(f"--max-tokens must be at least 2, got {args.max_tokens}")
    text = _read_text(args)
    loaded = load_sae(args.sae, args.sae_id, device=args.device, local_dir=args.local_dir, site=args.site)
    spec = _model_spec(args, loaded)
    try:
        model = load_model(spec)
    except ValueError as err:
        # TransformerLens raises ValueError for model names it does not support.
        raise InputError(f"could not load model {spec.name!r}: {err}") from err
    check_fits_model(loaded, model)
    result = inspect_sae(model, loaded, text, top_k=args.top_k, max_tokens=args.max_tokens)
    return format_report(loaded, model.cfg.model_name, result)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (0, or 2 for bad input)."""
    args = build_parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = run(args)
    except (InputError, SAELoadError, ModelNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
