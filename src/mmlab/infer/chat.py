"""``mmlab chat``: talk to a checkpoint in the terminal, the reply streaming in as it is generated.

Every turn re-encodes the whole conversation with the chat template (``tokenizer/chat.py``, with an
open assistant turn at the end) and generates until ``<|im_end|>``: a chat model has no memory
besides the text it is shown. When the conversation outgrows the model's context, the oldest
exchanges are dropped (the system message stays), keeping room for the reply. ``/reset`` forgets the
conversation, ``/quit`` (or Ctrl-D) leaves, Ctrl-C stops a reply mid-way.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from mmlab.errors import MMLabError
from mmlab.infer.completion import Completion
from mmlab.infer.generate import SamplingParams
from mmlab.model.lm import MiniMindLM
from mmlab.tokenizer.base import Tokenizer, TokenizerError
from mmlab.tokenizer.chat import encode_chat

HELP = "/reset forgets the conversation, /quit leaves (or Ctrl-D); Ctrl-C stops a reply"


def fit_history(tokenizer: Tokenizer, system: str | None, history: list[dict[str, str]], context: int,
                reserve: int = 0) -> tuple[list[int], int]:
    """Prompt ids of the conversation (ending in an open assistant turn) and how many of the oldest messages
    were dropped to get them. ``history`` ends with the new user message. Old exchanges are dropped until the
    prompt leaves ``reserve`` tokens of the ``context`` for the reply; the new message alone may eat into
    that room (a shorter reply), but must leave at least one token."""
    head = [{"role": "system", "content": system}] if system else []
    dropped = 0
    while True:
        ids, _ = encode_chat(tokenizer, head + history[dropped:], add_generation_prompt=True)
        if len(ids) <= context - reserve:
            return ids, dropped
        if len(history) - dropped <= 1:
            if len(ids) < context:
                return ids, dropped
            raise MMLabError(f"the message is {len(ids)} tokens with the template; the model's context is "
                             f"{context} tokens, and the reply needs room too")
        dropped += 2 if len(history) - dropped > 2 else 1  # a whole exchange: the question and its answer


class ChatSession:
    """A conversation with a model: ``reply(text)`` streams the answer and remembers both turns."""

    def __init__(self, model: MiniMindLM, tokenizer: Tokenizer, *, system: str | None = None,
                 max_new_tokens: int = 256, params: SamplingParams | None = None, seed: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.system = system
        self.max_new_tokens = max_new_tokens
        self.params = params or SamplingParams(temperature=0.8)
        self.params.validate()
        self.seed = seed
        self.history: list[dict[str, str]] = []
        self.turn = 0
        self.dropped = 0  # messages dropped by the last turn to fit the context

    def reset(self) -> None:
        self.history = []

    def reply(self, text: str) -> Completion:
        """Start a reply to ``text``; iterate the result for its pieces. The exchange joins the history when
        the iteration ends (also when it is stopped early: what was shown is what the model said)."""
        history = [*self.history, {"role": "user", "content": text}]
        context = self.model.cfg.max_seq_len
        reserve = min(self.max_new_tokens, context // 2)  # room for the reply: the history must not fill it all
        ids, self.dropped = fit_history(self.tokenizer, self.system, history, context, reserve)
        seed = None if self.seed is None else self.seed + self.turn  # reproducible, yet not the same every turn
        self.turn += 1
        return _Remembered(self, history[self.dropped:], ids, seed)


class _Remembered(Completion):
    def __init__(self, session: ChatSession, history: list[dict[str, str]], ids: list[int], seed: int | None):
        super().__init__(session.model, session.tokenizer, ids, session.max_new_tokens, session.params, seed=seed)
        self.session, self.history = session, history

    def __iter__(self):
        pieces: list[str] = []
        try:
            for piece in super().__iter__():
                pieces.append(piece)
                yield piece
        finally:
            self.session.history = [*self.history, {"role": "assistant", "content": "".join(pieces)}]


def chat_loop(session: ChatSession, read: Callable[[str], str] = input, out: TextIO | None = None) -> None:
    """Read a line, stream the reply, repeat, until /quit or end of input. ``out`` defaults to stdout."""
    out = out or sys.stdout
    while True:
        try:
            text = read("you> ")
        except EOFError:
            out.write("\n")
            return
        command = text.strip()
        if not command:
            continue
        if command in ("/quit", "/exit"):
            return
        if command == "/reset":
            session.reset()
            out.write("(conversation cleared)\n")
            continue
        if command in ("/help", "/?"):
            out.write(HELP + "\n")
            continue
        try:
            done = session.reply(text)
        except (MMLabError, TokenizerError) as e:
            out.write(f"(cannot send this: {e})\n")
            continue
        if session.dropped:
            out.write(f"(the {session.dropped} oldest messages no longer fit the context and were dropped)\n")
        out.write("bot> ")
        out.flush()
        pieces = iter(done)
        try:
            for piece in pieces:
                out.write(piece)
                out.flush()
            out.write("\n")
        except KeyboardInterrupt:
            pieces.close()
            out.write(" [stopped]\n")


def chat(ckpt: str, *, system: str | None = None, max_new_tokens: int = 256, temperature: float = 0.8,
         top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
         seed: int | None = None, device: str = "auto", read: Callable[[str], str] = input,
         out: TextIO | None = None) -> None:
    """``mmlab chat``: load a checkpoint and chat with it until /quit."""
    out = out or sys.stdout
    from mmlab.device import resolve_device
    from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model

    params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
    params.validate()
    tokenizer = load_checkpoint_tokenizer(ckpt)
    model = load_model(ckpt, device=resolve_device(device))
    session = ChatSession(model, tokenizer, system=system, max_new_tokens=max_new_tokens, params=params, seed=seed)
    fit_history(tokenizer, system, [{"role": "user", "content": ""}], model.cfg.max_seq_len)  # template works?
    out.write(f"chatting with {ckpt} (context {model.cfg.max_seq_len} tokens). {HELP}\n")
    chat_loop(session, read, out)
