"""Site -> TransformerLens hook mapping, and site detection from configs and paths."""

from __future__ import annotations

import pytest

from gsx.loading.errors import SAEFormatError
from gsx.loading.sites import (
    gemma_2_model_name,
    hook_site,
    site_from_gemma_scope_1_path,
    site_from_gemma_scope_2_folder,
    site_from_hf_hook_points,
)


@pytest.mark.parametrize(
    ("site", "affine", "kind", "hook_in", "hook_out", "reshape"),
    [
        ("resid_post", False, "resid_post", "blocks.7.hook_resid_post", "blocks.7.hook_resid_post", "none"),
        ("attn_out", False, "attn_out", "blocks.7.attn.hook_z", "blocks.7.attn.hook_z", "hook_z"),
        ("mlp_out", False, "mlp_out", "blocks.7.hook_mlp_out", "blocks.7.hook_mlp_out", "none"),
        ("transcoder", False, "transcoder", "blocks.7.mlp.hook_in", "blocks.7.hook_mlp_out", "none"),
        ("transcoder", True, "affine_transcoder", "blocks.7.mlp.hook_in", "blocks.7.hook_mlp_out", "none"),
    ],
)
def test_hook_site_per_site(site, affine, kind, hook_in, hook_out, reshape):
    result = hook_site(site, 7, affine=affine)
    assert result.kind == kind
    assert result.layer == 7
    assert result.hook_name == hook_in
    assert result.hook_name_out == hook_out
    assert result.reshape_activations == reshape


def test_hook_site_embedding():
    result = hook_site("embedding", None)
    assert (result.kind, result.hook_name, result.layer) == ("embedding", "hook_embed", None)


def test_hook_site_rejects_unknown_site_and_missing_layer():
    with pytest.raises(SAEFormatError, match="unknown SAE site 'resid'"):
        hook_site("resid", 3)
    with pytest.raises(SAEFormatError, match="needs a layer"):
        hook_site("mlp_out", None)


@pytest.mark.parametrize(
    ("hook_in", "hook_out", "expected"),
    [
        ("model.layers.12.output", "model.layers.12.output", ("resid_post", 12)),
        ("model.layers.3.self_attn.o_proj.input", None, ("attn_out", 3)),
        ("model.layers.0.post_feedforward_layernorm.output", None, ("mlp_out", 0)),
        (
            "model.layers.5.pre_feedforward_layernorm.output",
            "model.layers.5.post_feedforward_layernorm.output",
            ("transcoder", 5),
        ),
        # Gemma 3 4B and larger are multimodal; their text layers sit under language_model.
        ("model.language_model.layers.17.output", None, ("resid_post", 17)),
        ("model.layers.5.pre_feedforward_layernorm.output", None, None),
        ("model.layers.5.mlp.down_proj.output", None, None),
        ("lm_head.output", None, None),
    ],
)
def test_site_from_hf_hook_points(hook_in, hook_out, expected):
    assert site_from_hf_hook_points(hook_in, hook_out) == expected


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("resid_post/layer_12_width_16k_l0_medium", ("resid_post", 12)),
        ("attn_out_all/layer_0_width_262k_l0_big", ("attn_out", 0)),
        ("/data/sae/mlp_out_all/layer_17_width_65k_l0_small", ("mlp_out", 17)),
        ("transcoder/layer_9_width_16k_l0_small_affine", ("transcoder", 9)),
        ("layer_9_width_16k_l0_small", None),
        ("/somewhere/else/layer_9_width_16k_l0_small", None),
    ],
)
def test_site_from_gemma_scope_2_folder(folder, expected):
    assert site_from_gemma_scope_2_folder(folder) == expected


@pytest.mark.parametrize(
    ("repo_or_path", "folder", "expected"),
    [
        ("google/gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71", ("resid_post", 20)),
        ("google/gemma-scope-9b-pt-att", "layer_0/width_16k/average_l0_12", ("attn_out", 0)),
        ("google/gemma-scope-2b-pt-mlp", "layer_3/width_65k/average_l0_9", ("mlp_out", 3)),
        ("google/gemma-scope-2b-pt-res", "embedding/width_4k/average_l0_6", ("embedding", None)),
        (
            "/hf/models--google--gemma-scope-2b-pt-mlp/snapshots/abc/layer_4/width_16k/average_l0_9",
            "layer_4/width_16k/average_l0_9",
            ("mlp_out", 4),
        ),
        ("google/gemma-scope-2-270m-pt", "resid_post/layer_12_width_16k_l0_medium", None),
        ("/tmp/some/folder", "layer_4/width_16k/average_l0_9", None),
    ],
)
def test_site_from_gemma_scope_1_path(repo_or_path, folder, expected):
    assert site_from_gemma_scope_1_path(repo_or_path, folder) == expected


def test_gemma_2_model_name():
    assert gemma_2_model_name("google/gemma-scope-2b-pt-res") == "gemma-2-2b"
    assert gemma_2_model_name("google/gemma-scope-9b-it-res") == "gemma-2-9b-it"
    assert gemma_2_model_name("google/gemma-scope-2-270m-pt") is None
