"""Report files (JSON, Markdown, PNG plots) and the resource measurement behind them."""

import json
import time

import pytest
import torch

from gsx.evaluation.resources import current_rss_bytes, measure_resources
from gsx.recipe import EvalConfig
from gsx.reporting.report import render_markdown, write_report_files
from gsx.reporting.run_report import evaluation_sections
from tests.evaluation.helpers import make_sae

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.shape[0] > 100
    assert image.shape[1] > 100


@pytest.fixture(scope="module")
def sections(tiny_model):
    tokens = tiny_model.to_tokens(["The quick brown fox jumps over the lazy dog."] * 3 + ["Pack my box with five dozen jugs"] * 3)
    config = EvalConfig(batch_size=2, ce_chunk_tokens=16)
    return evaluation_sections(tiny_model, make_sae(), tokens, config, hook_name="blocks.1.hook_resid_post",
                               progress=False)


def eval_report(sections):
    _, eval_section, features = sections
    return {
        "kind": "eval",
        "run": {"name": "eval-test", "folder": "somewhere", "started_at": "2026-01-01T00:00:00+00:00"},
        "model": {"name": "gsx/random-tiny", "source": "random", "hook_name": "blocks.1.hook_resid_post",
                  "hook_name_out": "blocks.1.hook_resid_post", "d_in": 64},
        "sae": {"source": "x", "path": "x", "kind": "saelens", "d_sae": 128},
        "data": {"corpus": "test sentences", "eval_documents": 2, "eval_sequences": 6, "ce_sequences": 6},
        "eval": eval_section,
        "features": features,
        "versions": {"gsx": "0"},
    }


def test_eval_section_keys(sections):
    result, eval_section, features = sections
    assert set(eval_section) == {"reconstruction", "splice", "distributions", "settings", "resources"}
    assert eval_section["settings"]["special_token_ids"] == [0, 1, 2]
    assert eval_section["resources"]["seconds"] > 0
    assert eval_section["resources"]["peak_rss_mib"] >= eval_section["resources"]["rss_before_mib"]
    assert sum(eval_section["distributions"]["l0"]["histogram"]["counts"]) == result.reconstruction.n_tokens
    density = eval_section["distributions"]["feature_density"]
    assert sum(density["histogram"]["counts"]) + density["n_dead"] == 128
    assert set(features) == {"n_top", "min_firing_tokens", "logit_lens", "by_frequency", "by_mean_activation"}
    assert len(features["by_frequency"]) == 10


def test_report_files(sections, tmp_path):
    report, json_path, md_path = write_report_files(tmp_path, eval_report(sections), stem="report_x")
    assert json_path == tmp_path / "report_x.json"
    assert md_path == tmp_path / "report_x.md"
    written = json.loads(json_path.read_text())
    assert written == json.loads(json.dumps(report))
    assert written["gsx_report_version"] == 1
    assert list(written)[-1] == "versions"
    assert written["plots"] == {
        "feature_density": "report_x_feature_density.png",
        "l0": "report_x_l0.png",
        "reconstruction_error": "report_x_reconstruction_error.png",
    }
    for name in written["plots"].values():
        assert_valid_png(tmp_path / name)
    markdown = md_path.read_text()
    for name in written["plots"].values():
        assert f"]({name})" in markdown
    assert "## Top latents" in markdown
    assert "## Definitions" in markdown
    top = written["features"]["by_frequency"][0]
    assert f"| {top['latent']} |" in markdown
    assert not list(tmp_path.glob(".*.tmp"))


def test_markdown_escapes_contexts(sections):
    report = eval_report(sections)
    report["features"]["by_frequency"][0]["contexts"][0]["text"] = "a | <bos> *b* «c»"
    markdown = render_markdown(report)
    assert "a \\| &lt;bos&gt; \\*b\\* «c»" in markdown


def test_markdown_without_ce(sections):
    report = eval_report(sections)
    report["eval"] = {**report["eval"], "splice": None}
    markdown = render_markdown(report)
    assert "CE loss clean" not in markdown
    assert "| L0 (active latents per token) |" in markdown


def test_measure_resources_sees_allocation():
    if current_rss_bytes() is None:
        pytest.skip("RSS cannot be read on this platform")
    with measure_resources(interval_s=0.001) as usage:
        block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched by the fill
        time.sleep(0.05)  # long enough for the sampler, in case the lifetime peak was already higher
        del block
    assert usage.seconds > 0
    assert usage.peak_increase_mib >= 60
    assert usage.peak_rss_mib >= usage.rss_before_mib + 60
