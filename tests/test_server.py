"""The OpenAI-compatible server, its chat page (driven in headless Chromium) and the terminal chat.

One tiny checkpoint and one server (ephemeral port, background thread) serve the whole module."""

import contextlib
import io
import json
import logging
import socket
import threading
import time
from http.client import HTTPConnection

import pytest

from browser import Chromium, Tab, require_chromium, wait_until
from conftest import serving
from mmlab.cli import main
from mmlab.config import get_preset
from mmlab.infer import server as server_module
from mmlab.infer.chat import ChatSession, chat, fit_history
from mmlab.infer.completion import StopStrings
from mmlab.infer.generate import SamplingParams
from mmlab.infer.server import BatchingEngine
from mmlab.tokenizer.chat import encode_chat
from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model
from mmlab.train.config import TrainConfig
from mmlab.train.pretrain import pretrain

HI = [{"role": "user", "content": "Hi"}]
LIMITS = {"max_tokens_limit": 64, "default_max_tokens": 16, "max_prompt_tokens": 48, "queue": 2,
          "max_body_bytes": 64 * 1024, "timeout_s": 10}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("srv") / "tiny"
    cfg = TrainConfig(out_dir=str(out), max_iters=4, batch_size=4, eval_interval=4, eval_batches=1, log_interval=4,
                      warmup_iters=1, lr=3e-3, progress=False)
    pretrain(get_preset("nano", max_seq_len=64, vocab_size=300), "synthetic-stories", cfg, tokenizer="bpe")
    return out


def running(ckpt, **limits):
    """A server on an ephemeral port with the tests' limits (``conftest.serving``)."""
    return serving(ckpt, **{**LIMITS, **limits})


@pytest.fixture(scope="module", params=[16, 1], ids=["batched", "one-at-a-time"])
def server(ckpt, request):
    """The batching engine (the default) and the one-request-at-a-time engine answer the same tests."""
    with running(ckpt, batch=request.param) as srv:
        assert isinstance(srv.engine, BatchingEngine) == (request.param > 1)
        yield srv


def call(server, method, path, body=None, raw=None, headers=None, timeout=20):
    """-> (status, headers, parsed JSON or text)."""
    conn = HTTPConnection("127.0.0.1", server.server_address[1], timeout=timeout)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    res = conn.getresponse()
    text = res.read().decode()
    conn.close()
    kind = res.getheader("Content-Type", "")
    return res.status, res, json.loads(text) if kind.startswith("application/json") else text


def events(text):
    """The data lines of a Server-Sent Events body, parsed (the final "[DONE]" kept as a string)."""
    out = []
    for block in text.split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                out.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
    return out


def chat_req(server, stream=False, **fields):
    return call(server, "POST", "/v1/chat/completions", {"messages": HI, "stream": stream, **fields})


def streamed_text(chunks):
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1] if c["choices"])


def assert_api_error(status, body, expected_status, param=None, code=None):
    assert status == expected_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    if code is not None:
        assert body["error"]["code"] == code, body


def healthy(server):
    status, _, body = call(server, "GET", "/health")
    return status == 200 and body["status"] == "ok"


# --- endpoints -------------------------------------------------------------------------------------

def test_health_models_and_page(server):
    status, _, body = call(server, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["model"] == "tiny" and body["context"] == 64
    status, _, body = call(server, "GET", "/v1/models")
    assert status == 200 and body["object"] == "list" and [m["id"] for m in body["data"]] == ["tiny"]
    assert call(server, "GET", "/v1/models/tiny")[2]["id"] == "tiny"
    status, _, body = call(server, "GET", "/v1/models/gpt-4")
    assert_api_error(status, body, 404, "model", "model_not_found")
    status, res, page = call(server, "GET", "/")
    assert status == 200 and res.getheader("Content-Type").startswith("text/html")
    for needle in ('id="temperature"', 'id="top_p"', 'id="max_tokens"', "getReader()", "/v1/chat/completions",
                   'max="64"', "model: tiny"):
        assert needle in page
    assert "http://" not in page and "https://" not in page  # no CDN: the browser may have no internet


def test_chat_completion(server, ckpt):
    status, _, body = chat_req(server, max_tokens=8, seed=1)
    assert status == 200 and body["object"] == "chat.completion" and body["model"] == "tiny"
    assert body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    prompt_ids, _ = encode_chat(load_checkpoint_tokenizer(ckpt), HI, add_generation_prompt=True)
    assert usage["prompt_tokens"] == len(prompt_ids)
    assert 0 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert (choice["finish_reason"] == "length") == (usage["completion_tokens"] == 8)


def test_chat_streaming_matches_the_whole_reply(server):
    whole = chat_req(server, max_tokens=12, seed=3)[2]
    status, res, text = chat_req(server, stream=True, max_tokens=12, seed=3, stream_options={"include_usage": True})
    assert status == 200 and res.getheader("Content-Type").startswith("text/event-stream")
    chunks = events(text)
    assert chunks[-1] == "[DONE]"
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks[:-1])
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    usage_chunk = chunks[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == whole["usage"]
    assert chunks[-3]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-3])
    assert streamed_text(chunks) == whole["choices"][0]["message"]["content"]
    # without stream_options, no usage field at all (OpenAI's default)
    plain = events(chat_req(server, stream=True, max_tokens=4, seed=3)[2])
    assert plain[-1] == "[DONE]" and all("usage" not in c for c in plain[:-1])


