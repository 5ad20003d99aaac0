"""One completion as a chat program needs it: prompt ids in, text pieces out, cut at stop strings, counted.

Both the OpenAI-compatible server (``infer/server.py``) and the terminal chat (``infer/chat.py``) run
their replies through ``Completion``, so they stop, count and decode the same way:

    >>> done = Completion(model, tokenizer, ids, max_tokens=100, stop=["\\n\\n"], seed=0)
    >>> for piece in done:
    ...     print(piece, end="")
    >>> done.completion_tokens, done.finish_reason          # (37, "stop")

Generation stops at the model's own stop tokens (``<|im_end|>`` ends an assistant turn,
``<|endoftext|>`` a document, ``<|im_start|>`` would begin another turn), at the first stop *string*
(which is not part of the reply), or after ``max_tokens`` new tokens (finish reason "length").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from mmlab.infer.generate import SamplingParams, stream_generate
from mmlab.infer.sample import stop_ids, stream_text
from mmlab.model.lm import MiniMindLM
from mmlab.tokenizer.base import IM_START, Tokenizer


class StopStrings:
    """Cut streamed text at the first stop string.

    A stop string can arrive split over several pieces ("\\n" then "\\n"), so text that could still be
    the start of one is held back until the next piece decides: it is either released or cut.
    """

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = [s for s in stops if s]
        self.buffer = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """Add a piece; return (text that is safe to show, whether a stop string was reached)."""
        self.buffer += piece
        if not self.stops:
            out, self.buffer = self.buffer, ""
            return out, False
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buffer = self.buffer[: min(hits)], ""
            return out, True
        hold = 0  # the longest tail of the buffer that begins some stop string
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.buffer)), hold, -1):
                if self.buffer.endswith(stop[:n]):
                    hold = n
                    break
        out, self.buffer = self.buffer[: len(self.buffer) - hold], self.buffer[len(self.buffer) - hold:]
        return out, False

    def flush(self) -> str:
        """The held-back text, once generation has ended without completing a stop string."""
        out, self.buffer = self.buffer, ""
        return out


class Completion:
    """Iterate to generate; afterwards ``completion_tokens`` and ``finish_reason`` ("stop" or "length")
    are set. Stopping the iteration early (``close()``, or breaking out of a for loop) stops the model."""

    def __init__(
        self,
        model: MiniMindLM,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int],
        max_tokens: int,
        params: SamplingParams | None = None,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.prompt_ids = list(prompt_ids)
        self.max_tokens = max_tokens
        self.params = params or SamplingParams()
        self.stop = list(stop)
        self.seed = seed
        self.completion_tokens = 0
        self.finish_reason: str | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def stop_tokens(self) -> list[int]:
        """<|endoftext|> and <|im_end|>, and <|im_start|>: a model that opens a new turn has ended its own."""
        start = self.tokenizer.token_to_id(IM_START)
        return stop_ids(self.tokenizer) + ([] if start is None else [start])

    def _counted(self, ids: Iterator[int]) -> Iterator[int]:
        for i in ids:
            self.completion_tokens += 1
            yield i

    def __iter__(self) -> Iterator[str]:
        p = self.params
        ids = stream_generate(self.model, self.prompt_ids, self.max_tokens, temperature=p.temperature, top_k=p.top_k,
                              top_p=p.top_p, repetition_penalty=p.repetition_penalty,
                              stop_tokens=self.stop_tokens(), seed=self.seed)
        stops = StopStrings(self.stop)
        try:
            for piece in stream_text(self.tokenizer, self._counted(ids)):
                text, hit = stops.feed(piece)
                if text:
                    yield text
                if hit:
                    self.finish_reason = "stop"
                    return
            tail = stops.flush()
            if tail:
                yield tail
            # stream_generate ends early only at a stop token; otherwise it produced max_tokens tokens
            self.finish_reason = "length" if self.completion_tokens >= self.max_tokens else "stop"
        finally:
            ids.close()  # frees the KV cache now, also when the caller stopped listening
