"""Steering hooks on the tiny random model: add, clamp, ablate, the error term, and generation."""

from __future__ import annotations

import pytest
import torch

from gsx.interp.steering import (
    FeatureHook,
    FeatureIntervention,
    direct_logit_effect,
    feature_activations,
    generate,
    hook_activations,
    promoted_tokens,
    run_logits,
    steering_effect,
    token_mask,
)
from .helpers import SPECIAL_IDS, TINY_HOOK, make_jumprelu_sae, make_orthonormal_sae


def _acts_and_mask(seed: int = 0, shape=(2, 5, 64)):
    generator = torch.Generator().manual_seed(seed)
    act = torch.randn(*shape, generator=generator) * 3
    mask = torch.ones(shape[:2], dtype=torch.bool)
    mask[:, 0] = False  # the BOS column
    return act, mask


# ---------------------------------------------------------------------------
# The hook on its own


def test_add_hook_adds_decoder_row(tiny_sae):
    act, mask = _acts_and_mask()
    hook = FeatureHook(tiny_sae, [FeatureIntervention.add(3, 8.0)])
    hook.token_mask = mask
    out = hook(act)

    expected = act + 8.0 * tiny_sae.W_dec[3].detach()
    torch.testing.assert_close(out[:, 1:], expected[:, 1:], rtol=0, atol=1e-6)
    assert torch.equal(out[:, 0], act[:, 0])
    assert torch.allclose((out - act)[0, 2].norm(), 8.0 * tiny_sae.W_dec[3].norm())


def test_add_hook_leaves_input_untouched(tiny_sae):
    act, mask = _acts_and_mask()
    before = act.clone()
    hook = FeatureHook(tiny_sae, [FeatureIntervention.add(0, 2.0)])
    hook.token_mask = mask
    hook(act)
    assert torch.equal(act, before)


def test_clamp_hook_matches_closed_form(tiny_sae):
    """With the error term, decode(f') + x - decode(f) = x + (V - f_i(x)) * W_dec[i] for a linear decoder."""
    act, mask = _acts_and_mask()
    feature, value = 5, 4.0
    hook = FeatureHook(tiny_sae, [FeatureIntervention.clamp(feature, value)])
    hook.token_mask = mask
    out = hook(act)

    with torch.no_grad():
        current = tiny_sae.encode(act)[..., feature]
        expected = act + (value - current)[..., None] * tiny_sae.W_dec[feature]
    torch.testing.assert_close(out[:, 1:], expected[:, 1:], rtol=0, atol=1e-5)
    assert torch.equal(out[:, 0], act[:, 0])


def test_ablate_hook_removes_feature_contribution(tiny_sae):
    act, mask = _acts_and_mask(seed=1)
    with torch.no_grad():
        current = tiny_sae.encode(act)
    feature = int((current[:, 1:] > 0).sum((0, 1)).argmax())  # the feature active at the most positions
    assert (current[:, 1:, feature] > 0).any()

    hook = FeatureHook(tiny_sae, [FeatureIntervention.ablate(feature)])
    hook.token_mask = mask
    out = hook(act)

    expected = act - current[..., feature, None] * tiny_sae.W_dec[feature].detach()
    torch.testing.assert_close(out[:, 1:], expected[:, 1:], rtol=0, atol=1e-5)
    assert torch.equal(out[:, 0], act[:, 0])


def test_clamp_reencodes_to_value_with_orthonormal_sae():
    """Where the feature was active, the clamped activations re-encode to the value exactly.

    Where it was inactive its negative pre-activation stays in the error term,
    so the re-encoded value is lower; the other features never change.
    """
    sae = make_orthonormal_sae(64, 16)
    act, mask = _acts_and_mask(seed=2, shape=(4, 6, 64))
    with torch.no_grad():
        before = sae.encode(act)
    active = (before[..., 4] > 0) & mask
    assert active.sum() >= 3
    for value in (0.0, 2.5, 7.0):
        hook = FeatureHook(sae, [FeatureIntervention.clamp(4, value)])
        hook.token_mask = mask
        with torch.no_grad():
            reencoded = sae.encode(hook(act))
        torch.testing.assert_close(reencoded[..., 4][active], torch.full((int(active.sum()),), value), rtol=0, atol=1e-5)
        assert (reencoded[..., 4][mask & ~active] <= value + 1e-5).all()
        # The other features read the same as before.
        others = [i for i in range(16) if i != 4]
        torch.testing.assert_close(reencoded[..., others], before[..., others], rtol=0, atol=1e-5)


