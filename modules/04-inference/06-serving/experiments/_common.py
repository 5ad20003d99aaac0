"""Shared by the serving lesson's experiments: the model, the workload, closed-loop clients and the three
schedulers (one request at a time, static batching, continuous batching), measured in-process.

* **The model** has MiniMind's architecture at a lesson size: 4 layers x 256, 4 query heads sharing 2 KV heads
  (head dim 64), SwiGLU, RMSNorm, RoPE, MiniMind's vocabulary (6,400) and context (512) — the shape of
  ``benchmarks/serve_load.py``'s model with MiniMind's tokenizer size and context. Its weights are random, and
  drawn wide (N(0, 0.3), as in ``tests/test_engine.py``): speed and memory do not depend on what the weights
  learned, and with the default small init every greedy continuation repeats one token, so "the schedulers give
  the same outputs" would prove little. Wide weights give sharp, varied logits.
* **The workload** is seeded: prompt and output lengths drawn from a long-tailed (log-normal) distribution, as in
  chat traffic (most prompts short, a few long), and random token ids — a prompt's content does not change what
  it costs to serve, only its length does. Every request is greedy with a fixed ``max_new_tokens`` and no stop
  token, so each scheduler does exactly the same work and must produce exactly the same tokens.
* **The clients** are closed-loop: ``C`` clients share the workload; each sends the next unsent request the
  moment its previous answer is complete (no think time), so at most ``C`` requests are ever in flight. This is
  "all requests at t = 0 with a concurrency cap of C", the way load tests such as vLLM's benchmark with
  ``--max-concurrency`` drive a server.
* **No HTTP**: the schedulers are called directly, one thread, one clock (``time.perf_counter``). A request's
  arrival, first token and last token are stamped when the driver sees them, so the comparison isolates
  scheduling from sockets and JSON (``benchmarks/serve_load.py`` measures the real server).
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mmlab.config import ModelConfig
from mmlab.infer.engine import Engine
from mmlab.infer.generate import stream_generate
from mmlab.model.kv_cache import KVCache
from mmlab.model.lm import MiniMindLM
from mmlab.model.summary import kv_cache_bytes_per_token

SCHEDULERS = ("one at a time", "static batching", "continuous batching")
MAX_BATCH = 16  # sequences decoded together at most, by the static batcher and the engine alike
BLOCK_SIZE = 16  # positions per KV block (vLLM's default)


# ---- the model -------------------------------------------------------------------------------------------
def model_config(exp: Any) -> ModelConfig:
    if exp.mode == "smoke":  # seconds end to end
        return ModelConfig(vocab_size=512, hidden_size=64, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=256,
                           rope_theta=1e4)
    return ModelConfig(vocab_size=6400, hidden_size=256, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=512,
                       rope_theta=1e4)


def serving_model(exp: Any) -> MiniMindLM:
    """The lesson's model: random, wide weights (sharp logits, varied greedy outputs)."""
    torch.manual_seed(exp.seed)
    model = MiniMindLM(model_config(exp)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.uniform_(0.5, 1.5) if name.endswith("norm.weight") else p.normal_(0, 0.3)
    return model


def describe_model(model: MiniMindLM) -> dict[str, Any]:
    cfg = model.cfg
    return {"layers": cfg.n_layers, "hidden": cfg.hidden_size, "heads": cfg.n_heads, "kv_heads": cfg.kv_heads,
            "head_dim": cfg.head_dim, "vocab": cfg.vocab_size, "max_seq_len": cfg.max_seq_len,
            "parameters": sum(p.numel() for p in model.parameters()), "dtype": "float32",
            "kv_bytes_per_token": kv_cache_bytes_per_token(cfg, 4),
            "weights": "random, N(0, 0.3) (norm gains U(0.5, 1.5)): sharp logits, varied greedy outputs"}


# ---- the workload ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One request of the workload: prompt ids and how many tokens to generate (greedy, no stop token)."""

    prompt: tuple[int, ...]
    max_new: int


def long_tailed(rng: random.Random, median: float, low: int, high: int, sigma: float = 0.8) -> int:
    """A log-normal length with this median, clipped to [low, high]."""
    return int(min(high, max(low, round(rng.lognormvariate(math.log(median), sigma)))))


def workload(n: int, seed: int, vocab: int, prompt_median: float, prompt_max: int, output_median: float,
             output_max: int) -> list[Job]:
    rng = random.Random(seed)
    jobs = []
    for _ in range(n):
        p = long_tailed(rng, prompt_median, 4, prompt_max)
        jobs.append(Job(tuple(rng.randrange(1, vocab) for _ in range(p)), long_tailed(rng, output_median, 2,
                                                                                        output_max)))
    return jobs


def mixed_workload(exp: Any, vocab: int) -> tuple[list[Job], dict[str, Any]]:
    """The workload of exp1 and exp2 (one definition, so exp2 measures the memory of exp1's traffic): its jobs and
    its settings."""
    settings = exp.pick(full=dict(n=64, prompt_median=48, prompt_max=256, output_median=32, output_max=160),
                        quick=dict(n=32, prompt_median=32, prompt_max=128, output_median=16, output_max=64),
                        smoke=dict(n=6, prompt_median=8, prompt_max=24, output_median=4, output_max=8))
    return workload(seed=exp.seed, vocab=vocab, **settings), settings


def shared_prefix_workload(n: int, seed: int, vocab: int, system_len: int, question: tuple[int, int],
                           output: tuple[int, int]) -> list[Job]:
    """``n`` requests that start with the same ``system_len``-token system prompt, then a question of their own
    (length uniform in ``question``); outputs uniform in ``output``."""
    rng = random.Random(seed)
    system = tuple(rng.randrange(1, vocab) for _ in range(system_len))
    return [Job(system + tuple(rng.randrange(1, vocab) for _ in range(rng.randint(*question))),
                rng.randint(*output)) for _ in range(n)]


# ---- clients and what they saw ---------------------------------------------------------------------------
@dataclass
class Served:
    """What one request experienced (seconds on the driver's clock)."""

    arrival: float
    first: float | None = None  # its first token
    done: float | None = None  # its last token
    output: list[int] = field(default_factory=list)


class Clients:
    """``n_clients`` closed-loop clients sharing ``jobs`` in order: each sends the next unsent job the moment its
    previous answer is complete, so at most ``n_clients`` requests are in flight."""

    def __init__(self, jobs: list[Job], n_clients: int):
        self.jobs, self.n_clients, self.sent = jobs, n_clients, 0
        self.served: list[Served | None] = [None] * len(jobs)
        self.t0 = time.perf_counter()

    def start(self) -> list[int]:
        return [i for i in (self.send(self.t0) for _ in range(self.n_clients)) if i is not None]

    def send(self, now: float) -> int | None:
        """The next job's index, stamped as arriving ``now`` (None: the workload is exhausted)."""
        if self.sent >= len(self.jobs):
            return None
        i, self.sent = self.sent, self.sent + 1
        self.served[i] = Served(arrival=now)
        return i


@dataclass
class Run:
    scheduler: str
    clients: int
    served: list[Served]
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)  # counters and traces of one scheduler

    def outputs(self) -> list[list[int]]:
        return [s.output for s in self.served]

    def summary(self) -> dict[str, float]:
        """Aggregate decode tokens/s (generated tokens / wall time from the first arrival to the last token),
        time to first token and latency (arrival to last token), p50 / p95 over the requests."""
        ttft = [s.first - s.arrival for s in self.served]
        latency = [s.done - s.arrival for s in self.served]
        tokens = sum(len(s.output) for s in self.served)
        return {"tokens_per_s": tokens / self.wall_s, "wall_s": self.wall_s, "tokens": tokens,
                "ttft_p50_s": pct(ttft, 50), "ttft_p95_s": pct(ttft, 95),
                "latency_p50_s": pct(latency, 50), "latency_p95_s": pct(latency, 95)}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


