import pytest
import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

from gsx.evaluation.splice import evaluate_sae, loss_mask, token_mask

SPECIAL = [0, 1, 2]


def make_sae(d_in=64, d_sae=128, seed=0):
    torch.manual_seed(seed)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.W_dec.copy_(sae.W_enc.T * 0.5)
        sae.threshold.fill_(0.1)
    return sae


@pytest.fixture(scope="module")
def tokens(tiny_model):
    tokens = tiny_model.to_tokens(["The quick brown fox jumps over the lazy dog."] * 3 + ["Pack my box with five dozen jugs"] * 2)
    tokens[2, -4:] = 0  # padding at the end of one row
    return tokens


def test_loss_mask_aligned_with_targets():
    tokens = torch.tensor([[2, 10, 11, 1, 0]])
    # predictions at t=0..3 of tokens 1..4: 2→10 (input BOS), 10→11, 11→1 (target EOS), 1→0
    assert loss_mask(tokens, SPECIAL).tolist() == [[False, True, False, False]]
    assert token_mask(tokens, SPECIAL).tolist() == [[False, True, True, False, False]]


def test_clean_ce_matches_transformerlens(tiny_model, tokens):
    result = evaluate_sae(tiny_model, make_sae(), "blocks.1.hook_resid_post", tokens,
                          special_ids=SPECIAL, batch_size=2, ce_chunk_tokens=7, progress=False)
    per_token = tiny_model(tokens, return_type="loss", loss_per_token=True)
    expected = per_token[loss_mask(tokens, SPECIAL)].mean().item()
    assert result.splice.ce_loss_clean == pytest.approx(expected, abs=1e-5)
    assert result.splice.n_loss_tokens == int(loss_mask(tokens, SPECIAL).sum())


def test_chunking_and_batching_do_not_change_results(tiny_model, tokens):
    kwargs = dict(special_ids=SPECIAL, progress=False)
    a = evaluate_sae(tiny_model, make_sae(), "blocks.1.hook_resid_post", tokens, batch_size=5, ce_chunk_tokens=10_000, **kwargs)
    b = evaluate_sae(tiny_model, make_sae(), "blocks.1.hook_resid_post", tokens, batch_size=2, ce_chunk_tokens=5, **kwargs)
    for key in ("ce_loss_clean", "ce_loss_spliced", "ce_loss_zero_ablated", "kl_div_spliced"):
        assert getattr(a.splice, key) == pytest.approx(getattr(b.splice, key), abs=1e-5)
    assert a.reconstruction.fvu == pytest.approx(b.reconstruction.fvu, rel=1e-9)


def test_spliced_ce_matches_saelens_splice(tiny_model, tokens):
    sae = make_sae()
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    result = evaluate_sae(tiny_model, sae, "blocks.1.hook_resid_post", tokens,
                          special_ids=SPECIAL, batch_size=5, progress=False)
    per_token = tiny_model.run_with_saes(tokens, saes=[sae], return_type="loss", loss_per_token=True,
                                         exclude_special_tokens=SPECIAL)
    expected = per_token[loss_mask(tokens, SPECIAL)].mean().item()
    assert result.splice.ce_loss_spliced == pytest.approx(expected, abs=1e-5)


def test_perfect_reconstruction_recovers_everything(tiny_model, tokens):
    class Identity:
        """An 'SAE' whose reconstruction is its input: FVU 0, delta loss 0, KL 0."""

        class cfg:
            d_in = 64
            d_sae = 64

        W_dec = torch.zeros(1)

        def encode(self, x):
            return x

        def decode(self, f):
            return f

    result = evaluate_sae(tiny_model, Identity(), "blocks.1.hook_resid_post", tokens, special_ids=SPECIAL, progress=False)
    assert result.reconstruction.fvu == pytest.approx(0.0, abs=1e-12)
    assert result.splice.ce_loss_delta == pytest.approx(0.0, abs=1e-6)
    assert result.splice.kl_div_spliced == pytest.approx(0.0, abs=1e-6)
    assert result.splice.ce_loss_recovered == pytest.approx(1.0, abs=1e-4)


def test_special_positions_not_evaluated(tiny_model, tokens):
    result = evaluate_sae(tiny_model, make_sae(), "blocks.1.hook_resid_post", tokens, special_ids=SPECIAL,
                          compute_ce=False, progress=False)
    assert result.reconstruction.n_tokens == int(token_mask(tokens, SPECIAL).sum())
    assert result.splice is None
    included = evaluate_sae(tiny_model, make_sae(), "blocks.1.hook_resid_post", tokens, special_ids=SPECIAL,
                            compute_ce=False, include_special_tokens=True, progress=False)
    assert included.reconstruction.n_tokens == tokens.numel()
