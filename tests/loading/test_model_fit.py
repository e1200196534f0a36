"""SAEs spliced into the tiny model at the hooks their site names, and checks against the model's sizes."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer

from gsx.loading import SAEFormatError, load_sae, splice_hooks

from .hub_layout import (
    CASE_IDS,
    GEMMA_SCOPE_2,
    GEMMA_SCOPE_2_CASES,
    add_to_hf_cache,
    gemma_scope_2_config,
    gemma_scope_2_files,
    install_gemma_scope_2,
    random_tensors,
    reference_forward,
)

TEXT = "The cat sat on the mat. Gemma Scope!"


def test_mlp_hook_in_is_normalised_with_weight(tiny_model_random_norms):
    """blocks.L.mlp.hook_in carries ln2(resid_mid) after the norm weight, unlike ln2.hook_normalized."""
    model = tiny_model_random_norms
    tokens = model.to_tokens(TEXT)
    _, cache = model.run_with_cache(tokens)

    normalized = cache["blocks.0.ln2.hook_normalized"]
    with_weight = normalized * model.blocks[0].ln2.w

    torch.testing.assert_close(cache["blocks.0.mlp.hook_in"], with_weight)
    assert not torch.allclose(cache["blocks.0.mlp.hook_in"], normalized, atol=1e-3)
    assert not torch.allclose(cache["blocks.0.mlp.hook_in"], cache["blocks.0.hook_resid_mid"], atol=1e-3)


def _expected_input(model, cache, case) -> torch.Tensor:
    """The activation each site's SAE must read, spelled out without the loader's hook names."""
    site, layer = case[3], case[4]
    if site == "resid_post":
        return cache[f"blocks.{layer}.hook_resid_post"]
    if site == "attn_out":
        # Input of W_O: the per-head attention outputs z, heads flattened head-major.
        return cache[f"blocks.{layer}.attn.hook_z"].flatten(-2)
    if site == "mlp_out":
        return cache[f"blocks.{layer}.hook_mlp_out"]
    # Transcoder: output of the pre-feedforward RMSNorm, weight included.
    return cache[f"blocks.{layer}.ln2.hook_normalized"] * model.blocks[layer].ln2.w


def _reference_logits(model, tokens, case, tensors, keep=None):
    """Logits with the site's output hook replaced by the hand-written forward pass."""
    _, cache = model.run_with_cache(tokens)
    _, reference_output = reference_forward(tensors, _expected_input(model, cache, case))

    def replace(activation, hook):
        output = reference_output.reshape(activation.shape)
        if keep is None:
            return output
        mask = keep.reshape(*keep.shape, *([1] * (activation.dim() - 2)))
        return torch.where(mask, output, activation)

    return model.run_with_hooks(tokens, fwd_hooks=[(case[8], replace)])


