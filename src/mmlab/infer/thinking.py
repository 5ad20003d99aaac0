"""Thinking on, thinking off, and a budget for thinking: greedy replies of a reasoning model.

A model trained on ``<think>`` blocks (``mmlab.tokenizer.chat``) is asked in one of two ways:

- thinking **on** (``think=True``): the generation prompt ends at ``<|im_start|>assistant\\n`` and the model
  decides what to write — a trace-trained model opens a think block, works, closes it and answers;
- thinking **off** (``think=False``): the prompt ends with an empty think block (``enable_thinking=False``,
  Qwen3's switch), so the model goes straight to the answer.

A **budget** of N thinking tokens (the s1 paper's "budget forcing", cut side only) lets the model think for
at most N tokens after ``<think>\\n``: if it has not closed the block by then, the reply is cut there,
``\\n</think>\\n\\n`` is appended, and the model must answer from what it wrote. A budget of 0 is exactly
thinking off. Replies are greedy, so the unconstrained reply is generated once and every budget below its
length reuses its prefix (``budget_replies``).

``ThoughtReply.answer`` is what follows the think block (``parse_reply``): the think block is never part of
the answer that is scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmlab.infer.generate import generate
from mmlab.tokenizer.base import Tokenizer
from mmlab.tokenizer.chat import IM_END, THINK_CLOSE, THINK_OPEN, encode_chat, parse_reply

FORCED_CLOSE = f"\n{THINK_CLOSE}\n\n"


@dataclass(frozen=True)
class ThoughtReply:
    text: str  # the reply as the model saw it (forced pieces included), without <|im_end|>
    answer: str  # what follows the think block, trimmed
    reasoning: str | None  # the think block's text (None: no think block)
    think_tokens: int  # tokens written inside the think block after "<think>\n", its close included
    closed: bool  # the model closed its think block itself (False when cut by the budget or the length limit)
    finished: bool  # the reply ended with <|im_end|> within the limit
    forced: bool = False  # the budget cut the thinking short


def _reply(tok: Tokenizer, new: Sequence[int], finished: bool, think_tokens: int, closed: bool,
           forced: bool = False) -> ThoughtReply:
    text = tok.decode(list(new))
    parsed = parse_reply(text, tools=False)
    return ThoughtReply(text, parsed.content.strip(), parsed.reasoning, think_tokens, closed, finished, forced)


def _think_span(tok: Tokenizer, new: Sequence[int]) -> tuple[int, int | None]:
    """(tokens of the opening ``<think>\\n``, index just after the token that completes ``</think>``) of a
    reply; the opening is 0 when the reply does not start with a think block, the close None when never closed."""
    text = ""
    opened = 0
    for i, t in enumerate(new):
        text += tok.decode([t])
        if not opened:
            head = text.lstrip("\n")
            if head.startswith(THINK_OPEN + "\n"):
                opened = i + 1
            elif not (THINK_OPEN + "\n").startswith(head):
                return 0, None
        elif THINK_CLOSE in text:
            return opened, i + 1
    return opened, None


def _prompt_ids(tok: Tokenizer, messages: Sequence[dict[str, Any]], think: bool) -> list[int]:
    return encode_chat(tok, messages, add_generation_prompt=True, enable_thinking=None if think else False)[0]


@torch.no_grad()
def _generate_grouped(model: Any, prompts: Sequence[list[int]], limit: int, stop: int) -> list[tuple[list[int], bool]]:
    """Greedy continuations of prompts (batched by equal length), each ``(new tokens, finished)``."""
    out: list[Any] = [None] * len(prompts)
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    for length, idx in groups.items():
        room = min(limit, model.cfg.max_seq_len - length)
        if room <= 0:
            for i in idx:
                out[i] = ([], False)
            continue
        for j in range(0, len(idx), 32):
            chunk = idx[j:j + 32]
            news = generate(model, [prompts[i] for i in chunk], room, temperature=0.0, stop_tokens=[stop])
            for i, new in zip(chunk, news, strict=True):
                out[i] = (new, len(new) < room)
    return out


def replies(model: Any, tok: Tokenizer, conversations: Sequence[Sequence[dict[str, Any]]], think: bool = True,
            max_new_tokens: int = 96, force_open: bool = False) -> list[ThoughtReply]:
    """Greedy replies to each conversation with thinking on (the model decides; ``force_open``: the reply is
    started with ``<think>\\n`` for it) or off (an empty think block)."""
    return budget_replies(model, tok, conversations, [None], think, max_new_tokens, force_open=force_open)[None]


def budget_replies(model: Any, tok: Tokenizer, conversations: Sequence[Sequence[dict[str, Any]]],
                   budgets: Sequence[int | None], think: bool = True, max_new_tokens: int = 96,
                   max_answer: int = 12, force_open: bool = False) -> dict[int | None, list[ThoughtReply]]:
    """For each budget (None: unlimited), the greedy replies when at most that many thinking tokens are allowed
    (``think=False``: the budgets are ignored, every reply starts after an empty think block). ``force_open``:
    every reply starts with ``<think>\\n`` written for the model (a model trained on both modes otherwise
    chooses for itself whether to think)."""
    model.eval()
    stop = tok.token_to_id(IM_END)
    prompts = [_prompt_ids(tok, c, think) for c in conversations]
    opening = tok.encode(THINK_OPEN + "\n") if think and force_open else []
    full = [(opening + new, finished) for new, finished in
            _generate_grouped(model, [p + opening for p in prompts], max_new_tokens - len(opening), stop)]
    spans = [_think_span(tok, new) if think else (0, None) for new, _ in full]
    result: dict[int | None, list[ThoughtReply]] = {}
    for budget in budgets:
        rows: list[Any] = [None] * len(prompts)
        cut_prompts, cut_at = [], []
        for i, ((new, finished), (opened, close)) in enumerate(zip(full, spans, strict=True)):
            used = (close if close is not None else len(new)) - opened
            if not opened:  # no think block (thinking off, or the model chose not to think): nothing to cut
                rows[i] = _reply(tok, new, finished, 0, False)
            elif budget is None or (close is not None and used <= budget):
                rows[i] = _reply(tok, new, finished, used, close is not None)
            else:  # cut the thinking at the budget and make the model answer from there
                head = new[:opened + budget] + tok.encode(FORCED_CLOSE)
                cut_prompts.append(prompts[i] + head)
                cut_at.append((i, head))
        for (i, head), (answer, finished) in zip(cut_at, _generate_grouped(model, cut_prompts, max_answer, stop),
                                                 strict=True):
            rows[i] = _reply(tok, head + answer, finished, budget, False, forced=True)
        result[budget] = rows
    return result
