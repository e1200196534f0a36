"""Small SAEs shared by the evaluation tests."""

import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig


def make_sae(d_in=64, d_sae=128, seed=0):
    """Return a JumpReLU SAE with fixed random weights whose decoder is half the encoder's transpose."""
    torch.manual_seed(seed)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.W_dec.copy_(sae.W_enc.T * 0.5)
        sae.threshold.fill_(0.1)
    return sae
