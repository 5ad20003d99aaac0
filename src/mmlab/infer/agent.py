"""The agent loop: generate a turn, run its tool calls, show the model the results, repeat.

    >>> ep = run_agent(model, tok, [{"role": "user", "content": "What is 347*58?"}], ToolRunner())
    >>> ep.answer, ep.n_calls, ep.stop
    ('20126', 1, 'answer')

One episode, turn by turn:

1. the conversation so far is the context (the first turn: ``encode_chat(messages, add_generation_prompt=True)``);
2. the model writes an assistant turn, stopping at ``<|im_end|>`` (or at ``max_new_tokens``);
3. ``parse_reply`` reads it; a turn without tool calls is the final answer;
4. each call runs through the ``ToolRunner`` (which never raises) and its result becomes a ``role: tool``
   message; a call the model wrote as bad JSON becomes a ``role: tool`` message that says what is wrong
   with it (the model may try again), so a broken call is part of the transcript, never a crash;
5. the tool messages are appended to the token sequence and the model writes the next turn.

The episode keeps the exact token ids the model saw and wrote, not a re-encoding of the transcript:
``ids`` is the whole episode and ``mask`` is 1 on every token the model sampled (its turns, each with its
``<|im_end|>``) and 0 on the prompt, the template's headers and the tool responses. That is what
multi-turn RL trains on: the policy is graded on its own tokens, never on what a tool returned. (Decoding
a turn and encoding the text again can give other ids, since BPE can split a string several ways; the
loss must see the ids that were sampled.) The observation tokens appended after a turn are the template's
own: ``encode_chat`` encodes a conversation piece by piece, so the tokens after an assistant turn do not
depend on how that turn was tokenized.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mmlab.infer.generate import generate
from mmlab.tokenizer.base import Tokenizer
from mmlab.tokenizer.chat import IM_END, ParsedReply, encode_chat, parse_reply
from mmlab.tools import ToolResult, ToolRunner

STOPS = ("answer", "max_turns", "length", "context")


@dataclass
class AgentTurn:
    start: int  # where this turn's tokens begin in the episode's ids (the context is ids[:start])
    tokens: list[int]  # the tokens the model wrote, with <|im_end|> when it finished the turn
    text: str  # their text (without <|im_end|>)
    finished: bool  # ended with <|im_end|> before max_new_tokens
    reply: ParsedReply
    results: list[ToolResult] = field(default_factory=list)  # one per call that could be read


@dataclass
class AgentEpisode:
    """One run of the loop. ``stop``: ``answer`` (a turn without calls), ``max_turns`` (the last allowed turn
    still called a tool), ``length`` (a turn ran to ``max_new_tokens``), ``context`` (the model's context has
    no room for the next turn; the tool results that did not fit are in ``messages``, not in ``ids``)."""
    messages: list[dict[str, Any]]  # the transcript: the input, then assistant and tool messages
    answer: str | None  # the final turn's content (stripped); None unless stop == "answer"
    ids: list[int]  # every token of the episode, as the model saw and wrote them
    mask: list[int]  # 1 on the tokens the model wrote, 0 on prompt, template and tool responses
    turns: list[AgentTurn]
    stop: str

    @property
    def n_calls(self) -> int:
        """Tool calls that could be read (and so were run)."""
        return sum(len(t.reply.tool_calls) for t in self.turns)

    @property
    def n_bad_calls(self) -> int:
        """Tool-call blocks that could not be read (bad JSON, wrong shape, never closed)."""
        return sum(len(t.reply.errors) for t in self.turns)

    @property
    def n_tool_errors(self) -> int:
        """Calls that were read and run but that the tool refused (unknown tool, bad arguments, ...)."""
        return sum(not r.ok for t in self.turns for r in t.results)

    def counts(self) -> dict[str, Any]:
        return {"turns": len(self.turns), "tool_calls": self.n_calls, "tool_errors": self.n_tool_errors,
                "bad_calls": self.n_bad_calls, "model_tokens": sum(self.mask), "stop": self.stop}


@torch.no_grad()
def run_agent(model: torch.nn.Module, tok: Tokenizer, messages: Sequence[dict[str, Any]], runner: ToolRunner,
              max_turns: int = 4, max_new_tokens: int = 64, temperature: float = 0.0, seed: int | None = None,
              top_k: int | None = None, show_tools: bool = True) -> AgentEpisode:
    """Run the loop on ``messages`` (the conversation so far, ending with a user turn) for at most
    ``max_turns`` assistant turns. ``show_tools``: render the runner's schemas in the system turn (the
    ~150-word preamble; a model fine-tuned to call its tools can do without it when its context is short).
    ``seed``: turn i samples with seed + i, so an episode is reproducible."""
    if max_turns < 1 or max_new_tokens < 1:
        raise ValueError(f"max_turns={max_turns} and max_new_tokens={max_new_tokens} must be >= 1")
    tools = runner.schemas() if show_tools else None
    stop_id = tok.token_to_id(IM_END)
    newline = tok.encode("\n", allow_special=True)
    transcript = [dict(m) for m in messages]
    ids, _ = encode_chat(tok, transcript, add_generation_prompt=True, tools=tools)
    mask = [0] * len(ids)
    turns: list[AgentTurn] = []
    answer, stop = None, "max_turns"
    for turn in range(max_turns):
        room = min(max_new_tokens, model.cfg.max_seq_len - len(ids))
        if room <= 0:
            stop = "context"
            break
        new = generate(model, ids, room, temperature=temperature, top_k=top_k, stop_tokens=[stop_id],
                       seed=None if seed is None else seed + turn)[0]
        finished = len(new) < room
        text = tok.decode(new)
        reply = parse_reply(text, tools=True)
        written = new + ([stop_id] if finished else [])
        turns.append(AgentTurn(len(ids), written, text, finished, reply))
        ids, mask = ids + written, mask + [1] * len(written)
        transcript.append(reply.message())
        if not finished:
            stop = "length"
            break
        if not reply.tool_calls and not reply.errors:
            answer, stop = reply.content.strip(), "answer"
            break
        # the ids of the conversation up to the turn's <|im_end|> (the template's "\n" after it is context)
        before = len(encode_chat(tok, transcript, tools=tools)[0]) - len(newline)
        for call in reply.tool_calls:
            result = runner.run(call)
            turns[-1].results.append(result)
            transcript.append({"role": "tool", "content": result.content})
        for error in reply.errors:  # the model is told what was wrong with its call, as a tool would
            transcript.append({"role": "tool", "content": f"error: could not read the {error}"})
        if turn + 1 == max_turns:
            break
        after = encode_chat(tok, transcript, add_generation_prompt=True, tools=tools)[0]
        observation = after[before:]  # the template's pieces after the turn: tool responses, next header
        if len(ids) + len(observation) >= model.cfg.max_seq_len:  # no room to show the results and answer
            stop = "context"
            break
        ids, mask = ids + observation, mask + [0] * len(observation)
    return AgentEpisode(transcript, answer, ids, mask, turns, stop)
