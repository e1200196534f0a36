"""SAE comparison: decoder matching in closed form, compare_saes on the tiny model, the CLI and its errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sae_lens import JumpReLUSAE as SAELensJumpReLUSAE
from sae_lens import JumpReLUSAEConfig

from gsx.compare import display_names, main
from gsx.comparison import (
    DIFFERENCE_KEYS,
    ComparisonError,
    check_comparable,
    compare_saes,
    match_decoders,
    write_comparison_report,
)
from gsx.saes.convert import scratch_from_saelens
from gsx.saes.jumprelu import JumpReLUSAE

REPO_ROOT = Path(__file__).resolve().parents[1]
SPECIAL = [0, 1, 2]
HOOK = "blocks.1.hook_resid_post"
# Small corpus and context for CLI runs on the tiny model (about a second each).
TINY_RECIPE = ["--set", "model.source=random", "--set", "data.max_documents=60", "--set", "data.context_size=64"]


def make_sae(d_in=64, d_sae=128, seed=0, hook_name=HOOK):
    generator = torch.Generator().manual_seed(seed)
    sae = SAELensJumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=generator) * 0.3)
        sae.W_dec.copy_(sae.W_enc.T * 0.5)
        sae.threshold.fill_(0.1)
    sae.cfg.metadata.hook_name = hook_name
    return sae


def orthonormal_rows(n, seed=0):
    matrix = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, _ = torch.linalg.qr(matrix)
    return q.T.contiguous()


@pytest.fixture(scope="module")
def tokens(tiny_model):
    return tiny_model.to_tokens(
        ["The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs, please."] * 2
    )


# ---------------------------------------------------------------------------
# Decoder matching


def test_match_permuted_rows_all_one():
    a = torch.randn(40, 16, generator=torch.Generator().manual_seed(0))
    permutation = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    b = a[permutation] * 3.0  # rescaled rows have the same directions

    matching = match_decoders(a, b, block_size=7)

    inverse = torch.argsort(permutation)
    for direction, expected_match in ((matching.a_to_b, inverse), (matching.b_to_a, permutation)):
        torch.testing.assert_close(direction.max_cosine, torch.ones(40), atol=1e-6, rtol=0)
        assert direction.best_match.tolist() == expected_match.tolist()
        assert direction.fraction_above[0.9] == 1.0
        assert direction.fraction_above[0.7] == 1.0
        assert direction.mean_max_cosine == pytest.approx(1.0, abs=1e-6)
        assert direction.median_max_cosine == pytest.approx(1.0, abs=1e-6)
        assert direction.n_zero_norm == 0


def test_match_orthogonal_replacements_exact_fractions():
    q = orthonormal_rows(16).float()
    a = q[:8]
    b = torch.cat(
        [
            q[0:4],  # rows 0-3: the same directions as A's rows 0-3 (cosine 1)
            (0.8 * q[4] + 0.6 * q[12])[None],  # row 4: cosine 0.8 to A's row 4
            q[8:11],  # rows 5-7: orthogonal to every row of A
            q[0][None],  # row 8: a duplicate of A's row 0
            -q[1][None],  # row 9: the opposite of A's row 1 (cosine -1), orthogonal to the rest
        ]
    )

    matching = match_decoders(a, b, block_size=3)

    a_to_b, b_to_a = matching.a_to_b, matching.b_to_a
    torch.testing.assert_close(a_to_b.max_cosine, torch.tensor([1, 1, 1, 1, 0.8, 0, 0, 0.0]), atol=1e-6, rtol=0)
    assert a_to_b.best_match[:5].tolist() == [0, 1, 2, 3, 4]  # row 0 ties with B's row 8; the lower index wins
    assert a_to_b.fraction_above == {0.7: 5 / 8, 0.9: 4 / 8}
    assert a_to_b.mean_max_cosine == pytest.approx(4.8 / 8, abs=1e-6)
    assert a_to_b.median_max_cosine == pytest.approx(0.9, abs=1e-6)  # (0.8 + 1) / 2

    torch.testing.assert_close(
        b_to_a.max_cosine, torch.tensor([1, 1, 1, 1, 0.8, 0, 0, 0, 1, 0.0]), atol=1e-6, rtol=0
    )
    assert b_to_a.best_match[8].item() == 0
    assert b_to_a.fraction_above == {0.7: 6 / 10, 0.9: 5 / 10}
    assert b_to_a.n_latents == 10


def test_match_zero_norm_row_unmatched():
    q = orthonormal_rows(16).float()
    a = q[:8].clone()
    a[2] = 0.0
    b = q[:8].clone()

    matching = match_decoders(a, b)

    a_to_b, b_to_a = matching.a_to_b, matching.b_to_a
    assert a_to_b.n_zero_norm == 1
    assert math.isnan(a_to_b.max_cosine[2].item())
    assert a_to_b.best_match[2].item() == -1
    assert a_to_b.fraction_above[0.9] == 7 / 8
    assert a_to_b.mean_max_cosine == pytest.approx(1.0, abs=1e-6)
    assert a_to_b.to_dict()["n_zero_norm"] == 1
    # B's row 2 had only A's zero row as its match, and that row never matches.
    assert b_to_a.n_zero_norm == 0
    assert abs(b_to_a.max_cosine[2].item()) < 1e-6
    assert b_to_a.best_match[2].item() != 2
    assert b_to_a.fraction_above[0.9] == 7 / 8


def test_match_zero_row_never_wins_over_negative():
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [-1.0, 0.0]])

    matching = match_decoders(a, b)

    assert matching.a_to_b.max_cosine.tolist() == [-1.0]
    assert matching.a_to_b.best_match.tolist() == [1]
    assert matching.b_to_a.n_zero_norm == 1
    assert math.isnan(matching.b_to_a.max_cosine[0].item())


def test_match_all_zero_gives_null_summary():
    matching = match_decoders(torch.zeros(3, 4), torch.randn(5, 4))

    summary = matching.a_to_b.to_dict()
    assert summary["mean_max_cosine"] is None
    assert summary["median_max_cosine"] is None
    assert summary["fraction_above"] == {"0.7": 0.0, "0.9": 0.0}
    assert summary["n_zero_norm"] == 3
    assert torch.isnan(matching.b_to_a.max_cosine).all()
    json.dumps(matching.to_dict(), allow_nan=False)


@pytest.mark.parametrize(("n_a", "n_b", "d_in", "block_sizes"), [(50, 37, 8, (1, 5, 64)), (300, 257, 32, (16, 100, 4096))])
def test_match_block_size_does_not_change_results(n_a, n_b, d_in, block_sizes):
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(n_a, d_in, generator=generator)
    b = torch.randn(n_b, d_in, generator=generator)
    a[4] = 0.0
    unit_a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-30)
    unit_b = b / b.norm(dim=1, keepdim=True)
    full = unit_a @ unit_b.T
    expected_a, expected_a_index = full.max(dim=1)
    expected_b, expected_b_index = full[torch.arange(n_a) != 4].max(dim=0)
    expected_b_index = torch.arange(n_a)[torch.arange(n_a) != 4][expected_b_index]

    for block_size in block_sizes:
        matching = match_decoders(a, b, block_size=block_size)
        torch.testing.assert_close(matching.a_to_b.max_cosine[torch.arange(n_a) != 4],
                                   expected_a[torch.arange(n_a) != 4], atol=1e-6, rtol=0)
        assert matching.a_to_b.best_match[torch.arange(n_a) != 4].tolist() == expected_a_index[torch.arange(n_a) != 4].tolist()
        torch.testing.assert_close(matching.b_to_a.max_cosine, expected_b, atol=1e-6, rtol=0)
        assert matching.b_to_a.best_match.tolist() == expected_b_index.tolist()
        assert matching.block_size == block_size


def test_match_bfloat16_rows_compared_in_float32():
    a = torch.randn(20, 16, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)

    matching = match_decoders(a, a.clone())

    assert matching.a_to_b.max_cosine.dtype == torch.float32
    assert matching.a_to_b.fraction_above[0.9] == 1.0


def test_match_rejects_bad_input():
    with pytest.raises(ComparisonError, match=r"\(5, 8\).*\(5, 6\).*8 vs 6"):
        match_decoders(torch.randn(5, 8), torch.randn(5, 6))
    with pytest.raises(ValueError, match="NaN or inf"):
        match_decoders(torch.full((2, 3), math.nan), torch.randn(2, 3))
    with pytest.raises(ValueError, match="block_size=0"):
        match_decoders(torch.randn(2, 3), torch.randn(2, 3), block_size=0)


# ---------------------------------------------------------------------------
# compare_saes on the tiny model


def test_compare_sae_with_itself(tiny_model, tokens):
    sae = make_sae()

    result = compare_saes(tiny_model, sae, sae, HOOK, tokens, special_ids=SPECIAL, batch_size=3, block_size=50)

    assert result.a.metrics == result.b.metrics
    assert result.a.metrics["n_tokens"] > 0
    assert result.a.metrics["ce_loss_spliced"] is not None
    for key in DIFFERENCE_KEYS:
        assert result.differences()[key] == 0.0, key
    matching = result.decoder_matching
    assert matching.a_to_b.best_match.tolist() == list(range(128))
    assert matching.a_to_b.fraction_above[0.9] == 1.0
    assert matching.b_to_a.fraction_above[0.9] == 1.0


def test_compare_saelens_with_scratch_copy(tiny_model, tokens):
    sae = make_sae(seed=1)
    scratch = scratch_from_saelens(sae)

    result = compare_saes(tiny_model, sae, scratch, None, tokens, special_ids=SPECIAL, names=("lens", "scratch"))

    assert (result.a.kind, result.b.kind) == ("saelens", "gsx-scratch")
    assert result.hook_name == HOOK
    for key, value in result.a.metrics.items():
        assert result.b.metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert result.decoder_matching.a_to_b.mean_max_cosine == pytest.approx(1.0, abs=1e-6)


def test_compare_hook_z_saelens_and_scratch(tiny_model, tokens):
    hook = "blocks.1.attn.hook_z"  # [batch, pos, 4 heads, 16]; SAEs see 64 flat values
    sae = SAELensJumpReLUSAE(JumpReLUSAEConfig(d_in=64, d_sae=96, reshape_activations="hook_z"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(64, 96, generator=torch.Generator().manual_seed(6)) * 0.3)
        sae.W_dec.copy_(sae.W_enc.T * 0.5)
        sae.threshold.fill_(0.1)
    sae.cfg.metadata.hook_name = hook
    scratch = JumpReLUSAE.from_tensors(
        {key: getattr(sae, key).detach() for key in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")},
        hook_name=hook,
    )

    result = compare_saes(tiny_model, sae, scratch, None, tokens, special_ids=SPECIAL)

    assert result.hook_name == hook
    assert result.a.metrics["n_tokens"] > 0
    for key, value in result.a.metrics.items():
        assert result.b.metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert sae.cfg.reshape_activations == "hook_z"


def test_compare_differences_are_b_minus_a(tiny_model, tokens):
    a, b = make_sae(seed=0), make_sae(d_sae=96, seed=5)

    result = compare_saes(tiny_model, a, b, HOOK, tokens, special_ids=SPECIAL)

    differences = result.differences()
    for key in DIFFERENCE_KEYS:
        assert differences[key] == pytest.approx(result.b.metrics[key] - result.a.metrics[key]), key
    assert differences["l0"] != 0.0
    assert differences["ce_loss_clean"] == 0.0
    assert result.a.metrics["dead_fraction"] == result.a.metrics["n_dead"] / 128
    assert result.b.d_sae == 96


def test_compare_to_dict_keys(tiny_model, tokens):
    result = compare_saes(tiny_model, make_sae(), make_sae(seed=2), HOOK, tokens, special_ids=SPECIAL,
                          sources=("path/a", None))

    report = result.to_dict()

    assert set(report) == {"gsx_comparison_version", "model", "hook_name", "a", "b", "difference_b_minus_a",
                           "decoder_matching", "tokens", "versions"}
    assert set(report["a"]) == {"name", "source", "kind", "hook_name", "d_in", "d_sae", "metrics"}
    assert (report["a"]["source"], report["b"]["source"]) == ("path/a", None)
    assert set(report["a"]["metrics"]) == {
        "n_tokens", "l0", "fvu", "explained_variance", "mse", "cosine_similarity", "relative_reconstruction_bias",
        "n_dead", "dead_fraction", "n_dense", "n_loss_tokens", "ce_loss_clean", "ce_loss_spliced",
        "ce_loss_zero_ablated", "ce_loss_delta", "ce_loss_recovered", "kl_div_spliced",
    }
    assert set(report["difference_b_minus_a"]) == set(DIFFERENCE_KEYS)
    assert set(report["decoder_matching"]) == {"block_size", "thresholds", "a_to_b", "b_to_a"}
    assert set(report["decoder_matching"]["a_to_b"]) == {
        "n_latents", "n_zero_norm", "mean_max_cosine", "median_max_cosine", "fraction_above",
    }
    assert set(report["decoder_matching"]["b_to_a"]["fraction_above"]) == {"0.7", "0.9"}
    assert report["tokens"] == {"n_sequences": 4, "context_size": tokens.shape[1],
                                "n_tokens": report["a"]["metrics"]["n_tokens"],
                                "n_loss_tokens": report["a"]["metrics"]["n_loss_tokens"],
                                "include_special_tokens": False}
    assert report["versions"]["sae-lens"] == "6.54.12"
    json.dumps(report, allow_nan=False)


def test_compare_different_hooks_raise(tiny_model, tokens):
    a, b = make_sae(), make_sae(hook_name="blocks.0.hook_resid_post")

    with pytest.raises(ComparisonError, match=r"A reads 'blocks.1.hook_resid_post' but B reads 'blocks.0.hook_resid_post'"):
        compare_saes(tiny_model, a, b, None, tokens, special_ids=SPECIAL)


def test_compare_different_d_in_raise(tiny_model, tokens):
    a, b = make_sae(), make_sae(d_in=32)

    with pytest.raises(ComparisonError, match=r"A has d_in 64 but B has d_in 32"):
        compare_saes(tiny_model, a, b, None, tokens, special_ids=SPECIAL)


def test_compare_hook_argument_conflict_raise(tiny_model, tokens):
    with pytest.raises(ComparisonError, match=r"hook_name='blocks.0.hook_resid_post'.*A reads 'blocks.1"):
        compare_saes(tiny_model, make_sae(), make_sae(), "blocks.0.hook_resid_post", tokens, special_ids=SPECIAL)


def test_compare_missing_hook_raise():
    a, b = make_sae(hook_name=None), make_sae(hook_name=None)

    with pytest.raises(ComparisonError, match="neither A nor B records the hook"):
        check_comparable(a, b)
    assert check_comparable(a, b, HOOK) == HOOK
    assert check_comparable(a, make_sae()) == HOOK


def test_compare_transcoder_raise():
    transcoder = JumpReLUSAE(64, 32, d_out=48, hook_name=HOOK, hook_name_out="blocks.1.hook_mlp_out")

    with pytest.raises(ComparisonError, match="B: it is a transcoder"):
        check_comparable(make_sae(), transcoder)


def test_compare_hook_missing_in_model_raise(tiny_model, tokens):
    hook = "blocks.7.hook_resid_post"
    with pytest.raises(ComparisonError, match="has no hook 'blocks.7.hook_resid_post'"):
        compare_saes(tiny_model, make_sae(hook_name=hook), make_sae(hook_name=hook), None, tokens, special_ids=SPECIAL)


def test_compare_model_width_mismatch_raise(tiny_model, tokens):
    with pytest.raises(ComparisonError, match="d_in 32 at 'blocks.1.hook_resid_post'.*has 64 dimensions"):
        compare_saes(tiny_model, make_sae(d_in=32), make_sae(d_in=32), None, tokens, special_ids=SPECIAL)


def test_write_comparison_report(tiny_model, tokens, tmp_path):
    result = compare_saes(tiny_model, make_sae(), make_sae(seed=3), HOOK, tokens, special_ids=SPECIAL,
                          names=("first", "second"))

    md_path, json_path = write_comparison_report(result, tmp_path / "new" / "folder", stem="cmp")

    assert md_path == tmp_path / "new" / "folder" / "cmp.md"
    assert json_path == tmp_path / "new" / "folder" / "cmp.json"
    report = json.loads(json_path.read_text(), parse_constant=lambda name: pytest.fail(f"non-strict JSON {name}"))
    assert report == json.loads(json.dumps(result.to_dict()))
    markdown = md_path.read_text()
    assert "| metric | first | second | second − first |" in markdown
    assert "| first -> second |" in markdown
    assert sorted(p.name for p in json_path.parent.iterdir()) == ["cmp.json", "cmp.md"]


# ---------------------------------------------------------------------------
# Command line


@pytest.fixture(scope="module")
def sae_folders(tmp_path_factory):
    """A SAELens-format SAE and a gsx scratch SAE at the tiny model's blocks.1.hook_resid_post."""
    root = tmp_path_factory.mktemp("saes")
    make_sae(seed=0).save_model(root / "saelens_sae")
    scratch_from_saelens(make_sae(d_sae=96, seed=7)).save(root / "scratch_sae")
    make_sae(seed=8, hook_name="blocks.0.hook_resid_post").save_model(root / "layer0_sae")
    return root


