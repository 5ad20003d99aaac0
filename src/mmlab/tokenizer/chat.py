"""The chat template (ChatML, in the shape of Qwen3's and MiniMind-3's), the parser of what a model writes
back, and the mask that SFT trains on.

A plain conversation:

    <|im_start|>system
    You are a helpful assistant.<|im_end|>
    <|im_start|>user
    What is 2+3?<|im_end|>
    <|im_start|>assistant
    5<|im_end|>

An assistant turn may carry reasoning (``reasoning_content``) and tool calls (``tool_calls``, OpenAI's
shape: ``{"type": "function", "function": {"name": ..., "arguments": {...} or "json"}}``); tool results
come back as ``role: tool`` messages, rendered as Qwen3 does, inside a user turn; tool schemas (``tools``)
go into the system turn (the ``tools`` argument, or a ``tools`` key on the first message, as data files
carry them):

    <|im_start|>system
    {system}

    # Tools
    ...
    <tools>
    {"type": "function", "function": {"name": "calculator", ...}}
    </tools><|im_end|>
    <|im_start|>user
    What is 17*23?<|im_end|>
    <|im_start|>assistant
    <think>
    I should multiply.
    </think>

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "17*23"}}
    </tool_call><|im_end|>
    <|im_start|>user
    <tool_response>
    391
    </tool_response><|im_end|>
    <|im_start|>assistant
    391<|im_end|>

Reasoning is kept only in assistant turns after the last user message (Qwen3's rule: the reasoning of an
answered question is not shown to the model again), unless ``keep_reasoning=True``. A ``reasoning_content``
of ``""`` renders an empty think block, which is what ``enable_thinking=False`` appends to the generation
prompt (Qwen3's "no-think" switch); ``None`` renders no block.

SFT computes the loss only where the model must *produce* text: the assistant's content, its reasoning,
its tool calls and the ``<|im_end|>`` that ends it (so the model learns to stop). Headers, system, user and
tool turns are context, not targets: a model is never trained to predict what a tool returns.

The encoding is the concatenation of the encodings of the pieces, so that the mask is exact. It can
differ from BPE-encoding the rendered string in one piece (e.g. when a message starts with blank
lines, a merge can cross the piece boundary), so training and inference must both use
``encode_chat``. Message text is encoded with ``allow_special=False``: a user who types
"<|im_end|>" gets those characters, not the control token, and cannot forge a turn.

``CHAT_TEMPLATE`` is the same template in Jinja, as ``transformers``' ``apply_chat_template`` renders it
(written into exported checkpoints; tests check it renders the same text and ids).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mmlab.tokenizer.base import IM_END, IM_START, Tokenizer, TokenizerError

ROLES = ("system", "user", "assistant", "tool")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
TOOLS_HEAD = ("# Tools\n\nYou may call the functions below. Each one's signature is inside <tools></tools>:\n"
              "<tools>")
TOOLS_TAIL = ("\n</tools>\n\nFor each call, write its name and arguments as JSON inside <tool_call></tool_call>:\n"
              "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>")
NO_THINK = f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n"
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")


def _err(i: int, text: str) -> TokenizerError:
    return TokenizerError(f"message {i}: {text}")


def _call_fields(i: int, j: int, call: Any) -> tuple[str, Any]:
    """(name, arguments) of an assistant's tool call, OpenAI's {type, function: {...}} or the bare {name, arguments}."""
    if not isinstance(call, dict):
        raise _err(i, f"tool_calls[{j}] must be an object, got {type(call).__name__}")
    fn = call.get("function", call)
    if not isinstance(fn, dict):
        raise _err(i, f"tool_calls[{j}].function must be an object")
    name, args = fn.get("name"), fn.get("arguments", {})
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise _err(i, f"tool_calls[{j}].function.name must be a name of letters, digits, _ . - (got {name!r})")
    if not isinstance(args, (dict, str)):
        raise _err(i, f"tool_calls[{j}].function.arguments must be an object or a JSON string")
    return name, args


def validate_messages(messages: Sequence[dict[str, Any]]) -> None:
    """A clear error naming the message and field when a conversation is malformed."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TokenizerError("a conversation must be a non-empty list of {role, content} messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _err(i, f"expected an object with role and content, got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise _err(i, f"role={role!r} is not one of: {', '.join(ROLES)}")
        calls = m.get("tool_calls")
        content = m.get("content")
        if not isinstance(content, str) and not (role == "assistant" and content is None and calls):
            raise _err(i, f"content must be a string, got {type(content).__name__}")
        if "tools" in m:
            if i:
                raise _err(i, "only the first message may carry the conversation's tools")
            validate_tools(m["tools"])
        if role != "assistant":
            for key in ("tool_calls", "reasoning_content"):
                if m.get(key) is not None:
                    raise _err(i, f"{key} is only allowed on assistant messages, not {role}")
            continue
        if m.get("reasoning_content") is not None and not isinstance(m["reasoning_content"], str):
            raise _err(i, "reasoning_content must be a string")
        if calls is not None:
            if not isinstance(calls, list):
                raise _err(i, "tool_calls must be a list")
            for j, call in enumerate(calls):
                _call_fields(i, j, call)


def validate_tools(tools: Sequence[dict[str, Any]] | None) -> None:
    if tools is None:
        return
    if not isinstance(tools, (list, tuple)):
        raise TokenizerError("tools must be a list of {type: function, function: {name, description, parameters}}")
    for j, tool in enumerate(tools):
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not NAME.fullmatch(fn["name"]):
            raise TokenizerError(f"tools[{j}]: expected {{type: function, function: {{name, ...}}}} with a valid name")


def render_tool_call(name: str, arguments: dict[str, Any] | str) -> str:
    """One call as the model writes it; a string of arguments is written as given (it is the model's own JSON)."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return f'{CALL_OPEN}\n{{"name": "{name}", "arguments": {args}}}\n{CALL_CLOSE}'


def _assistant_text(m: dict[str, Any], i: int, show_reasoning: bool) -> str:
    content = m.get("content") or ""
    text = ""
    if show_reasoning and isinstance(m.get("reasoning_content"), str):
        text = f"{THINK_OPEN}\n{m['reasoning_content']}\n{THINK_CLOSE}\n\n"
    text += content
    for j, call in enumerate(m.get("tool_calls") or []):
        text += ("\n" if content or j else "") + render_tool_call(*_call_fields(i, j, call))
    return text


def _pieces(messages: Sequence[dict[str, Any]], add_generation_prompt: bool, tools: Sequence[dict] | None = None,
            enable_thinking: bool | None = None, keep_reasoning: bool = False) -> list[tuple[str, bool, bool]]:
    """(text, is_target, is_template) pieces of the rendered conversation. Template pieces may hold special
    tokens; the others are encoded as plain text."""
    validate_messages(messages)
    validate_tools(tools)
    if tools is None:  # a conversation from a data file carries its tools on its first message
        tools = messages[0].get("tools")
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    pieces: list[tuple[str, bool, bool]] = []  # (text, is_target, is_template)
    start = 0
    if tools:
        start = int(messages[0]["role"] == "system")
        system = messages[0]["content"] + "\n\n" if start and messages[0]["content"] else ""
        schemas = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
        pieces += [(f"{IM_START}system\n", False, True), (system + TOOLS_HEAD + schemas + TOOLS_TAIL, False, False),
                   (f"{IM_END}\n", False, True)]
    for i in range(start, len(messages)):
        m = messages[i]
        role = m["role"]
        if role == "tool":
            first = i == 0 or messages[i - 1]["role"] != "tool"
            last = i + 1 == len(messages) or messages[i + 1]["role"] != "tool"
            pieces += [(f"{IM_START}user" if first else "", False, True), (f"\n{RESPONSE_OPEN}\n", False, True),
                       (m["content"], False, False), (f"\n{RESPONSE_CLOSE}", False, True)]
            if last:
                pieces.append((f"{IM_END}\n", False, True))
            continue
        target = role == "assistant"
        text = _assistant_text(m, i, keep_reasoning or i > last_user) if target else m["content"]
        pieces += [(f"{IM_START}{role}\n", False, True), (text, target, False), (IM_END, target, True),
                   ("\n", False, True)]
    if add_generation_prompt:
        pieces.append((f"{IM_START}assistant\n", False, True))
        if enable_thinking is False:
            pieces.append((NO_THINK, False, True))
    return pieces


def render_chat(messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False,
                tools: Sequence[dict] | None = None, enable_thinking: bool | None = None,
                keep_reasoning: bool = False) -> str:
    """The conversation as ChatML text; with ``add_generation_prompt`` it ends in an open assistant turn
    (and, with ``enable_thinking=False``, an empty think block after it)."""
    return "".join(t for t, _, _ in _pieces(messages, add_generation_prompt, tools, enable_thinking, keep_reasoning))


def encode_chat(
    tokenizer: Tokenizer, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False,
    tools: Sequence[dict] | None = None, enable_thinking: bool | None = None, keep_reasoning: bool = False,
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and a 0/1 mask, 1 on what the assistant writes (SFT targets)."""
    for special in (IM_START, IM_END):
        if tokenizer.token_to_id(special) is None:
            raise TokenizerError(f"the tokenizer has no {special} token; the chat template needs it")
    ids: list[int] = []
    mask: list[int] = []
    for text, target, template in _pieces(messages, add_generation_prompt, tools, enable_thinking, keep_reasoning):
        if text:
            piece = tokenizer.encode(text, allow_special=template)
            ids += piece
            mask += [int(target)] * len(piece)
    return ids, mask


# ---- what the model writes back ------------------------------------------------------------------
@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]

    def openai(self, call_id: str) -> dict[str, Any]:
        return {"id": call_id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}}