# ---- (a) one request at a time ---------------------------------------------------------------------------
def serve_one_at_a_time(model: MiniMindLM, jobs: list[Job], n_clients: int) -> Run:
    """The simplest server: a FIFO queue and one worker that runs ``stream_generate`` (a contiguous,
    preallocated KV cache of one sequence) on each request to completion before it looks at the next."""
    clients = Clients(jobs, n_clients)
    queue = deque(clients.start())
    while queue:
        i = queue.popleft()
        s = clients.served[i]
        for token in stream_generate(model, list(jobs[i].prompt), jobs[i].max_new, temperature=0.0):
            s.output.append(token)
            if s.first is None:
                s.first = time.perf_counter()
        s.done = time.perf_counter()
        if (nxt := clients.send(s.done)) is not None:
            queue.append(nxt)
    return Run("one at a time", n_clients, clients.served, time.perf_counter() - clients.t0)


# ---- (b) static batching ---------------------------------------------------------------------------------
class PaddedCache(KVCache):
    """A static KV cache for a batch of *left-padded* prompts: every row is preallocated ``max_len`` positions at
    the first write (gpt-fast's static cache, one slot per row). Like the engine's paged view, it also tells the
    model each row's own positions (a padded row's first real token is at position 0, not at its column) and a
    score bias that hides the padding from every real query."""

    def __init__(self, n_layers: int, max_len: int, pads: torch.Tensor):
        super().__init__(n_layers, max_len, static=True)
        self.pads = pads  # (B,) padding columns at the left of each row
        self.positions: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def prepare(self, n_new: int) -> None:
        """Set positions (B, n_new) and bias (B, 1, n_new, keys) for the next forward pass of ``n_new`` tokens."""
        start, width = self.seq_len, self.seq_len + n_new
        cols = torch.arange(start, width)
        self.positions = (cols[None] - self.pads[:, None]).clamp(min=0)
        if not bool(self.pads.any()):
            self.bias = None
            return
        hide = (torch.arange(width)[None, None] < self.pads[:, None, None]).expand(-1, n_new, -1).clone()
        hide[:, torch.arange(n_new), cols] = False  # a padding query sees itself: an all -inf row would be NaN
        self.bias = torch.zeros(hide.shape).masked_fill(hide, float("-inf"))[:, None]


