"""Reconstruction and sparsity metrics, accumulated over batches in float64.

Definitions (x: the activation the SAE reconstructs, x̂: its reconstruction,
f: latent activations, N: evaluated tokens, sums over tokens n and dimensions i):

- L0 = mean over tokens of #{j : f_j ≠ 0}, the number of active latents. Its
  distribution over tokens is kept as well (`l0_values`, `l0_histogram`).
- FVU = Σ_n ‖x_n − x̂_n‖² / Σ_n ‖x_n − x̄‖², with x̄ the per-dimension mean over the
  whole evaluation set. Explained variance = 1 − FVU. Both sums are accumulated
  across batches, so the result does not depend on how tokens are batched (it is
  not a mean of per-batch or per-token ratios).
- MSE = Σ_n ‖x_n − x̂_n‖² / N (squared error summed over d_in, mean over tokens).
- Cosine = mean over tokens of cos(x_n, x̂_n); a zero vector has cosine 0.
- Relative reconstruction bias = Σx̂·x̂ / Σx̂·x, the inverse of the scale
  γ = Σx̂·x / Σx̂·x̂ that minimises ‖γx̂ − x‖². 1 means no shrinkage; below 1 means
  reconstructions are too small.
- Firing frequency of latent j = (tokens where f_j ≠ 0) / N. Dead latents never
  fire on the evaluation tokens. Dense latents fire on more than
  `dense_threshold` of them. The feature density histogram bins log10 of the
  frequency of the latents that fired at least once (`density_histogram`).

Comparison with `sae_lens.evals` (sae_lens 6.54.12, `get_sparsity_and_variance_metrics`):

- explained variance: the same formula, 1 − E‖x − x̂‖² / (E‖x‖² − ‖E x‖²) over the
  whole set, as SAELens's `ExplainedVarianceCalculator` computes it. Its
  `explained_variance_legacy` differs: it averages per-token ratios against the
  batch mean.
- L0 (`!= 0`), MSE (sum over d_in, mean over tokens), cosine similarity and
  feature density (`feature_density`): the same definitions.
- relative reconstruction bias: SAELens computes the ratio per batch and averages
  the batch ratios; gsx takes one ratio of sums over the whole set. They agree
  when the evaluation is a single batch.
- Which token positions count is decided in `gsx.evaluation.splice`, which
  documents how it differs from SAELens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
"""Quantiles reported for per-token distributions."""


@dataclass
class ReconstructionMetrics:
    """Metrics of one SAE on one set of evaluation tokens."""

    n_tokens: int
    """Tokens evaluated (special tokens excluded unless asked for)."""
    l0: float
    """Mean number of active latents per token."""
    fvu: float
    """Fraction of variance unexplained, over the whole evaluation set."""
    explained_variance: float
    """1 − FVU."""
    mse: float
    """Squared error summed over d_in, mean over tokens."""
    cosine_similarity: float
    """Mean cosine similarity of x and x̂ per token."""
    relative_reconstruction_bias: float
    """Σx̂·x̂ / Σx̂·x: 1 means no shrinkage, below 1 means reconstructions are too small."""
    n_dead: int
    """Latents that never fired on the evaluation tokens."""
    n_dense: int
    """Latents that fired on more than the dense threshold's fraction of tokens."""
    d_sae: int
    """Number of latents."""
    dense_threshold: float = 0.1
    """Firing frequency above which a latent counts as dense."""


@dataclass
class Histogram:
    """Bin edges and counts: bin i counts the values v with edges[i] <= v < edges[i + 1].

    The last bin also counts values equal to its right edge.
    """

    edges: list[float]
    counts: list[int]

    def to_dict(self) -> dict[str, list]:
        return {"edges": self.edges, "counts": self.counts}


def quantiles(values: torch.Tensor) -> dict[str, float]:
    """Return min, the `QUANTILES` (keys p5, p25, p50, p75, p95), max and mean of `values`."""
    array = values.detach().double().cpu().numpy().ravel()
    if array.size == 0:
        return {}
    out = {"min": float(array.min())}
    for q, value in zip(QUANTILES, np.quantile(array, QUANTILES)):
        out[f"p{round(q * 100)}"] = float(value)
    out["max"] = float(array.max())
    out["mean"] = float(array.mean())
    return out


