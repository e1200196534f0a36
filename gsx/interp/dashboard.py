"""Feature dashboards: sae-dashboard's feature-centric pages for chosen or most active SAE features.

`generate_dashboard` picks the features (given, or the top N by activity on
the tokens), runs sae-dashboard 0.8.0's `SaeVisRunner` on them, and writes

- ``dashboard.html``: one self-contained page with a dropdown over the
  features; d3 and plotly are inlined (see gsx.interp.offline), so it renders
  without the network;
- ``neuronpedia.json``: the same data in Neuronpedia's batch format (see
  gsx.interp.neuronpedia);
- ``features.json``: the features shown and the activity statistics used to
  rank them.

sae-dashboard picks example tokens only where 5 tokens fit on either side, so
the first 6 and last 5 positions of each sequence never appear as examples
(they do count in the histograms and densities).

Activations in the dashboard are in the SAE's own units by default, the
units `gsx.steer --value` clamps to. sae-dashboard 0.8.0 calls
``fold_W_dec_norm()`` on the SAE it gets, which scales each feature by the
norm of its decoder row. gsx passes a copy with that call disabled unless
``fold_decoder_norm=True``. The two agree when the decoder rows have unit
norm (Gemma Scope); SAEs trained with activation normalisation folded in can
have rows far from it. Products of activation and decoder row, such as the
per-token logit effects, are the same either way.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from gsx.interp.offline import inline_dashboard_html
from gsx.interp.steering import hook_activations
from gsx.io import write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from sae_dashboard.sae_vis_data import SaeVisData

logger = logging.getLogger(__name__)

RankBy = Literal["mean", "frequency", "max"]
RANK_BY_CHOICES: tuple[str, ...] = ("mean", "frequency", "max")

# SentencePiece (Gemma) marks a leading space with U+2581; sae-dashboard only maps GPT-2's "Ġ".
SENTENCEPIECE_SPACE = "\u2581"


@dataclass
class FeatureActivity:
    """Per-feature activity of an SAE over the non-special positions of some tokens."""

    mean: torch.Tensor
    """`[d_sae]` mean activation over all counted positions (zeros included)."""
    frequency: torch.Tensor
    """`[d_sae]` fraction of counted positions where the feature is > 0."""
    max: torch.Tensor
    """`[d_sae]` largest activation."""
    n_positions: int
    """Positions counted (special tokens excluded)."""

    def ranking(self, rank_by: RankBy = "mean") -> torch.Tensor:
        """Return feature indices, most active first, by the statistic `rank_by` names."""
        if rank_by not in RANK_BY_CHOICES:
            raise ValueError(f"invalid rank_by {rank_by!r}; use one of {', '.join(RANK_BY_CHOICES)}")
        return torch.argsort(getattr(self, rank_by), descending=True, stable=True)

    def describe(self, feature: int) -> dict[str, float]:
        return {
            "mean": float(self.mean[feature]),
            "frequency": float(self.frequency[feature]),
            "max": float(self.max[feature]),
        }


@dataclass
class DashboardResult:
    """Files written by `generate_dashboard` and the features they show."""

    html_path: Path
    neuronpedia_path: Path | None
    features_path: Path
    features: list[int]
    n_sequences: int
    context_size: int
    seconds: float
    inactive_features: list[int] = field(default_factory=list)
    """Requested features that never fired on the tokens (their panels are empty)."""


# ---------------------------------------------------------------------------
# Choosing features


def _flatten_heads(act: torch.Tensor) -> torch.Tensor:
    """Return hook activations as `[batch, pos, d_in]` (hook_z has a head axis)."""
    return act.reshape(act.shape[0], act.shape[1], -1)


@torch.no_grad()
def feature_activity(
    model: Any,
    sae: Any,
    hook_name: str,
    tokens: torch.Tensor,
    *,
    special_ids: Sequence[int],
    batch_size: int = 8,
) -> FeatureActivity:
    """Measure each feature's mean, firing frequency and max over `tokens` `[n_seq, pos]` at `hook_name`.

    Positions with a special token (BOS, EOS, PAD) are not counted, as in
    gsx's evaluation and in the dashboards.
    """
    d_sae = int(sae.cfg.d_sae)
    total = torch.zeros(d_sae, dtype=torch.float64)
    fired = torch.zeros(d_sae, dtype=torch.float64)
    largest = torch.zeros(d_sae, dtype=torch.float32)
    n_positions = 0
    device = next(model.parameters()).device
    special = torch.tensor(list(special_ids), dtype=torch.long)

    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size].to(device)
        act = _flatten_heads(hook_activations(model, batch, hook_name))
        keep = ~torch.isin(batch, special.to(batch.device))
        x = act[keep].to(sae.W_dec.dtype)
        if x.numel() == 0:
            continue
        features = sae.encode(x).float().cpu()
        total += features.sum(0).double()
        fired += (features > 0).sum(0).double()
        largest = torch.maximum(largest, features.max(0).values)
        n_positions += x.shape[0]

    if n_positions == 0:
        raise ValueError("the tokens contain no non-special positions; pass sequences with text after the BOS")
    return FeatureActivity(
        mean=(total / n_positions).float(),
        frequency=(fired / n_positions).float(),
        max=largest,
        n_positions=n_positions,
    )


def top_features(activity: FeatureActivity, n: int, rank_by: RankBy = "mean") -> list[int]:
    """Return the `n` most active features that fired at least once, most active first."""
    if n <= 0:
        raise ValueError(f"invalid number of features {n}; pass a positive count")
    order = activity.ranking(rank_by)
    alive = [int(f) for f in order if activity.frequency[f] > 0]
    if len(alive) < n:
        logger.warning("only %d features fired on the tokens; showing those instead of %d", len(alive), n)
    return alive[:n]


def check_features(features: Sequence[int], d_sae: int) -> list[int]:
    """Return `features` as ints after checking they are distinct indices in [0, d_sae)."""
    checked = [int(f) for f in features]
    if not checked:
        raise ValueError("no features given; pass at least one feature index")
    bad = [f for f in checked if not 0 <= f < d_sae]
    if bad:
        raise ValueError(f"feature indices {bad} are out of range; the SAE has {d_sae} features (0..{d_sae - 1})")
    if len(set(checked)) != len(checked):
        raise ValueError(f"feature indices {checked} contain duplicates; list each feature once")
    return checked


# ---------------------------------------------------------------------------
# Running sae-dashboard


def compute_dashboard_data(
    model: Any,
    sae: Any,
    hook_name: str,
    tokens: torch.Tensor,
    features: Sequence[int],
    *,
    special_ids: Sequence[int],
    minibatch_size_features: int = 64,
    minibatch_size_tokens: int = 16,
    seed: int = 0,
    fold_decoder_norm: bool = False,
) -> SaeVisData:
    """Run sae-dashboard's `SaeVisRunner` for `features` of `sae` (a SAELens SAE) on `tokens`.

    sae-dashboard gets a deep copy of the SAE, and with `fold_decoder_norm`
    False the copy's `fold_W_dec_norm` does nothing (see the module docstring).
    Special tokens are ignored for activations, histograms and top examples.
    Histogram ticks that sae-dashboard gets wrong are recomputed.
    """
    from sae_dashboard.sae_vis_data import SaeVisConfig
    from sae_dashboard.sae_vis_runner import SaeVisRunner

    device = str(next(model.parameters()).device)
    config = SaeVisConfig(
        hook_point=hook_name,
        features=list(features),
        minibatch_size_features=minibatch_size_features,
        minibatch_size_tokens=minibatch_size_tokens,
        device=device,
        dtype=_dtype_name(sae.W_dec.dtype),
        ignore_tokens=set(special_ids),
        seed=seed,
        verbose=False,
    )
    encoder = copy.deepcopy(sae)
    if not fold_decoder_norm:
        encoder.fold_W_dec_norm = lambda: None
    started = time.perf_counter()
    with warnings.catch_warnings():
        # eindex-callum 0.1 (used by sae-dashboard) indexes with lists, which torch warns about on every call.
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing", category=UserWarning)
        vis_data = SaeVisRunner(config).run(encoder=encoder, model=model, tokens=tokens)
    logger.info(
        "sae-dashboard data for %d features on %d x %d tokens in %.1f s",
        len(features), tokens.shape[0], tokens.shape[1], time.perf_counter() - started,
    )
    fix_histogram_ticks(vis_data)
    return vis_data


def _dtype_name(dtype: torch.dtype) -> str:
    names = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}
    return names.get(dtype, "float32")


def nice_ticks(low: float, high: float, target: int = 5) -> list[float]:
    """Return round tick values (multiples of 1, 2 or 5 × 10^k) covering [low, high] and 0, about `target` of them."""
    low, high = min(low, 0.0), max(high, 0.0)
    span = high - low
    if not math.isfinite(span) or span <= 0:
        return [0.0]
    exponent = math.floor(math.log10(span / target))
    steps = [m * 10.0**e for e in (exponent - 1, exponent, exponent + 1) for m in (1, 2, 5)]

    def ticks(step: float) -> list[float]:
        # round() removes float noise such as 0.30000000000000004 from the tick labels.
        return [round(i * step, 12) for i in range(math.ceil(low / step), math.floor(high / step) + 1)]

    # The step whose tick count is closest to the target; the larger step wins a tie.
    best = min(steps, key=lambda step: (abs(len(ticks(step)) - target), -step))
    return ticks(best)


def fix_histogram_ticks(vis_data: SaeVisData, max_ticks: int = 12) -> None:
    """Replace degenerate histogram ticks in `vis_data` with `nice_ticks`.

    NOTE: sae-dashboard 0.8.0 (utils_fns.HistogramData.from_data, "5 ticks"
    mode) sets the tick step to 0.1 * int(max / 0.3) + 1e-6, which is 1e-6 when
    the data's range is under 0.3. It then emits one tick per 1e-6 (about
    150,000 ticks for Gemma 3's logit histograms), which adds megabytes to the
    page and slows plotly. Tick lists longer than `max_ticks` are recomputed.
    """
    for feature_data in vis_data.feature_data_dict.values():
        for histogram in (feature_data.acts_histogram_data, feature_data.logits_histogram_data):
            if histogram is None or len(histogram.tick_vals) <= max_ticks or not histogram.bar_values:
                continue
            histogram.tick_vals = nice_ticks(min(histogram.bar_values), max(histogram.bar_values))


@contextlib.contextmanager
def sentencepiece_spaces_as_html() -> Iterator[None]:
    """Show SentencePiece's "▁" as a space in sae-dashboard's token strings, for the duration of the block.

    sae-dashboard 0.8.0 maps GPT-2's "Ġ" to a space through the module-level
    dict `sae_dashboard.utils_fns.HTML_ANOMALIES`. This adds "▁" to that dict
    and removes it afterwards, so it is not safe across threads.
    """
    from sae_dashboard import utils_fns

    added = SENTENCEPIECE_SPACE not in utils_fns.HTML_ANOMALIES
    if added:
        utils_fns.HTML_ANOMALIES[SENTENCEPIECE_SPACE] = "&nbsp;"
    try:
        yield
    finally:
        if added:
            utils_fns.HTML_ANOMALIES.pop(SENTENCEPIECE_SPACE, None)


def save_dashboard_html(vis_data: SaeVisData, path: str | Path) -> Path:
    """Write the feature-centric page for every feature in `vis_data` as one self-contained HTML file."""
    from sae_dashboard.data_writing_fns import save_feature_centric_vis

    path = Path(path)
    if path.suffix != ".html":
        raise ValueError(f"dashboard path {path} must end in .html")
    with tempfile.TemporaryDirectory(prefix="gsx-dashboard-") as tmp:
        raw_path = Path(tmp) / "raw.html"
        with sentencepiece_spaces_as_html():
            save_feature_centric_vis(vis_data, raw_path)
        page = inline_dashboard_html(raw_path.read_text(encoding="utf-8"))
    write_text_atomic(path, page)
    logger.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


# ---------------------------------------------------------------------------
# The whole job


def generate_dashboard(
    model: Any,
    sae: Any,
    hook_name: str,
    tokens: torch.Tensor,
    out_dir: str | Path,
    *,
    special_ids: Sequence[int],
    features: Sequence[int] | None = None,
    top_n: int | None = None,
    rank_by: RankBy = "mean",
    neuronpedia: dict[str, Any] | None = None,
    minibatch_size_features: int = 64,
    minibatch_size_tokens: int = 16,
    fold_decoder_norm: bool = False,
) -> DashboardResult:
    """Write dashboards for `features`, or for the `top_n` most active features, of `sae` at `hook_name`.

    `tokens` is `[n_sequences, context_size]`, each row starting with BOS.
    `neuronpedia` contains the batch-level fields of the Neuronpedia export
    (``model_id``, ``layer``, ``sae_set``, ``dataset``); None skips the export.
    Returns the paths written and the features shown.
    """
    from gsx.interp.neuronpedia import write_neuronpedia_json

    if (features is None) == (top_n is None):
        raise ValueError("pass exactly one of features (a list of indices) or top_n (a count)")
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise ValueError(f"tokens must be a non-empty [n_sequences, context_size] tensor, got shape {tuple(tokens.shape)}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    activity = feature_activity(model, sae, hook_name, tokens, special_ids=special_ids)
    if features is not None:
        chosen = check_features(features, int(sae.cfg.d_sae))
    else:
        chosen = top_features(activity, int(top_n), rank_by)
        if not chosen:
            raise ValueError(f"no feature of the SAE fired on the {tokens.shape[0]} sequences; use more text or check the SAE and hook")
    inactive = [f for f in chosen if activity.frequency[f] == 0]
    if inactive:
        logger.warning("features %s never fire on these tokens; their panels will be empty", inactive)

    vis_data = compute_dashboard_data(
        model, sae, hook_name, tokens, chosen,
        special_ids=special_ids,
        minibatch_size_features=minibatch_size_features,
        minibatch_size_tokens=minibatch_size_tokens,
        fold_decoder_norm=fold_decoder_norm,
    )
    html_path = save_dashboard_html(vis_data, out_dir / "dashboard.html")

    neuronpedia_path = None
    if neuronpedia is not None:
        neuronpedia_path = write_neuronpedia_json(
            vis_data,
            model,
            out_dir / "neuronpedia.json",
            n_prompts_total=int(tokens.shape[0]),
            n_tokens_in_prompt=int(tokens.shape[1]),
            **neuronpedia,
        )

    features_path = write_json_atomic(
        out_dir / "features.json",
        {
            "hook_name": hook_name,
            "features": chosen,
            "selection": "given" if features is not None else f"top {top_n} by {rank_by}",
            "n_sequences": int(tokens.shape[0]),
            "context_size": int(tokens.shape[1]),
            "dashboard_activations": "scaled by decoder-row norm" if fold_decoder_norm else "as the SAE outputs them",
            # `activity` is always in the SAE's own units, over non-special positions only.
            # The dashboards' DENSITY divides by every position, special tokens included.
            "n_positions_counted": activity.n_positions,
            "activity": {str(f): activity.describe(f) for f in chosen},
        },
    )
    return DashboardResult(
        html_path=html_path,
        neuronpedia_path=neuronpedia_path,
        features_path=features_path,
        features=chosen,
        n_sequences=int(tokens.shape[0]),
        context_size=int(tokens.shape[1]),
        seconds=time.perf_counter() - started,
        inactive_features=inactive,
    )
