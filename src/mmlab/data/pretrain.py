"""Pretraining data: a corpus tokenized once into a cached token file, and random-window batches.

The token file is a flat array of ids (uint16 when the vocabulary fits, else uint32), read through
``numpy.memmap``. Its name is a cache key: sha256 of the corpus text + the tokenizer's fingerprint,
so a changed corpus or tokenizer can never reuse stale tokens. Documents are joined with the
end-of-text token, so the model learns where a story ends.

The last ``val_fraction`` of the tokens is the validation split (as nanoGPT does).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmlab.data.corpus import Corpus
from mmlab.data.registry import DataError, cache_dir
from mmlab.tokenizer.base import ENDOFTEXT, Tokenizer, fingerprint


def tokenize_corpus(corpus: Corpus, tokenizer: Tokenizer, cache: Path | None = None) -> np.ndarray:
    """Token ids of the whole corpus (memmapped from the cache; built on first use)."""
    eot = tokenizer.token_to_id(ENDOFTEXT)
    if corpus.is_documents and eot is None:
        raise DataError(f"{corpus.source}: a document corpus needs a tokenizer with the {ENDOFTEXT} token")
    key = f"{corpus.sha256()[:20]}-{fingerprint(tokenizer)[:20]}"
    folder = (cache or cache_dir()) / "tokens"
    path, meta_path = folder / f"{key}.bin", folder / f"{key}.json"
    if path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if path.stat().st_size == meta["n_tokens"] * np.dtype(meta["dtype"]).itemsize:
                return np.memmap(path, dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"],))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            pass
        # a damaged cache entry (truncated file, torn metadata): rebuild it below

    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    encode_batch = getattr(tokenizer, "encode_batch", None)
    docs = corpus.documents
    encoded = encode_batch(docs) if encode_batch else [tokenizer.encode(d) for d in docs]
    pieces = []
    for ids in encoded:
        pieces.append(np.asarray(ids, dtype=dtype))
        if corpus.is_documents:
            pieces.append(np.asarray([eot], dtype=dtype))
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)
    if tokens.size == 0:
        raise DataError(f"{corpus.source}: the corpus tokenized to zero tokens")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tokens-")
    with os.fdopen(fd, "wb") as f:
        tokens.tofile(f)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written token file under the key
    meta = {"dtype": np.dtype(dtype).name, "n_tokens": int(tokens.size), "corpus": corpus.name,
            "documents": len(corpus.documents), "vocab_size": tokenizer.vocab_size}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".meta-")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(meta))
    os.replace(tmp, meta_path)
    return np.memmap(path, dtype=dtype, mode="r", shape=(tokens.size,))


@dataclass
class PretrainData:
    """Train and val token arrays; random windows of ``block_size + 1`` tokens make (x, y) pairs."""

    train: torch.Tensor  # (N_train,) int32 (4 bytes per token in RAM; batches are cast to int64)
    val: torch.Tensor

    @classmethod
    def from_tokens(
        cls, tokens: np.ndarray, val_fraction: float = 0.1, block_size: int = 64, source: str = "the corpus"
    ) -> PretrainData:
        n = len(tokens)
        n_val = int(n * val_fraction)
        if n - n_val < block_size + 2 or (val_fraction > 0 and n_val < block_size + 2):
            need = int((block_size + 2) / max(val_fraction, 1e-9)) + 1 if val_fraction > 0 else block_size + 2
            raise DataError(
                f"{source} has {n:,} tokens, too few for block_size={block_size} with val_fraction={val_fraction} "
                f"(each split needs block_size + 2 tokens: about {need:,} in all); use a smaller --block-size "
                "or a larger corpus"
            )
        all_tokens = torch.from_numpy(np.asarray(tokens, dtype=np.int32))
        return cls(train=all_tokens[: n - n_val], val=all_tokens[n - n_val:])

    def get_batch(
        self, split: str, batch_size: int, block_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y: (batch_size, block_size); y is x shifted by one token."""
        data = self.train if split == "train" else self.val
        starts = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
        windows = data[starts[:, None] + torch.arange(block_size + 1)].long()  # one gather, no Python loop
        return windows[:, :-1], windows[:, 1:]

    def eval_batches(
        self, split: str, n_batches: int, batch_size: int, block_size: int, seed: int = 1234
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed set of batches (same seed -> same windows), so evaluations are comparable over time."""
        g = torch.Generator().manual_seed(seed)
        return [self.get_batch(split, batch_size, block_size, g) for _ in range(n_batches)]
