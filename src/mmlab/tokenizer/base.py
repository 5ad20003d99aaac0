"""What every tokenizer offers, and loading one from a checkpoint folder by the file it holds."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol, runtime_checkable

from mmlab.errors import MMLabError

# MiniMind's special tokens, in id order 0, 1, 2.
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

CHAR_FILE = "char_vocab.json"
BPE_FILE = "tokenizer.json"


class TokenizerError(MMLabError):
    """Text or ids a tokenizer cannot handle, or a tokenizer file that cannot be read."""


@runtime_checkable
class Tokenizer(Protocol):
    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, allow_special: bool = True) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_to_id(self, token: str) -> int | None: ...

    def save(self, directory: str | Path) -> Path: ...

    def to_json(self) -> str: ...


def fingerprint(tokenizer: Tokenizer) -> str:
    """sha256 of the tokenizer's serialised form: a cache key for tokenized corpora."""
    return hashlib.sha256(tokenizer.to_json().encode()).hexdigest()


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load from a folder (holding tokenizer.json, char_vocab.json or teaching_bpe.json) or from such a file."""
    from mmlab.tokenizer.bpe import BPETokenizer
    from mmlab.tokenizer.char import CharTokenizer
    from mmlab.tokenizer.teaching_bpe import TEACHING_BPE_FILE, TeachingBPE

    path = Path(path)
    if path.is_dir():
        for name, cls in ((BPE_FILE, BPETokenizer), (CHAR_FILE, CharTokenizer), (TEACHING_BPE_FILE, TeachingBPE)):
            if (path / name).is_file():
                return cls.load(path / name)
        raise TokenizerError(f"{path}: no {BPE_FILE}, {CHAR_FILE} or {TEACHING_BPE_FILE} in this folder")
    if path.name == CHAR_FILE:
        return CharTokenizer.load(path)
    if path.name == TEACHING_BPE_FILE:
        return TeachingBPE.load(path)
    if path.is_file():
        return BPETokenizer.load(path)
    raise TokenizerError(f"tokenizer not found: {path}")