def test_cli_writes_report(sae_folders, tmp_path, capsys):
    out = tmp_path / "out"

    status = main([str(sae_folders / "saelens_sae"), str(sae_folders / "scratch_sae"), *TINY_RECIPE,
                   "--n-sequences", "4", "--out", str(out)])

    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == ["comparison.json", "comparison.md"]
    report = json.loads((out / "comparison.json").read_text())
    assert (report["a"]["kind"], report["b"]["kind"]) == ("saelens", "gsx-scratch")
    assert (report["a"]["name"], report["b"]["name"]) == ("saelens_sae", "scratch_sae")
    assert report["a"]["source"] == str(sae_folders / "saelens_sae")
    assert (report["a"]["d_sae"], report["b"]["d_sae"]) == (128, 96)
    assert report["hook_name"] == HOOK
    assert report["model"] == "gsx/random-tiny"
    assert report["tokens"]["n_sequences"] == 4
    assert report["tokens"]["context_size"] == 64
    assert report["a"]["metrics"]["ce_loss_clean"] == report["b"]["metrics"]["ce_loss_clean"]
    printed = capsys.readouterr().out
    assert "scratch_sae - saelens_sae" in printed
    assert "saelens_sae -> scratch_sae" in printed
    assert str(out / "comparison.json") in printed


