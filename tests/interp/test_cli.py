"""The gsx.dashboard and gsx.steer command lines on the tiny random model."""

from __future__ import annotations

import json

import pytest

from gsx import dashboard as dashboard_cli
from gsx import steer as steer_cli
from gsx.models import RANDOM_MODEL_NAME

from .helpers import REPO_ROOT, TINY_HOOK, make_jumprelu_sae

SMOKE_RECIPE = str(REPO_ROOT / "gsx" / "recipes" / "smoke.yaml")
# Fewer documents than the smoke recipe, so the corpus builds in about a second.
SMALL_CORPUS = ["--set", "data.max_documents=40", "--set", "data.eval_fraction=0.25"]


@pytest.fixture(scope="module")
def sae_folder(tmp_path_factory):
    sae = make_jumprelu_sae(64, 32, seed=1, threshold=0.8)
    sae.cfg.metadata.hook_name = TINY_HOOK
    sae.cfg.metadata.model_name = RANDOM_MODEL_NAME
    folder = tmp_path_factory.mktemp("tiny_sae")
    sae.save_model(folder)
    return folder


def test_dashboard_cli_writes_outputs(sae_folder, tmp_path, capsys):
    out = tmp_path / "dash"
    status = dashboard_cli.main(
        ["--sae", str(sae_folder), "--recipe", SMOKE_RECIPE, *SMALL_CORPUS, "--top", "2", "--n-sequences", "8", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert (out / "dashboard.html").is_file()
    assert (out / "neuronpedia.json").is_file()
    record = json.loads((out / "features.json").read_text())
    assert len(record["features"]) == 2
    assert record["n_sequences"] == 8
    assert f"features: {', '.join(map(str, record['features']))}" in printed
    batch = json.loads((out / "neuronpedia.json").read_text())
    assert batch["model_id"] == "random-tiny"
    assert batch["layer"] == 1


def test_dashboard_cli_given_features(sae_folder, tmp_path):
    out = tmp_path / "dash"
    status = dashboard_cli.main(
        ["--sae", str(sae_folder), "--recipe", SMOKE_RECIPE, *SMALL_CORPUS, "--features", "3,1", "--n-sequences", "4",
         "--out", str(out), "--no-neuronpedia"]
    )
    assert status == 0
    assert json.loads((out / "features.json").read_text())["features"] == [3, 1]
    assert not (out / "neuronpedia.json").exists()


def test_dashboard_cli_rejects_bad_arguments(sae_folder, capsys):
    with pytest.raises(SystemExit):
        dashboard_cli.main(["--sae", str(sae_folder), "--features", "1,x"])
    assert "invalid feature list" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dashboard_cli.main(["--sae", str(sae_folder), "--features", "1", "--top", "2"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dashboard_cli.main(["--sae", str(sae_folder), "--top", "0"])
    assert "positive integer" in capsys.readouterr().err


def test_dashboard_cli_reports_out_of_range_feature(sae_folder, tmp_path, capsys):
    status = dashboard_cli.main(
        ["--sae", str(sae_folder), "--recipe", SMOKE_RECIPE, *SMALL_CORPUS, "--features", "99", "--n-sequences", "4",
         "--out", str(tmp_path)]
    )
    assert status == 2
    assert "out of range; the SAE has 32 features" in capsys.readouterr().err


def test_dashboard_cli_reports_missing_sae(tmp_path, capsys):
    status = dashboard_cli.main(["--sae", str(tmp_path / "missing"), "--recipe", SMOKE_RECIPE])
    assert status == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "title"),
    [
        (["--alpha", "16"], "steered (add 16 x W_dec[3])"),
        (["--mode", "clamp", "--value", "5"], "steered (clamp feature 3 to 5)"),
        (["--mode", "ablate"], "steered (ablate feature 3)"),
    ],
)
def test_steer_cli_prints_both_continuations(sae_folder, capsys, extra, title):
    status = steer_cli.main(
        ["--sae", str(sae_folder), "--recipe", SMOKE_RECIPE, "--feature", "3", "--prompt", "The team",
         "--max-new-tokens", "6", *extra]
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert "baseline" in printed
    assert title in printed
    assert "KL(baseline || steered)" in printed
    assert "tokens W_dec[3] promotes most" in printed


def test_steer_cli_sampling_repeats_with_seed(sae_folder, capsys):
    arguments = ["--sae", str(sae_folder), "--recipe", SMOKE_RECIPE, "--feature", "3", "--prompt", "The team",
                 "--max-new-tokens", "6", "--seed", "7"]
    assert steer_cli.main(arguments) == 0
    first = capsys.readouterr().out
    assert steer_cli.main(arguments) == 0
    assert capsys.readouterr().out == first
    assert "sampled, seed 7" in first


def test_steer_cli_rejects_bad_arguments(sae_folder, capsys):
    base = ["--sae", str(sae_folder), "--recipe", SMOKE_RECIPE, "--prompt", "x"]
    with pytest.raises(SystemExit):
        steer_cli.main([*base, "--feature", "1", "--mode", "clamp"])
    assert "--mode clamp needs --value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        steer_cli.main([*base, "--feature", "1", "--value", "2"])
    assert "--value applies only to --mode clamp" in capsys.readouterr().err
    assert steer_cli.main([*base, "--feature", "32"]) == 2
    assert "--feature 32 is out of range" in capsys.readouterr().err


def test_side_by_side_wraps_columns():
    text = steer_cli.side_by_side("left", "a " * 30, "right", "b", width=43)
    lines = text.splitlines()
    assert lines[0].startswith("left")
    assert "| right" in lines[0]
    assert all(len(line) <= 43 for line in lines)
    assert sum("a" in line for line in lines) >= 3
