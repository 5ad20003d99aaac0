"""A batching inference engine: continuous batching over a paged KV cache with prefix caching.

What vLLM does, small enough to read in one sitting:

* **Paged KV cache.** Keys and values live in one pool of fixed-size blocks per layer (``block_size``
  positions each). A sequence owns a *block table*: the ids of its blocks, in order. Memory is bounded by
  the pool and handed out a block at a time, so sequences of different lengths share it without each
  reserving ``max_seq_len`` positions up front (what a static cache per request would need).
* **Continuous batching.** Every ``step()`` first admits waiting requests (prefill: the prompt in one
  forward pass, writing its blocks) and then runs *one* decode forward pass for every running sequence
  together. A finished sequence leaves the batch at once and a new one joins at the next step, instead of
  the whole batch waiting for its longest member (static batching).
* **Prefix caching.** A full block is identified by the hash of every token up to its end. When a new
  prompt starts with the same tokens (a shared system prompt), its first blocks are the cached ones
  (reference-counted, never written again) and only the rest of the prompt is computed.

A request's tokens never depend on the rest of the batch: each sequence samples from its own logits with
its own generator (``seed``), using the same ``sample_next`` as ``generate``; padding is masked. Admission
reserves every block a request can need (prompt + ``max_new_tokens``), so a running sequence never runs
out of memory; a request that can never fit is refused (``EngineFull``), one that cannot fit *now* waits.

    >>> engine = Engine(model, block_size=16, n_blocks=256)
    >>> ids = [engine.add(prompt, max_new_tokens=32, temperature=0.0) for prompt in prompts]
    >>> outputs = engine.run()            # {request id: [tokens]}
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mmlab.config import ModelConfig
from mmlab.errors import MMLabError
from mmlab.infer.generate import SamplingParams, sample_next
from mmlab.model.lm import MiniMindLM


class EngineFull(MMLabError):
    """A request that needs more KV blocks than the pool holds, or a full queue."""


class BlockPool:
    """``n_blocks`` blocks of ``block_size`` positions, for every layer: keys and values stored flat, slot
    ``block * block_size + offset``, so a sequence's keys are one gather by slot index. Blocks are free,
    held (reference count > 0), or cached (a full prefix block nobody holds: reused on a hit, evicted
    least recently used when the free list runs dry)."""

    def __init__(self, model: MiniMindLM, n_blocks: int, block_size: int, dtype: torch.dtype | None = None):
        cfg = model.cfg
        device = next(model.parameters()).device
        dtype = dtype or next(model.parameters()).dtype
        self.n_blocks, self.block_size = n_blocks, block_size
        shape = (n_blocks * block_size, cfg.kv_heads, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.ref = [0] * n_blocks
        self.free: deque[int] = deque(range(n_blocks))
        self.cached: OrderedDict[str, int] = OrderedDict()  # prefix hash -> block (LRU order)
        self.hash_of: dict[int, str] = {}
        self.hits = self.lookups = 0  # blocks found / looked for by prefix caching

    @property
    def bytes_per_block(self) -> int:
        return 2 * sum(t[: self.block_size].numel() * t.element_size() for t in self.k)

    def available(self) -> int:
        """Blocks that can be handed out now: free ones, and cached ones that nobody holds."""
        return len(self.free) + sum(1 for b in self.cached.values() if self.ref[b] == 0)

    def held(self) -> int:
        return sum(1 for r in self.ref if r > 0)

    def allocate(self) -> int:
        if not self.free:  # evict the least recently used unheld prefix block
            victim = next((h for h, b in self.cached.items() if self.ref[b] == 0), None)
            if victim is None:
                raise EngineFull("the KV pool has no free block")  # admission control makes this unreachable
            block = self.cached.pop(victim)
            del self.hash_of[block]
            self.free.append(block)
        block = self.free.popleft()
        self.ref[block] = 1
        return block

    def release(self, blocks: Sequence[int]) -> None:
        for b in blocks:
            self.ref[b] -= 1
            assert self.ref[b] >= 0, f"block {b} released twice"
            if self.ref[b] == 0 and b not in self.hash_of:
                self.free.append(b)

    def lookup(self, hashes: Sequence[str]) -> list[int]:
        """The cached blocks of the longest run of leading ``hashes`` (each now held once more)."""
        found = []
        for h in hashes:
            block = self.cached.get(h)
            if block is None:
                break
            self.ref[block] += 1
            found.append(block)
        for h in reversed(hashes[: len(found)]):  # the first block becomes the most recent: a prefix is evicted
            self.cached.move_to_end(h)           # from its end, never cut off at its start
        return found

    def register(self, h: str, block: int) -> None:
        """A block that just became full is now findable by its prefix hash (unless another holds it)."""
        if h not in self.cached and block not in self.hash_of:
            self.cached[h] = block
            self.hash_of[block] = h


def block_hash(previous: str, block: Sequence[int]) -> str:
    """The identity of a full block: its tokens and (through ``previous``, the hash of the block before)
    every token before them, so equal hashes mean equal prefixes."""
    return hashlib.sha256(f"{previous}|{','.join(map(str, block))}".encode()).hexdigest()


def prefix_hashes(tokens: Sequence[int], block_size: int) -> list[str]:
    """One hash per full block of ``tokens``."""
    out, h = [], ""
    for i in range(block_size, len(tokens) + 1, block_size):
        h = block_hash(h, tokens[i - block_size:i])
        out.append(h)
    return out


@dataclass
class Request:
    id: int
    prompt: list[int]
    max_new_tokens: int
    params: SamplingParams
    stops: frozenset[int]
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)  # prompt + generated (what the KV cache will hold)
    output: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    reserved: int = 0  # blocks still to allocate (reserved at admission)
    computed: int = 0  # tokens whose keys/values are in the cache
    cached_tokens: int = 0  # prompt tokens served by the prefix cache
    hashes: list[str] = field(default_factory=list)  # prefix hashes of its full blocks, in order
    finish_reason: str | None = None


class _PagedView:
    """The ``cache`` the model sees for one forward pass over some sequences: it writes their new keys and
    values into the pool and hands back each sequence's keys and values, left-padded to a common length
    (so that "the queries are the last Tq keys" holds for every row), with a bias that hides the padding."""

    def __init__(self, pool: BlockPool, seqs: list[Request], n_new: int, device: torch.device):
        bs = pool.block_size
        self.pool, self.seq_len = pool, max(s.computed for s in seqs)
        starts = torch.tensor([s.computed for s in seqs], device=device)
        self.positions = starts[:, None] + torch.arange(n_new, device=device)[None]  # (B, T)
        lengths = starts + n_new
        width = int(lengths.max())
        n_tab = (width + bs - 1) // bs
        table = torch.zeros(len(seqs), n_tab, dtype=torch.long, device=device)
        for i, s in enumerate(seqs):
            table[i, : len(s.blocks)] = torch.tensor(s.blocks, device=device)

        def slots(pos: torch.Tensor) -> torch.Tensor:
            return table.gather(1, pos // bs) * bs + pos % bs

        self.write = slots(self.positions)  # (B, T): where the new keys go
        pad = width - lengths
        key_pos = torch.arange(width, device=device)[None] - pad[:, None]  # (B, width), < 0 on padding
        valid = key_pos >= 0
        self.read = slots(key_pos.clamp(min=0))  # (B, width): every key of each row, padding -> slot of pos 0
        self.bias = None
        if not bool(valid.all()):
            self.bias = torch.zeros(len(seqs), 1, 1, width, device=device).masked_fill(
                ~valid[:, None, None, :], float("-inf"))

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: (B, Hkv, T, D) of the new tokens -> every key/value of each row: (B, Hkv, width, D)."""
        B, H, T, D = k.shape
        flat = self.write.reshape(-1)
        self.pool.k[layer][flat] = k.transpose(1, 2).reshape(B * T, H, D).to(self.pool.k[layer].dtype)
        self.pool.v[layer][flat] = v.transpose(1, 2).reshape(B * T, H, D).to(self.pool.v[layer].dtype)
        keys = self.pool.k[layer][self.read].transpose(1, 2)  # (B, width, H, D) -> (B, H, width, D)
        values = self.pool.v[layer][self.read].transpose(1, 2)
        return keys.to(k.dtype), values.to(v.dtype)

    def advance(self, n: int) -> None:
        pass


