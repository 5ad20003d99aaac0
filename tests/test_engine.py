"""The batching engine: a request's tokens do not depend on the batch (greedy and seeded sampling equal
``generate``), the block pool never leaks, prefix-cache hits compute what a full prefill computes, and
requests that cannot fit are refused or wait."""

import random

import pytest
import torch

from mmlab.config import get_preset
from mmlab.errors import MMLabError
from mmlab.infer.engine import BlockPool, Engine, EngineFull, Request, _PagedView, prefix_hashes
from mmlab.infer.generate import SamplingParams, generate
from mmlab.model import MiniMindLM


@pytest.fixture(scope="module")
def model():
    """Weights far from init (sharp, varied logits), so greedy decoding does not repeat one token."""
    torch.manual_seed(0)
    m = MiniMindLM(get_preset("nano", vocab_size=300, max_seq_len=128)).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.uniform_(0.5, 1.5) if name.endswith("norm.weight") else p.normal_(0, 0.3)
    return m


def prompts(n, seed=0, lengths=(3, 40)):
    rng = random.Random(seed)
    return [[rng.randrange(300) for _ in range(rng.randint(*lengths))] for _ in range(n)]


def assert_no_leak(engine):
    pool = engine.pool
    assert pool.held() == 0 and all(r == 0 for r in pool.ref)
    assert pool.available() == pool.n_blocks  # free + cached-but-unheld: every block can be handed out again


@pytest.mark.parametrize("max_batch, block_size", [(1, 8), (3, 8), (16, 4)])
def test_greedy_output_is_generates_whatever_the_batch(model, max_batch, block_size):
    batch = prompts(7)
    engine = Engine(model, block_size=block_size, max_batch=max_batch)
    ids = [engine.add(p, 24, temperature=0.0) for p in batch]
    out = engine.run()
    assert [out[i] for i in ids] == [generate(model, p, 24, temperature=0.0)[0] for p in batch]
    assert_no_leak(engine)


def test_seeded_sampling_is_unchanged_by_batching(model):
    batch = prompts(6, seed=1)
    settings = [dict(temperature=1.0, seed=i, top_k=50 if i % 2 else None, top_p=0.9 if i % 3 == 0 else None,
                     repetition_penalty=1.3 if i == 4 else 1.0) for i in range(len(batch))]
    engine = Engine(model, block_size=8, max_batch=4)
    ids = [engine.add(p, 20, **s) for p, s in zip(batch, settings, strict=True)]
    out = engine.run()
    assert [out[i] for i in ids] == [generate(model, p, 20, **s)[0] for p, s in zip(batch, settings, strict=True)]


def test_stop_tokens_end_a_request_and_it_leaves_the_batch(model):
    p = prompts(1, seed=2)[0]
    free_run = generate(model, p, 30, temperature=0.0)[0]
    stop = free_run[5]
    engine = Engine(model, block_size=8)
    rid = engine.add(p, 30, temperature=0.0, stop_tokens=[stop])
    other = engine.add(prompts(1, seed=3)[0], 30, temperature=0.0)
    out = engine.run()
    assert out[rid] == free_run[:free_run.index(stop)]
    assert engine.finished[rid].finish_reason == "stop" and engine.finished[other].finish_reason == "length"
    assert_no_leak(engine)


def test_prefix_cache_hits_compute_the_same_logits(model):
    """A prompt whose first blocks are cached: prefilling only the rest gives the logits of the whole prompt."""
    bs = 8
    pool = BlockPool(model, n_blocks=16, block_size=bs)
    prompt = prompts(1, seed=4, lengths=(29, 29))[0]
    full = Request(0, prompt, 1, SamplingParams(), frozenset(), None, tokens=list(prompt))
    full.blocks = [pool.allocate() for _ in range(4)]
    with torch.no_grad():
        want = model(torch.tensor([prompt])).logits[0, -1]
        got_full = model(torch.tensor([prompt]), cache=_PagedView(pool, [full], len(prompt), torch.device("cpu")))
        # a second request shares the first 3 full blocks (24 tokens) and computes only the last 5
        shared = Request(1, prompt, 1, SamplingParams(), frozenset(), None, tokens=list(prompt))
        shared.blocks, shared.computed = [*full.blocks[:3], pool.allocate()], 3 * bs
        view = _PagedView(pool, [shared], len(prompt) - 3 * bs, torch.device("cpu"))
        got_hit = model(torch.tensor([prompt[3 * bs:]]), cache=view).logits[0, -1]
    assert torch.allclose(got_full.logits[0, -1], want, atol=1e-5)
    assert torch.allclose(got_hit, want, atol=1e-5)