def test_cli_default_out_dir(sae_folders, tmp_path):
    status = main([str(sae_folders / "scratch_sae"), str(sae_folders / "scratch_sae"), *TINY_RECIPE,
                   "--n-sequences", "2", "--set", f"run.output_dir={tmp_path}"])

    assert status == 0
    folder = tmp_path / "compare-scratch_sae-A-vs-scratch_sae-B"
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]
    report = json.loads((folder / "comparison.json").read_text())
    assert report["difference_b_minus_a"]["ce_loss_delta"] == 0.0
    assert report["decoder_matching"]["a_to_b"]["fraction_above"]["0.9"] == 1.0


def test_cli_different_hooks_exit_2(sae_folders, tmp_path, capsys):
    status = main([str(sae_folders / "saelens_sae"), str(sae_folders / "layer0_sae"), *TINY_RECIPE,
                   "--set", f"run.output_dir={tmp_path}"])

    assert status == 2
    error = capsys.readouterr().err
    assert "'blocks.1.hook_resid_post'" in error
    assert "'blocks.0.hook_resid_post'" in error
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_recipe_key_exit_2(sae_folders, tmp_path, capsys):
    status = main([str(sae_folders / "saelens_sae"), str(sae_folders / "scratch_sae"), *TINY_RECIPE,
                   "--set", "eval.batch_sise=4", "--out", str(tmp_path / "out")])

    assert status == 2
    assert "eval.batch_sise" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_out_is_file_exit_2(sae_folders, tmp_path, capsys):
    existing = tmp_path / "report.txt"
    existing.write_text("keep me")

    status = main([str(sae_folders / "saelens_sae"), str(sae_folders / "scratch_sae"), *TINY_RECIPE,
                   "--out", str(existing)])

    assert status == 2
    assert str(existing) in capsys.readouterr().err
    assert existing.read_text() == "keep me"


