"""An OpenAI-compatible HTTP server for a checkpoint, built on the standard library alone.

    mmlab serve --ckpt runs/sft            # then open http://127.0.0.1:8000/ for a chat page, or:
    curl http://127.0.0.1:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}]}'

Endpoints: ``GET /`` (the chat page), ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``
and ``POST /v1/completions``, with or without ``"stream": true`` (Server-Sent Events in OpenAI's chunk
format, ending with ``data: [DONE]``). Sampling fields: temperature, top_p, max_tokens, stop, seed, and
two extensions OpenAI does not have, top_k and repetition_penalty.

How it is built, and why:
  * ``ThreadingHTTPServer`` gives every connection a thread, which is all an HTTP front end needs.
  * The model lives in one worker thread, so nobody else ever touches it or its KV cache. By default
    that thread runs ``BatchingEngine``: up to ``batch`` requests decode together in one forward pass
    per step (continuous batching over a paged KV cache with prefix caching, ``infer/engine.py``). An
    earlier version of this server generated one request at a time (``Engine``, still ``--batch 1``),
    on the argument that a CPU decoder is compute-bound; that turned out false for small models, where
    a decode step is dominated by per-step overhead and weight reads, so a batch of 16 costs little more
    than one sequence (``benchmarks/serve_load.py`` measures it). Requests wait in a bounded queue; when it
    is full the server answers 429 at once rather than letting waits grow.
  * The worker writes text pieces into a per-request queue and the connection's thread sends them,
    so a slow or vanished client never holds up the model: a failed write cancels the request, and
    the worker drops it at its next token.
  * Every error a client can cause is a 4xx JSON body in OpenAI's shape
    ``{"error": {"message", "type", "param", "code"}}``; a bug is a 500 with no traceback sent (it is logged).

Prompts longer than the model's context (or ``max_prompt_tokens``) are refused. A batched reply ends when
it fills the context (finish reason "length"); one at a time, a reply may run past it: generation then
slides a window over the last ``max_seq_len`` tokens (see ``infer/generate.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import queue
import select
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from mmlab.errors import MMLabError
from mmlab.infer.completion import Completion, StopStrings
from mmlab.infer.generate import SamplingParams
from mmlab.infer.sample import TextStream, start_ids, stop_ids
from mmlab.model.lm import MiniMindLM
from mmlab.tokenizer.base import IM_START, Tokenizer, TokenizerError
from mmlab.tokenizer.chat import encode_chat

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
    timeout_s: float = 60.0  # a connection that sends or reads nothing for this long is closed

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
# Reading a request: every field is checked for its JSON type before anything uses it.

def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    for kind, name in ((bool, "boolean"), (str, "string"), (int, "integer"), (float, "number"), (list, "array"),
                       (dict, "object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _number(body: dict, name: str, default: float | None) -> float | None:
    value = body.get(name)
    if value is None:
        return default
    try:  # a JSON integer with hundreds of digits is a Python int that no float can hold: OverflowError
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(float(value))
    except OverflowError:
        ok = False
    if not ok:
        shown = json.dumps(value) if not isinstance(value, int) or abs(value) < 10**30 else "(a huge integer)"
        raise APIError(400, f"{name} must be a finite number, got {_json_type(value)} {shown[:80]}", name,
                       "invalid_type")
    return float(value)


def _integer(body: dict, name: str, default: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"{name} must be an integer, got {_json_type(value)} {json.dumps(value)}", name,
                       "invalid_type")
    return value


def _boolean(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(400, f"{name} must be a boolean, got {_json_type(value)}", name, "invalid_type")
    return value


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


def _stop_strings(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise APIError(400, f"stop must be a string or an array of strings, got {_json_type(stop)}", "stop",
                       "invalid_type")
    if len(stop) > 4:
        raise APIError(400, f"stop may hold at most 4 strings, got {len(stop)}", "stop", "invalid_value")
    return [s for s in stop if s]


def _sampling(body: dict, cfg: ServerConfig) -> tuple[SamplingParams, int, int | None]:
    """(sampling params, max_tokens, seed), every value checked; range errors come from SamplingParams."""
    for name in ("presence_penalty", "frequency_penalty"):  # OpenAI's; ours is repetition_penalty
        if _number(body, name, 0.0) != 0.0:
            raise APIError(400, f"{name} is not supported; use repetition_penalty (1 = off, 1.1 = mild)", name,
                           "unsupported_parameter")
    if _integer(body, "n", 1) != 1:
        raise APIError(400, "n must be 1: this server generates one choice per request", "n", "unsupported_value")
    if body.get("logprobs") not in (None, False, 0):
        raise APIError(400, "logprobs are not supported by this server", "logprobs", "unsupported_parameter")
    temperature = _number(body, "temperature", 1.0)
    top_p = _number(body, "top_p", None)
    repetition_penalty = _number(body, "repetition_penalty", 1.0)
    top_k = _integer(body, "top_k", None)
    params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
    try:
        params.validate()
    except MMLabError as e:  # its message starts with the field's name: "top_p=1.5 must be in (0, 1]"
        raise APIError(400, str(e), str(e).split("=")[0], "invalid_value") from None
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, name, min(cfg.default_max_tokens, cfg.max_tokens_limit))
    if not 1 <= max_tokens <= cfg.max_tokens_limit:
        raise APIError(400, f"{name}={max_tokens} must be between 1 and this server's limit of "
                            f"{cfg.max_tokens_limit}", name, "invalid_value")
    seed = _integer(body, "seed", None)
    if seed is not None and not -(1 << 63) <= seed < (1 << 64):
        raise APIError(400, f"seed={seed} must fit in 64 bits", "seed", "invalid_value")
    return params, max_tokens, seed


def _stream_flags(body: dict) -> tuple[bool, bool]:
    stream = _boolean(body, "stream", False)
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise APIError(400, f"stream_options must be an object, got {_json_type(options)}", "stream_options",
                       "invalid_type")
    return stream, _boolean(options, "include_usage", False)


def _message_text(i: int, content: Any) -> str:
    """A message's content: a string, or OpenAI's array of parts of which only text parts are understood."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"messages[{i}].content: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                                    "are supported", f"messages[{i}].content", "invalid_value")
            texts.append(part["text"])
        return "".join(texts)
    raise APIError(400, f"messages[{i}].content must be a string, got {_json_type(content)}",
                   f"messages[{i}].content", "invalid_type")