@torch.no_grad()
def serve_static(model: MiniMindLM, jobs: list[Job], n_clients: int, max_batch: int = MAX_BATCH,
                 trace: bool = False) -> Run:
    """Static batching, as ``generate`` on a padded batch does it: take what is waiting (up to ``max_batch``),
    left-pad the prompts to the longest, prefill them in one forward pass, then decode every row together until
    the *longest* request is done. A row that has finished keeps its slot (its tokens are computed and thrown
    away), and a request that arrives meanwhile waits for the whole batch to end: head-of-line blocking.
    ``trace``: record the cache after every forward pass (exp2)."""
    clients = Clients(jobs, n_clients)
    queue = deque(clients.start())
    counts = {"batches": 0, "decode_passes": 0, "decode_rows": 0, "wasted_rows": 0, "prompt_tokens": 0,
              "padding_tokens": 0, "peak_cache_bytes": 0, "peak_padded_bytes": 0}
    per_token = kv_cache_bytes_per_token(model.cfg, 4)
    steps: list[dict[str, int]] = []
    generated = 0
    while queue:
        batch = [queue.popleft() for _ in range(min(max_batch, len(queue)))]
        prompts = [jobs[i].prompt for i in batch]
        need = [jobs[i].max_new for i in batch]
        width = max(len(p) for p in prompts)
        if width + max(need) > model.cfg.max_seq_len:
            raise ValueError(f"a padded batch needs {width + max(need)} positions; the context is "
                             f"{model.cfg.max_seq_len}")
        pads = torch.tensor([width - len(p) for p in prompts])
        ids = torch.tensor([[0] * (width - len(p)) + list(p) for p in prompts])
        cache = PaddedCache(model.cfg.n_layers, model.cfg.max_seq_len, pads)
        counts["batches"] += 1
        counts["prompt_tokens"] += sum(len(p) for p in prompts)
        counts["padding_tokens"] += int(pads.sum())
        feed = ids
        for step in range(max(need)):
            cache.prepare(feed.size(1))
            token = model(feed, cache=cache).logits[:, -1].argmax(-1)
            now = time.perf_counter()
            if step > 0:
                counts["decode_passes"] += 1
                counts["decode_rows"] += len(batch)
            for row, i in enumerate(batch):
                s = clients.served[i]
                if step >= need[row]:  # finished: this row's work is wasted until the batch ends
                    counts["wasted_rows"] += 1
                    continue
                s.output.append(int(token[row]))
                generated += 1
                if s.first is None:
                    s.first = now
                if step == need[row] - 1:
                    s.done = now
                    if (nxt := clients.send(now)) is not None:
                        queue.append(nxt)  # it waits: nobody joins a running static batch
            feed = token[:, None]
            if trace:  # real tokens: each row's prompt and what it generated (kept until the batch ends)
                steps.append({"generated": generated, "rows": len(batch), "cache_bytes": cache.nbytes(),
                              "padded_tokens": len(batch) * cache.seq_len,
                              "tokens_stored": sum(len(p) + min(step, n - 1) for p, n in zip(prompts, need,
                                                                                             strict=True))})
        counts["peak_cache_bytes"] = max(counts["peak_cache_bytes"], cache.nbytes())
        counts["peak_padded_bytes"] = max(counts["peak_padded_bytes"], len(batch) * cache.seq_len * per_token)
    return Run("static batching", n_clients, clients.served, time.perf_counter() - clients.t0,
               counts | {"trace": steps})