def l0_histogram(l0: torch.Tensor, max_bins: int = 50) -> Histogram:
    """Histogram of per-token L0 with integer bins of equal width w, at most `max_bins` of them.

    w = ceil((max L0 + 1) / max_bins) and the edges are 0, w, 2w, ..., so bin i
    counts the tokens whose L0 is in [i·w, (i + 1)·w).
    """
    values = l0.detach().cpu().long().ravel()
    top = int(values.max()) if values.numel() else 0
    width = max(1, math.ceil((top + 1) / max_bins))
    n_bins = math.ceil((top + 1) / width)
    counts = torch.bincount(values // width, minlength=n_bins)
    return Histogram(edges=[float(i * width) for i in range(n_bins + 1)], counts=[int(c) for c in counts])


def density_histogram(fire_counts: torch.Tensor, n_tokens: int, bins_per_decade: int = 5) -> tuple[Histogram, int]:
    """Histogram of log10(firing frequency) of the latents that fired; return it and the dead count.

    The edges are multiples of 1 / `bins_per_decade` from the one at or below
    log10(1 / n_tokens), the lowest frequency a firing latent can have, up to 0.
    A latent firing on every token (log10 frequency 0) falls in the last bin.
    """
    if n_tokens <= 0:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    counts = fire_counts.detach().double().cpu().ravel()
    alive = counts > 0
    low = math.floor(math.log10(1.0 / n_tokens) * bins_per_decade + 1e-9) / bins_per_decade
    n_bins = max(1, round(-low * bins_per_decade))
    edges = [low + i / bins_per_decade for i in range(n_bins + 1)]
    log_frequency = torch.log10(counts[alive] / n_tokens)
    # The small offset keeps a frequency that sits exactly on an edge in the bin above it.
    index = torch.floor((log_frequency - low) * bins_per_decade + 1e-9).long().clamp(0, n_bins - 1)
    histogram = torch.bincount(index, minlength=n_bins)
    return Histogram(edges=edges, counts=[int(c) for c in histogram]), int((~alive).sum())


def log10_histogram(values: torch.Tensor, n_bins: int = 40) -> tuple[Histogram, int]:
    """Histogram of log10 of the positive `values` in `n_bins` equal bins; return it and the count of values <= 0."""
    array = values.detach().double().cpu().numpy().ravel()
    positive = array[array > 0]
    if positive.size == 0:
        return Histogram(edges=[], counts=[]), int(array.size)
    logs = np.log10(positive)
    low, high = float(logs.min()), float(logs.max())
    if high == low:
        high = low + 1.0
    counts, edges = np.histogram(logs, bins=n_bins, range=(low, high))
    return Histogram(edges=[float(e) for e in edges], counts=[int(c) for c in counts]), int(array.size - positive.size)


class ReconstructionStats:
    """Accumulate reconstruction metrics over batches of `[n_tokens, d_in]` activations."""

    def __init__(self, d_in: int, d_sae: int, dense_threshold: float = 0.1):
        self.d_in = d_in
        self.d_sae = d_sae
        self.dense_threshold = dense_threshold
        self.n_tokens = 0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.sum_x_sq = torch.zeros(d_in, dtype=torch.float64)
        self.sum_sq_error = 0.0
        self.sum_l0 = 0.0
        self.sum_cosine = 0.0
        self.sum_xhat_x = 0.0
        self.sum_xhat_sq = 0.0
        self.fire_counts = torch.zeros(d_sae, dtype=torch.float64)
        self.l0_per_token: list[torch.Tensor] = []
        self.sq_error_per_token: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor, feature_acts: torch.Tensor) -> None:
        """Add a batch: `x`, `x_hat` are `[n, d_in]`, `feature_acts` is `[n, d_sae]`."""
        if x.shape != x_hat.shape or x.shape[-1] != self.d_in:
            raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} must both be [n, {self.d_in}]")
        if feature_acts.shape != (x.shape[0], self.d_sae):
            raise ValueError(f"feature_acts {tuple(feature_acts.shape)} must be [{x.shape[0]}, {self.d_sae}]")
        x = x.detach().to(torch.float64).cpu()
        x_hat = x_hat.detach().to(torch.float64).cpu()
        active = (feature_acts.detach() != 0).cpu()

        sq_error = (x - x_hat).pow(2).sum(-1)
        l0 = active.sum(-1).to(torch.float64)
        self.n_tokens += x.shape[0]
        self.sum_x += x.sum(0)
        self.sum_x_sq += x.pow(2).sum(0)
        self.sum_sq_error += float(sq_error.sum())
        self.sum_l0 += float(l0.sum())
        self.sum_cosine += float(torch.nn.functional.cosine_similarity(x, x_hat, dim=-1, eps=1e-12).sum())
        self.sum_xhat_x += float((x_hat * x).sum())
        self.sum_xhat_sq += float(x_hat.pow(2).sum())
        self.fire_counts += active.sum(0).to(torch.float64)
        self.l0_per_token.append(l0.to(torch.float32))
        self.sq_error_per_token.append(sq_error.to(torch.float32))

    @property
    def feature_frequency(self) -> torch.Tensor:
        """Fraction of evaluated tokens on which each latent fired, `[d_sae]`."""
        return self.fire_counts / max(self.n_tokens, 1)

    def l0_values(self) -> torch.Tensor:
        """Return the L0 of every evaluated token, in the order added, `[n_tokens]`."""
        return torch.cat(self.l0_per_token) if self.l0_per_token else torch.zeros(0)

    def sq_error_values(self) -> torch.Tensor:
        """Return ‖x − x̂‖² of every evaluated token, in the order added, `[n_tokens]`."""
        return torch.cat(self.sq_error_per_token) if self.sq_error_per_token else torch.zeros(0)

    def result(self) -> ReconstructionMetrics:
        """Return the metrics over everything added so far."""
        if self.n_tokens == 0:
            raise ValueError("no tokens were evaluated; the evaluation set is empty after excluding special tokens")
        n = self.n_tokens
        # Σ‖x − x̄‖² = Σx² − N·x̄², per dimension, in float64.
        total_variance = float((self.sum_x_sq - self.sum_x.pow(2) / n).sum())
        fvu = self.sum_sq_error / total_variance if total_variance > 0 else float("nan")
        frequency = self.feature_frequency
        return ReconstructionMetrics(
            n_tokens=n,
            l0=self.sum_l0 / n,
            fvu=fvu,
            explained_variance=1.0 - fvu,
            mse=self.sum_sq_error / n,
            cosine_similarity=self.sum_cosine / n,
            relative_reconstruction_bias=self.sum_xhat_sq / self.sum_xhat_x if self.sum_xhat_x != 0 else float("nan"),
            n_dead=int((self.fire_counts == 0).sum()),
            n_dense=int((frequency > self.dense_threshold).sum()),
            d_sae=self.d_sae,
            dense_threshold=self.dense_threshold,
        )

    def distributions(self, bins_per_decade: int = 5) -> dict[str, Any]:
        """Return the per-token and per-latent distributions as JSON-ready dictionaries.

        Keys: `l0` (quantiles, histogram), `feature_density` (bins_per_decade,
        n_dead, histogram of log10 frequency), `squared_error` (quantiles of
        ‖x − x̂‖² per token, log10_histogram, n_zero).
        """
        l0 = self.l0_values()
        sq_error = self.sq_error_values()
        density, n_dead = density_histogram(self.fire_counts, max(self.n_tokens, 1), bins_per_decade)
        error_histogram, n_zero = log10_histogram(sq_error)
        return {
            "l0": {"quantiles": quantiles(l0), "histogram": l0_histogram(l0).to_dict()},
            "feature_density": {"bins_per_decade": bins_per_decade, "n_dead": n_dead, "histogram": density.to_dict()},
            "squared_error": {"quantiles": quantiles(sq_error), "log10_histogram": error_histogram.to_dict(),
                              "n_zero": n_zero},
        }