def _chat_messages(body: dict) -> list[dict[str, str]]:
    messages = body.get("messages")
    if messages is None:
        raise APIError(400, "messages is required: an array of {role, content} objects", "messages", "missing")
    if not isinstance(messages, list):
        raise APIError(400, f"messages must be an array, got {_json_type(messages)}", "messages", "invalid_type")
    if not messages:
        raise APIError(400, "messages must hold at least one message", "messages", "invalid_value")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise APIError(400, f"messages[{i}] must be an object, got {_json_type(m)}", f"messages[{i}]",
                           "invalid_type")
        role = m.get("role")
        role = "system" if role == "developer" else role  # OpenAI's newer name for the system role
        if role not in ("system", "user", "assistant"):
            raise APIError(400, f"messages[{i}].role={json.dumps(m.get('role'))} is not one of system, user, "
                                "assistant", f"messages[{i}].role", "invalid_value")
        out.append({"role": role, "content": _message_text(i, m.get("content"))})
    return out


def _completion_prompt(body: dict, tokenizer: Tokenizer) -> tuple[list[int], str]:
    """(ids, text) of the prompt: a string, a one-string array, or an array of token ids."""
    prompt = body.get("prompt")
    if prompt is None:
        raise APIError(400, "prompt is required (a string)", "prompt", "missing")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        try:
            return start_ids(tokenizer, prompt), prompt
        except TokenizerError as e:
            raise APIError(400, f"prompt cannot be encoded by this model's tokenizer: {e}", "prompt",
                           "invalid_value") from None
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if not all(0 <= t < tokenizer.vocab_size for t in prompt):
            raise APIError(400, f"prompt holds token ids outside the vocabulary [0, {tokenizer.vocab_size})",
                           "prompt", "invalid_value")
        return list(prompt), tokenizer.decode(list(prompt))
    raise APIError(400, "prompt must be a string or an array of token ids (one prompt per request)", "prompt",
                   "invalid_type")


