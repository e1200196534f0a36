"""The TransformerLens hook of each Gemma Scope 2 site carries the tensor its Hugging Face hook point names."""

from __future__ import annotations

import pytest
import torch

from gsx.loading import hook_site, hook_size

LAYERS = (5, 12)


def _assert_same(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    assert actual.shape == expected.shape, name
    # The residual stream of Gemma 3 reaches ~4e4, so compare relative to the largest entry.
    error = float((actual - expected).abs().max())
    scale = float(expected.abs().max())
    assert error <= 1e-5 * scale + 1e-4, f"{name}: max error {error:.3g} at scale {scale:.3g}"


@pytest.mark.gemma
def test_sites_match_hf_hook_points(gemma_model, monkeypatch):
    from transformers import AutoModelForCausalLM

    from gsx.models import packaged_model_folder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = gemma_model
    hf_model = AutoModelForCausalLM.from_pretrained(str(packaged_model_folder()), dtype=torch.float32).eval()

    # Hugging Face hook points, as Gemma Scope 2 config.json names them: module output or input.
    caught: dict[str, torch.Tensor] = {}
    handles = []
    for layer in LAYERS:
        block = hf_model.model.layers[layer]

        def keep(name, use_input=False):
            def hook(module, inputs, output):
                if use_input:
                    caught[name] = inputs[0]
                elif isinstance(output, tuple):
                    caught[name] = output[0]
                else:
                    caught[name] = output

            return hook

        prefix = f"model.layers.{layer}"
        handles += [
            block.register_forward_hook(keep(f"{prefix}.output")),
            block.self_attn.o_proj.register_forward_hook(keep(f"{prefix}.self_attn.o_proj.input", use_input=True)),
            block.pre_feedforward_layernorm.register_forward_hook(keep(f"{prefix}.pre_feedforward_layernorm.output")),
            block.post_feedforward_layernorm.register_forward_hook(keep(f"{prefix}.post_feedforward_layernorm.output")),
        ]

    tokens = model.to_tokens("The quick brown fox jumps over the lazy dog. Paris is the capital of")
    with torch.no_grad():
        hf_model(tokens)
        _, cache = model.run_with_cache(tokens)
    for handle in handles:
        handle.remove()

    for layer in LAYERS:
        prefix = f"model.layers.{layer}"
        resid, attn, mlp = hook_site("resid_post", layer), hook_site("attn_out", layer), hook_site("mlp_out", layer)
        transcoder = hook_site("transcoder", layer)

        _assert_same(cache[resid.hook_name], caught[f"{prefix}.output"], resid.hook_name)
        _assert_same(cache[attn.hook_name].flatten(-2), caught[f"{prefix}.self_attn.o_proj.input"], attn.hook_name)
        _assert_same(cache[mlp.hook_name], caught[f"{prefix}.post_feedforward_layernorm.output"], mlp.hook_name)
        _assert_same(cache[transcoder.hook_name], caught[f"{prefix}.pre_feedforward_layernorm.output"], "transcoder in")
        _assert_same(
            cache[transcoder.hook_name_out], caught[f"{prefix}.post_feedforward_layernorm.output"], "transcoder out"
        )
        # The norm's own hook fires before its weight, so it is not the transcoder input.
        normalized = cache[f"blocks.{layer}.ln2.hook_normalized"]
        assert float((normalized - caught[f"{prefix}.pre_feedforward_layernorm.output"]).abs().max()) > 1.0

        assert hook_size(model, attn.hook_name) == caught[f"{prefix}.self_attn.o_proj.input"].shape[-1] == 1024
        assert hook_size(model, transcoder.hook_name) == hook_size(model, resid.hook_name) == 640