@pytest.mark.parametrize("case", GEMMA_SCOPE_2_CASES, ids=CASE_IDS)
def test_splice_hooks_match_reference(hf_cache, tiny_model_random_norms, case):
    model = tiny_model_random_norms
    tensors = install_gemma_scope_2(hf_cache, case, seed=21)
    loaded = load_sae(case[0], case[1], model=model)
    tokens = model.to_tokens(TEXT)

    with torch.no_grad():
        clean_logits = model(tokens)
        expected_logits = _reference_logits(model, tokens, case, tensors)
        spliced_logits = model.run_with_hooks(tokens, fwd_hooks=splice_hooks(loaded))

    assert not torch.allclose(expected_logits, clean_logits, atol=1e-3)
    torch.testing.assert_close(spliced_logits, expected_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", GEMMA_SCOPE_2_CASES[:4], ids=CASE_IDS[:4])
def test_run_with_saes_matches_reference(hf_cache, tiny_model_random_norms, case):
    """SAELens's own splicing agrees for every kind but the affine transcoder (see gsx.loading.splicing)."""
    model = tiny_model_random_norms
    tensors = install_gemma_scope_2(hf_cache, case, seed=22)
    loaded = load_sae(case[0], case[1], model=model)
    tokens = model.to_tokens(TEXT)

    with torch.no_grad():
        expected_logits = _reference_logits(model, tokens, case, tensors)
        spliced_logits = model.run_with_saes(tokens, saes=[loaded.sae])

    torch.testing.assert_close(spliced_logits, expected_logits, rtol=1e-4, atol=1e-4)


def test_splice_hooks_keep_mask(hf_cache, tiny_model_random_norms):
    model = tiny_model_random_norms
    case = GEMMA_SCOPE_2_CASES[4]
    tensors = install_gemma_scope_2(hf_cache, case, seed=23)
    loaded = load_sae(case[0], case[1])
    tokens = model.to_tokens(TEXT)
    keep = torch.ones_like(tokens, dtype=torch.bool)
    keep[:, 0] = False

    with torch.no_grad():
        expected_logits = _reference_logits(model, tokens, case, tensors, keep=keep)
        spliced_logits = model.run_with_hooks(tokens, fwd_hooks=splice_hooks(loaded, keep=keep))
        clean_logits = model(tokens)

    torch.testing.assert_close(spliced_logits, expected_logits, rtol=1e-4, atol=1e-4)
    # Position 0 is causal-only on itself, so with its activations kept its logits are clean.
    torch.testing.assert_close(spliced_logits[:, 0], clean_logits[:, 0])


def test_d_in_mismatch_names_sizes(hf_cache, tiny_model_random_norms):
    case = GEMMA_SCOPE_2_CASES[0]
    install_gemma_scope_2(hf_cache, case, d_in=32)

    with pytest.raises(SAEFormatError) as info:
        load_sae(case[0], case[1], model=tiny_model_random_norms)

    message = str(info.value)
    assert "reads 32 dimensions at blocks.1.hook_resid_post" in message
    assert "the model's activations there have 64" in message
    assert "google/gemma-3-270m" in message


def test_attn_d_in_checked_against_heads(hf_cache, tiny_model_random_norms):
    case = GEMMA_SCOPE_2_CASES[1]
    install_gemma_scope_2(hf_cache, case, d_in=48)

    with pytest.raises(SAEFormatError, match="reads 48 dimensions at blocks.0.attn.hook_z.*have 64"):
        load_sae(case[0], case[1], model=tiny_model_random_norms)


def test_transcoder_d_out_mismatch(hf_cache, tiny_model_random_norms):
    case = GEMMA_SCOPE_2_CASES[3]
    tensors = random_tensors(64, 16, d_out=40)
    config = gemma_scope_2_config("transcoder", 0, 16)
    add_to_hf_cache(hf_cache, GEMMA_SCOPE_2, gemma_scope_2_files(case[2], tensors, config))

    loaded = load_sae(case[0], case[1])
    assert (loaded.d_in, loaded.d_out) == (64, 40)
    with pytest.raises(SAEFormatError, match="writes 40 dimensions at blocks.0.hook_mlp_out.*have 64"):
        load_sae(case[0], case[1], model=tiny_model_random_norms)


def test_hook_missing_from_model(hf_cache, tiny_model_random_norms):
    release, sae_id = "gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium"
    tensors = random_tensors(64, 16)
    folder = "resid_post/layer_12_width_16k_l0_medium"
    config = gemma_scope_2_config("resid_post", 12, 16)
    add_to_hf_cache(hf_cache, GEMMA_SCOPE_2, gemma_scope_2_files(folder, tensors, config))

    with pytest.raises(SAEFormatError, match=r"hook 'blocks.12.hook_resid_post', which model .* \(2 layers\)"):
        load_sae(release, sae_id, model=tiny_model_random_norms)


def test_transcoder_needs_hooked_sae_transformer(hf_cache, tiny_model_random_norms):
    case = GEMMA_SCOPE_2_CASES[3]
    install_gemma_scope_2(hf_cache, case)
    plain = HookedTransformer(tiny_model_random_norms.cfg)

    with pytest.raises(SAEFormatError, match="HookedSAETransformer adds mlp.hook_in"):
        load_sae(case[0], case[1], model=plain)
