"""Text in, text out: sample from a checkpoint, streaming decoded text as tokens arrive."""

from __future__ import annotations

from collections.abc import Iterator

from mmlab.device import resolve_device
from mmlab.infer.generate import stream_generate
from mmlab.tokenizer.base import ENDOFTEXT, IM_END, Tokenizer, TokenizerError


def start_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt's ids; an empty prompt starts after an end-of-text token (or a newline)."""
    if prompt:
        return tokenizer.encode(prompt)
    for token in (ENDOFTEXT, "\n"):
        i = tokenizer.token_to_id(token)
        if i is not None:
            return [i]
    return [0]


def stop_ids(tokenizer: Tokenizer) -> list[int]:
    return [i for i in (tokenizer.token_to_id(ENDOFTEXT), tokenizer.token_to_id(IM_END)) if i is not None]


def stream_text(tokenizer: Tokenizer, ids: Iterator[int]) -> Iterator[str]:
    """Decoded text pieces. A byte-level token can end in the middle of a UTF-8 character, so we decode
    everything so far and hold back a trailing replacement character until it completes."""
    seen: list[int] = []
    emitted = 0
    for i in ids:
        seen.append(i)
        text = tokenizer.decode(seen)
        if text.endswith("\ufffd"):
            continue
        yield text[emitted:]
        emitted = len(text)
    text = tokenizer.decode(seen) if seen else ""
    if len(text) > emitted:
        yield text[emitted:]


def sample_text(
    ckpt: str,
    prompt: str = "",
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    device: str = "auto",
    echo_prompt: bool = True,
) -> Iterator[str]:
    from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model

    tokenizer = load_checkpoint_tokenizer(ckpt)
    model = load_model(ckpt, device=resolve_device(device))
    try:
        ids = start_ids(tokenizer, prompt)
    except TokenizerError as e:
        raise TokenizerError(f"the prompt cannot be encoded by this checkpoint's tokenizer: {e}") from None
    if echo_prompt and prompt:
        yield prompt
    tokens = stream_generate(model, ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             repetition_penalty=repetition_penalty, stop_tokens=stop_ids(tokenizer), seed=seed)
    yield from stream_text(tokenizer, tokens)