@dataclass
class ParsedReply:
    """An assistant turn read back from the model's text: reasoning, content, tool calls, and the tool-call
    blocks that could not be read (kept in ``content`` as written, and described in ``errors``)."""
    content: str
    reasoning: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def message(self) -> dict[str, Any]:
        m: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning is not None:
            m["reasoning_content"] = self.reasoning
        if self.tool_calls:
            m["tool_calls"] = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                               for c in self.tool_calls]
        return m


def read_tool_call(body: str) -> ToolCall:
    """The JSON between <tool_call> and </tool_call>; ValueError saying what is wrong with it."""
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not NAME.fullmatch(obj["name"]):
        raise ValueError('expected {"name": <function-name>, "arguments": {...}}')
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some models write the arguments as a JSON string, as OpenAI's API carries them
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise ValueError("arguments is a string that is not JSON") from None
    if not isinstance(args, dict):
        raise ValueError(f"arguments must be an object, got {type(args).__name__}")
    return ToolCall(obj["name"], args)


def _partial(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` could be the start of ``tag`` (held back while streaming)."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class ReplyStream:
    """Reads a reply as it is generated: ``feed(piece)`` returns the events the text so far settles, ``finish()``
    the rest. Events: ("reasoning", text), ("content", text), ("tool_call", ToolCall), ("error", message).

    A ``<think>`` block at the start is reasoning (newlines at its edges dropped); then content, in which, with
    ``tools``, each ``<tool_call>...</tool_call>`` becomes a call (newlines around calls dropped). Text that might
    be the start of a tag, and trailing newlines, are held back until the next piece says what they are, so
    the events do not depend on how the text was cut into pieces (tested). A call that is not valid JSON, or not
    closed, stays in the content as written and is reported in an error event."""

    def __init__(self, tools: bool = True):
        self.tools = tools
        self.state = "start"  # start -> think -> content <-> call
        self.buf = self.held = ""
        self.trim = False  # drop the newlines that follow </think> or a call
        self.thought = False
        self.calls = 0
        self.bad = 0

    def feed(self, text: str) -> list[tuple[str, Any]]:
        self.buf += text
        return self._drain(final=False)

    def finish(self) -> list[tuple[str, Any]]:
        events = self._drain(final=True)
        if self.state == "content" and self.held and not self.calls:
            events.append(("content", self.held))
        self.held = ""
        return events

    def _text(self, events: list, kind: str, piece: str) -> None:
        if self.trim:
            piece = piece.lstrip("\n")
            self.trim = not piece
        text = self.held + piece
        body = text.rstrip("\n")
        self.held = text[len(body):]
        if body:
            events.append((kind, body))

    def _drain(self, final: bool) -> list[tuple[str, Any]]:
        events: list[tuple[str, Any]] = []
        while True:
            if self.state == "start":
                head = self.buf.lstrip("\n")
                if head.startswith(THINK_OPEN):
                    self.buf, self.state, self.trim, self.thought = head[len(THINK_OPEN):], "think", True, True
                elif not final and THINK_OPEN.startswith(head):
                    return events
                else:
                    self.state = "content"
            elif self.state == "think":
                end = self.buf.find(THINK_CLOSE)
                if end < 0:
                    keep = 0 if final else _partial(self.buf, THINK_CLOSE)
                    self._text(events, "reasoning", self.buf[:len(self.buf) - keep])
                    self.buf = self.buf[len(self.buf) - keep:]
                    return events
                self._text(events, "reasoning", self.buf[:end])
                self.buf, self.state, self.held, self.trim = self.buf[end + len(THINK_CLOSE):], "content", "", True
            elif self.state == "content":
                start = self.buf.find(CALL_OPEN) if self.tools else -1
                if start < 0:
                    keep = 0 if final or not self.tools else _partial(self.buf, CALL_OPEN)
                    self._text(events, "content", self.buf[:len(self.buf) - keep])
                    self.buf = self.buf[len(self.buf) - keep:]
                    return events
                self._text(events, "content", self.buf[:start])
                self.buf, self.state, self.held = self.buf[start + len(CALL_OPEN):], "call", ""
            else:  # inside a tool call: wait for its end
                end = self.buf.find(CALL_CLOSE)
                if end < 0 and not final:
                    return events
                body = self.buf if end < 0 else self.buf[:end]
                self.buf = "" if end < 0 else self.buf[end + len(CALL_CLOSE):]
                self.state = "content"
                n = self.calls + self.bad
                try:
                    if end < 0:
                        raise ValueError(f"{CALL_OPEN} is never closed")
                    events.append(("tool_call", read_tool_call(body.strip())))
                    self.calls += 1
                    self.trim = True
                except ValueError as e:
                    self.bad += 1
                    events.append(("error", f"tool call {n}: {e}"))
                    events.append(("content", CALL_OPEN + body + ("" if end < 0 else CALL_CLOSE)))


def parse_reply(text: str, tools: bool = True) -> ParsedReply:
    """Read a generated assistant turn (without <|im_end|>) into reasoning, content and tool calls, exactly as
    ``ReplyStream`` reads it piece by piece. Never raises: a call that is not valid JSON, or not closed, stays in
    the content and is described in ``errors``."""
    stream = ReplyStream(tools)
    events = stream.feed(text) + stream.finish()
    return reply_from_events(events, stream.thought)


def reply_from_events(events: Sequence[tuple[str, Any]], thought: bool) -> ParsedReply:
    reply = ParsedReply("".join(v for k, v in events if k == "content"),
                        "".join(v for k, v in events if k == "reasoning") if thought else None)
    reply.tool_calls = [v for k, v in events if k == "tool_call"]
    reply.errors = [v for k, v in events if k == "error"]
    return reply


# ---- the same template in Jinja, for transformers' apply_chat_template -----------------------------
def _js(s: str) -> str:
    return json.dumps(s)  # a Jinja string literal (JSON's escapes are Jinja's)


CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if tools -%}"
    "{{- " + _js(IM_START + "system\n") + " -}}"
    "{%- if messages[0]['role'] == 'system' and messages[0]['content'] -%}{{- messages[0]['content'] + '\\n\\n' -}}"
    "{%- endif -%}"
    "{{- " + _js(TOOLS_HEAD) + " -}}"
    "{%- for t in tools -%}{{- '\\n' -}}{{- t | tojson -}}{%- endfor -%}"
    "{{- " + _js(TOOLS_TAIL + IM_END + "\n") + " -}}"
    "{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] not in " + json.dumps(list(ROLES)) + " -%}"
    "{{- raise_exception('role must be one of " + ", ".join(ROLES) + ", got ' + m['role']) -}}"
    "{%- endif -%}"
    "{%- if m['role'] == 'system' and tools and loop.first -%}"
    "{%- elif m['role'] == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}{{- " + _js(IM_START + "user") + " -}}"
    "{%- endif -%}"
    "{{- " + _js(f"\n{RESPONSE_OPEN}\n") + " + m['content'] + " + _js(f"\n{RESPONSE_CLOSE}") + " -}}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}{{- " + _js(IM_END + "\n") + " -}}"
    "{%- endif -%}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{{- " + _js(IM_START + "assistant\n") + " -}}"
    "{%- if m['reasoning_content'] is string and (keep_reasoning or loop.index0 > ns.last_user) -%}"
    "{{- " + _js(THINK_OPEN + "\n") + " + m['reasoning_content'] + " + _js(f"\n{THINK_CLOSE}\n\n") + " -}}"
    "{%- endif -%}"
    "{%- set content = m['content'] if m['content'] is string else '' -%}"
    "{{- content -}}"
    "{%- for c in (m['tool_calls'] or []) -%}"
    "{%- set f = c['function'] if c['function'] is defined else c -%}"
    "{%- if content or not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{%- set args = f['arguments'] if f['arguments'] is defined else {} -%}"
    "{{- " + _js(CALL_OPEN + '\n{"name": "') + " + f['name'] + '\", \"arguments\": ' -}}"
    "{{- args if args is string else args | tojson -}}"
    "{{- " + _js("}\n" + CALL_CLOSE) + " -}}"
    "{%- endfor -%}"
    "{{- " + _js(IM_END + "\n") + " -}}"
    "{%- else -%}"
    "{{- " + _js(IM_START) + " + m['role'] + '\\n' + m['content'] + " + _js(IM_END + "\n") + " -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- " + _js(IM_START + "assistant\n") + " -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- " + _js(NO_THINK) + " -}}{%- endif -%}"
    "{%- endif -%}"
)
