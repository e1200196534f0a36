"""`training.trainer: scratch | both` through the whole pipeline on the smoke recipe."""

import json

import pytest
import torch

from gsx.pipeline import run_recipe
from gsx.recipe import load_recipe
from gsx.run import SMOKE_RECIPE
from gsx.training.activations import harvest_activations, iterate_batches


def test_iterate_batches_wraps_in_order():
    activations = torch.arange(10).float()[:, None]
    batches = iterate_batches(activations, 4)
    seen = [next(batches)[:, 0].tolist() for _ in range(3)]
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]


def test_harvest_drops_special_tokens(tiny_model):
    tokens = tiny_model.to_tokens(["abcdefgh", "ijklmnop"])  # BOS + 8 bytes each
    tokens[1, -2:] = 0  # two pad positions
    acts = harvest_activations(tiny_model, tokens, "blocks.0.hook_resid_post", 14, special_ids=[0, 1, 2], seed=0)
    assert acts.shape == (14, 64)
    _, cache = tiny_model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post")
    expected = cache["blocks.0.hook_resid_post"][tokens > 2]
    # Same rows, shuffled: compare sorted by the first coordinate.
    assert torch.allclose(acts[acts[:, 0].argsort()], expected[expected[:, 0].argsort()], atol=1e-6)


def test_harvest_reuses_short_corpus(tiny_model):
    tokens = tiny_model.to_tokens(["abcd"])
    acts = harvest_activations(tiny_model, tokens, "blocks.1.hook_resid_post", 10, special_ids=[0, 1, 2], seed=0)
    assert acts.shape == (10, 64)


@pytest.fixture(scope="module")
def both_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    recipe = load_recipe(SMOKE_RECIPE, [f"run.output_dir={out}", "training.trainer=both", "run.name=both"])
    return recipe, run_recipe(recipe)


def test_both_writes_both_saes(both_run):
    _, summary = both_run
    assert (summary.run_dir / "sae" / "sae_weights.safetensors").is_file()
    assert (summary.run_dir / "scratch_sae" / "sae_weights.safetensors").is_file()
    assert json.loads((summary.run_dir / "scratch_sae" / "cfg.json").read_text())["format"] == "gsx-scratch"
    assert (summary.run_dir / "comparison.md").is_file()


def test_both_trainers_agree_on_identical_activations(both_run):
    # Same activations, same order, same seed and hyper-parameters: the two
    # implementations should track each other step for step (fp32; both clip
    # gradients and use Adam identically, so only summation order differs).
    _, summary = both_run
    saelens = [json.loads(l) for l in (summary.run_dir / "training_log.jsonl").read_text().splitlines()]
    scratch = [json.loads(l) for l in (summary.run_dir / "scratch_training_log.jsonl").read_text().splitlines()]
    scratch_by_step = {entry["step"]: entry for entry in scratch}
    final = saelens[-1]
    assert final["step"] in scratch_by_step
    other = scratch_by_step[final["step"]]
    assert other["l0"] == pytest.approx(final["l0"], rel=0.02)
    assert other["fvu"] == pytest.approx(final["fvu"], rel=0.02, abs=1e-3)


def test_both_comparison_metrics_close(both_run):
    _, summary = both_run
    comparison = json.loads((summary.run_dir / "comparison.json").read_text())
    assert comparison["a"]["kind"] == "saelens"
    assert comparison["b"]["kind"] == "gsx-scratch"
    assert comparison["b"]["source"].endswith("scratch_sae")
    a, b = comparison["a"]["metrics"], comparison["b"]["metrics"]
    assert b["l0"] == pytest.approx(a["l0"], rel=0.05)
    assert b["fvu"] == pytest.approx(a["fvu"], rel=0.05, abs=2e-3)


def test_scratch_only_run(tmp_path):
    recipe = load_recipe(SMOKE_RECIPE, [f"run.output_dir={tmp_path}", "training.trainer=scratch", "run.name=scratch"])
    summary = run_recipe(recipe)
    report = json.loads((summary.run_dir / "report.json").read_text())
    assert summary.sae_dir.name == "scratch_sae"
    assert report["sae"]["trainer"] == "scratch"
    assert 0 < report["eval"]["reconstruction"]["explained_variance"] <= 1
    assert not (summary.run_dir / "sae").exists()