def test_a_shared_system_prompt_is_computed_once(model):
    system = prompts(1, seed=5, lengths=(48, 48))[0]
    batch = [system + q for q in prompts(6, seed=6, lengths=(2, 9))]
    cached = Engine(model, block_size=8, max_batch=2)
    ids = [cached.add(p, 12, temperature=0.0) for p in batch]
    out = cached.run()
    plain = Engine(model, block_size=8, max_batch=2, prefix_cache=False)
    ids2 = [plain.add(p, 12, temperature=0.0) for p in batch]
    assert [out[i] for i in ids] == [plain.run()[i] for i in ids2] == [generate(model, p, 12, temperature=0.0)[0]
                                                                       for p in batch]
    assert cached.prefill_tokens < plain.prefill_tokens - 4 * 40  # the 48-token system prompt, 6 blocks, reused
    assert cached.stats()["prefix_hit_rate"] > 0.7
    assert_no_leak(cached)
    assert_no_leak(plain)


def test_a_full_pool_makes_requests_wait_and_one_that_never_fits_is_refused(model):
    engine = Engine(model, block_size=8, n_blocks=10, max_batch=8)  # room for ~2 requests of 40 tokens
    batch = prompts(6, seed=7, lengths=(10, 20))
    ids = [engine.add(p, 20, temperature=0.0) for p in batch]
    engine.step()
    assert len(engine.running) < 6 and engine.waiting  # the rest wait for blocks
    out = engine.run()
    assert [out[i] for i in ids] == [generate(model, p, 20, temperature=0.0)[0] for p in batch]
    assert_no_leak(engine)
    with pytest.raises(EngineFull, match="needs 11 KV blocks; the pool holds 10"):
        engine.add(prompts(1, lengths=(60, 60))[0], 28)


@pytest.mark.parametrize("bad, message", [
    ({"prompt": []}, "the prompt is empty"),
    ({"prompt": [1, 300]}, "outside the vocabulary"),
    ({"max_new_tokens": 0}, "max_new_tokens=0"),
    ({"max_new_tokens": 200}, "longer than the model's context of 128"),
    ({"temperature": -1.0}, "temperature=-1.0"),
])
def test_bad_requests_are_refused_before_they_queue(model, bad, message):
    engine = Engine(model)
    args = {"prompt": [1, 2, 3], "max_new_tokens": 4} | bad
    with pytest.raises(MMLabError, match=message):
        engine.add(args.pop("prompt"), args.pop("max_new_tokens"), **args)
    assert not engine.has_work()


def test_a_soak_with_random_cancels_leaks_no_block(model):
    rng = random.Random(8)
    engine = Engine(model, block_size=4, n_blocks=60, max_batch=6)
    live, outputs = set(), 0
    for step in range(300):
        if rng.random() < 0.4 and len(engine.waiting) < 20:
            live.add(engine.add(prompts(1, seed=step, lengths=(2, 30))[0], rng.randint(1, 25),
                                temperature=rng.choice([0.0, 0.8]), seed=step))
        if live and rng.random() < 0.15:  # a client goes away, waiting or mid-decode
            engine.cancel(rng.choice(sorted(live)))
        for rid, token, reason in engine.step():
            outputs += token is not None
            if reason is not None:
                live.discard(rid)
        live -= set(engine.finished)
        assert engine.pool.held() <= engine.pool.n_blocks
    engine.run()
    assert outputs > 100 and {r.finish_reason for r in engine.finished.values()} >= {"cancelled", "length"}
    assert_no_leak(engine)


def test_prefix_hashes_identify_whole_prefixes():
    a, b = prefix_hashes([1, 2, 3, 4, 5, 6, 7, 8, 9], 4), prefix_hashes([1, 2, 3, 4, 5, 6, 7, 9], 4)
    assert len(a) == 2 and a[0] == b[0] and a[1] != b[1]
    assert prefix_hashes([9, 2, 3, 4, 5, 6, 7, 8], 4)[1] != a[1]  # same second block, other first: differs


def test_a_failed_prefill_returns_its_blocks(model, monkeypatch):
    engine = Engine(model, block_size=4, n_blocks=8)
    engine.add(prompts(1, lengths=(19, 19))[0], 4, temperature=0.0)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model, "forward", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        engine.step()
    monkeypatch.undo()
    assert_no_leak(engine)  # a request needing every block of the pool can still run
    rid = engine.add(prompts(1, seed=9, lengths=(20, 20))[0], 8, temperature=0.0)
    assert len(engine.run()[rid]) == 8