def test_cli_missing_path_exit_2(sae_folders, tmp_path):
    missing = tmp_path / "no_such_sae"
    out = tmp_path / "out"

    completed = subprocess.run(
        [sys.executable, "-m", "gsx.compare", str(missing), str(sae_folders / "scratch_sae"), "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )

    assert completed.returncode == 2
    assert str(missing) in completed.stderr
    assert "failed to load SAE A" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert completed.stdout == ""
    assert not out.exists()


def test_cli_n_sequences_must_be_positive(sae_folders, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(sae_folders / "saelens_sae"), str(sae_folders / "scratch_sae"), "--n-sequences", "0"])

    assert exit_info.value.code == 2
    assert "--n-sequences: invalid value 0" in capsys.readouterr().err


def test_display_names_disambiguate_same_folder_name(tmp_path):
    from gsx.loading import load_sae

    make_sae().save_model(tmp_path / "run_x" / "sae")
    make_sae().save_model(tmp_path / "run_y" / "sae")
    make_sae().save_model(tmp_path / "run_y" / "other")

    same_name = display_names(load_sae(tmp_path / "run_x" / "sae"), load_sae(tmp_path / "run_y" / "sae"))
    different = display_names(load_sae(tmp_path / "run_x" / "sae"), load_sae(tmp_path / "run_y" / "other"))

    assert same_name == ("run_x-sae", "run_y-sae")
    assert different == ("sae", "other")


# ---------------------------------------------------------------------------
# Real model


@pytest.mark.gemma
def test_cli_gemma_identity_vs_random(tmp_path):
    """On Gemma 3 270M, an SAE that reconstructs exactly leaves the CE loss unchanged and a random one does not."""
    hook, d_in = "blocks.5.hook_resid_post", 640
    eye = torch.eye(d_in)
    # Latents relu(x) and relu(-x), decoded by +I and -I: x_hat = x exactly.
    identity = SAELensJumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=2 * d_in))
    with torch.no_grad():
        identity.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        identity.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        identity.b_enc.zero_()
        identity.b_dec.zero_()
        identity.threshold.zero_()
    identity.cfg.metadata.hook_name = hook
    identity.save_model(tmp_path / "identity")
    generator = torch.Generator().manual_seed(0)
    random_sae = JumpReLUSAE.from_tensors(
        {
            "W_enc": torch.randn(d_in, 2 * d_in, generator=generator) * 0.05,
            "b_enc": torch.zeros(2 * d_in),
            "W_dec": torch.randn(2 * d_in, d_in, generator=generator) * 0.05,
            "b_dec": torch.zeros(d_in),
            "threshold": torch.full((2 * d_in,), 0.1),
        },
        hook_name=hook,
    )
    random_sae.save(tmp_path / "random")
    out = tmp_path / "out"

    status = main([str(tmp_path / "identity"), str(tmp_path / "random"), "--n-sequences", "2", "--out", str(out)])

    assert status == 0
    report = json.loads((out / "comparison.json").read_text())
    exact, noisy = report["a"]["metrics"], report["b"]["metrics"]
    assert report["model"].endswith("gemma-3-270m")
    assert report["tokens"]["n_sequences"] == 2
    assert exact["fvu"] < 1e-8
    assert abs(exact["ce_loss_delta"]) < 1e-3
    assert exact["kl_div_spliced"] < 1e-4
    assert noisy["ce_loss_delta"] > 0.1
    assert report["difference_b_minus_a"]["ce_loss_delta"] > 0.1
    assert report["decoder_matching"]["a_to_b"]["fraction_above"]["0.7"] == 0.0
    assert report["decoder_matching"]["b_to_a"]["fraction_above"]["0.7"] == 0.0