# ---------------------------------------------------------------------------------------------------
# The engine: one worker thread owns the model.

class Job:
    """A request in the engine. The worker puts ("text", str), then ("done", Completion) or ("error", str)."""

    def __init__(self, request: GenerationRequest):
        self.request = request
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.cancelled = threading.Event()


class _Admission:
    """Counts the requests an engine holds (waiting or being generated) and turns away those beyond its
    ``capacity`` with a 429; shared by both engines."""

    capacity: int

    def _init_admission(self) -> None:
        self._admitted = 0
        self._lock = threading.Lock()

    @property
    def admitted(self) -> int:
        """Requests waiting or being generated."""
        return self._admitted

    def _admit(self) -> None:
        with self._lock:
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
        self._jobs.put(None)
        self._worker.join(timeout=10)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if not job.cancelled.is_set():
                    self._run(job)
            except Exception:  # a bug, not bad input: log it, tell the client without details
                log.exception("generation failed")
                job.events.put(("error", "internal error while generating; see the server log"))
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
                job.events.put(("text", piece))
        finally:
            pieces.close()
        job.events.put(("done", done))


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
            job.events.put(("error", "internal error while queueing the request; see the server log"))
            self._leave()
            return
        self._live[rid] = _Live(job, rid, self.tokenizer)

    def _end(self, live: _Live, reason: str, tail: bool = True) -> None:
        text = (live.stops.feed(live.text.flush())[0] + live.stops.flush()) if tail else ""
        if text:
            live.job.events.put(("text", text))
        live.done.finish_reason = reason
        live.job.events.put(("done", live.done))
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
                    live.job.events.put(("error", "internal error while generating; see the server log"))
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
                        live.job.events.put(("text", text))
                    if hit:  # a stop string: the reply ends here, and the batcher lets the sequence go
                        self.batcher.cancel(rid)
                        self._end(live, "stop", tail=False)
                        continue
                if reason is not None:
                    self._end(live, "length" if reason == "length" else "stop")


# ---------------------------------------------------------------------------------------------------
# HTTP

def _usage(done: Completion) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


class _ClientGone(Exception):
    """The client closed the connection while we were answering."""


