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


class TextStream:
    """Tokens in, text out. A byte-level token can end in the middle of a UTF-8 character, so we decode
    everything so far and hold back a trailing replacement character until it completes."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.seen, self.emitted = tokenizer, [], 0

    def push(self, token: int) -> str | None:
        """The new text after ``token``; None while a character is incomplete."""
        self.seen.append(token)
        text = self.tokenizer.decode(self.seen)
        if text.endswith("\ufffd"):
            return None
        out, self.emitted = text[self.emitted:], len(text)
        return out

    def flush(self) -> str:
        """What was held back, once no token follows."""
        text = self.tokenizer.decode(self.seen) if self.seen else ""
        out, self.emitted = text[self.emitted:], max(self.emitted, len(text))
        return out


def stream_text(tokenizer: Tokenizer, ids: Iterator[int]) -> Iterator[str]:
    """Decoded text pieces of ``ids`` as they come (see ``TextStream``)."""
    stream = TextStream(tokenizer)
    for i in ids:
        piece = stream.push(i)
        if piece is not None:
            yield piece
    tail = stream.flush()
    if tail:
        yield tail


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
    draft: str | None = None,
    speculate: int = 4,
    stats: dict | None = None,
) -> Iterator[str]:
    """Text pieces continuing ``prompt``. With ``draft`` (a checkpoint sharing the tokenizer), speculative
    decoding: the draft proposes ``speculate`` tokens per round and the model verifies them — the same
    distribution as plain sampling; the text comes at the end, and ``stats`` (if given) receives the
    acceptance rate and forward-pass counts."""
    from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model

    tokenizer = load_checkpoint_tokenizer(ckpt)
    if draft is not None:
        from mmlab.errors import ConfigError

        if repetition_penalty != 1.0:
            raise ConfigError("speculative decoding does not support --repetition-penalty (it would make the two "
                              "models' distributions depend on the tokens being judged)")
        from mmlab.tokenizer.base import fingerprint

        if fingerprint(load_checkpoint_tokenizer(draft)) != fingerprint(tokenizer):
            raise ConfigError(f"--draft {draft}: its tokenizer differs from {ckpt}'s; the draft must share the "
                              "model's vocabulary")
    model = load_model(ckpt, device=resolve_device(device))
    try:
        ids = start_ids(tokenizer, prompt)
    except TokenizerError as e:
        raise TokenizerError(f"the prompt cannot be encoded by this checkpoint's tokenizer: {e}") from None
    if draft is not None:
        from mmlab.infer.speculative import speculative_generate

        result = speculative_generate(model, load_model(draft, device=resolve_device(device)), ids, max_new_tokens,
                                      k=speculate, temperature=temperature, top_k=top_k, top_p=top_p,
                                      stop_tokens=stop_ids(tokenizer), seed=seed)
        if stats is not None:
            stats.update({k: v for k, v in result.as_dict().items() if k != "tokens"})
        if echo_prompt and prompt:
            yield prompt
        yield from stream_text(tokenizer, iter(result.tokens))
        return
    if echo_prompt and prompt:
        yield prompt
    tokens = stream_generate(model, ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             repetition_penalty=repetition_penalty, stop_tokens=stop_ids(tokenizer), seed=seed)
    yield from stream_text(tokenizer, tokens)
