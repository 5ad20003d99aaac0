"""Serving many users: N concurrent streaming clients against the real `mmlab serve` server on 127.0.0.1
(each engine in its own `mmlab serve` process),
one request at a time (``--batch 1``) against continuous batching (``--batch 16``), side by side in one run.
Prints JSON (and writes it with ``--out``).

The model: lesson 21's, 4 layers x 256 (4 query heads, 2 KV heads), context 512, with a byte-level BPE of
MiniMind's 6,400 tokens trained on the registry's 2 MiB of TinyStories (``--quick``: 64 wide, a small BPE on
synthetic stories), random weights (speed does not depend on what the weights learned), saved as a checkpoint the
server loads. Every
client streams ``/v1/completions`` (``stream_options.include_usage``) with its own prompt and seed,
``max_tokens`` new tokens, temperature 0.8, no stop strings. Per run: aggregate decode throughput (tokens
the clients received / wall time from the first request to the last answer), time to first token and
per-request latency (p50 / p95), and the 429s. Engines and concurrencies are interleaved (1, 4, 16 clients;
one-at-a-time, then batched, for each; ``--repeats`` rounds of all of them, medians reported), so a slow moment
of the machine hits both alike. Beside them, the same requests go through the engine in this process with no
HTTP and no clients (``engine_alone``): the share of the batching gain that survives the server.

    python benchmarks/serve_load.py                      # 1 / 4 / 16 clients, 64 tokens each
    python benchmarks/serve_load.py --quick              # 1 / 4 clients, 8 tokens, a 64-wide model (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.client import HTTPConnection
from pathlib import Path


def build_checkpoint(folder: Path, width: int, vocab: int) -> Path:
    """The lesson's model (4 layers x ``width``, GQA 2:1, context 512) with a byte-level BPE of ``vocab`` tokens:
    MiniMind's 6,400, trained on TinyStories (the registry's 2 MiB sample), or a small one on synthetic stories."""
    import torch

    from mmlab.config import ModelConfig
    from mmlab.data.synthetic import story_corpus
    from mmlab.model import MiniMindLM
    from mmlab.tokenizer import train_bpe
    from mmlab.train.checkpoint import save_checkpoint

    if vocab > 1024:  # synthetic stories hold too few words for MiniMind's vocabulary
        from mmlab.data.registry import dataset_path
        from mmlab.errors import MMLabError

        try:
            text = dataset_path("tinystories-train-2mib").read_text(encoding="utf-8")
        except MMLabError as e:  # offline without a mirror: say so in one line
            raise SystemExit(f"serve_load: {e}") from None
        tok = train_bpe([text], vocab_size=vocab)
    else:
        tok = train_bpe(story_corpus(100_000), vocab_size=vocab)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=width, n_layers=4, n_heads=max(1, width // 64),
                      n_kv_heads=max(1, width // 128), max_seq_len=512, rope_theta=1e4)  # lesson 21's shape
    torch.manual_seed(0)
    save_checkpoint(folder / "ckpt", MiniMindLM(cfg), tok)
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(ckpt: Path, batch: int, max_tokens: int, threads: int | None, log: Path):
    """``mmlab serve`` in its own process (its own interpreter and GIL, as in production); waits for /health."""
    port = free_port()
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-c", "import sys; from mmlab.cli import main; sys.exit(main())", "serve", "--ckpt",
           str(ckpt), "--port", str(port), "--batch", str(batch), "--queue", "32", "--max-tokens-limit",
           str(max_tokens), "--default-max-tokens", str(max_tokens), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            conn = HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not answer /health within 120 s:\n{log.read_text()[-2000:]}")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def one_client(port: int, i: int, max_tokens: int, out: list) -> None:
    body = json.dumps({"prompt": f"Once upon a time, child number {i} found a", "max_tokens": max_tokens,
                       "temperature": 0.8, "seed": i, "stream": True, "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    conn = HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    res = conn.getresponse()
    if res.status != 200:
        out[i] = {"status": res.status}
        res.read()
        conn.close()
        return
    first, tokens, buffer = None, 0, b""
    while chunk := res.read1(65536):
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            if not event.startswith(b"data: ") or event == b"data: [DONE]":
                continue
            data = json.loads(event[6:])
            if first is None and data["choices"] and data["choices"][0]["text"]:
                first = time.perf_counter() - t0
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
    conn.close()
    out[i] = {"status": 200, "ttft_s": first, "latency_s": time.perf_counter() - t0, "tokens": tokens}


def load(port: int, clients: int, max_tokens: int) -> dict:
    out: list = [None] * clients
    threads = [threading.Thread(target=one_client, args=(port, i, max_tokens, out)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    wall = time.perf_counter() - t0
    done = [r for r in out if r and r["status"] == 200]
    ttft = [r["ttft_s"] for r in done if r["ttft_s"] is not None]
    latency = [r["latency_s"] for r in done]
    tokens = sum(r["tokens"] for r in done)
    return {"clients": clients, "completed": len(done), "rejected_429": sum(1 for r in out if r and r["status"] == 429),
            "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "ttft_p50_s": percentile(ttft, 0.5), "ttft_p95_s": percentile(ttft, 0.95),
            "latency_p50_s": percentile(latency, 0.5), "latency_p95_s": percentile(latency, 0.95)}


def engine_alone(ckpt: Path, clients: int, max_tokens: int) -> dict:
    """The same requests (prompts, seeds, sampling) through ``mmlab.infer.engine.Engine`` in this process, no HTTP,
    no clients: what batching alone buys, the ceiling the server's figure is measured against."""
    from mmlab.infer.engine import Engine
    from mmlab.infer.sample import start_ids, stop_ids
    from mmlab.tokenizer.base import IM_START
    from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model

    model, tok = load_model(ckpt), load_checkpoint_tokenizer(ckpt)
    stops = stop_ids(tok) + [t for t in [tok.token_to_id(IM_START)] if t is not None]  # as the server stops
    engine = Engine(model, max_batch=16)
    for i in range(clients):
        engine.add(start_ids(tok, f"Once upon a time, child number {i} found a"), max_tokens, temperature=0.8,
                   seed=i, stop_tokens=stops)
    sampling, sample = [0.0], engine._sample

    def timed_sample(req, logits):  # the share of the time spent picking tokens (one multinomial per row)
        t = time.perf_counter()
        token = sample(req, logits)
        sampling[0] += time.perf_counter() - t
        return token

    engine._sample = timed_sample
    t0 = time.perf_counter()
    out = engine.run()
    wall = time.perf_counter() - t0
    tokens = sum(len(v) for v in out.values())
    return {"clients": clients, "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "steps": engine.steps, "sampling_share": sampling[0] / wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of each server process (default: torch's own choice)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds; medians are reported "
                                                               "(default 5, --quick 1)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 5)
    if repeats < 1:
        ap.error("--repeats must be at least 1")

    import torch

    from mmlab.device import environment

    width, vocab, max_tokens, concurrency = (64, 1024, 8, [1, 4]) if args.quick else (256, 6400, 64, [1, 4, 16])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoint(Path(tmp), width, vocab)
        from mmlab.train.checkpoint import load_checkpoint_tokenizer

        vocab_size = load_checkpoint_tokenizer(ckpt / "ckpt").vocab_size  # what the BPE reached
        servers = {name: start_server(ckpt / "ckpt", batch, max_tokens, args.threads, Path(tmp) / f"{name}.log")
                   for name, batch in (("one-at-a-time", 1), ("batched", 16))}
        try:
            for _, port in servers.values():  # warm-up: first-call allocations, not part of any figure
                load(port, 2, 4)
            runs: dict[tuple[str, int], list[dict]] = {}
            alone: dict[int, list[dict]] = {}
            if args.threads:
                torch.set_num_threads(args.threads)  # the engine alone runs here, with the servers' threads
            engine_alone(ckpt / "ckpt", 2, 4)  # warm-up
            for round_ in range(repeats):
                for clients in concurrency:
                    alone.setdefault(clients, []).append(engine_alone(ckpt / "ckpt", clients, max_tokens))
                    for name, (_, port) in servers.items():
                        r = load(port, clients, max_tokens)
                        runs.setdefault((name, clients), []).append(r)
                        print(f"round {round_ + 1}/{repeats} {name:>14} x {clients:>2}: {r['tokens_per_s']:7.1f} "
                              f"tokens/s, ttft p50 {r['ttft_p50_s']:.3f} s, latency p95 {r['latency_p95_s']:.3f} s",
                              file=sys.stderr)
            for (name, clients), rs in runs.items():  # the median round of each figure, and every round's tokens/s
                med = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k.endswith("_s")}
                results.append({"engine": name, "clients": clients, "completed": min(r["completed"] for r in rs),
                                "rejected_429": sum(r["rejected_429"] for r in rs), "tokens": rs[0]["tokens"],
                                **med, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                                "tokens_per_s_rounds": [r["tokens_per_s"] for r in rs]})
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=30)
    by = {(r["engine"], r["clients"]): r for r in results}
    top = max(concurrency)
    engine_only = [{"clients": c, "tokens": rs[0]["tokens"], "steps": rs[0]["steps"],
                    "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                    "sampling_share": statistics.median(r["sampling_share"] for r in rs),
                    "tokens_per_s_rounds": [r["tokens_per_s"] for r in rs]} for c, rs in alone.items()]
    alone_by = {r["clients"]: r for r in engine_only}
    report = {
        "benchmark": "serve_load", "quick": args.quick, "width": width, "vocab": vocab_size, "max_tokens": max_tokens,
        "repeats": repeats,
        "statistic": "median over interleaved rounds",
        "results": results,
        "speedup_at_max_clients": by[("batched", top)]["tokens_per_s"] / by[("one-at-a-time", top)]["tokens_per_s"],
        "engine_alone": engine_only,
        "engine_alone_speedup_at_max_clients": alone_by[top]["tokens_per_s"] / alone_by[1]["tokens_per_s"],
        "max_clients": top, "server_torch_threads": args.threads or torch.get_num_threads(),
        "server": "mmlab serve, one process per engine; clients are threads of this process",
        "environment": environment(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
