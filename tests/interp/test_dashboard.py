"""Dashboards on the tiny random model: feature choice, the HTML page, the Neuronpedia JSON, and Chromium."""

from __future__ import annotations

import json

import pytest
import torch

from gsx.data import build_corpus
from gsx.interp.browser import dashboard_dom_summary, render_page
from gsx.interp.dashboard import (
    check_features,
    feature_activity,
    fix_histogram_ticks,
    generate_dashboard,
    top_features,
)
from gsx.models import byte_level_tokenizer
from gsx.recipe import DataConfig

from .helpers import SPECIAL_IDS, TINY_HOOK, make_jumprelu_sae

NEURONPEDIA_FEATURE_KEYS = {
    "feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
    "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
    "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson",
    "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero",
    "freq_hist_data_bar_values", "freq_hist_data_bar_heights",
    "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
    "n_prompts_total", "n_tokens_in_prompt", "dataset", "decoder_weights_dist", "activations", "vector",
}


@pytest.fixture(scope="module")
def corpus_tokens():
    config = DataConfig(corpus="bbc-news", max_documents=40, context_size=48, eval_fraction=0.25)
    return build_corpus(config, byte_level_tokenizer(), seed=0).eval_tokens[:16]


@pytest.fixture(scope="module")
def dashboard(tiny_model, corpus_tokens, tmp_path_factory):
    sae = make_jumprelu_sae(64, 32, seed=1, threshold=0.8)
    out_dir = tmp_path_factory.mktemp("dashboard")
    result = generate_dashboard(
        tiny_model, sae, TINY_HOOK, corpus_tokens, out_dir,
        special_ids=SPECIAL_IDS,
        top_n=3,
        neuronpedia={"model_id": "random-tiny", "layer": 1, "sae_set": "test-set", "dataset": "bbc-news"},
    )
    return sae, result


