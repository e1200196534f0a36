"""`python -m gsx.eval`: reports for saved SAEs, default output folders, and invalid input."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

from gsx.eval import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

TINY_RECIPE = """\
run:
  name: tiny-eval
model:
  name: gsx/random-tiny
  source: random
data:
  corpus: bbc-news
  max_documents: 40
  context_size: 32
  eval_fraction: 0.2
sae:
  hook_name: blocks.1.hook_resid_post
  d_sae: 128
eval:
  n_sequences: 6
  batch_size: 3
  ce_chunk_tokens: 64
"""


def save_sae(folder: Path, d_in: int = 64, hook_name: str = "blocks.1.hook_resid_post", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=128))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.W_dec.copy_(sae.W_enc.T * 0.5)
        sae.threshold.fill_(0.1)
    sae.cfg.metadata.hook_name = hook_name
    sae.cfg.metadata.model_name = "gsx/random-tiny"
    sae.save_model(folder)
    return folder


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path


@pytest.fixture
def sae_dir(tmp_path):
    return save_sae(tmp_path / "saes" / "my-sae")


def report_paths(folder: Path) -> list[Path]:
    return sorted(folder.glob("report_*.json"))


def test_eval_writes_timestamped_report(tmp_path, recipe_file, sae_dir, capsys):
    out = tmp_path / "out"
    assert main(["--checkpoint", str(sae_dir), "--recipe", str(recipe_file), "--out", str(out), "--no-progress"]) == 0
    [json_path] = report_paths(out)
    assert json_path.name.startswith("report_2")
    stem = json_path.stem
    report = json.loads(json_path.read_text())
    assert report["kind"] == "eval"
    assert report["sae"]["source"] == str(sae_dir)
    assert report["sae"]["d_sae"] == 128
    assert report["model"]["hook_name"] == "blocks.1.hook_resid_post"
    assert report["data"]["eval_sequences"] == 6
    assert report["run"]["recipe"] == str(recipe_file)
    assert "--checkpoint" in report["run"]["command"]
    rec, splice = report["eval"]["reconstruction"], report["eval"]["splice"]
    assert rec["n_tokens"] == 6 * 31  # BOS excluded
    assert 0 < rec["l0"] <= 128
    assert math.isfinite(rec["fvu"])
    assert splice["n_loss_tokens"] == 6 * 30
    assert splice["kl_div_spliced"] >= 0
    assert set(report["versions"]) >= {"gsx", "sae-lens", "transformer-lens", "torch"}
    for name in report["plots"].values():
        assert name.startswith(stem)
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    markdown = (out / f"{stem}.md").read_text()
    assert markdown.startswith("# gsx evaluation `out`")
    assert f"{rec['l0']:.4g}" in markdown
    printed = capsys.readouterr().out
    assert str(out / f"{stem}.md") in printed


def test_second_eval_gets_its_own_files(tmp_path, recipe_file, sae_dir):
    out = tmp_path / "out"
    args = ["--checkpoint", str(sae_dir), "--recipe", str(recipe_file), "--out", str(out), "--no-progress",
            "--set", "eval.n_sequences=3"]
    assert main(args) == 0
    assert main(args) == 0
    assert len(report_paths(out)) == 2


def test_default_out_is_the_run_folder(tmp_path, recipe_file):
    run = tmp_path / "runs" / "tiny-eval"
    save_sae(run / "sae")
    shutil.copy(recipe_file, run / "recipe.yaml")
    # No --recipe: the run's own recipe decides model, data and held-out split.
    assert main(["--checkpoint", str(run / "sae"), "--no-progress", "--set", "eval.n_sequences=3"]) == 0
    [json_path] = report_paths(run)
    report = json.loads(json_path.read_text())
    assert report["run"]["recipe"] == str(run / "recipe.yaml")
    assert report["data"]["eval_sequences"] == 3


def test_default_out_for_other_saes(tmp_path, recipe_file, sae_dir):
    runs = tmp_path / "elsewhere"
    args = ["--checkpoint", str(sae_dir), "--recipe", str(recipe_file), "--no-progress",
            "--set", f"run.output_dir={runs}", "--set", "eval.n_sequences=3"]
    assert main(args) == 0
    assert len(report_paths(runs / "eval-my-sae")) == 1


def run_bad(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert err.startswith("error: ")
    return err


def test_missing_checkpoint_path(tmp_path, recipe_file, capsys):
    out = tmp_path / "out"
    err = run_bad(["--checkpoint", str(tmp_path / "nope"), "--recipe", str(recipe_file), "--out", str(out)], capsys)
    assert str(tmp_path / "nope") in err
    assert "does not exist" in err
    assert not out.exists()


def test_unknown_release(tmp_path, recipe_file, capsys):
    out = tmp_path / "out"
    err = run_bad(["--checkpoint", "no-such-release", "--sae-id", "x", "--recipe", str(recipe_file),
                   "--out", str(out)], capsys)
    assert "no-such-release" in err
    assert not out.exists()


def test_invalid_override(tmp_path, recipe_file, sae_dir, capsys):
    out = tmp_path / "out"
    err = run_bad(["--checkpoint", str(sae_dir), "--recipe", str(recipe_file), "--out", str(out),
                   "--set", "eval.batch_size=0"], capsys)
    assert "eval.batch_size" in err
    assert not out.exists()
    err = run_bad(["--checkpoint", str(sae_dir), "--recipe", str(recipe_file), "--set", "eval.batchsize=2"], capsys)
    assert "did you mean 'batch_size'" in err


def test_missing_recipe_file(tmp_path, sae_dir, capsys):
    err = run_bad(["--checkpoint", str(sae_dir), "--recipe", str(tmp_path / "missing.yaml")], capsys)
    assert "missing.yaml" in err
    assert "not found" in err


def test_out_is_a_file(tmp_path, recipe_file, sae_dir, capsys):
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    err = run_bad(["--checkpoint", str(sae_dir), "--recipe", str(recipe_file), "--out", str(out)], capsys)
    assert str(out) in err
    assert out.read_text() == "keep me"


def test_sae_width_does_not_fit_model(tmp_path, recipe_file, capsys):
    sae = save_sae(tmp_path / "wide", d_in=32)
    out = tmp_path / "out"
    err = run_bad(["--checkpoint", str(sae), "--recipe", str(recipe_file), "--out", str(out)], capsys)
    assert "d_in 32" in err
    assert "64" in err
    assert not out.exists()


def test_sae_layer_not_in_model(tmp_path, recipe_file, capsys):
    sae = save_sae(tmp_path / "deep", hook_name="blocks.5.hook_resid_post")
    out = tmp_path / "out"
    err = run_bad(["--checkpoint", str(sae), "--recipe", str(recipe_file), "--out", str(out)], capsys)
    assert "blocks.5.hook_resid_post" in err
    assert "2 layers" in err
    assert not out.exists()


def test_checkpoint_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_module_exit_status(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gsx.eval", "--checkpoint", str(tmp_path / "nope")],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"error: --checkpoint '{tmp_path / 'nope'}'" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.gemma
def test_eval_on_gemma_after_short_training(tmp_path, gemma_model, monkeypatch):
    """Train a JumpReLU SAE on 4,096 tokens of Gemma 3 270M, then evaluate it with gsx.eval."""
    import gsx.models
    import gsx.pipeline
    from gsx.pipeline import run_recipe
    from gsx.recipe import load_recipe

    # Both commands would load the model again; reuse the session's copy.
    monkeypatch.setattr(gsx.pipeline, "load_model", lambda spec: gemma_model)
    monkeypatch.setattr(gsx.models, "load_model", lambda spec: gemma_model)
    overrides = [
        f"run.output_dir={tmp_path}", "run.name=gemma-short", "data.max_documents=300",
        "sae.d_sae=1024", "training.training_tokens=4096", "training.train_batch_size_tokens=1024",
        "training.lr_warm_up_steps=1", "training.lr_decay_steps=1", "training.checkpoint_every_steps=0",
        "training.n_batches_in_buffer=16", "training.n_batches_for_norm_estimate=2",
    ]
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "gemma3-270m-l5.yaml",
                         overrides + ["eval.n_sequences=1"])
    summary = run_recipe(recipe)

    # The run folder contains every promised output, and SAELens itself reloads the SAE.
    from sae_lens import SAE

    names = {p.name for p in summary.run_dir.iterdir()}
    assert {"recipe.yaml", "versions.json", "sae", "training_log.jsonl", "report.md", "report.json"} <= names
    reloaded = SAE.load_from_disk(str(summary.sae_dir))
    assert reloaded.cfg.d_in == 640
    assert reloaded.cfg.d_sae == 1024
    assert reloaded.cfg.metadata.hook_name == "blocks.5.hook_resid_post"
    assert reloaded.cfg.metadata.model_name == "google/gemma-3-270m"

    out = tmp_path / "eval"
    assert main(["--checkpoint", str(summary.sae_dir), "--out", str(out), "--no-progress",
                 "--set", "eval.n_sequences=8"]) == 0
    [json_path] = report_paths(out)
    report = json.loads(json_path.read_text())
    assert report["model"]["name"] == "google/gemma-3-270m"
    assert report["model"]["d_in"] == 640
    rec, splice = report["eval"]["reconstruction"], report["eval"]["splice"]
    assert rec["n_tokens"] == 8 * 127
    assert 0 < rec["l0"] < 1024
    # Four training steps leave the SAE far from converged: check ranges, not quality.
    assert math.isfinite(rec["explained_variance"])
    assert rec["explained_variance"] <= 1
    assert rec["fvu"] >= 0
    assert -1 <= rec["cosine_similarity"] <= 1
    assert 0 <= rec["n_dead"] < 1024
    # Gemma 3 270M on news text: a few nats per token; zero-ablating block 5 costs far more.
    assert 1.0 < splice["ce_loss_clean"] < 6.0
    assert splice["ce_loss_zero_ablated"] > splice["ce_loss_clean"] + 1
    assert splice["ce_loss_spliced"] > 0
    assert splice["kl_div_spliced"] >= 0
    assert math.isfinite(splice["ce_loss_recovered"])
    assert splice["n_loss_tokens"] == 8 * 126
    resources = report["eval"]["resources"]
    # Two [512, 262144] float32 buffers (1 GiB) plus activations; see gsx.evaluation.splice.
    assert resources["peak_increase_mib"] < 2048
    features = report["features"]
    assert features["logit_lens"]["applied"] is True
    top = features["by_frequency"][0]
    assert "«" in top["contexts"][0]["text"]
    assert len(top["promoted"]) == 8
    assert all(isinstance(t["token"], str) for t in top["promoted"])
    for name in report["plots"].values():
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    # The run's own report has the same sections.
    run_report = json.loads((summary.run_dir / "report.json").read_text())
    assert run_report["kind"] == "run"
    assert (summary.run_dir / run_report["plots"]["l0"]).is_file()
