import pytest
import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

from gsx.evaluation.splice import evaluate_sae, loss_mask, token_mask
from tests.evaluation.helpers import make_sae

SPECIAL = [0, 1, 2]


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


@torch.no_grad()
def reference_losses(model, sae, hook_out, tokens, hook_in=None):
    """CE clean / spliced / zero-ablated and KL from whole-vocabulary logits of full forward passes."""
    positions = token_mask(tokens, SPECIAL)
    mask = loss_mask(tokens, SPECIAL)
    captured = {}

    def capture(act, hook):
        captured["in"] = act
        return act

    def splice(act, hook):
        source = captured["in"] if hook_in else act
        flat = source.reshape(*source.shape[:2], -1)
        out = act.reshape(*act.shape[:2], -1).clone()
        out[positions] = sae(flat[positions]).to(out.dtype)
        return out.reshape(act.shape)

    def zero(act, hook):
        act = act.clone()
        act[positions] = 0.0
        return act

    hooks_in = [(hook_in, capture)] if hook_in else []
    log_probs = {
        "clean": torch.log_softmax(model(tokens), -1),
        "spliced": torch.log_softmax(model.run_with_hooks(tokens, fwd_hooks=hooks_in + [(hook_out, splice)]), -1),
        "zero": torch.log_softmax(model.run_with_hooks(tokens, fwd_hooks=[(hook_out, zero)]), -1),
    }
    ce = {name: float(-lp[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0][mask].mean()) for name, lp in log_probs.items()}
    clean = log_probs["clean"][:, :-1]
    kl = float((clean.exp() * (clean - log_probs["spliced"][:, :-1])).sum(-1)[mask].mean())
    return ce, kl


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.0.hook_mlp_out",
                                  "blocks.1.hook_resid_post", "hook_embed"])
def test_losses_match_full_forward_passes(tiny_model, tokens, hook):
    sae = make_sae()
    result = evaluate_sae(tiny_model, sae, hook, tokens, special_ids=SPECIAL, batch_size=2, ce_chunk_tokens=9,
                          progress=False)
    ce, kl = reference_losses(tiny_model, sae, hook, tokens)
    assert result.splice.ce_loss_clean == pytest.approx(ce["clean"], abs=1e-5)
    assert result.splice.ce_loss_spliced == pytest.approx(ce["spliced"], abs=1e-5)
    assert result.splice.ce_loss_zero_ablated == pytest.approx(ce["zero"], abs=1e-5)
    assert result.splice.kl_div_spliced == pytest.approx(kl, abs=1e-5)


def test_logsumexp_row_blocks_do_not_change_results(tiny_model, tokens, monkeypatch):
    import gsx.evaluation.splice as splice_module

    whole = evaluate_sae(tiny_model, make_sae(), "blocks.1.hook_resid_post", tokens, special_ids=SPECIAL, progress=False)
    monkeypatch.setattr(splice_module, "_LOGSUMEXP_ROWS", 3)
    blocked = evaluate_sae(tiny_model, make_sae(), "blocks.1.hook_resid_post", tokens, special_ids=SPECIAL, progress=False)
    for key in ("ce_loss_clean", "ce_loss_spliced", "ce_loss_zero_ablated", "kl_div_spliced"):
        assert getattr(blocked.splice, key) == pytest.approx(getattr(whole.splice, key), abs=1e-6)


def test_ce_on_first_sequences_only(tiny_model, tokens):
    kwargs = dict(special_ids=SPECIAL, batch_size=2, progress=False)
    subset = evaluate_sae(tiny_model, make_sae(), "blocks.1.hook_resid_post", tokens, ce_sequences=3, **kwargs)
    first = evaluate_sae(tiny_model, make_sae(), "blocks.1.hook_resid_post", tokens[:3], **kwargs)
    everything = evaluate_sae(tiny_model, make_sae(), "blocks.1.hook_resid_post", tokens, **kwargs)
    assert subset.splice.n_sequences == 3
    assert everything.splice.n_sequences == 5
    assert subset.splice.n_loss_tokens == int(loss_mask(tokens[:3], SPECIAL).sum())
    assert subset.splice.ce_loss_spliced == pytest.approx(first.splice.ce_loss_spliced, abs=1e-6)
    # Reconstruction metrics still cover every sequence.
    assert subset.reconstruction.n_tokens == everything.reconstruction.n_tokens
    assert subset.reconstruction.fvu == pytest.approx(everything.reconstruction.fvu, rel=1e-9)
    assert subset.n_sequences == 5


