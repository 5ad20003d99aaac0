"""An OpenAI-compatible HTTP server for a checkpoint, on FastAPI + uvicorn (the ``serve`` extra).

    mmlab serve --ckpt runs/sft            # then open http://127.0.0.1:8000/ for a chat page, or:
    curl http://127.0.0.1:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}]}'

Endpoints: ``GET /`` (the chat page), ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``
and ``POST /v1/completions``, with or without ``"stream": true`` (Server-Sent Events in OpenAI's chunk
format, ending with ``data: [DONE]``), and ``GET /docs`` (the request models, from FastAPI's OpenAPI
schema). Sampling fields: temperature, top_p, max_tokens, stop, seed, and two extensions OpenAI does not
have, top_k and repetition_penalty. The official ``openai`` Python client works against it.

How it is built, and why:
  * The HTTP side is the stack the field's servers use (vLLM, MiniMind's own, llama-cpp-python): FastAPI
    routes on uvicorn's event loop. Request bodies are pydantic models (``ChatRequest``,
    ``CompletionRequest``); every validation error becomes a 4xx in OpenAI's shape
    ``{"error": {"message", "type", "param", "code"}}`` naming the field (``messages[0].content``); a bug
    is a 500 with no traceback sent (it is logged). uvicorn's own answer to a request that is not HTTP
    is JSON in the same shape.
  * The model lives in one worker thread, so nobody else ever touches it or its KV cache. By default
    that thread runs ``BatchingEngine``: up to ``batch`` requests decode together in one forward pass
    per step (continuous batching over a paged KV cache with prefix caching, ``infer/engine.py``). An
    earlier version of this server generated one request at a time (``Engine``, still ``--batch 1``),
    on the argument that a CPU decoder is compute-bound; that turned out false for small models, where
    a decode step is dominated by per-step overhead and weight reads, so a batch of 16 costs little more
    than one sequence (``benchmarks/serve_load.py`` measures it). Requests wait in a bounded queue; when it
    is full the server answers 429 at once rather than letting waits grow.
  * The worker hands text pieces to the event loop (``Job.put``), and the request's coroutine sends
    them, so a slow or vanished client never holds up the model: a disconnect cancels the request, and
    the worker drops it (and returns its KV blocks) before its next step. Parsing, validation and
    tokenization run in a thread pool, so a large prompt does not stall other streams.

Prompts longer than the model's context (or ``max_prompt_tokens``) are refused. A batched reply ends when
it fills the context (finish reason "length"); one at a time, a reply may run past it: generation then
slides a window over the last ``max_seq_len`` tokens (see ``infer/generate.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import queue
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import uvicorn  # the `serve` extra (FastAPI, uvicorn, pydantic); `mmlab serve` says how to install it
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import Match
from uvicorn.protocols.http.h11_impl import H11Protocol

from mmlab.errors import MMLabError
from mmlab.infer.completion import Completion, StopStrings
from mmlab.infer.generate import SamplingParams
from mmlab.infer.sample import TextStream, start_ids, stop_ids
from mmlab.model.lm import MiniMindLM
from mmlab.tokenizer.base import IM_START, Tokenizer, TokenizerError
from mmlab.tokenizer.chat import NAME as TOOL_NAME
from mmlab.tokenizer.chat import ParsedReply, ReplyStream, encode_chat, parse_reply

log = logging.getLogger("mmlab.server")

POLL_S = 0.25  # how often a non-streaming request checks that its client is still connected
KEEPALIVE_S = 2.0  # an SSE comment this often while a stream waits, so a vanished client is noticed


@dataclass(frozen=True)
class ServerConfig:
    """Limits of one server. ``max_prompt_tokens`` None means the model's context (``max_seq_len``)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_tokens_limit: int = 1024  # the largest max_tokens a request may ask for
    default_max_tokens: int = 256  # used when a request gives none (capped by max_tokens_limit)
    max_prompt_tokens: int | None = None
    queue: int = 8  # requests that may wait behind the ones being generated
    batch: int = 16  # requests decoded together (continuous batching); 1: one at a time, the old engine
    max_body_bytes: int = 1 << 20
    model_name: str | None = None  # the id in /v1/models; default: the checkpoint's run folder name
    timeout_s: float = 60.0  # an idle keep-alive connection is closed after this long

    def validate(self) -> None:
        for name in ("max_tokens_limit", "default_max_tokens", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise MMLabError(f"{name}={getattr(self, name)} must be >= 1")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise MMLabError(f"max_prompt_tokens={self.max_prompt_tokens} must be >= 1")
        if self.queue < 0:
            raise MMLabError(f"queue={self.queue} must be >= 0")
        if self.batch < 1:
            raise MMLabError(f"batch={self.batch} must be >= 1 (1: one request at a time)")
        if not 0 <= self.port <= 65535:
            raise MMLabError(f"port={self.port} must be in 0..65535 (0 = any free port)")


class APIError(Exception):
    """An error answered to the client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------------------------------
# Request models. Types are pydantic's (strict: "1" is not a number, 1.0 is not an integer); checks
# that need a message of their own raise ``_invalid``; ``_api_error`` turns the first error into a 400
# naming the field as a client writes it (``messages[0].content``).

def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    for kind, name in ((bool, "boolean"), (str, "string"), (int, "integer"), (float, "number"), (list, "array"),
                       (dict, "object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _shown(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return "(a huge integer)"
    try:
        return json.dumps(value)[:80]
    except (TypeError, ValueError):
        return ""


def _invalid(code: str, message: str) -> Exception:
    """A validation error with our code; the message follows the field's name ("must be ...")."""
    return PydanticCustomError(code, "{message}", {"message": message})


_EXPECTED = {"float_type": "a finite number", "finite_number": "a finite number", "int_type": "an integer",
             "bool_type": "a boolean", "string_type": "a string", "list_type": "an array",
             "model_type": "an object", "dict_type": "an object", "model_attributes_type": "an object"}
_OUR_CODES = ("invalid_type", "invalid_value", "unsupported_parameter", "unsupported_value")


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _api_error(e: ValidationError) -> APIError:
    err = e.errors(include_url=False)[0]
    param, kind = _param(err["loc"]), err["type"]
    if kind == "missing":
        return APIError(400, f"{param} is required", param, "missing")
    if kind in _OUR_CODES:
        return APIError(400, f"{param} {err['msg']}", param, kind)
    if kind in _EXPECTED:
        value = err["input"]
        return APIError(400, f"{param} must be {_EXPECTED[kind]}, got {_json_type(value)} {_shown(value)}".rstrip(),
                        param, "invalid_type")
    return APIError(400, f"{param}: {err['msg']}", param, "invalid_value")


def _stop_list(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _invalid("invalid_type", f"must be a string or an array of strings, got {_json_type(stop)}")
    if len(stop) > 4:
        raise _invalid("invalid_value", f"may hold at most 4 strings, got {len(stop)}")
    return [s for s in stop if s]


def _content_text(content: Any) -> str | None:
    """A message's content: a string, or OpenAI's array of parts of which only text parts are understood (null
    only for an assistant message that calls tools, which the chat template checks)."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _invalid("invalid_value", 'may hold only text parts ({"type": "text", "text": ...})')
            texts.append(part["text"])
        return "".join(texts)
    raise _invalid("invalid_type", f"must be a string or an array of text parts, got {_json_type(content)}")


def _role(role: Any) -> str:
    role = "system" if role == "developer" else role  # OpenAI's newer name for the system role
    if role not in ("system", "user", "assistant", "tool"):
        raise _invalid("invalid_value",
                       f"must be one of system, user, assistant, tool (or developer), got {_shown(role)}")
    return role


def _prompt(prompt: Any) -> str | list[int]:
    """A string, a one-string array, or an array of token ids (one prompt per request)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    raise _invalid("invalid_type", "must be a string or an array of token ids (one prompt per request)")


def _messages(messages: list[Any]) -> list[Any]:
    if not messages:
        raise _invalid("invalid_value", "must hold at least one message")
    return messages


_STRICT = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool | None = None


class Sampling(BaseModel):
    """The fields both endpoints share. Unknown fields are ignored, as OpenAI's own server does."""

    model_config = _STRICT
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = Field(None, description="an extension: sample from the k most likely tokens")
    repetition_penalty: float | None = Field(None, description="an extension: 1 = off, 1.1 = mild")
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int | None = None
    logprobs: Any = None
    seed: int | None = None
    stop: Annotated[list[str], BeforeValidator(_stop_list)] = Field(default_factory=list)
    stream: bool | None = None
    stream_options: StreamOptions | None = None


def _tool_name(name: str) -> str:
    if not TOOL_NAME.fullmatch(name):
        raise _invalid("invalid_value", f"must be 1 to 64 letters, digits, _ . - starting with a letter or _, "
                                        f"got {_shown(name)}")
    return name


class FunctionCall(BaseModel):
    model_config = _STRICT
    name: Annotated[str, AfterValidator(_tool_name)]
    arguments: str = Field("{}", description="the arguments as a JSON object in a string (OpenAI's wire format)")


class ToolCallIn(BaseModel):
    """A tool call of an earlier assistant turn, as the client sends the conversation back."""
    model_config = _STRICT
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionSpec(BaseModel):
    model_config = _STRICT
    name: Annotated[str, AfterValidator(_tool_name)]
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolSpec(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: FunctionSpec


class TemplateOptions(BaseModel):
    """vLLM's ``chat_template_kwargs``: options of the chat template."""
    model_config = ConfigDict(strict=True, extra="forbid")
    enable_thinking: bool | None = Field(None, description="false: answer without a <think> block (Qwen3's switch)")


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: Annotated[str, BeforeValidator(_role)]
    content: Annotated[str | None, BeforeValidator(_content_text)] = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    name: str | None = None


def _tool_choice(choice: Any) -> Any:
    if choice in (None, "auto", "none"):
        return choice
    raise _invalid("unsupported_value", f'must be "auto" or "none" on this server, got {_shown(choice)}')


class ChatRequest(Sampling):
    messages: Annotated[list[ChatMessage], AfterValidator(_messages)]
    tools: list[ToolSpec] | None = None
    tool_choice: Annotated[Any, BeforeValidator(_tool_choice)] = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: TemplateOptions | None = None


class CompletionRequest(Sampling):
    prompt: Annotated[str | list[int], BeforeValidator(_prompt)]
    echo: bool | None = None
    suffix: str | None = None


@dataclass
class GenerationRequest:
    """What the worker needs: prompt ids, limits, sampling, stop strings; and how to answer."""

    kind: str  # "chat" or "completion"
    prompt_ids: list[int]
    max_tokens: int
    params: SamplingParams
    stop: list[str]
    seed: int | None
    stream: bool
    include_usage: bool
    echo: str = ""  # completions with echo: the prompt text, sent before the reply
    tools: bool = False  # chat with tools offered: <tool_call> blocks in the reply become tool_calls


def _sampling(req: Sampling, cfg: ServerConfig) -> tuple[SamplingParams, int]:
    """(sampling params, max_tokens), every value in range; range errors come from SamplingParams."""
    for name in ("presence_penalty", "frequency_penalty"):  # OpenAI's; ours is repetition_penalty
        if getattr(req, name) not in (None, 0.0):
            raise APIError(400, f"{name} is not supported; use repetition_penalty (1 = off, 1.1 = mild)", name,
                           "unsupported_parameter")
    if req.n not in (None, 1):
        raise APIError(400, "n must be 1: this server generates one choice per request", "n", "unsupported_value")
    if req.logprobs not in (None, False, 0):
        raise APIError(400, "logprobs are not supported by this server", "logprobs", "unsupported_parameter")
    params = SamplingParams(1.0 if req.temperature is None else req.temperature, req.top_k, req.top_p,
                            1.0 if req.repetition_penalty is None else req.repetition_penalty)
    try:
        params.validate()
    except MMLabError as e:  # its message starts with the field's name: "top_p=1.5 must be in (0, 1]"
        raise APIError(400, str(e), str(e).split("=")[0], "invalid_value") from None
    name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_tokens = getattr(req, name)
    max_tokens = min(cfg.default_max_tokens, cfg.max_tokens_limit) if max_tokens is None else max_tokens
    if not 1 <= max_tokens <= cfg.max_tokens_limit:
        raise APIError(400, f"{name}={max_tokens} must be between 1 and this server's limit of "
                            f"{cfg.max_tokens_limit}", name, "invalid_value")
    if req.seed is not None and not -(1 << 63) <= req.seed < (1 << 64):
        raise APIError(400, f"seed={req.seed} must fit in 64 bits", "seed", "invalid_value")
    return params, max_tokens


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise APIError(400, "the request body is not UTF-8 text", None, "invalid_json") from None
    except json.JSONDecodeError as e:
        raise APIError(400, f"the request body is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})",
                       None, "invalid_json") from None
    except ValueError as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", None, "invalid_json") from None
    except RecursionError:
        raise APIError(400, "the request body nests too deeply", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {_json_type(body)}", None, "invalid_json")
    return body


def _validated(model: type[Sampling], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise _api_error(e) from None
    except RecursionError:  # an object nested thousands deep inside a valid body
        raise APIError(400, "the request body nests too deeply", None, "invalid_json") from None


def _check_prompt(ids: list[int], param: str, limit: int, context: int) -> None:
    if len(ids) > limit:
        raise APIError(400, f"the prompt is {len(ids)} tokens; this server accepts at most {limit} "
                            f"(the model's context is {context})", param, "context_length_exceeded")


def chat_request(raw: bytes, tokenizer: Tokenizer, cfg: ServerConfig, prompt_limit: int, context: int
                 ) -> GenerationRequest:
    """A ``POST /v1/chat/completions`` body -> what the engine needs, or an ``APIError``."""
    req: ChatRequest = _validated(ChatRequest, _parse_json(raw))
    params, max_tokens = _sampling(req, cfg)
    tools = [t.model_dump(exclude_none=True) for t in req.tools or []] if req.tool_choice != "none" else []
    thinking = req.chat_template_kwargs.enable_thinking if req.chat_template_kwargs else None
    try:
        ids, _ = encode_chat(tokenizer, [_template_message(i, m) for i, m in enumerate(req.messages)],
                             add_generation_prompt=True, tools=tools or None, enable_thinking=thinking)
    except TokenizerError as e:
        raise APIError(400, f"messages cannot be encoded by this model's tokenizer: {e}", "messages",
                       "invalid_value") from None
    _check_prompt(ids, "messages", prompt_limit, context)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return GenerationRequest("chat", ids, max_tokens, params, req.stop, req.seed, bool(req.stream), include_usage,
                             tools=bool(tools))


def _template_message(i: int, m: ChatMessage) -> dict[str, Any]:
    """A request's message as the chat template takes it; a tool call's JSON-string arguments are parsed."""
    if m.content is None and not (m.role == "assistant" and m.tool_calls):
        where = f"messages[{i}].content"
        if "content" not in m.model_fields_set:
            raise APIError(400, f"{where} is required", where, "missing")
        raise APIError(400, f"{where} must be a string (null only on an assistant message with tool_calls)", where,
                       "invalid_type")
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.reasoning_content is not None:
        out["reasoning_content"] = m.reasoning_content
    if m.tool_calls is not None:
        calls = []
        for j, call in enumerate(m.tool_calls):
            where = f"messages[{i}].tool_calls[{j}].function.arguments"
            try:
                args = json.loads(call.function.arguments)
            except json.JSONDecodeError as e:
                raise APIError(400, f"{where} is not valid JSON: {e.msg}", where, "invalid_value") from None
            if not isinstance(args, dict):
                raise APIError(400, f"{where} must be a JSON object", where, "invalid_value")
            calls.append({"type": "function", "function": {"name": call.function.name, "arguments": args}})
        out["tool_calls"] = calls
    return out


def completion_request(raw: bytes, tokenizer: Tokenizer, cfg: ServerConfig, prompt_limit: int, context: int
                       ) -> GenerationRequest:
    """A ``POST /v1/completions`` body -> what the engine needs, or an ``APIError``."""
    req: CompletionRequest = _validated(CompletionRequest, _parse_json(raw))
    if isinstance(req.prompt, str):
        try:
            ids, text = start_ids(tokenizer, req.prompt), req.prompt
        except TokenizerError as e:
            raise APIError(400, f"prompt cannot be encoded by this model's tokenizer: {e}", "prompt",
                           "invalid_value") from None
    else:
        if not all(0 <= t < tokenizer.vocab_size for t in req.prompt):
            raise APIError(400, f"prompt holds token ids outside the vocabulary [0, {tokenizer.vocab_size})",
                           "prompt", "invalid_value")
        ids, text = list(req.prompt), tokenizer.decode(list(req.prompt))
    params, max_tokens = _sampling(req, cfg)
    if req.suffix not in (None, ""):
        raise APIError(400, "suffix (fill-in-the-middle) is not supported", "suffix", "unsupported_parameter")
    _check_prompt(ids, "prompt", prompt_limit, context)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return GenerationRequest("completion", ids, max_tokens, params, req.stop, req.seed, bool(req.stream),
                             include_usage, text if req.echo else "")


# ---------------------------------------------------------------------------------------------------
# The engine: one worker thread owns the model.

class Job:
    """A request in the engine. The worker calls ``put`` with ("text", str), then ("done", Completion) or
    ("error", str); the request's coroutine awaits ``get``. Made inside the event loop, it hands events to
    that loop (thread-safe); made elsewhere, it queues them for ``get_nowait``-style use in tests."""

    def __init__(self, request: GenerationRequest):
        self.request = request
        self.cancelled = threading.Event()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self.events: asyncio.Queue[tuple[str, Any]] | queue.Queue[tuple[str, Any]] = (
            asyncio.Queue() if self._loop is not None else queue.Queue())
        self._held: list[tuple[str, Any]] = []  # an event read past a run of text pieces, next in line

    def put(self, event: tuple[str, Any]) -> None:
        if self._loop is None:
            self.events.put_nowait(event)
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: the server is gone, nobody listens
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)

    async def get(self, timeout: float) -> tuple[str, Any]:
        """The next event; ``TimeoutError`` after ``timeout`` seconds without one. Text pieces that have
        already arrived come as one: a stream that falls behind the engine (16 clients on 2 cores) sends one
        chunk per wake-up instead of one per token, so its overhead does not grow with the batch."""
        if self._held:
            event = self._held.pop()
        elif not self.events.empty():  # no timer task when the event is already here
            event = self.events.get_nowait()
        else:
            event = await asyncio.wait_for(self.events.get(), timeout)  # type: ignore[misc]
        if event[0] != "text":
            return event
        text = event[1]
        while not self.events.empty():
            after = self.events.get_nowait()
            if after[0] != "text":
                self._held.append(after)
                break
            text += after[1]
        return "text", text


class _Admission:
    """Counts the requests an engine holds (waiting or being generated) and turns away those beyond its
    ``capacity`` with a 429; shared by both engines."""

    capacity: int

    def _init_admission(self) -> None:
        self._admitted = 0
        self._closed = False  # once close() is called nothing new is admitted: the worker is finishing
        self._lock = threading.Lock()

    @property
    def admitted(self) -> int:
        """Requests waiting or being generated."""
        return self._admitted

    def _admit(self) -> None:
        with self._lock:
            if self._closed:
                raise APIError(503, "the server is shutting down", None, "shutting_down", type="server_error")
            if self._admitted >= self.capacity:
                raise APIError(429, f"the server is busy: {self._admitted} requests are already waiting or "
                                    "running; retry shortly", None, "queue_full", type="rate_limit_error")
            self._admitted += 1

    def _leave(self) -> None:
        with self._lock:
            self._admitted -= 1


class Engine(_Admission):
    """Generates one request at a time, in order; at most ``1 + queue_size`` requests are admitted."""

    def __init__(self, model: MiniMindLM, tokenizer: Tokenizer, queue_size: int = 8):
        self.model, self.tokenizer = model, tokenizer
        self.queue_size = queue_size
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._init_admission()
        self._worker = threading.Thread(target=self._work, name="mmlab-engine", daemon=True)
        self._worker.start()

    @property
    def capacity(self) -> int:
        return self.queue_size + 1  # the one being generated, and the queue

    def submit(self, request: GenerationRequest) -> Job:
        self._admit()
        job = Job(request)
        self._jobs.put(job)
        return job

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._jobs.put(None)
        self._worker.join(timeout=10)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if not job.cancelled.is_set():
                    self._run(job)
            except Exception:  # a bug, not bad input: log it, tell the client without details
                log.exception("generation failed")
                job.put(("error", "internal error while generating; see the server log"))
            finally:
                self._leave()

    def _run(self, job: Job) -> None:
        r = job.request
        done = Completion(self.model, self.tokenizer, r.prompt_ids, r.max_tokens, r.params, r.stop, r.seed)
        pieces = iter(done)
        try:
            for piece in pieces:
                if job.cancelled.is_set():
                    return  # nobody is listening: stop spending compute on it
                job.put(("text", piece))
        finally:
            pieces.close()
        job.put(("done", done))


class Finished:
    """What a finished request reports (the counts and finish reason a ``Completion`` reports)."""

    def __init__(self, prompt_tokens: int):
        self.prompt_tokens, self.completion_tokens, self.finish_reason = prompt_tokens, 0, None


class _Live:
    def __init__(self, job: Job, rid: int, tokenizer: Tokenizer):
        self.job, self.rid = job, rid
        self.text, self.stops = TextStream(tokenizer), StopStrings(job.request.stop)
        self.done = Finished(len(job.request.prompt_ids))


class BatchingEngine(_Admission):
    """The server's engine when requests are batched: one worker thread owns ``mmlab.infer.engine.Engine``
    (continuous batching, paged KV cache, prefix caching) and turns each request's tokens into text pieces
    on its ``Job`` exactly as ``Completion`` does for one request at a time. At most ``max_batch`` requests
    decode together and ``queue_size`` more wait; beyond that, 429. Handler threads only check a request
    and hand it over: the batcher itself is touched by the worker alone."""

    def __init__(self, model: MiniMindLM, tokenizer: Tokenizer, queue_size: int = 8, max_batch: int = 16,
                 block_size: int = 16):
        from mmlab.infer.engine import Engine as Batcher

        self.model, self.tokenizer, self.queue_size, self.max_batch = model, tokenizer, queue_size, max_batch
        self.batcher = Batcher(model, block_size=block_size, max_batch=max_batch,
                               max_waiting=queue_size + max_batch)  # never below what submit() admits
        start = tokenizer.token_to_id(IM_START)
        self._stop_ids = stop_ids(tokenizer) + ([] if start is None else [start])
        self._incoming: queue.Queue[Job | None] = queue.Queue()
        self._live: dict[int, _Live] = {}  # the worker's: request id in the batcher -> its job
        self._init_admission()
        self._worker = threading.Thread(target=self._work, name="mmlab-batching-engine", daemon=True)
        self._worker.start()

    @property
    def capacity(self) -> int:
        return self.max_batch + self.queue_size

    def submit(self, request: GenerationRequest) -> Job:
        # a batched sequence lives in its KV blocks: it ends when it fills the model's context (finish reason
        # "length"), where one request at a time slides a window past it
        room = self.model.cfg.max_seq_len - len(request.prompt_ids)
        if room < 1:
            raise APIError(400, f"the prompt ({len(request.prompt_ids)} tokens) fills the model's context of "
                                f"{self.model.cfg.max_seq_len} tokens: no room for a reply", "messages",
                           "context_length_exceeded")
        if request.max_tokens > room:
            request = dataclasses.replace(request, max_tokens=room)
        try:
            self.batcher.check(request.prompt_ids, request.max_tokens, request.params)
        except MMLabError as e:  # a request that cannot fit in the KV pool at all
            raise APIError(429, str(e), None, "kv_cache_full", type="rate_limit_error") from None
        self._admit()
        job = Job(request)
        self._incoming.put(job)
        return job

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._incoming.put(None)
        self._worker.join(timeout=10)

    def _release(self, rid: int) -> None:
        del self._live[rid]
        self.batcher.finished.pop(rid, None)  # the server keeps nothing of a finished request
        self._leave()

    def _take(self, job: Job) -> None:
        r, p = job.request, job.request.params
        try:
            rid = self.batcher.add(r.prompt_ids, r.max_tokens, temperature=p.temperature, top_k=p.top_k,
                                   top_p=p.top_p, repetition_penalty=p.repetition_penalty, stop_tokens=self._stop_ids,
                                   seed=r.seed)
        except MMLabError as e:  # submit() checked it, so this is a bug: answer it, keep the worker alive
            log.error("could not queue a request: %s", e)
            job.put(("error", "internal error while queueing the request; see the server log"))
            self._leave()
            return
        self._live[rid] = _Live(job, rid, self.tokenizer)

    def _end(self, live: _Live, reason: str, tail: bool = True) -> None:
        text = (live.stops.feed(live.text.flush())[0] + live.stops.flush()) if tail else ""
        if text:
            live.job.put(("text", text))
        live.done.finish_reason = reason
        live.job.put(("done", live.done))
        self._release(live.rid)

    def _work(self) -> None:
        closing = False
        while True:
            try:  # wait for a request when idle; otherwise take what has arrived and go on
                while (job := self._incoming.get(block=not closing and not self.batcher.has_work())) is not None:
                    self._take(job)
                closing = True  # close() was called: finish what is in flight, then stop
            except queue.Empty:
                pass
            if closing and not self.batcher.has_work():
                return
            for rid, live in list(self._live.items()):
                if live.job.cancelled.is_set():  # the client went away: its blocks return to the pool now
                    self.batcher.cancel(rid)
                    self._release(rid)
            try:
                events = self.batcher.step()
            except Exception:  # a bug, not bad input: every request in flight gets an error, blocks return
                log.exception("batched generation failed")
                for rid, live in list(self._live.items()):
                    self.batcher.cancel(rid)
                    live.job.put(("error", "internal error while generating; see the server log"))
                    self._release(rid)
                continue
            for rid, token, reason in events:
                live = self._live.get(rid)
                if live is None:
                    continue
                if token is not None:
                    live.done.completion_tokens += 1
                    text, hit = live.stops.feed(live.text.push(token) or "")
                    if text:
                        live.job.put(("text", text))
                    if hit:  # a stop string: the reply ends here, and the batcher lets the sequence go
                        self.batcher.cancel(rid)
                        self._end(live, "stop", tail=False)
                        continue
                if reason is not None:
                    self._end(live, "length" if reason == "length" else "stop")


# ---------------------------------------------------------------------------------------------------
# HTTP: the FastAPI app

def _usage(done: Completion | Finished) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


class _ClientGone(Exception):
    """The client closed the connection while we were answering."""


def _error_response(e: APIError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(e.body(), e.status, headers)


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _reply_message(reply: ParsedReply) -> dict[str, Any]:
    """A parsed reply as OpenAI's assistant message: content null when it only calls tools."""
    message: dict[str, Any] = {"role": "assistant",
                               "content": None if reply.tool_calls and not reply.content else reply.content}
    if reply.reasoning is not None:
        message["reasoning_content"] = reply.reasoning
    if reply.tool_calls:
        message["tool_calls"] = [c.openai(_call_id()) for c in reply.tool_calls]
    return message


def _deltas(events: list[tuple[str, Any]], calls: list[int]) -> list[dict[str, Any]]:
    """Stream events as chat deltas; ``calls`` counts the tool calls sent so far (their index)."""
    out = []
    for kind, value in events:
        if kind == "reasoning":
            out.append({"reasoning_content": value})
        elif kind == "content":
            out.append({"content": value})
        elif kind == "tool_call":
            out.append({"tool_calls": [{"index": calls[0], **value.openai(_call_id())}]})
            calls[0] += 1
        else:
            log.warning("the model wrote a tool call that cannot be read: %s", value)
    return out


def _note(request: Request, text: str) -> None:
    """What the request's log line says after its status (token counts, an error code, a disconnect)."""
    request.state.note = text


def _chunk(base: dict[str, Any], chat: bool, include_usage: bool, text: str | None, finish: str | None = None,
           first: bool = False, delta: dict[str, Any] | None = None) -> str:
    """One Server-Sent Event in OpenAI's chunk format (a chat chunk's ``delta`` may be given whole)."""
    if chat:
        delta = delta if delta is not None else {} if text is None else {"content": text}
        if first:
            delta = {"role": "assistant", "content": ""}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    body = {**base, "choices": [choice]}
    if include_usage:
        body["usage"] = None  # OpenAI: null on every chunk but the last, which carries the counts
    return f"data: {json.dumps(body)}\n\n"


class _AccessLog:
    """One log line per request, written when the answer is complete (a stream: when it ends), and the last
    line of defence: an exception nothing else caught is logged and answered 500 with no traceback."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), ["-"]

        async def send_and_note(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception:
            log.exception("request failed: %s %s", scope["method"], scope["path"])
            if status[0] == "-":
                error = APIError(500, "internal server error; see the server log", None, "internal_error",
                                 type="server_error")
                with contextlib.suppress(Exception):  # the client may be gone as well
                    await _error_response(error)(scope, receive, send_and_note)
        finally:
            query = scope.get("query_string", b"").decode("latin-1")
            path = scope["path"] + (f"?{query}" if query else "")
            note = scope.get("state", {}).get("note", "")
            client = (scope.get("client") or ("-",))[0]
            log.info('%s "%s %s" %s%s %.3fs', client, scope["method"], path, status[0], f" {note}" if note else "",
                     time.perf_counter() - started)


class _Stream(StreamingResponse):
    """An SSE response that cancels its request however it ends: done, client gone, or never started."""

    def __init__(self, job: Job, request: Request, content: AsyncIterator[str]):
        super().__init__(content, media_type="text/event-stream; charset=utf-8",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job, self.request = job, request

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.job.cancelled.is_set() and not getattr(self.job, "answered", False):
                _note(self.request, "client disconnected")
            self.job.cancelled.set()  # a no-op once finished; otherwise the worker drops the request


def create_app(engine: Engine | BatchingEngine, config: ServerConfig, model_name: str) -> FastAPI:
    """The FastAPI app answering for ``engine``: routes, request models, OpenAI-shaped errors."""
    from mmlab import __version__

    context = engine.model.cfg.max_seq_len
    prompt_limit = min(config.max_prompt_tokens or context, context)
    created = int(time.time())
    app = FastAPI(title="mmlab", version=__version__, docs_url="/docs", redoc_url=None,
                  description=f"An OpenAI-compatible server for {model_name}.")
    app.add_middleware(_AccessLog)

    # --- errors: every one in OpenAI's shape ---------------------------------------------------------

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        _note(request, e.code or e.type)
        return _error_response(e)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        headers = dict(e.headers or {})
        if e.status_code == 404:
            error = APIError(404, f"unknown path {request.url.path}: try GET /, /health, /v1/models, /docs, "
                                  "POST /v1/chat/completions or /v1/completions", None, "not_found")
        elif e.status_code == 405:
            allowed = sorted({method for route in app.routes if getattr(route, "methods", None)  # GET and HEAD
                              and route.matches(request.scope)[0] != Match.NONE for method in route.methods})
            headers["Allow"] = ", ".join(allowed)  # are two routes, and Starlette names only the first
            error = APIError(405, f"{request.method} is not allowed on {request.url.path} (allowed: "
                                  f"{headers['Allow']})", None, "method_not_allowed")
        else:
            error = APIError(e.status_code, str(e.detail), None, "http_error")
        _note(request, error.code or "")
        return _error_response(error, headers)

    @app.exception_handler(RequestValidationError)  # no route declares a body, so only a path parameter
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return await api_error(request, APIError(400, str(e.errors()[0].get("msg")), None, "invalid_value"))

    # --- GET (and HEAD: its headers) --------------------------------------------------------------------

    def get(path: str, **options: Any) -> Any:
        def register(route: Any) -> Any:
            app.head(path, **{**options, "include_in_schema": False})(route)
            return app.get(path, **options)(route)
        return register

    @get("/", response_class=HTMLResponse)
    @get("/index.html", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        from mmlab.infer.webchat import render_page

        return HTMLResponse(render_page(model_name, config.max_tokens_limit, config.default_max_tokens))

    @get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "context": context,
                "requests": {"admitted": engine.admitted, "limit": engine.capacity}}

    def card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "mmlab"}

    @get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [card()]}

    @get("/v1/models/{name:path}")
    async def model_info(name: str) -> dict[str, Any]:
        if name.rstrip("/") != model_name:
            raise APIError(404, f"model {name!r} not found; this server serves {model_name!r}", "model",
                           "model_not_found")
        return card()

    # --- POST ------------------------------------------------------------------------------------------

    async def read_body(request: Request) -> bytes:
        limit = config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:  # refused without reading it
            raise APIError(413, f"the request body is {declared} bytes; this server accepts at most {limit}",
                           None, "request_too_large")
        data = bytearray()
        async for piece in request.stream():
            data += piece
            if len(data) > limit:
                raise APIError(413, f"the request body is over {limit} bytes, the most this server accepts", None,
                               "request_too_large")
        return bytes(data)

    def schema(model: type[BaseModel]) -> dict[str, Any]:  # the request model, shown at /docs
        return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema(
            ref_template="#/components/schemas/{model}")}}}}

    @app.post("/v1/chat/completions", openapi_extra=schema(ChatRequest))
    async def chat(request: Request) -> Response:
        raw = await read_body(request)
        job_request = await run_in_threadpool(chat_request, raw, engine.tokenizer, config, prompt_limit, context)
        return await answer(request, job_request)

    @app.post("/v1/completions", openapi_extra=schema(CompletionRequest))
    async def completions(request: Request) -> Response:
        raw = await read_body(request)
        job_request = await run_in_threadpool(completion_request, raw, engine.tokenizer, config, prompt_limit,
                                              context)
        return await answer(request, job_request)

    # --- answering -------------------------------------------------------------------------------------

    async def answer(request: Request, r: GenerationRequest) -> Response:
        job = engine.submit(r)  # 429 when the server is full
        if r.stream:
            return _Stream(job, request, stream(request, job))
        try:
            return await whole(request, job)
        finally:
            job.cancelled.set()  # a no-op once finished; otherwise the worker drops the request

    def envelope(kind: str, rid: str) -> dict[str, Any]:
        return {"id": rid, "object": kind, "created": int(time.time()), "model": model_name}

    def finished(request: Request, job: Job, done: Completion | Finished) -> None:
        job.answered = True  # type: ignore[attr-defined]
        _note(request, f"prompt={done.prompt_tokens} completion={done.completion_tokens} "
                       f"finish={done.finish_reason}")

    async def whole(request: Request, job: Job) -> Response:
        r = job.request
        pieces = [r.echo]
        check_at = time.monotonic() + POLL_S
        while True:
            try:
                event, value = await job.get(POLL_S)
            except TimeoutError:
                event = value = None
            if time.monotonic() >= check_at:  # nothing is written until the end: look whether the client left
                if await request.is_disconnected():
                    _note(request, "client disconnected")
                    return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
                check_at = time.monotonic() + POLL_S
            if event == "text":
                pieces.append(value)
            elif event == "error":
                raise APIError(500, value, None, "internal_error", type="server_error")
            elif event == "done":
                break
        finished(request, job, value)
        text = "".join(pieces)
        if r.kind == "chat":
            body = envelope("chat.completion", f"chatcmpl-{uuid.uuid4().hex}")
            reply = parse_reply(text, tools=r.tools)
            for error in reply.errors:
                log.warning("the model wrote a tool call that cannot be read: %s", error)
            finish = "tool_calls" if reply.tool_calls and value.finish_reason == "stop" else value.finish_reason
            body["choices"] = [{"index": 0, "message": _reply_message(reply), "logprobs": None,
                                "finish_reason": finish}]
        else:
            body = envelope("text_completion", f"cmpl-{uuid.uuid4().hex}")
            body["choices"] = [{"index": 0, "text": text, "logprobs": None, "finish_reason": value.finish_reason}]
        body["usage"] = _usage(value)
        return JSONResponse(body)

    async def stream(request: Request, job: Job) -> AsyncIterator[str]:
        r = job.request
        chat = r.kind == "chat"
        base = envelope("chat.completion.chunk" if chat else "text_completion",
                        f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}")
        reader, calls = ReplyStream(r.tools), [0]
        try:
            if chat:
                yield _chunk(base, chat, r.include_usage, None, first=True)
            if r.echo:
                yield _chunk(base, chat, r.include_usage, r.echo)
            while True:
                try:
                    event, value = await job.get(KEEPALIVE_S)
                except TimeoutError:  # still queued or thinking: a comment keeps proxies open, finds lost clients
                    yield ": keep-alive\n\n"
                    continue
                if event == "text" and chat:
                    for delta in _deltas(reader.feed(value), calls):
                        yield _chunk(base, chat, r.include_usage, None, delta=delta)
                elif event == "text":
                    yield _chunk(base, chat, r.include_usage, value)
                elif event == "error":
                    job.answered = True  # type: ignore[attr-defined]
                    _note(request, "internal error")
                    error = APIError(500, value, None, "internal_error", type="server_error").body()
                    yield f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n"
                    return
                else:
                    break
            finished(request, job, value)
            finish = value.finish_reason
            if chat:
                for delta in _deltas(reader.finish(), calls):
                    yield _chunk(base, chat, r.include_usage, None, delta=delta)
                finish = "tool_calls" if calls[0] and finish == "stop" else finish
            yield _chunk(base, chat, r.include_usage, None, finish)
            if r.include_usage:
                yield f"data: {json.dumps({**base, 'choices': [], 'usage': _usage(value)})}\n\n"
            yield "data: [DONE]\n\n"
        except Exception:  # a bug after the status line went out: end the stream with an error event
            log.exception("stream failed")
            job.answered = True  # type: ignore[attr-defined]
            _note(request, "internal error")
            error = APIError(500, "internal server error; see the server log", None, "internal_error",
                             type="server_error")
            yield f"data: {json.dumps(error.body())}\n\ndata: [DONE]\n\n"

    app.state.engine = engine
    return app


# ---------------------------------------------------------------------------------------------------
# uvicorn

class _Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, answering a request that is not HTTP with JSON like every other error."""

    def send_400_response(self, msg: str) -> None:
        import h11

        data = json.dumps(APIError(400, f"malformed HTTP request: {msg}", None, "invalid_http").body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=data),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


class ChatServer:
    """A bound server: its engine, its FastAPI ``app``, and uvicorn answering on ``url``.

    ``serve_forever()`` answers until ``shutdown()`` (from another thread) or Ctrl-C; ``server_close()``
    then stops the engine. The socket is bound in the constructor, so a busy port is an error at once and
    port 0 has its number (``server_address``) before serving starts."""

    def __init__(self, engine: Engine | BatchingEngine, config: ServerConfig, model_name: str):
        self.engine, self.config, self.model_name = engine, config, model_name
        self.app = create_app(engine, config, model_name)
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((config.host, config.port))
        except OSError:
            self.socket.close()
            raise
        self.socket.listen(64)  # the backlog: a burst of clients is accepted, then answered (maybe 429)
        self.server_address = self.socket.getsockname()
        self._uvicorn = uvicorn.Server(uvicorn.Config(
            self.app, http=_Protocol, lifespan="off", access_log=False, log_config=None,
            timeout_keep_alive=max(1, int(config.timeout_s)), timeout_graceful_shutdown=2))
        self._uvicorn.install_signal_handlers = lambda: None  # Ctrl-C reaches serve_forever as KeyboardInterrupt
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Answer requests until ``shutdown()`` (uvicorn looks for it every 0.1 s)."""
        try:
            asyncio.run(self._uvicorn.serve(sockets=[self.socket]))
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serving (from another thread); returns once ``serve_forever`` has returned."""
        self._uvicorn.should_exit = True
        self._stopped.wait(timeout=10)

    def server_close(self) -> None:
        with contextlib.suppress(OSError):
            self.socket.close()
        self.engine.close()


def _model_name(ckpt: str | Path) -> str:
    from mmlab.train.checkpoint import resolve_checkpoint

    folder = resolve_checkpoint(ckpt).resolve()
    return folder.parent.name if folder.name in ("ckpt", "ckpt.old") else folder.name


def make_server(ckpt: str | Path, config: ServerConfig | None = None, device: str = "auto") -> ChatServer:
    """Load a checkpoint and bind a server to ``config.host:config.port`` (port 0: any free port).
    Call ``serve_forever()`` to answer requests; ``shutdown()`` then ``server_close()`` to stop."""
    from mmlab.device import resolve_device
    from mmlab.infer.engine import paged_incompatibility
    from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model

    config = config or ServerConfig()
    config.validate()
    tokenizer = load_checkpoint_tokenizer(ckpt)
    model = load_model(ckpt, device=resolve_device(device))
    model.eval()
    if config.batch > 1 and paged_incompatibility(model.cfg) is None:
        engine: Engine | BatchingEngine = BatchingEngine(model, tokenizer, config.queue, config.batch)
    else:  # one request at a time (also for the models the batching engine cannot cache)
        engine = Engine(model, tokenizer, config.queue)
    try:
        return ChatServer(engine, config, config.model_name or _model_name(ckpt))
    except OSError as e:
        engine.close()
        raise MMLabError(f"cannot listen on {config.host}:{config.port}: {e.strerror or e}") from None


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a line is logged, not as it was when the handler was made (a test's
    captured stream is closed when the test ends; a server thread may log after that)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def serve(ckpt: str | Path, config: ServerConfig | None = None, device: str = "auto") -> None:
    """``mmlab serve``: answer requests until Ctrl-C, logging one line per request to stderr."""
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    server = make_server(ckpt, config, device)
    cfg = server.engine.model.cfg
    batch = getattr(server.engine, "max_batch", 1)
    log.info("serving %s (context %d tokens, %d decoded together, up to %d more queued) on %s  — chat page: %s/",
             server.model_name, cfg.max_seq_len, batch, server.engine.queue_size, server.url, server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        server.server_close()
