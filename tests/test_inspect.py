"""python -m gsx.inspect on the tiny random model: printed metrics against a hand computation, and bad input."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gsx.inspect import main
from gsx.models import random_tiny_model

from loading.hub_layout import gemma_scope_2_config, gemma_scope_2_files, random_tensors, reference_forward, write_files

TEXT = "Hello world, sparse autoencoders!"
SPECIAL_IDS = [0, 1, 2]  # pad, eos, bos of the byte-level tokenizer


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Use an empty Hugging Face cache, forbid the hub, and fail on any network connection."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("GSX_SAE_DIR", raising=False)

    def blocked(*args, **kwargs):
        raise AssertionError("gsx.inspect tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", blocked)
    monkeypatch.setattr(socket, "create_connection", blocked)


def _write_sae(
    root: Path, site: str, layer: int, *, affine: bool = False, d_in: int = 64, seed: int = 0, suffix: str = ""
):
    folder = f"{site}{suffix}/layer_{layer}_width_16k_l0_small" + ("_affine" if affine else "")
    tensors = random_tensors(d_in, 32, affine=affine, seed=seed)
    write_files(root, gemma_scope_2_files(folder, tensors, gemma_scope_2_config(site, layer, 32, affine=affine)))
    return root / folder, tensors


def _number(output: str, label: str, pattern: str = r"(-?[\d.]+)") -> float:
    match = re.search(rf"^{label}\s+{pattern}", output, flags=re.MULTILINE)
    assert match, f"no {label!r} line in:\n{output}"
    return float(match.group(1))


def _expected_metrics(tensors, hook_in: str, hook_out: str, input_transform=None):
    """L0, FVU and CE clean/spliced computed by hand, special tokens excluded."""
    model = random_tiny_model()
    tokens = model.to_tokens(TEXT)
    keep = ~torch.isin(tokens, torch.tensor(SPECIAL_IDS))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        x = cache[hook_in]
        latents, output = reference_forward(tensors, x)
        target = cache[hook_out]
        l0 = float((latents[keep] > 0).sum(-1).float().mean())
        error = float(((target[keep] - output[keep]) ** 2).sum())
        variance = float(((target[keep] - target[keep].mean(0)) ** 2).sum())

        def replace(activation, hook):
            return torch.where(keep[..., None], output, activation)

        loss_keep = keep[:, :-1] & keep[:, 1:]
        clean = model(tokens, return_type="loss", loss_per_token=True)[loss_keep].mean()
        spliced = model.run_with_hooks(
            tokens, return_type="loss", loss_per_token=True, fwd_hooks=[(hook_out, replace)]
        )[loss_keep].mean()
    return {"l0": l0, "fvu": error / variance, "clean": float(clean), "spliced": float(spliced), "latents": latents[0]}


@pytest.mark.parametrize(
    ("site", "layer", "affine", "hook_in", "hook_out"),
    [
        ("resid_post", 1, False, "blocks.1.hook_resid_post", "blocks.1.hook_resid_post"),
        ("transcoder", 0, True, "blocks.0.mlp.hook_in", "blocks.0.hook_mlp_out"),
    ],
    ids=["resid_post", "affine_transcoder"],
)
def test_metrics_match_hand_computation(tmp_path, capsys, site, layer, affine, hook_in, hook_out):
    folder, tensors = _write_sae(tmp_path / "saes", site, layer, affine=affine, seed=3)

    status = main(["--sae", str(folder), "--model", "random", "--text", TEXT, "--top-k", "3"])

    output = capsys.readouterr().out
    assert status == 0
    expected = _expected_metrics(tensors, hook_in, hook_out)
    assert _number(output, "L0") == pytest.approx(expected["l0"], abs=0.005)
    assert _number(output, "FVU") == pytest.approx(expected["fvu"], abs=5e-4)
    ce_clean = _number(output, "CE loss", r"clean (-?[\d.]+)")
    ce_spliced = _number(output, "CE loss", r"clean [\d.]+  spliced (-?[\d.]+)")
    assert ce_clean == pytest.approx(expected["clean"], abs=5e-4)
    assert ce_spliced == pytest.approx(expected["spliced"], abs=5e-4)
    assert expected["spliced"] != pytest.approx(expected["clean"], abs=1e-2)
    n_tokens = len(TEXT) + 1
    assert f"tokens    {n_tokens} ({n_tokens - 1} scored; BOS/EOS/PAD excluded)" in output
    assert f"({n_tokens - 2} predictions)" in output


def test_top_latents_table(tmp_path, capsys):
    folder, tensors = _write_sae(tmp_path / "saes", "resid_post", 1, seed=4)

    assert main(["--sae", str(folder), "--model", "random", "--text", TEXT, "--top-k", "2"]) == 0

    rows = {}
    for line in capsys.readouterr().out.splitlines():
        match = re.match(r"^\s*(\d+)\s{2}('.*?')\s{2,}(.*)$", line)
        if match:
            rows[int(match.group(1))] = (match.group(2), match.group(3))
    expected = _expected_metrics(tensors, "blocks.1.hook_resid_post", "blocks.1.hook_resid_post")["latents"]
    assert rows[0] == ("'<bos>'", "(special token, excluded)")
    assert rows[1][0] == "'H'"
    for position in (1, 5, len(TEXT)):
        values, indices = expected[position].topk(2)
        listed = [(int(i), float(v)) for i, v in re.findall(r"(\d+):\s+([\d.]+)", rows[position][1])]
        assert [index for index, _ in listed] == indices.tolist()
        assert [value for _, value in listed] == pytest.approx(values.tolist(), abs=5e-4)


def test_release_id_and_local_dir(tmp_path, capsys):
    saes = tmp_path / "saes"
    _write_sae(saes, "mlp_out", 1, suffix="_all")

    status = main(
        ["--sae", "gemma-scope-2-270m-pt-mlp-all", "--sae-id", "layer_1_width_16k_l0_small",
         "--local-dir", str(saes), "--model", "random", "--text", TEXT]
    )  # fmt: skip

    output = capsys.readouterr().out
    assert status == 0
    assert "gemma-scope-2-270m-pt-mlp-all/layer_1_width_16k_l0_small (mlp_out, d_in 64, d_sae 32" in output


def test_text_from_file(tmp_path, capsys):
    folder, _ = _write_sae(tmp_path / "saes", "resid_post", 1)
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT, encoding="utf-8")

    assert main(["--sae", str(folder), "--model", "random", "--file", str(text_file)]) == 0
    assert f"tokens    {len(TEXT) + 1} " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--sae", "gemma-scope-2-270m-pt-rse/layer_1_width_16k_l0_small"], "Did you mean: gemma-scope-2-270m-pt-res"),
        (["--sae", "/no/such/sae"], "SAE path /no/such/sae does not exist"),
        (
            ["--sae", "gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_medium"],
            'hf download google/gemma-scope-2-270m-pt --include "resid_post/layer_12_width_16k_l0_medium/*"',
        ),
        (["--file", "/no/such/file.txt"], "--file /no/such/file.txt does not exist"),
        (["--text", "   "], "the text is empty"),
        (["--top-k", "0"], "--top-k must be at least 1, got 0"),
        (["--d-in-32"], "reads 32 dimensions at blocks.1.hook_resid_post, but the model's activations there have 64"),
    ],
    ids=["unknown-release", "missing-path", "missing-files", "missing-text-file", "empty-text", "top-k", "d_in"],
)
def test_bad_input_exits_2(tmp_path, capsys, arguments, message):
    folder, _ = _write_sae(tmp_path / "saes", "resid_post", 1)
    small, _ = _write_sae(tmp_path / "small", "resid_post", 1, d_in=32)
    defaults = {"--sae": str(folder), "--model": "random", "--text": TEXT}
    if arguments == ["--d-in-32"]:
        arguments = ["--sae", str(small)]
    given = dict(zip(arguments[::2], arguments[1::2]))
    if "--file" in given:
        defaults.pop("--text")
    argv = [item for key, value in {**defaults, **given}.items() for item in (key, value)]

    status = main(argv)

    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert captured.err.startswith("error: ")
    assert message in captured.err


def test_missing_required_option_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--model", "random", "--text", TEXT])
    assert info.value.code == 2
    assert "the following arguments are required: --sae" in capsys.readouterr().err


def test_module_entry_point_bad_input(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gsx.inspect", "--sae", str(tmp_path / "missing"), "--model", "random", "--text", TEXT],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 2
    assert f"error: SAE path {tmp_path / 'missing'} does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