def test_splice_without_error_is_reconstruction(tiny_sae):
    act, mask = _acts_and_mask()
    hook = FeatureHook(tiny_sae, splice=True, include_error=False)
    hook.token_mask = mask
    out = hook(act)
    with torch.no_grad():
        reconstruction = tiny_sae.decode(tiny_sae.encode(act))
    torch.testing.assert_close(out[:, 1:], reconstruction[:, 1:], rtol=0, atol=1e-6)
    assert torch.equal(out[:, 0], act[:, 0])


def test_hook_handles_head_axis(tiny_sae):
    act, mask = _acts_and_mask()
    heads = act.reshape(2, 5, 4, 16)  # hook_z layout [batch, pos, head, d_head]
    hook = FeatureHook(tiny_sae, [FeatureIntervention.add(1, 3.0)])
    hook.token_mask = mask
    out = hook(heads)
    assert out.shape == heads.shape
    expected = act + 3.0 * tiny_sae.W_dec[1].detach()
    torch.testing.assert_close(out.reshape(2, 5, 64)[:, 1:], expected[:, 1:], rtol=0, atol=1e-6)


def test_hook_rejects_bad_input(tiny_sae):
    with pytest.raises(ValueError, match="out of range"):
        FeatureHook(tiny_sae, [FeatureIntervention.add(32, 1.0)])
    with pytest.raises(ValueError, match="need the SAE spliced"):
        FeatureHook(tiny_sae, [FeatureIntervention.ablate(0)], splice=False)
    with pytest.raises(ValueError, match="invalid intervention mode"):
        FeatureIntervention(feature=0, mode="scale")  # type: ignore[arg-type]
    hook = FeatureHook(tiny_sae, [FeatureIntervention.add(0, 1.0)])
    hook.token_mask = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="token_mask has shape"):
        hook(torch.zeros(2, 5, 64))


def test_token_mask_marks_special_tokens():
    tokens = torch.tensor([[2, 10, 11, 1, 0]])
    assert token_mask(tokens, SPECIAL_IDS).tolist() == [[False, True, True, False, False]]
    assert token_mask(tokens, []).all()


# ---------------------------------------------------------------------------
# In the model


def test_splice_with_error_reproduces_clean_logits(tiny_model, tiny_sae, tiny_tokens):
    clean = run_logits(tiny_model, tiny_tokens)
    spliced = run_logits(
        tiny_model, tiny_tokens, hook_name=TINY_HOOK, hook=FeatureHook(tiny_sae, splice=True), special_ids=SPECIAL_IDS
    )
    reconstruction_only = run_logits(
        tiny_model, tiny_tokens, hook_name=TINY_HOOK,
        hook=FeatureHook(tiny_sae, splice=True, include_error=False), special_ids=SPECIAL_IDS,
    )
    assert (spliced - clean).abs().max() < 1e-4
    # Without the error term the random SAE changes the logits a lot.
    assert (reconstruction_only - clean).abs().max() > 0.1


def test_clamp_to_current_value_keeps_logits(tiny_model, tiny_sae):
    tokens = tiny_model.to_tokens("x", prepend_bos=True)  # BOS and one text position
    assert tokens.shape == (1, 2)
    activations = feature_activations(tiny_model, tiny_sae, TINY_HOOK, tokens, feature=7)
    clean = run_logits(tiny_model, tokens)
    for value, close in ((float(activations[0, 1]), True), (float(activations[0, 1]) + 5.0, False)):
        hook = FeatureHook(tiny_sae, [FeatureIntervention.clamp(7, value)])
        clamped = run_logits(tiny_model, tokens, hook_name=TINY_HOOK, hook=hook, special_ids=SPECIAL_IDS)
        if close:
            assert (clamped - clean).abs().max() < 1e-4
        else:
            assert (clamped - clean).abs().max() > 1e-2


def test_ablating_inactive_feature_keeps_logits(tiny_model, tiny_sae, tiny_tokens):
    activations = torch.stack(
        [feature_activations(tiny_model, tiny_sae, TINY_HOOK, tiny_tokens, f) for f in range(32)], dim=-1
    )
    never = [f for f in range(32) if (activations[:, 1:, f] == 0).all()]
    assert never, "expected at least one feature that never fires on the tiny tokens"
    clean = run_logits(tiny_model, tiny_tokens)
    hook = FeatureHook(tiny_sae, [FeatureIntervention.ablate(never[0])])
    ablated = run_logits(tiny_model, tiny_tokens, hook_name=TINY_HOOK, hook=hook, special_ids=SPECIAL_IDS)
    assert (ablated - clean).abs().max() < 1e-4