def test_completions(server, ckpt):
    body = {"prompt": "Once upon a time", "max_tokens": 10, "seed": 5}
    status, _, whole = call(server, "POST", "/v1/completions", body)
    assert status == 200 and whole["object"] == "text_completion"
    (choice,) = whole["choices"]
    assert set(choice) == {"index", "text", "logprobs", "finish_reason"}
    status, _, text = call(server, "POST", "/v1/completions", {**body, "stream": True})
    chunks = events(text)
    assert status == 200 and chunks[-1] == "[DONE]" and chunks[-2]["choices"][0]["finish_reason"] is not None
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == choice["text"]
    echoed = call(server, "POST", "/v1/completions", {**body, "echo": True})[2]
    assert echoed["choices"][0]["text"] == "Once upon a time" + choice["text"]
    # a prompt given as token ids, and as a one-string array
    ids = load_checkpoint_tokenizer(ckpt).encode("Once upon a time")
    assert call(server, "POST", "/v1/completions", {**body, "prompt": ids})[2]["choices"] == whole["choices"]
    assert call(server, "POST", "/v1/completions", {**body, "prompt": ["Once upon a time"]})[2]["choices"] == \
        whole["choices"]


# --- sampling --------------------------------------------------------------------------------------

def reply(server, **fields):
    status, _, body = chat_req(server, **{"max_tokens": 16, **fields})
    assert status == 200, body
    return body["choices"][0]["message"]["content"], body


def test_seeded_sampling_is_reproducible_and_seeds_differ(server):
    a, _ = reply(server, seed=7, temperature=1.0)
    assert reply(server, seed=7, temperature=1.0)[0] == a
    others = {reply(server, seed=s, temperature=1.0)[0] for s in (8, 9, 10)}
    assert others != {a}


def test_greedy_top_k_and_penalty(server):
    greedy = {reply(server, seed=s, temperature=0)[0] for s in (1, 2)}
    assert len(greedy) == 1  # temperature 0: the seed does not matter
    assert reply(server, seed=3, temperature=1.0, top_k=1)[0] in greedy  # top_k 1 is greedy too
    assert reply(server, seed=3, temperature=1.0, top_p=1e-6)[0] in greedy  # so is a tiny nucleus
    status, _, _ = chat_req(server, max_tokens=4, repetition_penalty=1.3, top_k=5, top_p=0.9, temperature=0.7)
    assert status == 200


def test_max_tokens_respected(server):
    for n in (1, 3, 9):
        _, body = reply(server, max_tokens=n, seed=11, temperature=1.0)
        used = body["usage"]["completion_tokens"]
        assert used <= n and (body["choices"][0]["finish_reason"] == "length") == (used == n)
    _, body = reply(server, max_tokens=None, seed=11)  # null: the server's default (16)
    assert body["usage"]["completion_tokens"] <= 16


def test_stop_strings(server):
    text, body = reply(server, max_tokens=32, seed=4, temperature=0.9)
    assert len(text) >= 4, text
    stop = text[2:4]
    cut, body = reply(server, max_tokens=32, seed=4, temperature=0.9, stop=["never-appears", stop])
    assert cut == text[: text.index(stop)] and body["choices"][0]["finish_reason"] == "stop"
    chunks = events(chat_req(server, stream=True, max_tokens=32, seed=4, temperature=0.9, stop=stop)[2])
    assert streamed_text(chunks) == cut and chunks[-2]["choices"][0]["finish_reason"] == "stop"


