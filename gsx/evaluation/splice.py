"""Run an SAE inside the model: reconstruction metrics and CE / KL with the SAE spliced in.

For each batch of held-out sequences the model runs three times:

1. clean, keeping the activations at the SAE's hook and the final normalised
   residual stream;
2. with the hook's activations replaced by the SAE's reconstruction (at
   non-special positions unless special tokens are included);
3. with the hook's activations zero-ablated at the same positions.

Logits are never materialised for a whole batch: the final residual is projected
through the unembedding `ce_chunk_tokens` positions at a time, so peak memory
for logits is `ce_chunk_tokens × d_vocab × 4` bytes (512 positions × 262,144
tokens ≈ 0.5 GiB for Gemma 3), plus one float32 copy for log-softmax.

Loss positions: position t predicts token t+1. It counts when neither token t
nor token t+1 is a special token (BOS / EOS / PAD), so the first prediction after
BOS, whose input was never spliced, does not dilute the delta loss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from gsx.evaluation.metrics import ReconstructionMetrics, ReconstructionStats

logger = logging.getLogger(__name__)


@dataclass
class SpliceMetrics:
    """CE and KL of the model clean, with the SAE spliced in, and with the hook zero-ablated."""

    n_loss_tokens: int
    """Next-token predictions counted."""
    ce_loss_clean: float
    """Mean next-token cross-entropy (nats) of the unmodified model."""
    ce_loss_spliced: float
    """Mean cross-entropy with the SAE's reconstruction in place of the hook's activations."""
    ce_loss_zero_ablated: float
    """Mean cross-entropy with the hook's activations set to zero."""
    ce_loss_delta: float
    """ce_loss_spliced − ce_loss_clean."""
    ce_loss_recovered: float
    """(zero_ablated − spliced) / (zero_ablated − clean): 1 is a perfect SAE, 0 is no better than zeros."""
    kl_div_spliced: float
    """Mean KL(clean ‖ spliced) of the next-token distributions (nats)."""


@dataclass
class EvalResult:
    """Everything `evaluate_sae` measured."""

    reconstruction: ReconstructionMetrics
    splice: SpliceMetrics | None
    stats: ReconstructionStats
    """The accumulator, for per-latent frequencies and per-token distributions."""

    def to_dict(self) -> dict[str, Any]:
        out = {"reconstruction": asdict(self.reconstruction)}
        out["splice"] = asdict(self.splice) if self.splice is not None else None
        return out


