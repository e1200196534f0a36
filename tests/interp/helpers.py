"""SAE builders and constants shared by the dashboard and steering tests."""

from __future__ import annotations

from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_HOOK = "blocks.1.hook_resid_post"
GEMMA_HOOK = "blocks.5.hook_resid_post"
SPECIAL_IDS = [0, 1, 2]  # pad, eos, bos of both the byte-level tokenizer and Gemma 3


def make_jumprelu_sae(d_in: int, d_sae: int, seed: int = 0, threshold: float = 0.5):
    """Build a SAELens JumpReLU SAE with random weights and biases (every weight non-zero)."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    generator = torch.Generator().manual_seed(seed)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=generator) / d_in**0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=generator) * 0.1)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=generator) / d_in**0.5)
        sae.b_dec.copy_(torch.randn(d_in, generator=generator) * 0.1)
        sae.threshold.fill_(threshold)
    sae.eval()
    return sae


def make_orthonormal_sae(d_in: int, d_sae: int, seed: int = 0):
    """Build a JumpReLU SAE with orthonormal decoder rows, W_enc = W_dec.T, no biases and threshold 0.

    Its encoder reads back exactly what the decoder wrote along a positive
    feature, so a clamp to V re-encodes to V.
    """
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    assert d_sae <= d_in
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=generator))
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.W_dec.copy_(q[:d_sae])
        sae.W_enc.copy_(q[:d_sae].T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.threshold.zero_()
    sae.eval()
    return sae


@torch.no_grad()
def make_probe_sae(model, tokens: torch.Tensor, hook_name: str, token_ids: list[int], ridge: float = 0.01):
    """Build a JumpReLU SAE whose feature i detects token_ids[i] in the activations at `hook_name`.

    Feature i's encoder column is a ridge-regression probe fitted on `tokens`
    to output 1 at token_ids[i] and 0 elsewhere, with threshold 0.5, so the
    activation is about 1 where it fires. Its decoder row is the mean
    activation at that token minus the overall mean. `ridge` scales the
    penalty relative to the mean activation variance. This gives real
    dashboards on a real model without a trained SAE.
    """
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    _, cache = model.run_with_cache(tokens, names_filter=[hook_name], stop_at_layer=int(hook_name.split(".")[1]) + 1)
    acts = cache[hook_name]
    keep = ~torch.isin(tokens, torch.tensor(SPECIAL_IDS))
    x, ids = acts[keep].double(), tokens[keep]
    mean = x.mean(0)
    centred = x - mean
    covariance = centred.T @ centred / len(x)
    penalty = ridge * torch.trace(covariance) / covariance.shape[0]
    regularised = covariance + penalty * torch.eye(covariance.shape[0], dtype=covariance.dtype)

    encoders, offsets, decoders = [], [], []
    for token_id in token_ids:
        target = (ids == token_id).double()
        assert target.sum() > 0, f"token {token_id} does not occur in the probe tokens"
        weights = torch.linalg.solve(regularised, centred.T @ (target - target.mean()) / len(x))
        encoders.append(weights)
        offsets.append(target.mean() - mean @ weights)
        decoders.append(x[ids == token_id].mean(0) - mean)

    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=x.shape[1], d_sae=len(token_ids)))
    sae.W_enc.copy_(torch.stack(encoders, dim=1).float())
    sae.b_enc.copy_(torch.stack(offsets).float())
    sae.W_dec.copy_(torch.stack(decoders).float())
    sae.b_dec.zero_()
    sae.threshold.fill_(0.5)
    sae.eval()
    return sae