# ---- (c) continuous batching -----------------------------------------------------------------------------
def serve_continuous(model: MiniMindLM, jobs: list[Job], n_clients: int, max_batch: int = MAX_BATCH,
                     block_size: int = BLOCK_SIZE, n_blocks: int | None = None, prefix_cache: bool = True,
                     trace: bool = False) -> Run:
    """Continuous batching with ``mmlab.infer.engine.Engine``: a request that arrives is admitted at the next
    ``step()`` (its prompt prefilled, its blocks reserved) and one forward pass decodes every running sequence;
    a finished one leaves at once. ``trace``: record the pool after every step (exp2)."""
    engine = Engine(model, block_size=block_size, n_blocks=n_blocks, max_batch=max_batch, prefix_cache=prefix_cache)
    clients = Clients(jobs, n_clients)
    job_of: dict[int, int] = {}
    pool, peak = engine.pool, {"blocks": 0}
    release = pool.release

    def release_counting_peak(blocks):  # the most blocks held at any moment is just before one is released
        peak["blocks"] = max(peak["blocks"], pool.held())
        release(blocks)

    pool.release = release_counting_peak

    def send(now: float) -> None:
        if (i := clients.send(now)) is not None:
            job_of[engine.add(list(jobs[i].prompt), jobs[i].max_new, temperature=0.0)] = i

    for i in clients.start():
        job_of[engine.add(list(jobs[i].prompt), jobs[i].max_new, temperature=0.0)] = i
    steps: list[dict[str, int]] = []
    batch_sizes = []
    generated = 0
    while engine.has_work():
        events = engine.step()
        now = time.perf_counter()
        done = 0
        for rid, token, reason in events:
            s = clients.served[job_of[rid]]
            if token is not None:
                s.output.append(token)
                generated += 1
                if s.first is None:
                    s.first = now
            if reason is not None:
                s.done = now
                done += 1
        batch_sizes.append(len(engine.running) + done)
        peak["blocks"] = max(peak["blocks"], pool.held())
        if trace:
            steps.append({"generated": generated, "running": len(engine.running), "waiting": len(engine.waiting),
                          "blocks_held": pool.held(),
                          "blocks_reserved": sum(r.reserved for r in engine.running),
                          "tokens_stored": sum(r.computed for r in engine.running)})
        for _ in range(done):
            send(now)
    extra = engine.stats() | {"peak_blocks_held": peak["blocks"], "mean_batch": float(np.mean(batch_sizes)),
                              "max_batch_seen": max(batch_sizes), "trace": steps}
    cached = [engine.finished[rid].cached_tokens for rid in sorted(job_of, key=job_of.get)]
    extra["cached_prompt_tokens"] = cached
    return Run("continuous batching", n_clients, clients.served, time.perf_counter() - clients.t0, extra)


def serve(scheduler: str, model: MiniMindLM, jobs: list[Job], n_clients: int, **kwargs: Any) -> Run:
    if scheduler == "one at a time":
        return serve_one_at_a_time(model, jobs, n_clients)
    if scheduler == "static batching":
        return serve_static(model, jobs, n_clients, **kwargs)
    return serve_continuous(model, jobs, n_clients, **kwargs)


def reference_outputs(model: MiniMindLM, jobs: list[Job]) -> list[list[int]]:
    """Each request generated alone (``stream_generate``, greedy): what every scheduler must reproduce."""
    return [list(stream_generate(model, list(j.prompt), j.max_new, temperature=0.0)) for j in jobs]


def first_mismatch(outputs: list[list[int]], reference: list[list[int]]) -> dict[str, Any] | None:
    """Where a scheduler's outputs first differ from the reference (None: identical)."""
    for i, (got, want) in enumerate(zip(outputs, reference, strict=True)):
        if got != want:
            at = next((k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
            return {"request": i, "token": at, "got": got[at:at + 4], "want": want[at:at + 4]}
    return None


def save_and_check(exp: Any, fig: Any, mismatches: Any, what: str) -> None:
    """Save the figure; if outputs differed, save the results (they say what failed), then fail loudly."""
    exp.savefig(fig)
    if mismatches:
        exp.save()
        raise AssertionError(f"{what}: {mismatches}")
