import json

import pytest
import torch

from gsx.data import (
    build_corpus,
    clean_documents,
    is_held_out,
    pack_sequences,
    read_bbc_news,
    read_text_files,
    special_token_ids,
)
from gsx.models import byte_level_tokenizer
from gsx.recipe import DataConfig


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer()


def test_clean_drops_short_and_duplicates():
    docs = ["one two three four", "one  two three\nfour", "tiny", "five six seven eight", "one two three four"]
    kept, duplicates = clean_documents(docs, min_words=4)
    assert kept == ["one two three four", "five six seven eight"]
    assert duplicates == 2


def test_clean_respects_max_documents():
    docs = [f"doc number {i} here" for i in range(10)]
    kept, _ = clean_documents(docs, min_words=1, max_documents=3)
    assert len(kept) == 3


def test_pack_one_bos_per_sequence(tokenizer):
    docs = ["hello world " * 20, "second document <bos> with a literal bos " * 5, "third"]
    tokens = pack_sequences(docs, tokenizer, context_size=16)
    special = torch.tensor(special_token_ids(tokenizer))
    assert tokens.shape[1] == 16
    assert (tokens[:, 0] == tokenizer.bos_token_id).all()
    assert not torch.isin(tokens[:, 1:], special).any()


def test_pack_uses_every_full_sequence(tokenizer):
    text = "abcdefghij"  # 10 byte tokens, then "\n\n" (2 tokens) as separator
    tokens = pack_sequences([text, text], tokenizer, context_size=7)
    # 24 body tokens / 6 per sequence = 4 sequences, nothing dropped
    assert tokens.shape == (4, 7)
    decoded = tokenizer.decode(tokens[0, 1:])
    assert decoded == "abcdef"


def test_pack_empty_when_text_too_short(tokenizer):
    assert pack_sequences(["ab"], tokenizer, context_size=64).shape == (0, 64)


def test_split_is_stable_and_seeded():
    docs = [f"document {i} with some words" for i in range(2000)]
    first = [is_held_out(d, 0.1, seed=1) for d in docs]
    again = [is_held_out(d, 0.1, seed=1) for d in reversed(docs)][::-1]
    other_seed = [is_held_out(d, 0.1, seed=2) for d in docs]
    assert first == again
    assert first != other_seed
    assert 0.07 < sum(first) / len(docs) < 0.13


def test_bbc_news_is_real_text():
    docs = list(read_bbc_news())
    assert len(docs) == 2225
    assert all(isinstance(d, str) for d in docs)
    kept, duplicates = clean_documents(docs, min_words=20)
    assert duplicates >= 98
    assert len(kept) + duplicates == 2225


def test_build_corpus_splits_disjoint(tokenizer):
    cfg = DataConfig(max_documents=120, context_size=32, eval_fraction=0.2)
    corpus = build_corpus(cfg, tokenizer, seed=0)
    train_rows = {tuple(r.tolist()) for r in corpus.train_tokens}
    eval_rows = {tuple(r.tolist()) for r in corpus.eval_tokens}
    assert corpus.n_documents == 120
    assert corpus.n_eval_documents > 0
    assert train_rows.isdisjoint(eval_rows)
    assert corpus.context_size == 32


def test_local_files_txt_and_jsonl(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("alpha beta gamma delta " * 30)
    with (tmp_path / "b.jsonl").open("w") as f:
        for i in range(5):
            f.write(json.dumps({"body": f"row {i} " + "epsilon zeta eta theta " * 10}) + "\n")
    docs = list(read_text_files(str(tmp_path), text_column="body"))
    assert len(docs) == 6
    corpus = build_corpus(DataConfig(corpus="files", path=str(tmp_path), text_column="body", min_words=5,
                                     context_size=16, eval_fraction=0.3), tokenizer, seed=0)
    assert corpus.n_documents == 6


def test_jsonl_missing_column_named(tmp_path):
    (tmp_path / "b.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(ValueError, match="data.text_column"):
        list(read_text_files(str(tmp_path / "b.jsonl")))


def test_files_pattern_matching_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no"):
        list(read_text_files(str(tmp_path / "*.txt")))


def test_too_little_text_is_an_error(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("just a few words here, not many at all, really")
    cfg = DataConfig(corpus="files", path=str(tmp_path), min_words=1)
    with pytest.raises(ValueError, match="usable documents"):
        build_corpus(cfg, tokenizer, seed=0)
