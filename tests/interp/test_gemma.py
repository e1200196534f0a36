"""End to end on the packaged Gemma 3 270M: one dashboard rendered in Chromium, one steering run.

Both use probe SAEs built from the model's own activations (see helpers.make_probe_sae),
so they need no trained SAE on disk.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from gsx.data import build_corpus
from gsx.interp.browser import dashboard_dom_summary, render_page
from gsx.interp.dashboard import generate_dashboard
from gsx.interp.steering import (
    FeatureHook,
    FeatureIntervention,
    feature_activations,
    generate,
    promoted_tokens,
    run_logits,
    steering_effect,
)
from gsx.recipe import DataConfig

from .helpers import GEMMA_HOOK, SPECIAL_IDS, make_probe_sae

pytestmark = pytest.mark.gemma

# Frequent in any English text, so each probe fires often on 16 held-out sequences.
PROBE_WORDS = [" the", ",", ".", " of", " to", " and"]


@pytest.fixture(scope="module")
def gemma_corpus(gemma_model):
    config = DataConfig(corpus="bbc-news", max_documents=150, context_size=64, eval_fraction=0.2)
    return build_corpus(config, gemma_model.tokenizer, seed=0)


@pytest.fixture(scope="module")
def probe_sae(gemma_model, gemma_corpus):
    token_ids = [gemma_model.tokenizer.encode(word, add_special_tokens=False)[0] for word in PROBE_WORDS]
    return make_probe_sae(gemma_model, gemma_corpus.train_tokens[:32], GEMMA_HOOK, token_ids)


def test_gemma_dashboard_renders_offline(gemma_model, gemma_corpus, probe_sae, chromium, tmp_path):
    tokens = gemma_corpus.eval_tokens[:16]
    shown_features = [PROBE_WORDS.index(word) for word in (" the", ",", " of", " and")]
    result = generate_dashboard(
        gemma_model, probe_sae, GEMMA_HOOK, tokens, tmp_path,
        special_ids=SPECIAL_IDS,
        features=shown_features,
        neuronpedia={"model_id": "gemma-3-270m", "layer": 5, "sae_set": "probe", "dataset": "bbc-news"},
    )
    assert result.features == shown_features
    assert result.inactive_features == []
    assert result.html_path.stat().st_size < 8_000_000

    # Each probe's active top examples sit on its word (Neuronpedia JSON writes the leading space as &nbsp;).
    # sae-dashboard fills the top group with the 20 largest values, zeros included.
    batch = json.loads(result.neuronpedia_path.read_text())
    for feature in batch["features"]:
        word = PROBE_WORDS[feature["feature_index"]].replace(" ", "&nbsp;")
        active = [a for a in feature["activations"] if a["bin_min"] == -1 and a["values"][a["qualifying_token_index"]] > 0]
        on_word = sum(a["tokens"][a["qualifying_token_index"]] == word for a in active)
        assert len(active) >= 5, f"{word}: {len(active)} active top examples"
        assert on_word >= 0.9 * len(active), f"{word}: {on_word} of {len(active)} active top examples"

    page = render_page(result.html_path, screenshot=tmp_path / "dashboard.png", browser=chromium)
    summary = dashboard_dom_summary(page.dom)
    assert sorted(int(option) for option in summary.feature_options) == sorted(result.features)
    assert summary.plotly_plots == 2
    assert summary.bars("histogram-acts") > 0
    assert summary.bars("histogram-logits") > 0
    assert summary.text_contains("TOP ACTIVATIONS")
    assert summary.text_contains("POSITIVE LOGITS")
    assert summary.sequence_groups >= 2
    assert summary.bold_tokens >= 10
    # SentencePiece's "▁" is drawn as a space, not as the raw marker.
    assert not any("\u2581" in text for text in summary.texts)
    assert page.screenshot.stat().st_size > 50_000
    print(f"dashboard screenshot: {page.screenshot}")


def test_gemma_steering_effects(gemma_model, probe_sae):
    """Steering toward " football" raises it; clamping to the current value and the error-term splice change nothing."""
    sae = copy.deepcopy(probe_sae)
    football = gemma_model.tokenizer.encode(" football", add_special_tokens=False)[0]
    feature = PROBE_WORDS.index(" and")  # its decoder row is replaced below
    with torch.no_grad():
        direction = gemma_model.W_U[:, football] / gemma_model.W_U[:, football].norm()
        sae.W_dec[feature] = direction
    promoted = promoted_tokens(gemma_model, sae, feature, k=5).tolist()
    assert football in promoted  # with " soccer", " Football", " basketball" and "football"

    # Residual norms at this hook are about 3,000, so alpha 200 is a small push.
    # Measured on CPU: promoted-token probability 3.9e-5 -> 8.6e-3, log-prob -17.7 -> -9.4, KL 2.6 nats.
    prompt = gemma_model.to_tokens("Shares in the firm rose after the results, and the", prepend_bos=True)
    effect = steering_effect(
        gemma_model, sae, GEMMA_HOOK, prompt, FeatureIntervention.add(feature, 200.0), special_ids=SPECIAL_IDS, k=5
    )
    print(
        f"promoted-token probability {effect.baseline_prob:.3g} -> {effect.steered_prob:.3g}, "
        f"log-prob {effect.baseline_logprob:.2f} -> {effect.steered_logprob:.2f}, KL {effect.kl_divergence:.3f}"
    )
    assert effect.steered_prob > 20 * effect.baseline_prob
    assert effect.steered_logprob > effect.baseline_logprob + 4.0
    assert effect.kl_divergence > 0.5

    # Splicing the SAE in with its error term reproduces the clean logits.
    clean = run_logits(gemma_model, prompt)
    spliced = run_logits(gemma_model, prompt, hook_name=GEMMA_HOOK, hook=FeatureHook(sae, splice=True), special_ids=SPECIAL_IDS)
    relative = (spliced - clean).abs().max() / clean.abs().max()
    assert relative < 1e-4

    # Clamping a feature to its current value on a one-token prompt leaves the logits unchanged.
    short = gemma_model.to_tokens(" the", prepend_bos=True)
    assert short.shape == (1, 2)
    the = PROBE_WORDS.index(" the")
    current = float(feature_activations(gemma_model, sae, GEMMA_HOOK, short, the)[0, 1])
    assert current > 0
    short_clean = run_logits(gemma_model, short)
    for value, unchanged in ((current, True), (0.0, False)):
        hook = FeatureHook(sae, [FeatureIntervention.clamp(the, value)])
        clamped = run_logits(gemma_model, short, hook_name=GEMMA_HOOK, hook=hook, special_ids=SPECIAL_IDS)
        change = float((clamped - short_clean).abs().max() / short_clean.abs().max())
        if unchanged:
            assert change < 1e-4
        else:
            assert change > 1e-3

    # The steered continuation uses the promoted tokens more often than the baseline.
    baseline = generate(gemma_model, "The best thing about the weekend was", max_new_tokens=10)
    hook = FeatureHook(sae, [FeatureIntervention.add(feature, 400.0)])
    steered = generate(
        gemma_model, "The best thing about the weekend was", hook_name=GEMMA_HOOK, hook=hook,
        special_ids=SPECIAL_IDS, max_new_tokens=10,
    )
    print(f"baseline: {baseline.text!r}\nsteered:  {steered.text!r}")
    steered_hits = sum(token in promoted for token in steered.token_ids)
    assert steered_hits > sum(token in promoted for token in baseline.token_ids)
    assert steered_hits >= 2

