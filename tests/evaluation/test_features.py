from types import SimpleNamespace

import pytest
import torch

from gsx.evaluation.features import (
    FeatureStats,
    format_context,
    logit_lens_scores,
    model_logit_lens,
    residual_directions,
    summarize_features,
    top_by_frequency,
    top_by_mean_activation,
    top_tokens,
)
from gsx.evaluation.splice import evaluate_sae
from gsx.models import byte_level_tokenizer
from tests.evaluation.helpers import make_sae

SPECIAL = [0, 1, 2]


def hand_made_stats() -> FeatureStats:
    # 4 tokens (sequence, position) = (0,1) (0,2) (1,1) (1,2); 4 latents.
    features = torch.tensor([
        [1.0, 0.0, 5.0, 0.0],
        [2.0, 0.0, 0.0, 0.0],
        [3.0, 4.0, 0.0, 0.0],
        [0.5, 6.0, 0.0, 0.0],
    ])
    stats = FeatureStats(d_sae=4, n_contexts=2)
    stats.update(features, torch.tensor([0, 0, 1, 1]), torch.tensor([1, 2, 1, 2]))
    return stats


def test_feature_stats_closed_form():
    stats = hand_made_stats()
    assert stats.fire_counts.tolist() == [4, 2, 1, 0]
    assert stats.frequency.tolist() == [1.0, 0.5, 0.25, 0.0]
    mean = stats.mean_activation_when_firing
    assert mean[0].item() == pytest.approx(6.5 / 4)
    assert mean[1].item() == pytest.approx(5.0)
    assert mean[2].item() == pytest.approx(5.0)
    assert torch.isnan(mean[3])
    # Top contexts of latent 0: 3.0 at (1, 1), then 2.0 at (0, 2).
    assert stats.top_values[0].tolist() == [3.0, 2.0]
    assert stats.top_sequences[0].tolist() == [1, 0]
    assert stats.top_positions[0].tolist() == [1, 2]
    # Latent 2 fired once: the second slot is empty.
    assert stats.top_values[2, 0].item() == 5.0
    assert stats.top_sequences[2].tolist() == [0, -1]
    assert stats.max_activation[3].item() == float("-inf")


def test_top_latent_rankings():
    stats = hand_made_stats()
    assert top_by_frequency(stats, 10) == [0, 1, 2]  # latent 3 never fired
    assert top_by_frequency(stats, 2) == [0, 1]
    # Latents 1 and 2 tie at mean 5.0: the lower index comes first.
    assert top_by_mean_activation(stats, 10, min_firing_tokens=1) == [1, 2, 0]
    assert top_by_mean_activation(stats, 10, min_firing_tokens=2) == [1, 0]


def test_feature_stats_batching_invariance():
    torch.manual_seed(0)
    features = torch.relu(torch.randn(200, 16) - 0.5)
    sequences = torch.arange(200) // 10
    positions = torch.arange(200) % 10
    whole = FeatureStats(16, n_contexts=3)
    whole.update(features, sequences, positions)
    pieces = FeatureStats(16, n_contexts=3)
    for start in range(0, 200, 7):
        pieces.update(features[start : start + 7], sequences[start : start + 7], positions[start : start + 7])
    assert torch.equal(whole.fire_counts, pieces.fire_counts)
    assert torch.allclose(whole.sum_activations, pieces.sum_activations)
    assert torch.equal(whole.top_values, pieces.top_values)
    assert torch.equal(whole.top_sequences, pieces.top_sequences)
    assert torch.equal(whole.top_positions, pieces.top_positions)


def test_feature_stats_rejects_bad_shapes():
    stats = FeatureStats(4)
    with pytest.raises(ValueError, match=r"\[n, 4\]"):
        stats.update(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="one entry per row"):
        stats.update(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long))


def test_logit_lens_on_hand_made_unembedding():
    # d_model 2, vocabulary of 4 tokens: token 0 reads +e0, token 1 reads −e0, token 2 reads +e1, token 3 reads 0.
    W_U = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    directions = torch.tensor([[1.0, 0.5], [0.0, -2.0]])
    scores = logit_lens_scores(directions, W_U)
    assert scores.tolist() == [[1.0, -1.0, 0.5, 0.0], [0.0, 0.0, -2.0, 0.0]]
    promoted, suppressed = top_tokens(scores, 2)
    assert [t for t, _ in promoted[0]] == [0, 2]
    assert [t for t, _ in suppressed[0]] == [1, 3]
    assert suppressed[1][0] == (2, -2.0)
    # The final norm's weight rescales each residual dimension before the unembedding.
    weighted = logit_lens_scores(directions, W_U, norm_weight=torch.tensor([0.1, 10.0]))
    assert weighted[0].tolist() == pytest.approx([0.1, -0.1, 5.0, 0.0])
    assert top_tokens(weighted, 1)[0][0][0][0] == 2


