import pytest
import torch

from gsx.models import ModelNotFoundError, ModelSpec, byte_level_tokenizer, load_model, resolve_hf_folder


def test_byte_tokenizer_round_trip():
    tokenizer = byte_level_tokenizer()
    text = "Hello, wörld"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)


def test_random_model_prepends_bos(tiny_model):
    tokens = tiny_model.to_tokens("abc")
    assert tokens.tolist() == [[2, 67, 68, 69]]
    assert tiny_model(tokens).shape == (1, 4, 259)


def test_missing_weights_name_paths_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    spec = ModelSpec(name="google/gemma-3-1b-pt", path=str(tmp_path / "model" / "gemma-3-1b-pt"))
    with pytest.raises(ModelNotFoundError) as err:
        resolve_hf_folder(spec)
    message = str(err.value)
    assert str(tmp_path / "model" / "gemma-3-1b-pt") in message
    assert "Hugging Face cache" in message
    assert "hf download google/gemma-3-1b-pt --local-dir" in message


def test_local_folder_found(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_hf_folder(ModelSpec(name="google/gemma-3-1b-pt", source="local", path=str(tmp_path))) == tmp_path


@pytest.mark.gemma
def test_gemma_matches_hf_model(gemma_model):
    from transformers import AutoModelForCausalLM

    from gsx.models import packaged_model_folder

    hf = AutoModelForCausalLM.from_pretrained(str(packaged_model_folder()), dtype=torch.float32)
    tokens = gemma_model.to_tokens("The capital of France is Paris, and the capital of Italy is Rome.")
    with torch.no_grad():
        tl_logits = gemma_model(tokens)
        hf_out = hf(tokens, output_hidden_states=True)
        _, cache = gemma_model.run_with_cache(tokens, names_filter="blocks.5.hook_resid_post")
    assert gemma_model.cfg.n_layers == 18
    assert gemma_model.cfg.d_model == 640
    torch.testing.assert_close(tl_logits, hf_out.logits, atol=1e-3, rtol=1e-4)
    # blocks.L.hook_resid_post is the input to block L+1, which HF reports as hidden_states[L + 1].
    torch.testing.assert_close(cache["blocks.5.hook_resid_post"], hf_out.hidden_states[6], atol=1e-3, rtol=1e-4)
    # The model predicts real text: "Rome" is the top next token after "...capital of Italy is".
    prefix = gemma_model.to_tokens("The capital of France is Paris, and the capital of Italy is")
    top = gemma_model(prefix)[0, -1].argmax()
    assert gemma_model.tokenizer.decode(top).strip() == "Rome"