def test_feature_activity_counts_text_positions(tiny_model, corpus_tokens):
    sae = make_jumprelu_sae(64, 32, seed=1, threshold=0.8)
    activity = feature_activity(tiny_model, sae, TINY_HOOK, corpus_tokens, special_ids=SPECIAL_IDS)
    assert activity.n_positions == corpus_tokens.numel() - corpus_tokens.shape[0]  # one BOS per row

    _, cache = tiny_model.run_with_cache(corpus_tokens, names_filter=[TINY_HOOK])
    features = sae.encode(cache[TINY_HOOK][:, 1:].reshape(-1, 64)).detach()
    torch.testing.assert_close(activity.mean, features.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(activity.frequency, (features > 0).float().mean(0))
    torch.testing.assert_close(activity.max, features.max(0).values)


def test_top_features_rank_and_skip_dead(tiny_model, corpus_tokens):
    sae = make_jumprelu_sae(64, 32, seed=1, threshold=0.8)
    with torch.no_grad():
        sae.threshold[5] = 1e6  # feature 5 never fires
    activity = feature_activity(tiny_model, sae, TINY_HOOK, corpus_tokens, special_ids=SPECIAL_IDS)
    by_mean = top_features(activity, 4, "mean")
    assert by_mean == torch.argsort(activity.mean, descending=True)[:4].tolist()
    by_max = top_features(activity, 4, "max")
    assert activity.max[by_max[0]] == activity.max.max()
    everything = top_features(activity, 32, "frequency")
    assert 5 not in everything
    assert len(everything) == int((activity.frequency > 0).sum())
    with pytest.raises(ValueError, match="invalid rank_by"):
        top_features(activity, 2, "median")  # type: ignore[arg-type]


def test_check_features_rejects_bad_indices():
    assert check_features([3, 1], 8) == [3, 1]
    with pytest.raises(ValueError, match="out of range"):
        check_features([8], 8)
    with pytest.raises(ValueError, match="duplicates"):
        check_features([1, 1], 8)
    with pytest.raises(ValueError, match="no features"):
        check_features([], 8)


def test_dashboard_writes_self_contained_page(dashboard):
    _, result = dashboard
    html = result.html_path.read_text(encoding="utf-8")
    assert result.html_path.name == "dashboard.html"
    assert "d3js.org/d3.v6.min.js" not in html
    assert "cdn.plot.ly" not in html.split("<script>")[0]
    assert "https://d3js.org v6.7.0" in html
    for feature in result.features:
        assert f'"{feature}": {{' in html  # each feature's data is in DASHBOARD_DATA
    assert len(result.features) == 3
    assert result.inactive_features == []


def test_dashboard_features_json(dashboard, tiny_model, corpus_tokens):
    sae, result = dashboard
    record = json.loads(result.features_path.read_text())
    assert record["features"] == result.features
    assert record["selection"] == "top 3 by mean"
    assert record["hook_name"] == TINY_HOOK
    assert record["n_sequences"] == 16
    assert record["context_size"] == 48
    activity = feature_activity(tiny_model, sae, TINY_HOOK, corpus_tokens, special_ids=SPECIAL_IDS)
    assert result.features == top_features(activity, 3)
    for feature in result.features:
        assert record["activity"][str(feature)]["max"] == pytest.approx(float(activity.max[feature]))


def test_neuronpedia_json_format(dashboard, tiny_model, corpus_tokens):
    sae, result = dashboard
    batch = json.loads(result.neuronpedia_path.read_text())
    assert batch["model_id"] == "random-tiny"
    assert batch["layer"] == 1
    assert batch["sae_set"] == "test-set"
    assert [f["feature_index"] for f in batch["features"]] == result.features

    activity = feature_activity(tiny_model, sae, TINY_HOOK, corpus_tokens, special_ids=SPECIAL_IDS)
    for feature in batch["features"]:
        assert NEURONPEDIA_FEATURE_KEYS <= set(feature)
        assert feature["n_prompts_total"] == 16
        assert feature["n_tokens_in_prompt"] == 48
        assert feature["dataset"] == "bbc-news"
        assert len(feature["pos_str"]) == len(feature["pos_values"]) == 10
        assert feature["pos_values"] == sorted(feature["pos_values"], reverse=True)
        assert len(feature["freq_hist_data_bar_values"]) == len(feature["freq_hist_data_bar_heights"])
        # sae-dashboard's density divides by every position, BOS included.
        fired = float(activity.frequency[feature["feature_index"]]) * activity.n_positions
        assert feature["frac_nonzero"] == pytest.approx(fired / corpus_tokens.numel(), abs=1e-4)

        top = [a for a in feature["activations"] if a["bin_min"] == -1]
        assert top, "every shown feature has top-activation examples"
        for activation in feature["activations"]:
            assert len(activation["tokens"]) == len(activation["values"]) == 11  # 5 tokens either side
            assert activation["qualifying_token_index"] == 5
            value = activation["values"][5]
            if activation["bin_min"] == -1:
                assert 0 < value <= activation["bin_max"] + 1e-3
            else:
                # Quantile examples: sae-dashboard's lowest interval starts at 0 and can show inactive tokens.
                assert activation["bin_min"] - 1e-3 <= value <= activation["bin_max"] + 1e-3
        # The top example can miss the max: sae-dashboard only picks tokens with 5 tokens either side.
        values = [a["values"][5] for a in top]
        assert values == sorted(values, reverse=True)
        assert top[0]["bin_max"] == pytest.approx(float(activity.max[feature["feature_index"]]), abs=1e-3)


def test_histogram_ticks_are_repaired(dashboard):
    _, result = dashboard
    html = result.html_path.read_text(encoding="utf-8")
    # sae-dashboard 0.8.0 writes one tick per 1e-6 for ranges under 0.3; the repaired lists are short.
    assert html.count("-0.2, -0.2, -0.2") == 0


def test_fix_histogram_ticks_recomputes_long_lists():
    from sae_dashboard.feature_data import FeatureData
    from sae_dashboard.sae_vis_data import SaeVisConfig, SaeVisData
    from sae_dashboard.utils_fns import HistogramData

    data = SaeVisData(cfg=SaeVisConfig(hook_point=TINY_HOOK, features=[0]))
    feature = FeatureData()
    feature.acts_histogram_data = HistogramData(bar_heights=[1, 2], bar_values=[0.5, 1.5], tick_vals=[0, 1])
    feature.logits_histogram_data = HistogramData(
        bar_heights=[1, 2], bar_values=[-0.1, 0.1], tick_vals=[-0.1] * 1000
    )
    data.feature_data_dict = {0: feature}
    fix_histogram_ticks(data)
    assert feature.acts_histogram_data.tick_vals == [0, 1]
    assert feature.logits_histogram_data.tick_vals == pytest.approx([-0.1, -0.05, 0.0, 0.05, 0.1])


def test_dashboard_requires_one_selection(tiny_model, corpus_tokens, tmp_path):
    sae = make_jumprelu_sae(64, 32)
    with pytest.raises(ValueError, match="exactly one"):
        generate_dashboard(tiny_model, sae, TINY_HOOK, corpus_tokens, tmp_path, special_ids=SPECIAL_IDS)
    with pytest.raises(ValueError, match="exactly one"):
        generate_dashboard(
            tiny_model, sae, TINY_HOOK, corpus_tokens, tmp_path, special_ids=SPECIAL_IDS, features=[1], top_n=2
        )


def test_dashboard_renders_offline_in_chromium(dashboard, chromium):
    """The page draws its histograms, example sequences and feature dropdown with the network cut off."""
    _, result = dashboard
    page = render_page(result.html_path, screenshot=result.html_path.with_name("dashboard.png"), browser=chromium)
    summary = dashboard_dom_summary(page.dom)

    assert sorted(int(option) for option in summary.feature_options) == sorted(result.features)
    assert summary.plotly_plots == 2  # activation and logit histograms of the shown feature
    assert summary.bars("histogram-acts") > 0
    assert summary.bars("histogram-logits") > 0
    assert summary.text_contains("TOP ACTIVATIONS")
    assert summary.text_contains("NEGATIVE LOGITS")
    assert summary.text_contains("NEURON ALIGNMENT")
    assert summary.sequence_groups >= 2
    assert summary.bold_tokens >= 10
    assert page.screenshot is not None
    assert page.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.screenshot.stat().st_size > 20_000


def test_cdn_page_stays_blank_offline(tiny_model, corpus_tokens, chromium, tmp_path):
    """Negative control: sae-dashboard's own page, which loads d3 and plotly from CDNs, draws nothing offline."""
    from sae_dashboard.data_writing_fns import save_feature_centric_vis

    from gsx.interp.dashboard import compute_dashboard_data

    sae = make_jumprelu_sae(64, 32, seed=1, threshold=0.8)
    vis_data = compute_dashboard_data(tiny_model, sae, TINY_HOOK, corpus_tokens[:4], [0, 1], special_ids=SPECIAL_IDS)
    raw_path = tmp_path / "cdn.html"
    save_feature_centric_vis(vis_data, raw_path)
    assert "https://d3js.org/d3.v6.min.js" in raw_path.read_text(encoding="utf-8")

    summary = dashboard_dom_summary(render_page(raw_path, browser=chromium).dom)
    assert summary.plotly_plots == 0
    assert summary.tokens == 0
    assert summary.feature_options == []
