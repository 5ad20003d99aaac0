"""Character-level tokenizer: one id per distinct character of a corpus (TinyShakespeare has 65).

Unknown characters follow an explicit policy, because a silent choice hides data problems:
  * ``error`` (default): raise, naming the character and its position;
  * ``replace``: map to a reserved ``<unk>`` id;
  * ``skip``: drop it.
Special tokens (e.g. ``<|endoftext|>``) get ids after the characters and are matched as whole
strings in the text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from mmlab.tokenizer.base import CHAR_FILE, TokenizerError

UNK = "<unk>"
UNK_POLICIES = ("error", "replace", "skip")


class CharTokenizer:
    def __init__(self, chars: Iterable[str], special_tokens: Iterable[str] = (), unk: str = "error"):
        chars = list(chars)
        special_tokens = list(special_tokens)
        if unk not in UNK_POLICIES:
            raise TokenizerError(f"unk={unk!r} is not one of: {', '.join(UNK_POLICIES)}")
        if any(len(c) != 1 for c in chars):
            raise TokenizerError("every vocabulary entry of a char tokenizer must be one character")
        if len(set(chars)) != len(chars):
            raise TokenizerError("duplicate characters in the char vocabulary")
        if unk == "replace" and UNK not in special_tokens:
            special_tokens.append(UNK)
        if any(not s for s in special_tokens):
            raise TokenizerError("special tokens must be non-empty strings")
        if len(set(special_tokens)) != len(special_tokens):
            raise TokenizerError(f"duplicate special tokens in {special_tokens}")
        clash = sorted(set(special_tokens) & set(chars))
        if clash:
            raise TokenizerError(f"special token(s) {clash} are also ordinary characters of the vocabulary")
        self.chars, self.special_tokens, self.unk = chars, special_tokens, unk
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.stoi.update({s: len(chars) + i for i, s in enumerate(special_tokens)})
        self.itos = {i: s for s, i in self.stoi.items()}
        # longest first, so "<|im_start|>" is not read as a shorter special that prefixes it
        pattern = "|".join(re.escape(s) for s in sorted(special_tokens, key=len, reverse=True))
        self._special_re = re.compile(f"({pattern})") if special_tokens else None

    @classmethod
    def from_corpus(cls, text: str, special_tokens: Iterable[str] = (), unk: str = "error") -> CharTokenizer:
        """The vocabulary is the sorted set of characters in ``text`` (special tokens excluded)."""
        special_tokens = list(dict.fromkeys(special_tokens))  # drop repeats, keep order
        for s in special_tokens:
            text = text.replace(s, "")
        if not text:
            raise TokenizerError("cannot build a char vocabulary from an empty corpus")
        return cls(sorted(set(text)), special_tokens, unk)

    @property
    def vocab_size(self) -> int:
        return len(self.stoi)

    def token_to_id(self, token: str) -> int | None:
        return self.stoi.get(token)

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """Ids of ``text``. With ``allow_special=False`` special-token text is read character by
        character (and must then be in the vocabulary, or follow the unk policy)."""
        ids: list[int] = []
        pieces = self._special_re.split(text) if self._special_re and allow_special else [text]
        offset = 0
        for k, piece in enumerate(pieces):
            if k % 2 == 1:  # a special token (the split keeps them at odd indices)
                ids.append(self.stoi[piece])
            else:
                for j, ch in enumerate(piece):
                    i = self.stoi.get(ch)
                    if i is not None:
                        ids.append(i)
                    elif self.unk == "replace":
                        ids.append(self.stoi[UNK])
                    elif self.unk == "error":
                        raise TokenizerError(
                            f"character {ch!r} (U+{ord(ch):04X}) at position {offset + j} is not in the "
                            f"vocabulary of {len(self.chars)} characters (unk policy 'error'; use "
                            "'replace' or 'skip' to accept it)"
                        )
            offset += len(piece)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        try:
            return "".join(self.itos[int(i)] for i in ids)
        except KeyError as e:
            raise TokenizerError(f"token id {e.args[0]} is outside the vocabulary [0, {self.vocab_size})") from None

    def to_json(self) -> str:
        data = {"type": "char", "chars": self.chars, "special_tokens": self.special_tokens, "unk": self.unk}
        return json.dumps(data, ensure_ascii=False)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CHAR_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("type") != "char":
                raise TokenizerError(f"{path}: not a char tokenizer file (type={data.get('type')!r})")
            return cls(data["chars"], data.get("special_tokens", ()), data.get("unk", "error"))
        except (OSError, json.JSONDecodeError, KeyError, AttributeError) as e:
            raise TokenizerError(f"{path}: cannot read char tokenizer ({type(e).__name__}: {e})") from None