def _sae_forward(sae: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (features, reconstruction) for `[n, d_in]` inputs, for SAELens or gsx scratch SAEs."""
    features = sae.encode(x)
    return features, sae.decode(features)


def token_mask(tokens: torch.Tensor, special_ids: list[int]) -> torch.Tensor:
    """Return `[batch, pos]` True where the token is not special."""
    if not special_ids:
        return torch.ones_like(tokens, dtype=torch.bool)
    return ~torch.isin(tokens, torch.tensor(special_ids, device=tokens.device))


def loss_mask(tokens: torch.Tensor, special_ids: list[int], include_special: bool = False) -> torch.Tensor:
    """Return `[batch, pos - 1]` True where the prediction at t of token t+1 counts."""
    if include_special:
        return torch.ones((tokens.shape[0], tokens.shape[1] - 1), dtype=torch.bool, device=tokens.device)
    keep = token_mask(tokens, special_ids)
    return keep[:, :-1] & keep[:, 1:]


def _chunked_log_probs(
    model: Any, resid: torch.Tensor, chunk: int
) -> Callable[[int, int], torch.Tensor]:
    """Return a function giving float32 log-probs for flat positions [start, end) of `resid`."""
    from transformer_lens.utilities import apply_softcap

    flat = resid.reshape(-1, resid.shape[-1])

    def log_probs(start: int, end: int) -> torch.Tensor:
        logits = model.unembed(flat[start:end])
        logits = apply_softcap(logits, model.cfg.output_logits_soft_cap)
        return torch.log_softmax(logits.float(), dim=-1)

    return log_probs


def _final_residual(model: Any, tokens: torch.Tensor, fwd_hooks: list) -> torch.Tensor:
    """Run the model without unembedding and return the output of the final norm `[batch, pos, d_model]`."""
    captured: dict[str, torch.Tensor] = {}

    def keep(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
        captured["resid"] = output.detach()

    handle = model.ln_final.register_forward_hook(keep)
    try:
        model.run_with_hooks(tokens, return_type=None, fwd_hooks=fwd_hooks)
    finally:
        handle.remove()
    return captured["resid"]


@torch.no_grad()
def evaluate_sae(
    model: Any,
    sae: Any,
    hook_name: str,
    tokens: torch.Tensor,
    *,
    special_ids: list[int],
    batch_size: int = 8,
    ce_chunk_tokens: int = 512,
    dense_threshold: float = 0.1,
    include_special_tokens: bool = False,
    compute_ce: bool = True,
    progress: bool = True,
) -> EvalResult:
    """Evaluate `sae` at `hook_name` on `tokens` `[n_seq, pos]`: reconstruction metrics and CE/KL.

    `sae` is anything with `encode` / `decode` on `[n, d_in]` (SAELens SAEs, gsx scratch
    SAEs) and `cfg.d_in` / `cfg.d_sae`. Hooks with a head axis (`hook_z`) are flattened
    to `[batch, pos, n_heads * d_head]` for the SAE and reshaped back.
    """
    d_in, d_sae = int(sae.cfg.d_in), int(sae.cfg.d_sae)
    stats = ReconstructionStats(d_in, d_sae, dense_threshold)
    device = next(model.parameters()).device
    sum_clean = sum_spliced = sum_zero = sum_kl = 0.0
    n_loss = 0

    batches = range(0, tokens.shape[0], batch_size)
    for start in tqdm(batches, desc="Evaluating SAE", disable=not progress, leave=False):
        batch = tokens[start : start + batch_size].to(device)
        positions = token_mask(batch, [] if include_special_tokens else special_ids)
        captured: dict[str, torch.Tensor] = {}

        def capture(act: torch.Tensor, hook: Any) -> torch.Tensor:
            captured["act"] = act.detach().clone()
            return act

        def splice(act: torch.Tensor, hook: Any) -> torch.Tensor:
            flat = act.reshape(act.shape[0], act.shape[1], -1)
            _, recon = _sae_forward(sae, flat[positions].to(sae.W_dec.dtype))
            flat = flat.clone()
            flat[positions] = recon.to(flat.dtype)
            return flat.reshape(act.shape)

        def zero_ablate(act: torch.Tensor, hook: Any) -> torch.Tensor:
            act = act.clone()
            act[positions] = 0.0
            return act

        # 1. Clean pass: activations for the reconstruction metrics.
        clean_resid = _final_residual(model, batch, [(hook_name, capture)])
        act = captured["act"].reshape(batch.shape[0], batch.shape[1], -1)
        x = act[positions].to(sae.W_dec.dtype)
        features, x_hat = _sae_forward(sae, x)
        stats.update(x, x_hat, features)
        if not compute_ce:
            continue

        # 2. and 3. Spliced and zero-ablated passes, then CE and KL chunk by chunk.
        spliced_resid = _final_residual(model, batch, [(hook_name, splice)])
        zero_resid = _final_residual(model, batch, [(hook_name, zero_ablate)])
        mask = loss_mask(batch, special_ids, include_special_tokens)
        # Flat index of each counted prediction and of its target token.
        pos = batch.shape[1]
        rows, cols = mask.nonzero(as_tuple=True)
        flat_index = rows * pos + cols
        targets = batch[rows, cols + 1]

        clean_lp = _chunked_log_probs(model, clean_resid, ce_chunk_tokens)
        spliced_lp = _chunked_log_probs(model, spliced_resid, ce_chunk_tokens)
        zero_lp = _chunked_log_probs(model, zero_resid, ce_chunk_tokens)
        for chunk_start in range(0, batch.numel(), ce_chunk_tokens):
            chunk_end = min(chunk_start + ce_chunk_tokens, batch.numel())
            selected = (flat_index >= chunk_start) & (flat_index < chunk_end)
            if not selected.any():
                continue
            local = flat_index[selected] - chunk_start
            target = targets[selected]
            lp_clean = clean_lp(chunk_start, chunk_end)[local]
            lp_spliced = spliced_lp(chunk_start, chunk_end)[local]
            lp_zero = zero_lp(chunk_start, chunk_end)[local]
            sum_clean -= float(lp_clean.gather(-1, target[:, None]).sum())
            sum_spliced -= float(lp_spliced.gather(-1, target[:, None]).sum())
            sum_zero -= float(lp_zero.gather(-1, target[:, None]).sum())
            sum_kl += float((lp_clean.exp() * (lp_clean - lp_spliced)).sum())
            n_loss += int(selected.sum())

    splice_metrics = None
    if compute_ce and n_loss > 0:
        clean, spliced, zero = sum_clean / n_loss, sum_spliced / n_loss, sum_zero / n_loss
        recovered = (zero - spliced) / (zero - clean) if zero != clean else float("nan")
        splice_metrics = SpliceMetrics(
            n_loss_tokens=n_loss,
            ce_loss_clean=clean,
            ce_loss_spliced=spliced,
            ce_loss_zero_ablated=zero,
            ce_loss_delta=spliced - clean,
            ce_loss_recovered=recovered,
            kl_div_spliced=sum_kl / n_loss,
        )
    return EvalResult(reconstruction=stats.result(), splice=splice_metrics, stats=stats)