def test_direct_logit_effect_uses_final_norm_weight(tiny_model, tiny_sae):
    effect = direct_logit_effect(tiny_model, tiny_sae, 3)
    expected = (tiny_sae.W_dec[3] * tiny_model.ln_final.w) @ tiny_model.W_U
    torch.testing.assert_close(effect, expected.detach().float())
    assert promoted_tokens(tiny_model, tiny_sae, 3, k=5).tolist() == torch.topk(expected, 5).indices.tolist()


def test_steering_raises_promoted_tokens(tiny_model, tiny_sae, tiny_tokens):
    """Adding alpha x W_dec[f] at the last block raises the tokens W_dec[f] promotes, more for larger alpha."""
    probs = []
    for alpha in (0.0, 4.0, 16.0):
        effect = steering_effect(
            tiny_model, tiny_sae, TINY_HOOK, tiny_tokens, FeatureIntervention.add(3, alpha), special_ids=SPECIAL_IDS
        )
        probs.append(effect.steered_prob)
        if alpha == 0.0:
            assert effect.kl_divergence < 1e-6
            assert effect.max_abs_logit_diff == 0.0
            assert effect.steered_prob == pytest.approx(effect.baseline_prob)
        else:
            assert effect.steered_logprob > effect.baseline_logprob
    assert probs[0] < probs[1] < probs[2]
    # Measured with torch 2.13 on CPU: 0.050 -> 0.084 -> 0.140 for the top 10 of 259 tokens.
    assert probs[2] > 2 * probs[0]


def test_steering_negative_alpha_lowers_promoted_tokens(tiny_model, tiny_sae, tiny_tokens):
    effect = steering_effect(
        tiny_model, tiny_sae, TINY_HOOK, tiny_tokens, FeatureIntervention.add(3, -16.0), special_ids=SPECIAL_IDS
    )
    assert effect.steered_prob < effect.baseline_prob


def test_run_logits_matches_model_forward(tiny_model, tiny_tokens):
    with torch.no_grad():
        expected = tiny_model(tiny_tokens).float()
    torch.testing.assert_close(run_logits(tiny_model, tiny_tokens), expected)
    torch.testing.assert_close(run_logits(tiny_model, tiny_tokens, last_only=True), expected[:, -1:])


def test_hook_activations_match_full_run(tiny_model, tiny_tokens):
    _, cache = tiny_model.run_with_cache(tiny_tokens, names_filter=["blocks.0.hook_resid_post"])
    partial = hook_activations(tiny_model, tiny_tokens, "blocks.0.hook_resid_post")
    torch.testing.assert_close(partial, cache["blocks.0.hook_resid_post"])


# ---------------------------------------------------------------------------
# Generation


def test_generate_greedy_is_deterministic(tiny_model):
    first = generate(tiny_model, "The team", max_new_tokens=8)
    second = generate(tiny_model, "The team", max_new_tokens=8)
    assert first.token_ids == second.token_ids
    assert len(first.token_ids) == 8
    assert first.text == tiny_model.tokenizer.decode(first.token_ids)


def test_generate_seed_repeats_and_differs(tiny_model):
    a = generate(tiny_model, "The team", max_new_tokens=12, seed=1)
    b = generate(tiny_model, "The team", max_new_tokens=12, seed=1)
    c = generate(tiny_model, "The team", max_new_tokens=12, seed=2)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_generate_with_steering_emits_promoted_tokens(tiny_model, tiny_sae):
    promoted = set(promoted_tokens(tiny_model, tiny_sae, 3, k=10).tolist())
    baseline = generate(tiny_model, "The team", max_new_tokens=12)
    hook = FeatureHook(tiny_sae, [FeatureIntervention.add(3, 16.0)])
    steered = generate(tiny_model, "The team", hook_name=TINY_HOOK, hook=hook, special_ids=SPECIAL_IDS, max_new_tokens=12)
    baseline_hits = sum(t in promoted for t in baseline.token_ids)
    steered_hits = sum(t in promoted for t in steered.token_ids)
    assert steered_hits > baseline_hits
    assert steered_hits >= 8


def test_generate_rejects_bad_arguments(tiny_model):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(tiny_model, "x", max_new_tokens=-1)
    with pytest.raises(ValueError, match="temperature"):
        generate(tiny_model, "x", seed=0, temperature=0.0)

