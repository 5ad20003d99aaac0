"""Generation: the KV cache changes speed, never results; sampling controls do what they say."""

import pytest
import torch

from mmlab.errors import MMLabError
from mmlab.infer.generate import filter_top_k, filter_top_p, generate, stream_generate
from mmlab.model import MiniMindLM


@pytest.mark.parametrize(
    "changes",
    [{}, {"n_kv_heads": 1}, {"pos_encoding": "learned"}, {"pos_encoding": "alibi"},
     {"pos_encoding": "sinusoidal", "norm_position": "post"}, {"attn_impl": "explicit"}, {"qk_norm": True}],
    ids=["gqa-rope", "mqa", "learned", "alibi", "sinusoidal-post", "explicit", "qk-norm"],
)
@pytest.mark.parametrize("static", [True, False], ids=["static", "growing"])
def test_cached_decoding_gives_the_logits_of_full_recompute(nano, changes, static):
    """Prefill 7 tokens, then feed one token at a time (and once a chunk of 3) through the cache; the
    logits at every position must equal those of running the whole sequence at once."""
    model = MiniMindLM(nano.replace(**changes)).eval()
    seq = torch.randint(0, nano.vocab_size, (2, 20))
    with torch.no_grad():
        full = model(seq).logits
        cache = model.new_cache(static=static)
        pieces = [model(seq[:, :7], cache=cache).logits]
        pieces.append(model(seq[:, 7:10], cache=cache).logits)  # a multi-token chunk with a cache
        for t in range(10, 20):
            pieces.append(model(seq[:, t:t + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.seq_len == 20


def test_greedy_generation_with_and_without_cache_is_identical(nano):
    model = MiniMindLM(nano)
    prompt = [3, 14, 15, 92, 65]
    a = generate(model, prompt, 40, temperature=0)
    b = generate(model, prompt, 40, temperature=0, use_cache=False)
    assert a == b and len(a[0]) == 40


def test_generation_past_max_seq_len_slides_the_window(nano):
    model = MiniMindLM(nano)
    out = generate(model, list(range(60)), 30, temperature=0)  # 90 tokens > max_seq_len 64
    ref = generate(model, list(range(60)), 30, temperature=0, use_cache=False)
    assert out == ref and len(out[0]) == 30


def test_seed_makes_sampling_reproducible(nano):
    model = MiniMindLM(nano)
    a = generate(model, [1, 2, 3], 30, temperature=1.0, seed=7)
    b = generate(model, [1, 2, 3], 30, temperature=1.0, seed=7)
    c = generate(model, [1, 2, 3], 30, temperature=1.0, seed=8)
    assert a == b and a != c


def test_streaming_yields_what_generate_returns(nano):
    model = MiniMindLM(nano)
    kwargs = {"temperature": 0.8, "top_k": 20, "top_p": 0.9, "seed": 3}
    assert list(stream_generate(model, [5, 6, 7], 25, **kwargs)) == generate(model, [5, 6, 7], 25, **kwargs)[0]


def test_stop_tokens_end_generation_and_are_not_returned(nano):
    model = MiniMindLM(nano)
    free = generate(model, [1, 2, 3], 20, temperature=0)[0]
    stop = free[5]
    first = free.index(stop)
    assert generate(model, [1, 2, 3], 20, temperature=0, stop_tokens=[stop])[0] == free[:first]
    assert list(stream_generate(model, [1, 2, 3], 20, temperature=0, stop_tokens=[stop])) == free[:first]


def test_batched_generation_matches_single(nano):
    model = MiniMindLM(nano)
    prompts = [[1, 2, 3, 4], [9, 8, 7, 6]]
    batch = generate(model, prompts, 12, temperature=0)
    assert batch == [generate(model, p, 12, temperature=0)[0] for p in prompts]


def test_top_k_keeps_k_tokens():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(filter_top_k(logits, 2))
    assert kept.tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(filter_top_p(probs.log(), 0.75))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.75, 0.5 + 0.3 >= 0.75
    kept = torch.isfinite(filter_top_p(probs.log(), 0.1))
    assert kept.tolist() == [[True, False, False, False]]  # always at least the top token


def test_top_k_breaks_ties_to_exactly_k():
    kept = torch.isfinite(filter_top_k(torch.tensor([[2.0, 2.0, 1.0]]), 1))
    assert int(kept.sum()) == 1


def test_tiny_temperature_is_greedy(nano):
    model = MiniMindLM(nano)
    assert generate(model, [4, 5], 10, temperature=1e-40, seed=0) == generate(model, [4, 5], 10, temperature=0)


def test_non_causal_model_generates_without_a_stale_cache(nano):
    model = MiniMindLM(nano.replace(causal=False))
    assert generate(model, [1, 2, 3], 12, temperature=0) == generate(model, [1, 2, 3], 12, temperature=0,
                                                                        use_cache=False)


def test_static_and_growing_caches_generate_the_same(nano):
    model = MiniMindLM(nano)
    assert generate(model, [7, 8], 20, temperature=0, static_cache=False) == generate(model, [7, 8], 20,
                                                                                     temperature=0)


def test_top_k_one_is_greedy(nano):
    model = MiniMindLM(nano)
    assert generate(model, [4, 5], 15, top_k=1, seed=0) == generate(model, [4, 5], 15, temperature=0)


def test_repetition_penalty_reduces_repeats(nano):
    model = MiniMindLM(nano)
    plain = generate(model, [1, 2, 3], 40, temperature=0)[0]
    penalised = generate(model, [1, 2, 3], 40, temperature=0, repetition_penalty=5.0)[0]
    assert len(set(penalised)) > len(set(plain))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"temperature": -1}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_p": 1.5}, "top_p"),
     ({"repetition_penalty": 0}, "repetition_penalty"), ({"temperature": float("nan")}, "temperature=nan"),
     ({"repetition_penalty": float("nan")}, "repetition_penalty=nan"), ({"top_k": 2.5}, "top_k=2.5"),
     ({"stop_tokens": 3}, "stop_tokens=3")],
)
def test_bad_sampling_parameters_are_clear_errors(nano, kwargs, message):
    with pytest.raises(MMLabError, match=message):
        generate(MiniMindLM(nano), [1], 3, **kwargs)


def test_bad_prompts_are_clear_errors(nano):
    model = MiniMindLM(nano)
    with pytest.raises(MMLabError, match="outside the vocabulary"):
        generate(model, [1, 500], 3)
    with pytest.raises(MMLabError, match="equal lengths"):
        generate(model, [[1, 2], [3]], 3)
    with pytest.raises(MMLabError, match="non-empty"):
        generate(model, [], 3)


def test_generation_restores_training_mode(nano):
    model = MiniMindLM(nano).train()
    generate(model, [1, 2], 3)
    assert model.training