def test_skip_transcoder_reads_one_hook_and_replaces_another(tiny_model, tokens):
    from sae_lens import JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig

    torch.manual_seed(3)
    transcoder = JumpReLUSkipTranscoder(JumpReLUSkipTranscoderConfig(d_in=64, d_sae=96, d_out=64, apply_b_dec_to_input=False))
    with torch.no_grad():
        transcoder.W_enc.normal_(0, 0.3)
        transcoder.W_dec.normal_(0, 0.05)
        transcoder.W_skip.normal_(0, 0.05)
        transcoder.threshold.fill_(0.1)
    hook_in, hook_out = "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out"
    result = evaluate_sae(tiny_model, transcoder, hook_in, tokens, hook_name_out=hook_out, special_ids=SPECIAL,
                          batch_size=2, progress=False)

    positions = token_mask(tokens, SPECIAL)
    _, cache = tiny_model.run_with_cache(tokens, names_filter=[hook_in, hook_out])
    source, target = cache[hook_in][positions], cache[hook_out][positions]
    output = transcoder(source)  # forward adds the skip term x @ W_skip.T
    expected_fvu = float(((target - output) ** 2).sum() / ((target - target.mean(0)) ** 2).sum())
    assert result.reconstruction.fvu == pytest.approx(expected_fvu, rel=1e-4)
    ce, kl = reference_losses(tiny_model, transcoder, hook_out, tokens, hook_in=hook_in)
    assert result.splice.ce_loss_spliced == pytest.approx(ce["spliced"], abs=1e-5)
    assert result.splice.ce_loss_zero_ablated == pytest.approx(ce["zero"], abs=1e-5)
    assert result.splice.kl_div_spliced == pytest.approx(kl, abs=1e-5)


def test_hook_z_sae_in_reshaping_mode(tiny_model, tokens):
    torch.manual_seed(4)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=64, d_sae=128, reshape_activations="hook_z"))
    sae.cfg.metadata.hook_name = "blocks.1.attn.hook_z"
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.W_dec.copy_(sae.W_enc.T * 0.5)
        sae.threshold.fill_(0.1)
    assert sae.hook_z_reshaping_mode
    result = evaluate_sae(tiny_model, sae, "blocks.1.attn.hook_z", tokens, special_ids=SPECIAL, progress=False)
    assert sae.hook_z_reshaping_mode  # restored after the call
    per_token = tiny_model.run_with_saes(tokens, saes=[sae], return_type="loss", loss_per_token=True,
                                         exclude_special_tokens=SPECIAL)
    expected = per_token[loss_mask(tokens, SPECIAL)].mean().item()
    assert result.splice.ce_loss_spliced == pytest.approx(expected, abs=1e-5)
    assert result.reconstruction.n_tokens == int(token_mask(tokens, SPECIAL).sum())


def test_wide_sae_is_encoded_in_chunks(tiny_model, tokens, monkeypatch):
    import gsx.evaluation.splice as splice_module

    whole = evaluate_sae(tiny_model, make_sae(), "blocks.1.hook_resid_post", tokens, special_ids=SPECIAL,
                         compute_ce=False, progress=False)
    monkeypatch.setattr(splice_module, "_SAE_CHUNK_VALUES", 128 * 5)  # 5 tokens per chunk
    chunked = evaluate_sae(tiny_model, make_sae(), "blocks.1.hook_resid_post", tokens, special_ids=SPECIAL,
                           compute_ce=False, progress=False)
    # Float32 matmuls of different sizes round differently, hence rel 1e-6.
    assert chunked.reconstruction.fvu == pytest.approx(whole.reconstruction.fvu, rel=1e-6)
    assert torch.equal(chunked.stats.fire_counts, whole.stats.fire_counts)
    assert torch.allclose(chunked.features.top_values, whole.features.top_values, rtol=1e-5)
    assert torch.equal(chunked.features.top_positions, whole.features.top_positions)
