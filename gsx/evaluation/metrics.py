"""Reconstruction and sparsity metrics, accumulated over batches in float64.

Definitions (x: input activations, x̂: reconstruction, f: latent activations,
N: evaluated tokens, sums over tokens n and dimensions i):

- L0 = mean over tokens of #{j : f_j > 0}.
- FVU = Σ_n ‖x_n − x̂_n‖² / Σ_n ‖x_n − x̄‖², with x̄ the per-dimension mean over the
  whole evaluation set. Explained variance = 1 − FVU. Both sums are accumulated
  across batches, so the result does not depend on how tokens are batched (it is
  not a mean of per-batch or per-token ratios).
- MSE = Σ_n ‖x_n − x̂_n‖² / N (squared error summed over d_in, mean over tokens).
- Cosine = mean over tokens of cos(x_n, x̂_n).
- Relative reconstruction bias = Σx̂·x̂ / Σx̂·x, the inverse of the scale
  γ = Σx̂·x / Σx̂·x̂ that minimises ‖γx̂ − x‖². 1 means no shrinkage; below 1 means
  reconstructions are too small.
- Dead latents: never active on the evaluation tokens. Dense latents: active on
  more than `dense_threshold` of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
        active = (feature_acts.detach() > 0).cpu()

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
        )