def test_stop_strings_across_pieces():
    s = StopStrings(["\n\n", "END"])
    assert s.feed("ab\n") == ("ab", False)  # "\n" may begin "\n\n": held back
    assert s.feed("c E") == ("\nc ", False)  # released; "E" may begin "END"
    assert s.feed("N") == ("", False)
    assert s.feed("Dx") == ("", True)  # cut at "END", which is not part of the reply
    s = StopStrings(["END"])
    assert s.feed("xEN") == ("x", False) and s.flush() == "EN"  # generation ended: the held text is text
    assert StopStrings([]).feed("EN") == ("EN", False)


# --- errors ----------------------------------------------------------------------------------------

CHAT = "/v1/chat/completions"
BAD_REQUESTS = [  # (path, body, param, code)
    (CHAT, {"messages": HI, "temperature": "hot"}, "temperature", "invalid_type"),
    (CHAT, {"messages": HI, "temperature": 10**400}, "temperature", "invalid_type"),  # no float holds it
    (CHAT, {"messages": HI, "top_p": -(10**400)}, "top_p", "invalid_type"),
    (CHAT, {"messages": HI, "temperature": -1}, "temperature", "invalid_value"),
    (CHAT, {"messages": HI, "top_p": 1.5}, "top_p", "invalid_value"),
    (CHAT, {"messages": HI, "top_p": [0.5]}, "top_p", "invalid_type"),
    (CHAT, {"messages": HI, "top_k": 0}, "top_k", "invalid_value"),
    (CHAT, {"messages": HI, "repetition_penalty": 0}, "repetition_penalty", "invalid_value"),
    (CHAT, {"messages": HI, "max_tokens": "ten"}, "max_tokens", "invalid_type"),
    (CHAT, {"messages": HI, "max_tokens": 65}, "max_tokens", "invalid_value"),
    (CHAT, {"messages": HI, "max_tokens": 0}, "max_tokens", "invalid_value"),
    (CHAT, {"messages": HI, "max_completion_tokens": 1000}, "max_completion_tokens", "invalid_value"),
    (CHAT, {"messages": HI, "seed": 1.5}, "seed", "invalid_type"),
    (CHAT, {"messages": HI, "seed": 1 << 70}, "seed", "invalid_value"),
    (CHAT, {"messages": HI, "stream": "yes"}, "stream", "invalid_type"),
    (CHAT, {"messages": HI, "stream_options": 1}, "stream_options", "invalid_type"),
    (CHAT, {"messages": HI, "stop": 5}, "stop", "invalid_type"),
    (CHAT, {"messages": HI, "stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    (CHAT, {"messages": HI, "n": 2}, "n", "unsupported_value"),
    (CHAT, {"messages": HI, "logprobs": True}, "logprobs", "unsupported_parameter"),
    (CHAT, {"messages": HI, "presence_penalty": 0.5}, "presence_penalty", "unsupported_parameter"),
    (CHAT, {"messages": HI, "model": 3}, "model", "invalid_type"),
    (CHAT, {}, "messages", "missing"),
    (CHAT, {"messages": []}, "messages", "invalid_value"),
    (CHAT, {"messages": "Hi"}, "messages", "invalid_type"),
    (CHAT, {"messages": [1]}, "messages[0]", "invalid_type"),
    (CHAT, {"messages": [{"role": "wizard", "content": "Hi"}]}, "messages[0].role", "invalid_value"),
    (CHAT, {"messages": [{"content": "Hi"}]}, "messages[0].role", "missing"),
    (CHAT, {"messages": [{"role": "user"}]}, "messages[0].content", "missing"),
    (CHAT, {"messages": HI, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage",
     "invalid_type"),
    (CHAT, {"messages": HI, "top_k": 2.0}, "top_k", "invalid_type"),
    (CHAT, {"messages": HI, "max_tokens": 10**400}, "max_tokens", "invalid_value"),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "invalid_type"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content", "invalid_value"),
    (CHAT, {"messages": [{"role": "user", "content": "story " * 60}]}, "messages", "context_length_exceeded"),
    ("/v1/completions", {}, "prompt", "missing"),
    ("/v1/completions", {"prompt": 5}, "prompt", "invalid_type"),
    ("/v1/completions", {"prompt": ["a", "b"]}, "prompt", "invalid_type"),
    ("/v1/completions", {"prompt": [1, 99999]}, "prompt", "invalid_value"),
    ("/v1/completions", {"prompt": "x", "echo": "yes"}, "echo", "invalid_type"),
    ("/v1/completions", {"prompt": "story " * 60}, "prompt", "context_length_exceeded"),
]


@pytest.mark.parametrize(("path", "body", "param", "code"), BAD_REQUESTS,
                         ids=[f"{p.rsplit('/', 1)[-1]}-{param}-{code}" for p, _, param, code in BAD_REQUESTS])
def test_bad_fields_are_400_json_errors(server, path, body, param, code):
    status, _, reply_body = call(server, "POST", path, body)
    assert_api_error(status, reply_body, 400, param, code)


@pytest.mark.parametrize("raw", [b"{bad", b"[1, 2]", b'"text"', b"", b"\xff\xfe", b'{"messages": [], "x": NaN}',
                                 b"[" * 50_000],
                         ids=["truncated", "array", "string", "empty", "not-utf8", "nan", "deep"])
def test_malformed_bodies_are_400(server, raw):
    status, _, body = call(server, "POST", CHAT, raw=raw)
    assert_api_error(status, body, 400, None, "invalid_json")


def test_unknown_paths_wrong_methods_and_oversized_bodies(server):
    for method, path in (("GET", "/nope"), ("POST", "/v1/nope"), ("GET", "/v1/chat")):
        status, _, body = call(server, method, path)
        assert_api_error(status, body, 404, None, "not_found")
    for method, path, allowed in (("GET", CHAT, "POST"), ("POST", "/health", "GET, HEAD"),
                                  ("DELETE", "/v1/models", "GET, HEAD"), ("PUT", "/v1/completions", "POST")):
        status, res, body = call(server, method, path, raw=b"{}" if method != "GET" else None)
        assert_api_error(status, body, 405, None, "method_not_allowed")
        assert res.getheader("Allow") == allowed
    big = json.dumps({"messages": HI, "pad": "x" * (64 * 1024)}).encode()
    status, _, body = call(server, "POST", CHAT, raw=big)
    assert_api_error(status, body, 413, None, "request_too_large")
    # a huge declared length is refused without reading it
    status, _, body = call(server, "POST", CHAT, raw=b"{}", headers={"Content-Length": str(10**12)})
    assert_api_error(status, body, 413, None, "request_too_large")
    assert healthy(server)


def raw_exchange(server, data: bytes) -> bytes:
    """Send raw bytes, read one response: its head and a Content-Length body (or what comes until close)."""
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as s:
        s.sendall(data)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
            if whole_answer(received) or (data.startswith(b"HEAD ") and b"\r\n\r\n" in received):
                break
    return received


def test_raw_protocol_errors_are_json(server):
    # no Content-Length and no chunked body: an empty body, which is not JSON
    head, _, body = raw_exchange(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n").partition(
        b"\r\n\r\n")
    assert_api_error(int(head.split()[1]), json.loads(body), 400, None, "invalid_json")
    # a chunked body is read like any other
    body = json.dumps({"messages": HI, "max_tokens": 2}).encode()
    head, _, reply_body = raw_exchange(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                                       % (len(body), body)).partition(b"\r\n\r\n")
    assert head.split()[1] == b"200" and json.loads(reply_body)["usage"]["completion_tokens"] <= 2
    for garbage in (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -3\r\n\r\n", b"THIS IS NOT HTTP\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost x\r\n\r\n"):
        head, _, body = raw_exchange(server, garbage).partition(b"\r\n\r\n")
        assert_api_error(int(head.split()[1]), json.loads(body), 400, None, "invalid_http")
    head, _, body = raw_exchange(server, b"BREW /health HTTP/1.1\r\nHost: x\r\n\r\n").partition(b"\r\n\r\n")
    assert_api_error(int(head.split()[1]), json.loads(body), 405, None, "method_not_allowed")
    assert healthy(server)


def test_one_log_line_per_request(server, caplog):
    caplog.set_level(logging.INFO, logger="mmlab.server")
    call(server, "POST", CHAT + "?probe=1", {"messages": HI, "max_tokens": 3})
    call(server, "GET", "/nope?probe=2")

    def lines():  # the line is written once the answer is sent, so wait for it; tagged, since other tests log too
        return [r.getMessage() for r in caplog.records if r.name == "mmlab.server" and "probe=" in r.getMessage()]

    assert wait_until(lambda: len(lines()) >= 2, 5)
    time.sleep(0.1)
    got = lines()
    assert len(got) == 2, got
    assert '"POST /v1/chat/completions?probe=1" 200 prompt=' in got[0] and "completion=" in got[0]
    assert '"GET /nope?probe=2" 404 not_found' in got[1]


def test_a_bug_in_generation_is_a_500_without_traceback_and_the_server_goes_on(server, monkeypatch, caplog):
    caplog.set_level(logging.CRITICAL, logger="mmlab.server")  # the traceback goes to the log, not to the client

    def broken(*args):
        raise RuntimeError("secret internals")

    if isinstance(server.engine, BatchingEngine):
        monkeypatch.setattr(server.engine.batcher, "step", broken)
    else:
        monkeypatch.setattr(server.engine, "_run", broken)
    status, _, body = chat_req(server, max_tokens=2)
    assert_api_error(status, body, 500, None, "internal_error")
    assert "secret" not in body["error"]["message"]
    status, _, text = chat_req(server, stream=True, max_tokens=2)
    chunks = events(text)
    assert status == 200 and chunks[-1] == "[DONE]" and chunks[-2]["error"]["code"] == "internal_error"
    assert "secret" not in text
    monkeypatch.undo()
    if isinstance(server.engine, BatchingEngine):  # the failed step's requests gave their blocks back
        assert wait_until(lambda: server.engine.batcher.pool.held() == 0, 5)
    assert reply(server, max_tokens=2, seed=1)[1]["usage"]["completion_tokens"] <= 2


# --- concurrency -----------------------------------------------------------------------------------

def test_full_queue_answers_429_quickly(server, monkeypatch):
    gate = threading.Event()
    if isinstance(server.engine, BatchingEngine):  # hold the batch's first step until the server is full
        step = server.engine.batcher.step
        monkeypatch.setattr(server.engine.batcher, "step", lambda: (gate.wait(10), step())[1])
    else:
        run = server.engine._run
        monkeypatch.setattr(server.engine, "_run", lambda job: (gate.wait(10), run(job)))
    results = []
    admitted = server.engine.capacity
    threads = [threading.Thread(target=lambda: results.append(chat_req(server, max_tokens=2, seed=1)[0]))
               for _ in range(admitted)]
    try:
        for t in threads:
            t.start()
        assert wait_until(lambda: server.engine.admitted == admitted)
        start = time.perf_counter()
        status, _, body = chat_req(server, stream=True, max_tokens=2)
        assert time.perf_counter() - start < 2
        assert_api_error(status, body, 429, None, "queue_full")
        assert body["error"]["type"] == "rate_limit_error"
        assert healthy(server)  # /health does not queue behind generation
    finally:
        gate.set()
        for t in threads:
            t.join(timeout=10)
    assert results == [200] * admitted
    assert wait_until(lambda: server.engine.admitted == 0)


def test_a_closed_engine_refuses_new_requests_with_503(ckpt):
    with running(ckpt) as srv:
        srv.engine.close()
        status, _, body = chat_req(srv, max_tokens=2)
        assert_api_error(status, body, 503, None, "shutting_down")


@pytest.mark.parametrize("queue", [2, 16])
def test_many_concurrent_streaming_clients(server, ckpt, queue):
    """16 clients at once: with a queue of 2 some are turned away (429), with 16 every one is served."""
    with contextlib.ExitStack() as stack:
        if queue != server.engine.queue_size:
            server = stack.enter_context(running(ckpt, queue=queue))
        many_streams(server, 16, expect_all=queue >= 15)


def many_streams(server, n, expect_all):
    barrier = threading.Barrier(n)
    outcomes = [None] * n

    def client(i):
        barrier.wait(timeout=10)
        status, _, body = chat_req(server, stream=True, max_tokens=24, seed=i)
        if status == 200:
            chunks = events(body)
            outcomes[i] = "done" if chunks[-1] == "[DONE]" and chunks[-2]["choices"][0]["finish_reason"] else body
        else:
            outcomes[i] = status if status == 429 and body["error"]["code"] == "queue_full" else body

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert time.perf_counter() - start < 30
    assert all(o in ("done", 429) for o in outcomes), outcomes
    print(f"{outcomes.count('done')} streams completed, {outcomes.count(429)} got 429")
    assert outcomes.count("done") == n if expect_all else "done" in outcomes
    assert healthy(server) and wait_until(lambda: server.engine.admitted == 0)
    if isinstance(server.engine, BatchingEngine):  # nothing of a finished request is kept, so memory stays flat
        assert server.engine.batcher.finished == {} and server.engine.batcher.pool.held() == 0
    assert reply(server, max_tokens=4, seed=1)[1]["usage"]["completion_tokens"] <= 4


def test_client_disconnect_mid_stream_cancels_generation(server, caplog):
    caplog.set_level(logging.INFO, logger="mmlab.server")
    forwards = []

    def slow(module, args):  # 10 ms per token, so that the stream is still running when the client leaves
        forwards.append(1)
        time.sleep(0.01)

    hook = server.engine.model.register_forward_pre_hook(slow)
    try:
        body = json.dumps({"messages": HI, "stream": True, "max_tokens": 64, "temperature": 1.0, "seed": 0}).encode()
        s = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        received = b""
        while received.count(b"data: ") < 3:  # the role chunk and two tokens
            chunk = s.recv(4096)
            assert chunk, received
            received += chunk
        s.close()
        assert wait_until(lambda: server.engine.admitted == 0)
        assert len(forwards) < 60  # stopped early: 64 tokens would need 64 forward passes
        assert wait_until(lambda: any("client disconnected" in r.getMessage() for r in caplog.records), 5)
    finally:
        hook.remove()
    assert healthy(server)
    assert reply(server, max_tokens=4, seed=1)[0] is not None



def test_client_disconnect_while_waiting_for_a_whole_reply_cancels_it(server, caplog):
    caplog.set_level(logging.INFO, logger="mmlab.server")
    forwards = []

    def slow(module, args):
        forwards.append(1)
        time.sleep(0.01)

    hook = server.engine.model.register_forward_pre_hook(slow)
    try:
        body = json.dumps({"messages": HI, "max_tokens": 64, "temperature": 1.0, "seed": 0,
                           "probe": "whole-gone"}).encode()
        s = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10)
        s.sendall(b"POST /v1/chat/completions?gone=1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert wait_until(lambda: len(forwards) >= 3)
        s.close()  # nothing has been sent back yet: the server must notice by itself
        assert wait_until(lambda: server.engine.admitted == 0)
        assert len(forwards) < 60
        assert wait_until(lambda: any("gone=1" in r.getMessage() and "client disconnected" in r.getMessage()
                                      for r in caplog.records), 5)
    finally:
        hook.remove()
    assert healthy(server)


def test_head_requests_get_headers_without_a_body(server):
    for path, kind in (("/", "text/html"), ("/health", "application/json")):
        reply_bytes = raw_exchange(server, f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head, _, body = reply_bytes.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0].split()[1] == "200", lines
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}  # names are case-blind
        assert headers["content-type"].startswith(kind) and int(headers["content-length"]) > 0
        assert body == b""


def test_an_error_after_the_stream_started_ends_the_stream_not_a_second_response(server, monkeypatch, caplog):
    caplog.set_level(logging.CRITICAL, logger="mmlab.server")
    real = server_module._chunk
    calls = []

    def failing(*args, **kwargs):  # the role chunk goes out, then a bug strikes
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("secret internals")
        return real(*args, **kwargs)

    monkeypatch.setattr(server_module, "_chunk", failing)
    status, _, text = chat_req(server, stream=True, max_tokens=4)
    monkeypatch.undo()
    assert status == 200 and "HTTP/1" not in text and "secret" not in text
    chunks = events(text)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["error"]["code"] == "internal_error" and chunks[-1] == "[DONE]"
    assert healthy(server) and wait_until(lambda: server.engine.admitted == 0)


# --- the official openai client ---------------------------------------------------------------------

def test_the_official_openai_client_works(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=20)
    assert [m.id for m in client.models.list()] == ["tiny"]
    whole = client.chat.completions.create(model="tiny", messages=HI, max_tokens=6, temperature=0)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.usage.completion_tokens <= 6 and whole.choices[0].finish_reason in ("stop", "length")
    pieces, usage = [], None
    for chunk in client.chat.completions.create(model="tiny", messages=HI, max_tokens=6, temperature=0,
                                                stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(pieces) == whole.choices[0].message.content  # greedy: the stream is the whole reply
    assert usage.completion_tokens == whole.usage.completion_tokens
    text = client.completions.create(model="tiny", prompt="Once upon", max_tokens=5, temperature=0, seed=1)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="Once upon", max_tokens=5, temperature=0, seed=1, stream=True) if c.choices)
    assert streamed == text.choices[0].text
    with pytest.raises(openai.BadRequestError) as e:  # errors arrive as the client's own exception types
        client.chat.completions.create(model="tiny", messages=HI, temperature=-1)
    assert e.value.status_code == 400 and e.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_the_request_models_are_published_as_openapi(server):
    status, _, spec = call(server, "GET", "/openapi.json")
    assert status == 200
    schema = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "messages" in schema["required"] and {"temperature", "top_k", "stop"} <= set(schema["properties"])
    assert call(server, "GET", "/docs")[0] == 200


# --- a soak: many clients, random disconnects, malformed requests --------------------------------------

def whole_answer(received: bytes) -> bool:
    """Whether ``received`` holds a complete response with a Content-Length."""
    head, sep, body = received.partition(b"\r\n\r\n")
    lengths = [line.split(b":", 1)[1] for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    return bool(sep and lengths and len(body) >= int(lengths[0]))


def test_soak_random_disconnects_and_bad_requests_leak_nothing(server):
    """Clients that leave mid-stream, leave while waiting, send garbage, or finish, all at once, for a few
    rounds: no 5xx, every request accounted for, and (batched) every KV block back in the pool."""
    import random

    port = server.server_address[1]
    statuses, lock = [], threading.Lock()

    def post(body: bytes, leave_after: int | None) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            received = b""
            while leave_after is None or received.count(b"data: ") < leave_after:
                chunk = s.recv(65536)
                if not chunk or b"data: [DONE]" in (received := received + chunk) or whole_answer(received):
                    break
        if received:
            with lock:
                statuses.append(int(received.split()[1]))

    def client(i: int) -> None:
        rng = random.Random(i)
        kind = rng.choice(["stream-leave", "stream", "whole-leave", "whole", "garbage", "bad-field"])
        request = {"messages": [{"role": "system", "content": "You tell stories."}, *HI], "seed": i,
                   "max_tokens": rng.randint(4, 40), "temperature": 1.0, "stream": kind.startswith("stream")}
        if kind == "garbage":
            post(rng.choice([b"{bad", b"[" * 5000, b'{"messages": 5}', b"\xff"]), None)
        elif kind == "bad-field":
            post(json.dumps({**request, rng.choice(["top_p", "max_tokens", "seed"]): 10**400}).encode(), None)
        elif kind == "whole-leave":
            post(json.dumps(request).encode(), 0)  # sends, then hangs up before any answer
        else:
            post(json.dumps(request).encode(), rng.randint(1, 4) if kind == "stream-leave" else None)

    for round_ in range(3):
        threads = [threading.Thread(target=client, args=(round_ * 100 + i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    print(f"soak: {len(statuses)} answers seen, statuses {sorted(set(statuses))}")
    assert statuses and all(code < 500 for code in statuses), statuses
    assert set(statuses) <= {200, 400, 429}, statuses
    assert wait_until(lambda: server.engine.admitted == 0, 10)
    if isinstance(server.engine, BatchingEngine):
        assert wait_until(lambda: server.engine.batcher.pool.held() == 0, 5)
        assert server.engine.batcher.finished == {} and not server.engine.batcher.has_work()
    assert healthy(server)


# --- the chat page, in a real browser ----------------------------------------------------------------

def test_chat_page_streams_a_reply_in_headless_chromium(server, tmp_path):
    browser = Chromium(require_chromium(), tmp_path / "profile")
    try:
        tab = Tab(browser)
        tab.open(f"{server.url}/")
        # the settings the page sends: greedy, 10 tokens
        tab.js("document.getElementById('temperature').value = '0'; "
               "document.getElementById('max_tokens').value = '10'")
        tab.js("document.getElementById('input').focus()")
        tab.send("Input.insertText", {"text": "Hello there"})  # typed, as a user would
        for kind in ("keyDown", "keyUp"):
            tab.send("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter",
                                                "windowsVirtualKeyCode": 13})
        assert wait_until(lambda: tab.js("document.body.dataset.state") in ("done", "error"), 20)
        page = tab.js("""(() => {
            const q = (s) => [...document.querySelectorAll(s)];
            return {state: document.body.dataset.state, user: q('.user').map(e => e.textContent),
                    replies: q('.assistant').map(e => [e.textContent, e.dataset.chunks]),
                    meta: q('.meta').map(e => e.textContent), errors: q('.error').map(e => e.textContent),
                    input: document.getElementById('input').value};
        })()""")
        console_errors = tab.errors()
    finally:
        browser.close()
    assert page["state"] == "done", page
    assert console_errors == []  # no script error, no failed load (the page even names its own empty icon)
    assert page["user"] == ["Hello there"] and page["input"] == ""
    # what the page shows is what the API streams for the same request, chunk by chunk
    messages = [{"role": "user", "content": "Hello there"}]
    _, _, text = call(server, "POST", CHAT, {"messages": messages, "stream": True, "temperature": 0,
                                             "top_p": 0.95, "max_tokens": 10,
                                             "stream_options": {"include_usage": True}})
    chunks = events(text)
    expected = streamed_text(chunks[:-1])
    n_tokens = chunks[-2]["usage"]["completion_tokens"]
    [(shown, shown_chunks)] = page["replies"]
    # a stream coalesces the tokens that arrived since the last wake-up, so how many chunks carry them
    # depends on timing: the page counts every chunk it drew, at least one and at most one per token
    assert shown == expected and 1 <= int(shown_chunks) <= n_tokens
    assert page["meta"] == [f"{chunks[-2]['usage']['completion_tokens']} tokens, "
                            f"finish: {chunks[-3]['choices'][0]['finish_reason']}"]


# --- the terminal chat -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def loaded(ckpt):
    return load_model(ckpt), load_checkpoint_tokenizer(ckpt)


def test_chat_session_keeps_history_and_resets(loaded):
    model, tok = loaded
    session = ChatSession(model, tok, max_new_tokens=3, seed=0)
    first = "".join(session.reply("Hi"))
    assert [m["role"] for m in session.history] == ["user", "assistant"] and session.history[1]["content"] == first
    done = session.reply("So?")
    list(done)
    assert session.dropped == 0 and [m["content"] for m in session.history[::2]] == ["Hi", "So?"]
    # the second prompt holds the whole conversation
    ids, _ = encode_chat(tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": first},
                               {"role": "user", "content": "So?"}], add_generation_prompt=True)
    assert done.prompt_ids == ids
    session.reset()
    assert session.history == []


def test_fit_history_drops_the_oldest_exchanges(loaded):
    _, tok = loaded
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"question {i} " * 3}, {"role": "assistant", "content": "ok " * 3}]
    history.append({"role": "user", "content": "last"})
    ids, dropped = fit_history(tok, "sys", history, 64)
    assert len(ids) <= 64 and dropped > 0 and dropped % 2 == 0
    assert ids == encode_chat(tok, [{"role": "system", "content": "sys"}, *history[dropped:]], True)[0]
    with pytest.raises(Exception, match="context"):
        fit_history(tok, None, [{"role": "user", "content": "word " * 100}], 64)
    # room for the reply: more old exchanges go, and the prompt leaves the reserve free
    roomy, dropped_more = fit_history(tok, "sys", history, 64, reserve=24)
    assert len(roomy) <= 64 - 24 and dropped_more >= dropped
    # the new message alone may eat into the reserve, but never fills the context
    alone, _ = fit_history(tok, None, [{"role": "user", "content": "word " * 8}], 64, reserve=60)
    assert 4 < len(alone) < 64


def test_chat_session_leaves_room_for_the_reply(loaded):
    model, tok = loaded
    session = ChatSession(model, tok, max_new_tokens=16, params=SamplingParams(temperature=0.0))
    for i in range(8):
        list(session.reply(f"q{i}"))
        context = model.cfg.max_seq_len
        prompt = encode_chat(tok, session.history[:-1], add_generation_prompt=True)[0]
        assert len(prompt) <= context - 16, (i, len(prompt))


def test_chat_loop_commands(ckpt):
    lines = iter(["Hi", "", "/reset", "/help", "word " * 100, "Hello", "/quit", "never read"])
    out = io.StringIO()
    chat(str(ckpt), max_new_tokens=4, seed=0, device="cpu", read=lambda prompt: next(lines), out=out)
    text = out.getvalue()
    assert text.count("bot> ") == 2 and "(conversation cleared)" in text and "/reset" in text
    assert "cannot send this" in text and next(lines) == "never read"


def test_chat_and_serve_cli(ckpt, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n/quit\n"))
    assert main(["chat", "--ckpt", str(ckpt), "--max-new-tokens", "3", "--seed", "1", "--temperature", "0",
                 "--device", "cpu"]) == 0
    assert "bot> " in capsys.readouterr().out
    assert main(["chat", "--ckpt", str(ckpt), "--top-p", "2"]) == 1
    assert "top_p" in capsys.readouterr().err
    assert main(["serve", "--ckpt", str(ckpt / "missing")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["serve", "--ckpt", str(ckpt), "--queue", "-1"]) == 1
    assert "queue" in capsys.readouterr().err
