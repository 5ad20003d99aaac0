"""The ChatML chat template MiniMind uses, and the assistant-token mask that SFT trains on.

    <|im_start|>system
    You are a helpful assistant.<|im_end|>
    <|im_start|>user
    What is 2+3?<|im_end|>
    <|im_start|>assistant
    5<|im_end|>

SFT computes the loss only where the model must *produce* text: the assistant's content and the
``<|im_end|>`` that ends it (so the model learns to stop). Headers, system and user turns are
context, not targets.

The encoding is the concatenation of the encodings of the pieces, so that the mask is exact. It can
differ from BPE-encoding the rendered string in one piece (e.g. when a message starts with blank
lines, a merge can cross the piece boundary), so training and inference must both use
``encode_chat``. Message text is encoded with ``allow_special=False``: a user who types
"<|im_end|>" gets those characters, not the control token, and cannot forge a turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmlab.tokenizer.base import IM_END, IM_START, Tokenizer, TokenizerError

ROLES = ("system", "user", "assistant")


def validate_messages(messages: Sequence[dict[str, Any]]) -> None:
    """A clear error naming the message and field when a conversation is malformed."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TokenizerError("a conversation must be a non-empty list of {role, content} messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TokenizerError(f"message {i}: expected an object with role and content, got {type(m).__name__}")
        if m.get("role") not in ROLES:
            raise TokenizerError(f"message {i}: role={m.get('role')!r} is not one of: {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise TokenizerError(f"message {i}: content must be a string, got {type(m.get('content')).__name__}")


def _pieces(messages: Sequence[dict[str, Any]], add_generation_prompt: bool) -> list[tuple[str, bool, bool]]:
    """(text, is_target, is_template) pieces of the rendered conversation."""
    validate_messages(messages)
    pieces: list[tuple[str, bool, bool]] = []  # (text, is_target, is_template)
    for m in messages:
        target = m["role"] == "assistant"
        pieces += [(f"{IM_START}{m['role']}\n", False, True), (m["content"], target, False), (IM_END, target, True),
                   ("\n", False, True)]
    if add_generation_prompt:
        pieces.append((f"{IM_START}assistant\n", False, True))
    return pieces


def render_chat(messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    """The conversation as ChatML text; with ``add_generation_prompt`` it ends in an open assistant turn."""
    return "".join(text for text, _, _ in _pieces(messages, add_generation_prompt))


def encode_chat(
    tokenizer: Tokenizer, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and a 0/1 mask, 1 on assistant tokens (SFT targets)."""
    for special in (IM_START, IM_END):
        if tokenizer.token_to_id(special) is None:
            raise TokenizerError(f"the tokenizer has no {special} token; the chat template needs it")
    ids: list[int] = []
    mask: list[int] = []
    for text, target, template in _pieces(messages, add_generation_prompt):
        if text:
            piece = tokenizer.encode(text, allow_special=template)
            ids += piece
            mask += [int(target)] * len(piece)
    return ids, mask
