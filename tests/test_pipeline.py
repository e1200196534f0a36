"""The main job on the smoke recipe (tiny random model, real packaged text), through the library and the CLI."""

import json

import pytest
import torch
from safetensors.torch import load_file
from sae_lens import SAE

from gsx.pipeline import RunFolderExistsError, run_recipe
from gsx.recipe import load_recipe
from gsx.run import SMOKE_RECIPE, main


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    recipe = load_recipe(SMOKE_RECIPE, [f"run.output_dir={out}", "training.checkpoint_every_steps=40"])
    return recipe, run_recipe(recipe)


def test_run_folder_contents(smoke_run):
    recipe, summary = smoke_run
    names = {p.name for p in summary.run_dir.iterdir()}
    assert {"recipe.yaml", "versions.json", "sae", "checkpoints", "training_log.jsonl", "report.md", "report.json"} <= names
    assert {p.name for p in summary.sae_dir.iterdir()} >= {"cfg.json", "sae_weights.safetensors", "sparsity.safetensors"}
    # 120 steps, a checkpoint every 40
    assert sorted(p.name for p in (summary.run_dir / "checkpoints").iterdir()) == [
        "step_0000040", "step_0000080", "step_0000120"]
    assert not [p for p in summary.run_dir.rglob(".*.tmp")]


def test_resolved_recipe_round_trips(smoke_run):
    recipe, summary = smoke_run
    assert load_recipe(summary.run_dir / "recipe.yaml") == recipe


def test_sae_reloads_with_saelens(smoke_run):
    recipe, summary = smoke_run
    sae = SAE.load_from_disk(str(summary.sae_dir))
    assert sae.cfg.d_in == 64
    assert sae.cfg.d_sae == 256
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    weights = load_file(str(summary.sae_dir / "sae_weights.safetensors"))
    assert set(weights) == {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}
    assert weights["W_enc"].shape == (64, 256)
    assert (weights["threshold"] > 0).all()


def test_training_loss_falls(smoke_run):
    _, summary = smoke_run
    log = [json.loads(line) for line in (summary.run_dir / "training_log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 1
    assert log[-1]["step"] == 120
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]
    assert log[-1]["mse"] < 0.1 * log[0]["mse"]
    assert log[-1]["fvu"] < 0.2


def test_report_metrics_in_range(smoke_run):
    _, summary = smoke_run
    report = json.loads((summary.run_dir / "report.json").read_text())
    rec, splice = report["eval"]["reconstruction"], report["eval"]["splice"]
    assert report["gsx_report_version"] == 1
    assert 0 < rec["l0"] < 256
    assert 0 < rec["explained_variance"] <= 1
    assert rec["mse"] > 0
    assert 0 <= rec["n_dead"] <= 256
    assert rec["n_tokens"] == report["data"]["eval_sequences"] * 63  # BOS excluded
    assert splice["ce_loss_clean"] > 0
    assert torch.isfinite(torch.tensor(splice["kl_div_spliced"]))
    markdown = (summary.run_dir / "report.md").read_text()
    assert f"{rec['l0']:.4g}" in markdown


def test_report_plots_features_and_distributions(smoke_run):
    recipe, summary = smoke_run
    report = json.loads((summary.run_dir / "report.json").read_text())
    markdown = (summary.run_dir / "report.md").read_text()
    assert report["kind"] == "run"
    assert set(report["plots"]) == {"feature_density", "l0", "reconstruction_error"}
    for name in report["plots"].values():
        assert name.startswith("report_")
        assert (summary.run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in markdown

    rec = report["eval"]["reconstruction"]
    distributions = report["eval"]["distributions"]
    assert sum(distributions["l0"]["histogram"]["counts"]) == rec["n_tokens"]
    density = distributions["feature_density"]
    assert sum(density["histogram"]["counts"]) + density["n_dead"] == rec["d_sae"]
    assert density["n_dead"] == rec["n_dead"]
    assert report["eval"]["resources"]["peak_rss_mib"] > 0

    ce_sequences = recipe.eval.ce_sequences or recipe.eval.n_sequences
    assert report["eval"]["splice"]["n_sequences"] == min(ce_sequences, report["data"]["eval_sequences"])
    assert report["data"]["ce_sequences"] == report["eval"]["splice"]["n_sequences"]

    features = report["features"]
    assert features["logit_lens"]["applied"] is True
    top = features["by_frequency"][0]
    assert top["frequency"] >= features["by_frequency"][-1]["frequency"]
    assert top["contexts"]
    assert "«" in top["contexts"][0]["text"]
    assert top["promoted"][0]["score"] > top["suppressed"][0]["score"]
    assert "## Top latents" in markdown


def test_existing_run_folder_is_kept(smoke_run):
    recipe, summary = smoke_run
    before = (summary.run_dir / "report.json").read_bytes()
    again = load_recipe(SMOKE_RECIPE, [f"run.output_dir={recipe.run.output_dir}", "run.overwrite=false"])
    with pytest.raises(RunFolderExistsError, match="run.overwrite=true"):
        run_recipe(again)
    assert (summary.run_dir / "report.json").read_bytes() == before


def test_cli_rejects_bad_recipe(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sae:\n  d_sae: -4\n")
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert "sae.d_sae" in err
    assert "-4" in err


def test_cli_missing_1b_weights_stops_before_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "l22.yaml"
    assert main([str(recipe), "--set", f"run.output_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert "model/gemma-3-1b-pt" in err
    assert "hf download google/gemma-3-1b-pt" in err
    # The lookup comes first: no run folder was created.
    assert not (tmp_path / "runs").exists()