def paged_incompatibility(cfg: ModelConfig) -> str | None:
    """Why the paged engine cannot serve a model of config ``cfg`` (None: it can)."""
    if not cfg.causal:
        return "it caches keys and values, so it needs a causal model"
    if cfg.pos_encoding == "alibi":
        return "ALiBi's score bias would need per-row positions"
    if cfg.sliding_window is not None or cfg.attn_sinks or cfg.attention != "gqa":
        return ("its blocks hold full per-head keys and values, not sliding windows, sinks or MLA latents (those "
                "models decode one request at a time)")
    return None


class Engine:
    """Continuous batching over a paged KV cache. ``max_batch``: sequences decoded together at most;
    ``n_blocks``: the pool (default: enough for ``max_batch`` sequences of ``max_seq_len``)."""

    def __init__(self, model: MiniMindLM, block_size: int = 16, n_blocks: int | None = None, max_batch: int = 16,
                 prefix_cache: bool = True, max_waiting: int = 1024):
        problem = paged_incompatibility(model.cfg)
        if problem:
            raise MMLabError(f"the engine cannot batch this model: {problem}")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.max_batch, self.prefix_cache, self.max_waiting = max_batch, prefix_cache, max_waiting
        per_seq = (model.cfg.max_seq_len + block_size - 1) // block_size
        self.pool = BlockPool(model, n_blocks or max_batch * per_seq, block_size)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.finished: dict[int, Request] = {}
        self._ids = itertools.count()
        self.steps = self.prefill_tokens = self.decode_tokens = 0

    # ---- requests ------------------------------------------------------------------------------
    def add(self, prompt: Sequence[int], max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
            top_p: float | None = None, repetition_penalty: float = 1.0, stop_tokens: Sequence[int] = (),
            seed: int | None = None) -> int:
        """Queue a request; returns its id. Errors (bad ids, too long, can never fit) are raised here."""
        params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
        prompt = [int(t) for t in prompt]
        self.check(prompt, max_new_tokens, params)
        if len(self.waiting) >= self.max_waiting:
            raise EngineFull(f"{len(self.waiting)} requests are already waiting")
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(int(seed))
        req = Request(next(self._ids), prompt, max_new_tokens, params, frozenset(int(t) for t in stop_tokens),
                      generator, tokens=list(prompt))
        self.waiting.append(req)
        return req.id

    def check(self, prompt: Sequence[int], max_new_tokens: int, params: SamplingParams) -> None:
        """Raise what ``add`` would raise for this request (it reads only the engine's settings: safe to call
        from another thread)."""
        params.validate()
        vocab, limit = self.model.cfg.vocab_size, self.model.cfg.max_seq_len
        if not prompt:
            raise MMLabError("the prompt is empty")
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise MMLabError(f"the prompt holds token ids outside the vocabulary [0, {vocab})")
        if max_new_tokens < 1:
            raise MMLabError(f"max_new_tokens={max_new_tokens} must be >= 1")
        if len(prompt) + max_new_tokens > limit:
            raise MMLabError(f"prompt ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) is longer than the "
                             f"model's context of {limit}")
        if self._blocks_for(len(prompt) + max_new_tokens) > self.pool.n_blocks:
            raise EngineFull(f"the request needs {self._blocks_for(len(prompt) + max_new_tokens)} KV blocks; the pool "
                             f"holds {self.pool.n_blocks}")

    def cancel(self, rid: int) -> None:
        """Stop a request (a client that went away): its blocks return to the pool at once."""
        for req in list(self.waiting):
            if req.id == rid:
                self.waiting.remove(req)
                self._finish(req, "cancelled")
        for req in list(self.running):
            if req.id == rid:
                self.running.remove(req)
                self._finish(req, "cancelled")

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- scheduling ----------------------------------------------------------------------------
    def _blocks_for(self, n_tokens: int) -> int:
        return (n_tokens + self.pool.block_size - 1) // self.pool.block_size

    def _admit(self, req: Request) -> bool:
        """Reserve every block the request can need, reusing cached prefix blocks; False: not now."""
        bs = self.pool.block_size
        hashes = prefix_hashes(req.prompt[:-1], bs) if self.prefix_cache else []  # keep >= 1 token to compute
        need = self._blocks_for(len(req.prompt) + req.max_new_tokens)
        hit = self.pool.lookup(hashes)
        promised = sum(r.reserved for r in self.running)  # blocks the running sequences may still take
        if need - len(hit) > self.pool.available() - promised:
            self.pool.release(hit)  # undo: it waits, holding nothing
            return False
        self.pool.hits, self.pool.lookups = self.pool.hits + len(hit), self.pool.lookups + len(hashes)
        req.blocks, req.reserved = hit, need - len(hit)
        req.computed = req.cached_tokens = len(hit) * bs
        req.hashes = hashes[: len(hit)]
        return True

    def _grow(self, req: Request, n_tokens: int) -> None:
        """Allocate blocks (from the reservation) so the cache can hold ``n_tokens``."""
        while len(req.blocks) * self.pool.block_size < n_tokens:
            req.blocks.append(self.pool.allocate())
            req.reserved -= 1

    def _register_full_blocks(self, req: Request) -> None:
        """Make the blocks that have just become full findable by later prompts (hashes chained per block)."""
        if not self.prefix_cache:
            return
        bs = self.pool.block_size
        while len(req.hashes) < req.computed // bs:
            i = len(req.hashes)
            req.hashes.append(block_hash(req.hashes[-1] if req.hashes else "", req.tokens[i * bs:(i + 1) * bs]))
            self.pool.register(req.hashes[-1], req.blocks[i])

    def _finish(self, req: Request, reason: str) -> None:
        req.finish_reason = reason
        self.pool.release(req.blocks)
        req.blocks, req.reserved = [], 0
        self.finished[req.id] = req

    def _sample(self, req: Request, logits: torch.Tensor) -> int:
        seen = torch.tensor([req.tokens], device=self.device)
        return int(sample_next(logits[None], seen, req.params, req.generator)[0])

    def _accept(self, req: Request, token: int, events: list) -> None:
        if token in req.stops:
            events.append((req.id, None, "stop"))
            self._finish(req, "stop")
            return
        req.output.append(token)
        req.tokens.append(token)
        done = len(req.output) >= req.max_new_tokens
        events.append((req.id, token, "length" if done else None))
        if done:
            self._finish(req, "length")

    @torch.no_grad()
    def step(self) -> list[tuple[int, int | None, str | None]]:
        """Admit what fits, prefill it, then decode one token for every running sequence. Returns events
        (request id, new token or None, finish reason or None), in order."""
        events: list[tuple[int, int | None, str | None]] = []
        while self.waiting and len(self.running) < self.max_batch and self._admit(self.waiting[0]):
            req = self.waiting.popleft()
            try:
                self._grow(req, len(req.prompt))
                new = req.prompt[req.computed:]
                view = _PagedView(self.pool, [req], len(new), self.device)
                logits = self.model(torch.tensor([new], device=self.device), cache=view).logits[0, -1]
            except BaseException:  # out of memory, a bug: the request ends, its blocks return to the pool
                self._finish(req, "error")
                raise
            req.computed = len(req.prompt)
            self.prefill_tokens += len(new)
            self._register_full_blocks(req)
            self._accept(req, self._sample(req, logits), events)
            if req.finish_reason is None:
                self.running.append(req)
        decoding = [r for r in self.running if r.finish_reason is None]
        if decoding:
            for req in decoding:
                self._grow(req, req.computed + 1)
            view = _PagedView(self.pool, decoding, 1, self.device)
            last = torch.tensor([[r.tokens[-1]] for r in decoding], device=self.device)
            logits = self.model(last, cache=view).logits[:, -1]
            self.decode_tokens += len(decoding)
            for i, req in enumerate(decoding):
                req.computed += 1
                self._register_full_blocks(req)
                self._accept(req, self._sample(req, logits[i]), events)
        self.running = [r for r in self.running if r.finish_reason is None]
        self.steps += 1
        return events

    def run(self) -> dict[int, list[int]]:
        """Step until every queued request is done; the new tokens of each (stop tokens excluded)."""
        while self.has_work():
            self.step()
        return {rid: req.output for rid, req in sorted(self.finished.items())}

    def stats(self) -> dict[str, float]:
        pool = self.pool
        return {"blocks": pool.n_blocks, "blocks_held": pool.held(), "blocks_cached": len(pool.cached),
                "kv_bytes_per_block": pool.bytes_per_block, "prefix_hit_rate": pool.hits / max(pool.lookups, 1),
                "steps": self.steps, "prefill_tokens": self.prefill_tokens, "decode_tokens": self.decode_tokens}