def test_logit_lens_centres_for_layernorm():
    W_U = torch.eye(3)
    scores = logit_lens_scores(torch.tensor([[3.0, 0.0, 0.0]]), W_U, center=True)
    assert scores.tolist() == [[2.0, -1.0, -1.0]]


def test_model_logit_lens_uses_final_norm_weight(tiny_model):
    direction = torch.randn(1, 64)
    expected = (direction * tiny_model.ln_final.w.detach()) @ tiny_model.W_U.detach()
    assert torch.allclose(model_logit_lens(tiny_model, direction), expected, atol=1e-5)


def test_residual_directions_for_hook_z():
    # Two heads of d_head 1 writing to d_model 2 through W_O, no post-attention norm.
    W_O = torch.tensor([[[1.0, 0.0]], [[0.0, 3.0]]])  # [n_heads, d_head, d_model]
    block = SimpleNamespace(attn=SimpleNamespace(W_O=W_O))
    model = SimpleNamespace(cfg=SimpleNamespace(d_model=2), blocks=[block])
    sae = SimpleNamespace(W_dec=torch.tensor([[1.0, 1.0], [2.0, 0.0]]))
    directions = residual_directions(model, sae, "blocks.0.attn.hook_z", [0, 1])
    assert directions.tolist() == [[1.0, 3.0], [2.0, 0.0]]
    block.ln1_post = SimpleNamespace(w=torch.tensor([2.0, 0.5]))
    assert residual_directions(model, sae, "blocks.0.attn.hook_z", [0]).tolist() == [[2.0, 1.5]]


def test_residual_directions_unknown_hook():
    model = SimpleNamespace(cfg=SimpleNamespace(d_model=2))
    sae = SimpleNamespace(W_dec=torch.zeros(3, 2))
    assert residual_directions(model, sae, "blocks.0.hook_resid_post", [1]).shape == (1, 2)
    assert residual_directions(model, sae, "blocks.0.attn.hook_q", [1]) is None


def test_format_context_marks_token():
    tokenizer = byte_level_tokenizer()
    ids = tokenizer("The cat sat on the mat", add_special_tokens=False)["input_ids"]
    position = 4  # the "c" of "cat"
    assert format_context(tokenizer, ids, position, before=4, after=2) == "The «c»at"
    assert format_context(tokenizer, ids, 0, before=4, after=1) == "«T»h"
    newline = tokenizer("a\nb", add_special_tokens=False)["input_ids"]
    assert format_context(tokenizer, newline, 1, before=1, after=1) == "a«↵»b"


def test_summarize_features_on_tiny_model(tiny_model):
    tokens = tiny_model.to_tokens(["The quick brown fox jumps over the lazy dog."] * 2 + ["Pack my box with five dozen jugs"] * 2)
    sae = make_sae()
    result = evaluate_sae(tiny_model, sae, "blocks.1.hook_resid_post", tokens, special_ids=SPECIAL,
                          compute_ce=False, progress=False)
    summary = summarize_features(result.features, tiny_model, sae, "blocks.1.hook_resid_post", tokens,
                                 n_top=3, n_logit_tokens=4, min_firing_tokens=2)
    assert summary["logit_lens"]["applied"] is True
    assert len(summary["by_frequency"]) == 3
    top = summary["by_frequency"][0]
    assert top["latent"] == top_by_frequency(result.features, 1)[0]
    assert top["firing_tokens"] == int(result.stats.fire_counts[top["latent"]])
    assert top["frequency"] == pytest.approx(float(result.stats.feature_frequency[top["latent"]]))
    assert len(top["promoted"]) == 4
    assert len(top["suppressed"]) == 4
    assert top["promoted"][0]["score"] >= top["promoted"][-1]["score"]
    context = top["contexts"][0]
    assert context["activation"] == pytest.approx(top["max_activation"])
    assert "«" in context["text"]
    assert "»" in context["text"]
    # The context's activation is the SAE's activation at that token.
    _, cache = tiny_model.run_with_cache(tokens, names_filter=["blocks.1.hook_resid_post"])
    act = cache["blocks.1.hook_resid_post"][context["sequence"], context["position"]]
    assert sae.encode(act[None])[0, top["latent"]].item() == pytest.approx(context["activation"], rel=1e-5)
    for entry in summary["by_mean_activation"]:
        assert entry["firing_tokens"] >= 2
