"""Tokenizers: characters, byte-level BPE (Hugging Face `tokenizers`), and the ChatML template."""

from mmlab.tokenizer.base import (
    ENDOFTEXT,
    IM_END,
    IM_START,
    SPECIAL_TOKENS,
    Tokenizer,
    TokenizerError,
    fingerprint,
    load_tokenizer,
)
from mmlab.tokenizer.bpe import BPETokenizer, train_bpe
from mmlab.tokenizer.char import CharTokenizer
from mmlab.tokenizer.chat import encode_chat, render_chat

__all__ = [
    "ENDOFTEXT", "IM_END", "IM_START", "SPECIAL_TOKENS", "BPETokenizer", "CharTokenizer", "Tokenizer",
    "TokenizerError", "encode_chat", "fingerprint", "load_tokenizer", "render_chat", "train_bpe",
]
