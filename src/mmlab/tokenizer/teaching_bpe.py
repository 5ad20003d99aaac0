"""Byte-level BPE written out in plain Python: the merge loop you can read, step through and time.

The library's production tokenizer trains with Hugging Face ``tokenizers`` (Rust). This one does the
same algorithm in about a hundred lines, for the tokenization lesson:

1. Split the text into chunks (words with their leading space, numbers, punctuation, whitespace), so
   a merge never crosses a word boundary.
2. Start from bytes: every chunk is a list of ids 0..255 (its UTF-8 bytes), so any text can be encoded.
3. Repeat until the vocabulary is big enough: count every adjacent pair of ids over all chunks
   (weighted by how often the chunk occurs), take the most frequent pair, give it a new id, and
   replace the pair everywhere.
4. Encoding applies the learned merges to new text in the order they were learned.

Special tokens (MiniMind's ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``) get the ids after the
learned merges and are never produced by merging bytes.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from mmlab.tokenizer.base import SPECIAL_TOKENS, TokenizerError

TEACHING_BPE_FILE = "teaching_bpe.json"

# GPT-2's pre-tokenizer in the standard library's `re` (no \p{L}; [^\W\d_] is "a Unicode letter"):
# contractions, words with an optional leading space, numbers, runs of other symbols, whitespace, and
# a last resort of one character, so every string splits into chunks that join back to it.
CHUNK = re.compile(r"""'(?:s|t|re|ve|m|ll|d)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+|[\s\S]""")


def chunks(text: str) -> list[str]:
    """The pre-tokenized pieces of ``text``; they concatenate back to ``text`` exactly."""
    return CHUNK.findall(text)


def pair_counts(words: dict[tuple[int, ...], int]) -> Counter:
    """How often each adjacent pair of ids occurs, over all chunks weighted by their counts."""
    counts: Counter = Counter()
    for ids, n in words.items():
        for pair in itertools.pairwise(ids):
            counts[pair] += n
    return counts


def merge(ids: tuple[int, ...], pair: tuple[int, int], new_id: int) -> tuple[int, ...]:
    """Replace every occurrence of ``pair`` in ``ids`` (left to right, non-overlapping) by ``new_id``."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return tuple(out)


class TeachingBPE:
    """A byte-level BPE tokenizer: 256 byte tokens, the learned merges, then the special tokens."""

    def __init__(self, merges: list[tuple[int, int]], special_tokens: Iterable[str] = SPECIAL_TOKENS):
        self.merges = [tuple(m) for m in merges]
        self.ranks = {pair: 256 + i for i, pair in enumerate(self.merges)}
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
        for pair, new_id in self.ranks.items():
            self.vocab[new_id] = self.vocab[pair[0]] + self.vocab[pair[1]]
        self.special = {tok: 256 + len(self.merges) + i for i, tok in enumerate(special_tokens)}
        self._special_re = re.compile("(" + "|".join(map(re.escape, self.special)) + ")") if self.special else None

    # ---- training -------------------------------------------------------------------------------
    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens: Iterable[str] = SPECIAL_TOKENS,
              verbose: bool = False) -> TeachingBPE:
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``."""
        special_tokens = tuple(special_tokens)
        n_merges = vocab_size - 256 - len(special_tokens)
        if n_merges < 0:
            raise TokenizerError(f"vocab_size={vocab_size} is below 256 bytes + {len(special_tokens)} special tokens")
        if not text:
            raise TokenizerError("cannot train a tokenizer on empty text")
        # special tokens are not text to learn from: drop them before counting
        for tok in special_tokens:
            text = text.replace(tok, " ")
        words = Counter(tuple(c.encode("utf-8")) for c in chunks(text))
        merges: list[tuple[int, int]] = []
        for step in range(n_merges):
            counts = pair_counts(words)
            if not counts:
                break  # every chunk is a single token: nothing left to merge
            # the most frequent pair; ties go to the smallest pair, so training is deterministic
            pair = min(counts, key=lambda p: (-counts[p], p))
            new_id = 256 + step
            merges.append(pair)
            words = Counter({merge(ids, pair, new_id) if new_id not in ids else ids: n for ids, n in words.items()})
            if verbose:
                tok = cls(merges, ()).vocab[new_id]
                print(f"merge {step + 1}: {pair} -> {new_id} {tok!r} ({counts[pair]} times)")
        return cls(merges, special_tokens)

    # ---- the Tokenizer protocol ---------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return 256 + len(self.merges) + len(self.special)

    def _encode_chunk(self, data: bytes) -> list[int]:
        ids = list(data)
        while len(ids) > 1:
            # the pair that was learned first among those present
            pair = min(itertools.pairwise(ids), key=lambda p: self.ranks.get(p, float("inf")))
            if pair not in self.ranks:
                break
            ids = list(merge(tuple(ids), pair, self.ranks[pair]))
        return ids

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        parts = self._special_re.split(text) if (allow_special and self._special_re) else [text]
        out: list[int] = []
        for part in parts:
            if part in self.special and allow_special:
                out.append(self.special[part])
                continue
            for c in chunks(part):
                out.extend(self._encode_chunk(c.encode("utf-8")))
        return out

    def decode(self, ids: list[int]) -> str:
        inverse = {i: tok.encode() for tok, i in self.special.items()}
        try:
            data = b"".join(inverse[i] if i in inverse else self.vocab[i] for i in ids)
        except KeyError as e:
            raise TokenizerError(f"token id {e.args[0]} is not in the vocabulary (size {self.vocab_size})") from None
        return data.decode("utf-8", errors="replace")

    def token_to_id(self, token: str) -> int | None:
        if token in self.special:
            return self.special[token]
        data = token.encode("utf-8")
        return next((i for i, b in self.vocab.items() if b == data), None)

    def to_json(self) -> str:
        return json.dumps({"type": "teaching-bpe", "merges": self.merges, "special_tokens": list(self.special)})

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / TEACHING_BPE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> TeachingBPE:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if data.get("type") != "teaching-bpe":
                raise ValueError("not a teaching-bpe file")
            return cls([tuple(m) for m in data["merges"]], data["special_tokens"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TokenizerError(f"{path}: cannot read a teaching BPE tokenizer ({e})") from None