class Handler(BaseHTTPRequestHandler):
    server: ChatServer
    server_version = "mmlab"

    def setup(self) -> None:
        self.timeout = self.server.config.timeout_s  # read by StreamRequestHandler.setup
        self.started = time.perf_counter()
        super().setup()

    # --- answering ---------------------------------------------------------------------------------

    def _send(self, status: int, content_type: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        """A whole response with a Content-Length; HEAD gets the headers only."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.responded = True
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(status, "application/json", json.dumps(body).encode(), headers)

    def _send_error(self, e: APIError, headers: dict[str, str] | None = None) -> None:
        self.note = e.code or e.type
        self._send_json(e.status, e.body(), headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (a malformed request line, an unknown method): JSON too, and logged."""
        self.close_connection = True
        self.request_version = "HTTP/1.0"  # a garbled request line counts as HTTP/0.9, which gets no status line
        self.note = "rejected by http.server"
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self.status = code
        self._send_json(code, APIError(code, message or phrase).body())
        self._log_line()

    def parse_request(self) -> bool:
        self.started = time.perf_counter()
        return super().parse_request()

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        self.status = int(code) if str(code).isdigit() else code  # the line is written when the request ends

    def log_message(self, format: str, *args: Any) -> None:  # silence http.server's own stderr lines
        pass

    def _log_line(self) -> None:
        elapsed = time.perf_counter() - self.started
        note = getattr(self, "note", "")
        log.info('%s "%s %s" %s%s %.3fs', self.client_address[0], self.command, getattr(self, "path", "-"),
                 getattr(self, "status", "-"), f" {note}" if note else "", elapsed)

    # --- routing -----------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET  # answered 405 (or 404) by _dispatch

    def _dispatch(self) -> None:
        self.note = ""
        self.responded = False  # True once a status line is out: an error after that cannot send another
        self.streaming = False
        path = self.path.split("?", 1)[0]
        if len(path) > 1:
            path = path.rstrip("/")
        routes = self.server.routes
        try:
            target = routes.get(path)
            if target is None and path.startswith("/v1/models/"):
                target = {"GET": Handler._model_info}
            if target is None:
                raise APIError(404, f"unknown path {path}: try GET /, /health, /v1/models, "
                                    "POST /v1/chat/completions or /v1/completions", None, "not_found")
            methods = {**target, "HEAD": target["GET"]} if "GET" in target else target  # HEAD: GET's headers
            method = methods.get(self.command)
            if method is None:
                allowed = ", ".join(sorted(methods))
                self.close_connection = True  # an unread body must not be taken for the next request
                self._send_error(APIError(405, f"{self.command} is not allowed on {path} (allowed: {allowed})",
                                          None, "method_not_allowed"), {"Allow": allowed})
                return
            method(self)
        except APIError as e:
            self._send_error(e)
        except (_ClientGone, BrokenPipeError, ConnectionResetError, TimeoutError):
            self.note = "client disconnected"
            self.close_connection = True
        except Exception:
            log.exception("request failed: %s %s", self.command, self.path)
            self.close_connection = True
            error = APIError(500, "internal server error; see the server log", None, "internal_error",
                             type="server_error")
            with contextlib.suppress(OSError, ValueError):  # the client may be gone as well
                if not self.responded:
                    self._send_error(error)
                elif self.streaming:  # mid-stream: end the stream with an error event
                    self.note = "internal error"
                    self.wfile.write(f"data: {json.dumps(error.body())}\n\ndata: [DONE]\n\n".encode())
        finally:
            self._log_line()

    # --- GET -------------------------------------------------------------------------------------------

    def _page(self) -> None:
        from mmlab.infer.webchat import render_page

        cfg = self.server.config
        data = render_page(self.server.model_name, cfg.max_tokens_limit, cfg.default_max_tokens).encode()
        self._send(200, "text/html; charset=utf-8", data)

    def _health(self) -> None:
        s = self.server
        self._send_json(200, {"status": "ok", "model": s.model_name, "context": s.engine.model.cfg.max_seq_len,
                              "requests": {"admitted": s.engine.admitted, "limit": s.engine.capacity}})

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.server.model_name, "object": "model", "created": self.server.created, "owned_by": "mmlab"}

    def _models(self) -> None:
        self._send_json(200, {"object": "list", "data": [self._model_card()]})

    def _model_info(self) -> None:
        name = self.path.split("?", 1)[0].rstrip("/")[len("/v1/models/"):]
        if name != self.server.model_name:
            raise APIError(404, f"model {name!r} not found; this server serves {self.server.model_name!r}", "model",
                           "model_not_found")
        self._send_json(200, self._model_card())

    # --- POST ------------------------------------------------------------------------------------------

    def _read_json(self) -> dict[str, Any]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise APIError(411, "send the body with a Content-Length (chunked bodies are not supported)", None,
                           "length_required")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise APIError(411, "a Content-Length header is required", None, "length_required")
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise APIError(400, f"Content-Length {length_text!r} is not a byte count", None, "invalid_header") from None
        limit = self.server.config.max_body_bytes
        if length > limit:
            self.close_connection = True
            if length <= 16 * limit:  # read it away, so the client is not reset before it sees the answer
                self._read_exactly(length)
            raise APIError(413, f"the request body is {length} bytes; this server accepts at most {limit}", None,
                           "request_too_large")
        raw = self._read_exactly(length)
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
            raise APIError(400, f"the request body must be a JSON object, got {_json_type(body)}", None,
                           "invalid_json")
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise APIError(400, f"model must be a string, got {_json_type(model)}", "model", "invalid_type")
        return body

    def _read_exactly(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) < n:
            raise _ClientGone
        return data

    def _check_prompt(self, ids: list[int], param: str) -> None:
        limit = self.server.prompt_limit
        if len(ids) > limit:
            raise APIError(400, f"the prompt is {len(ids)} tokens; this server accepts at most {limit} "
                                f"(the model's context is {self.server.engine.model.cfg.max_seq_len})", param,
                           "context_length_exceeded")

    def _chat(self) -> None:
        body = self._read_json()
        messages = _chat_messages(body)
        params, max_tokens, seed = _sampling(body, self.server.config)
        stop = _stop_strings(body)
        stream, include_usage = _stream_flags(body)
        try:
            ids, _ = encode_chat(self.server.engine.tokenizer, messages, add_generation_prompt=True)
        except TokenizerError as e:
            raise APIError(400, f"messages cannot be encoded by this model's tokenizer: {e}", "messages",
                           "invalid_value") from None
        self._check_prompt(ids, "messages")
        self._generate(GenerationRequest("chat", ids, max_tokens, params, stop, seed, stream, include_usage))

    def _completions(self) -> None:
        body = self._read_json()
        ids, text = _completion_prompt(body, self.server.engine.tokenizer)
        params, max_tokens, seed = _sampling(body, self.server.config)
        stop = _stop_strings(body)
        stream, include_usage = _stream_flags(body)
        if body.get("suffix") not in (None, ""):
            raise APIError(400, "suffix (fill-in-the-middle) is not supported", "suffix", "unsupported_parameter")
        echo = text if _boolean(body, "echo", False) else ""
        self._check_prompt(ids, "prompt")
        self._generate(GenerationRequest("completion", ids, max_tokens, params, stop, seed, stream, include_usage,
                                         echo))

    # --- generation ------------------------------------------------------------------------------------

    def _generate(self, request: GenerationRequest) -> None:
        job = self.server.engine.submit(request)  # 429 when the queue is full
        try:
            if request.stream:
                self._stream(job)
            else:
                self._whole(job)
        finally:
            job.cancelled.set()  # a no-op once finished; otherwise the worker drops the request

    def _envelope(self, kind: str, rid: str) -> dict[str, Any]:
        return {"id": rid, "object": kind, "created": int(time.time()), "model": self.server.model_name}

    def _whole(self, job: Job) -> None:
        r = job.request
        pieces = [r.echo]
        check_at = time.monotonic() + POLL_S
        while True:
            try:
                event, value = job.events.get(timeout=POLL_S)
            except queue.Empty:
                event = value = None
            if time.monotonic() >= check_at:  # nothing is written until the end: look whether the client hung up
                if self._client_hung_up():
                    raise _ClientGone
                check_at = time.monotonic() + POLL_S
            if event is None:
                continue
            if event == "text":
                pieces.append(value)
            elif event == "error":
                raise APIError(500, value, None, "internal_error", type="server_error")
            else:
                break
        done: Completion = value
        text = "".join(pieces)
        self.note = f"prompt={done.prompt_tokens} completion={done.completion_tokens} finish={done.finish_reason}"
        if r.kind == "chat":
            body = self._envelope("chat.completion", f"chatcmpl-{uuid.uuid4().hex}")
            body["choices"] = [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                                "finish_reason": done.finish_reason}]
        else:
            body = self._envelope("text_completion", f"cmpl-{uuid.uuid4().hex}")
            body["choices"] = [{"index": 0, "text": text, "logprobs": None, "finish_reason": done.finish_reason}]
        body["usage"] = _usage(done)
        self._send_json(200, body)

    def _client_hung_up(self) -> bool:
        """True when the peer closed its end: the socket reads as ready, and a peek returns no bytes."""
        try:
            ready, _, _ = select.select([self.connection], [], [], 0)
            return bool(ready) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (OSError, ValueError):  # broken pipe, reset, timeout, or a closed file
            raise _ClientGone from None

    def _stream(self, job: Job) -> None:
        r = job.request
        chat = r.kind == "chat"
        base = self._envelope("chat.completion.chunk" if chat else "text_completion",
                              f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}")

        def chunk(text: str | None, finish: str | None = None, first: bool = False) -> bytes:
            if chat:
                delta: dict[str, Any] = {} if text is None else {"content": text}
                if first:
                    delta = {"role": "assistant", "content": ""}
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            body = {**base, "choices": [choice]}
            if r.include_usage:
                body["usage"] = None  # OpenAI: null on every chunk but the last, which carries the counts
            return f"data: {json.dumps(body)}\n\n".encode()

        self.close_connection = True  # the stream's end is the connection's end (no Content-Length)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Accel-Buffering", "no")  # ask proxies not to buffer the stream
        self.send_header("Connection", "close")
        self.end_headers()
        self.responded = self.streaming = True
        if chat:
            self._write(chunk(None, first=True))
        if r.echo:
            self._write(chunk(r.echo))
        while True:
            try:
                event, value = job.events.get(timeout=KEEPALIVE_S)
            except queue.Empty:  # still queued or thinking: a comment line keeps proxies open, finds lost clients
                self._write(b": keep-alive\n\n")
                continue
            if event == "text":
                self._write(chunk(value))
            elif event == "error":
                self.note = "internal error"
                error = APIError(500, value, None, "internal_error", type="server_error").body()
                self._write(f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n".encode())
                return
            else:
                break
        done: Completion = value
        self.note = f"prompt={done.prompt_tokens} completion={done.completion_tokens} finish={done.finish_reason}"
        self._write(chunk(None, done.finish_reason))
        if r.include_usage:
            self._write(f"data: {json.dumps({**base, 'choices': [], 'usage': _usage(done)})}\n\n".encode())
        self._write(b"data: [DONE]\n\n")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


class ChatServer(ThreadingHTTPServer):
    """The HTTP server: its engine, its limits, and the route table of ``Handler``."""

    daemon_threads = True  # a hung connection must not keep the process alive at exit
    request_queue_size = 64  # the listen backlog: a burst of clients is accepted, then answered (maybe 429)
    routes: ClassVar[dict[str, dict[str, Any]]] = {
        "/": {"GET": Handler._page},
        "/index.html": {"GET": Handler._page},
        "/health": {"GET": Handler._health},
        "/v1/models": {"GET": Handler._models},
        "/v1/chat/completions": {"POST": Handler._chat},
        "/v1/completions": {"POST": Handler._completions},
    }

    def __init__(self, engine: Engine, config: ServerConfig, model_name: str):
        self.engine, self.config, self.model_name = engine, config, model_name
        ctx = engine.model.cfg.max_seq_len
        self.prompt_limit = min(config.max_prompt_tokens or ctx, ctx)
        self.created = int(time.time())
        super().__init__((config.host, config.port), Handler)

    def server_close(self) -> None:
        super().server_close()
        self.engine.close()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def _model_name(ckpt: str | Path) -> str:
    from mmlab.train.checkpoint import resolve_checkpoint

    folder = resolve_checkpoint(ckpt).resolve()
    return folder.parent.name if folder.name in ("ckpt", "ckpt.old") else folder.name


def make_server(ckpt: str | Path, config: ServerConfig | None = None, device: str = "auto") -> ChatServer:
    """Load a checkpoint and bind a server to ``config.host:config.port`` (port 0: any free port).
    Call ``serve_forever()`` to answer requests; ``shutdown()`` then ``server_close()`` to stop."""
    from mmlab.device import resolve_device
    from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model

    config = config or ServerConfig()
    config.validate()
    tokenizer = load_checkpoint_tokenizer(ckpt)
    model = load_model(ckpt, device=resolve_device(device))
    model.eval()
    if config.batch > 1 and model.cfg.causal and model.cfg.pos_encoding != "alibi":
        engine: Engine | BatchingEngine = BatchingEngine(model, tokenizer, config.queue, config.batch)
    else:  # one request at a time (also for the models the batching engine cannot cache)
        engine = Engine(model, tokenizer, config.queue)
    try:
        return ChatServer(engine, config, config.model_name or _model_name(ckpt))
    except OSError as e:
        engine.close()
        raise MMLabError(f"cannot listen on {config.host}:{config.port}: {e.strerror or e}") from None


def serve(ckpt: str | Path, config: ServerConfig | None = None, device: str = "auto") -> None:
    """``mmlab serve``: answer requests until Ctrl-C, logging one line per request to stderr."""
    if not log.handlers:
        handler = logging.StreamHandler()
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
