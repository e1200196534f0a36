"""Command line for steering with one SAE feature.

    python -m gsx.steer --sae PATH_OR_RELEASE --feature 123 --alpha 8 --prompt "..."
        [--mode add|clamp|ablate] [--value V] [--max-new-tokens 30] [--seed S]

Prints what the intervention does to the prompt's next-token predictions,
then the baseline and steered continuations side by side (greedy unless
--seed is given). See gsx.interp.steering for the interventions.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import textwrap

from gsx.interp.cli import add_sae_arguments, configure_logging, load_model_and_sae, user_errors

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gsx.steer",
        description="Generate from a prompt with and without an SAE feature intervention and print both.",
    )
    add_sae_arguments(parser)
    parser.add_argument("--feature", type=int, required=True, help="index of the SAE feature")
    parser.add_argument(
        "--mode", choices=("add", "clamp", "ablate"), default="add",
        help="add: add ALPHA x the feature's decoder row at the hook; clamp: set the feature to VALUE through "
        "the SAE, keeping the reconstruction error; ablate: clamp to 0 (default: add)",
    )
    parser.add_argument(
        "--alpha", type=float, default=8.0,
        help="for --mode add: multiple of the decoder row to add, in units of the feature's activation (default: 8)",
    )
    parser.add_argument("--value", type=float, help="for --mode clamp: the activation to clamp the feature to")
    parser.add_argument("--prompt", required=True, help="text to continue (a BOS token is put in front)")
    parser.add_argument("--max-new-tokens", type=int, default=30, help="tokens to generate (default: 30)")
    parser.add_argument(
        "--seed", type=int,
        help="sample with this seed (the same draws for baseline and steered) instead of greedy decoding",
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature with --seed (default: 1.0)")
    parser.add_argument("--top-tokens", type=int, default=10, help="promoted tokens to measure and list (default: 10)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.mode == "clamp" and args.value is None:
        parser.error("--mode clamp needs --value")
    if args.mode != "clamp" and args.value is not None:
        parser.error("--value applies only to --mode clamp")
    if args.max_new_tokens < 0:
        parser.error("--max-new-tokens must be 0 or more")
    configure_logging(args.verbose)

    try:
        return _run(args)
    except user_errors() as err:
        logger.debug("failed", exc_info=True)
        print(f"error: {err}", file=sys.stderr)
        return 2


def _intervention(args: argparse.Namespace):
    from gsx.interp.steering import FeatureIntervention

    if args.mode == "add":
        return FeatureIntervention.add(args.feature, args.alpha)
    if args.mode == "clamp":
        return FeatureIntervention.clamp(args.feature, args.value)
    return FeatureIntervention.ablate(args.feature)


def _run(args: argparse.Namespace) -> int:
    from gsx.data import special_token_ids
    from gsx.interp.steering import FeatureHook, feature_activations, generate, steering_effect

    setup = load_model_and_sae(args.recipe, args.overrides, args.sae, args.sae_id)
    model, loaded = setup.model, setup.loaded
    d_sae = int(loaded.sae.cfg.d_sae)
    if not 0 <= args.feature < d_sae:
        raise ValueError(f"--feature {args.feature} is out of range; the SAE has {d_sae} features (0..{d_sae - 1})")
    intervention = _intervention(args)
    hook_name = loaded.hook_name
    if loaded.hook_name_out != loaded.hook_name:
        if args.mode != "add":
            raise ValueError(
                f"{loaded.describe()} reads {loaded.hook_name} but writes {loaded.hook_name_out}; "
                "clamp and ablate need an SAE that reconstructs its own input, so use --mode add"
            )
        hook_name = loaded.hook_name_out
    special_ids = special_token_ids(model.tokenizer)
    tokens = model.to_tokens(args.prompt, prepend_bos=True)

    print(f"SAE: {loaded.describe()}")
    print(f"intervention: {intervention.describe()} at {hook_name}, every non-special position")
    # Position 0 is the BOS, which the interventions leave alone.
    activations = feature_activations(model, loaded.sae, loaded.hook_name, tokens, args.feature)[0, 1:]
    n_text = len(activations)
    if n_text == 0 or float(activations.max()) <= 0:
        print(f"feature {args.feature} does not fire on the prompt's {n_text} tokens")
    else:
        position = int(activations.argmax())
        strings = model.to_str_tokens(tokens[0])[1:]
        print(
            f"feature {args.feature} on the prompt: max {float(activations[position]):.3f} at token "
            f"{strings[position]!r}, fires on {int((activations > 0).sum())} of {n_text} tokens"
        )

    effect = steering_effect(model, loaded.sae, hook_name, tokens, intervention, special_ids=special_ids, k=args.top_tokens)
    promoted = [model.tokenizer.decode([t]) for t in effect.promoted_token_ids]
    print(f"tokens W_dec[{args.feature}] promotes most (direct logit effect): {promoted}")
    print(
        f"over the prompt's {effect.n_positions} positions: their total probability {effect.baseline_prob:.4f} -> "
        f"{effect.steered_prob:.4f}; KL(baseline || steered) {effect.kl_divergence:.4f} nats; "
        f"max logit change {effect.max_abs_logit_diff:.3f}"
    )

    decoding = f"sampled, seed {args.seed}, temperature {args.temperature:g}" if args.seed is not None else "greedy"
    common = dict(special_ids=special_ids, max_new_tokens=args.max_new_tokens, seed=args.seed, temperature=args.temperature)
    baseline = generate(model, args.prompt, **common)
    steered = generate(model, args.prompt, hook_name=hook_name, hook=FeatureHook(loaded.sae, [intervention]), **common)
    print(f"\nprompt: {args.prompt!r} ({decoding}, {args.max_new_tokens} new tokens)\n")
    print(side_by_side("baseline", baseline.text, f"steered ({intervention.describe()})", steered.text))
    return 0


def side_by_side(left_title: str, left: str, right_title: str, right: str, width: int | None = None) -> str:
    """Return two texts as two wrapped columns with titles."""
    total = width or shutil.get_terminal_size((120, 24)).columns
    column = max(20, (total - 3) // 2)

    def lines(title: str, text: str) -> list[str]:
        wrapped = []
        for paragraph in text.split("\n"):
            wrapped.extend(textwrap.wrap(paragraph, column) or [""])
        return [title[:column], "-" * min(column, max(len(title), 8)), *wrapped]

    left_lines, right_lines = lines(left_title, left), lines(right_title, right)
    rows = max(len(left_lines), len(right_lines))
    left_lines += [""] * (rows - len(left_lines))
    right_lines += [""] * (rows - len(right_lines))
    return "\n".join(f"{a:<{column}} | {b}".rstrip() for a, b in zip(left_lines, right_lines))


if __name__ == "__main__":
    sys.exit(main())
