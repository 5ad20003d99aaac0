"""Serving many users: N concurrent streaming clients against the real `mmlab serve` server on 127.0.0.1,
one request at a time (``--batch 1``) against continuous batching (``--batch 16``), side by side in one run.
Prints JSON (and writes it with ``--out``).

The model: 4 layers x 256 (4 query heads, 2 KV heads), a byte-level BPE trained on synthetic stories, random
weights (speed does not depend on what the weights learned), saved as a checkpoint the server loads. Every
client streams ``/v1/completions`` (``stream_options.include_usage``) with its own prompt and seed,
``max_tokens`` new tokens, temperature 0.8, no stop strings. Per run: aggregate decode throughput (tokens
the clients received / wall time from the first request to the last answer), time to first token and
per-request latency (p50 / p95), and the 429s. Engines and concurrencies are interleaved (1, 4, 16 clients;
one-at-a-time, then batched, for each), so a slow moment of the machine hits both alike.

    python benchmarks/serve_load.py                      # 1 / 4 / 16 clients, 64 tokens each
    python benchmarks/serve_load.py --quick              # 1 / 4 clients, 8 tokens, a 64-wide model (tests)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from http.client import HTTPConnection
from pathlib import Path


def build_checkpoint(folder: Path, width: int) -> Path:
    import torch

    from mmlab.config import ModelConfig
    from mmlab.data.synthetic import story_corpus
    from mmlab.model import MiniMindLM
    from mmlab.tokenizer import train_bpe
    from mmlab.train.checkpoint import save_checkpoint

    tok = train_bpe(story_corpus(100_000), vocab_size=1024)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=width, n_layers=4, n_heads=max(1, width // 64),
                      n_kv_heads=max(1, width // 128), max_seq_len=256, rope_theta=1e4)
    torch.manual_seed(0)
    save_checkpoint(folder / "ckpt", MiniMindLM(cfg), tok)
    return folder


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch

    from mmlab.device import environment
    from mmlab.infer.server import ServerConfig, make_server

    width, max_tokens, concurrency = (64, 8, [1, 4]) if args.quick else (256, 64, [1, 4, 16])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoint(Path(tmp), width)
        servers = {}
        for name, batch in (("one-at-a-time", 1), ("batched", 16)):
            cfg = ServerConfig(port=0, queue=32, batch=batch, max_tokens_limit=max_tokens, timeout_s=120)
            srv = make_server(ckpt, cfg, device="cpu")
            threading.Thread(target=srv.serve_forever, daemon=True).start()
            servers[name] = srv
        try:
            for srv in servers.values():  # warm-up: first-call allocations, not part of any figure
                load(srv.server_address[1], 2, 4)
            for clients in concurrency:
                for name, srv in servers.items():
                    r = load(srv.server_address[1], clients, max_tokens)
                    results.append({"engine": name, **r})
                    print(f"{name:>14} x {clients:>2}: {r['tokens_per_s']:7.1f} tokens/s, ttft p50 "
                          f"{r['ttft_p50_s']:.3f} s, latency p95 {r['latency_p95_s']:.3f} s", file=sys.stderr)
        finally:
            for srv in servers.values():
                srv.shutdown()
                srv.server_close()
    by = {(r["engine"], r["clients"]): r for r in results}
    top = max(concurrency)
    report = {
        "benchmark": "serve_load", "quick": args.quick, "width": width, "max_tokens": max_tokens,
        "results": results,
        "speedup_at_max_clients": by[("batched", top)]["tokens_per_s"] / by[("one-at-a-time", top)]["tokens_per_s"],
        "max_clients": top, "torch_threads": torch.get_num_threads(), "environment": environment(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
