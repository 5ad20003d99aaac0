"""The 2024-2026 attention switches: QK-norm, sliding windows, attention sinks, multi-head latent attention.
Each one: what it computes (checked against a direct construction or transformers), and that decoding with
the KV cache equals full recompute."""

import pytest
import torch
import transformers

from mmlab.config import get_preset
from mmlab.errors import ConfigError
from mmlab.model import MiniMindLM
from mmlab.model.attention import attend, window_bias
from mmlab.model.hf import to_hf_config_dict, to_hf_state_dict
from mmlab.model.summary import kv_cache_bytes, kv_cache_bytes_per_token

SWITCHES = [
    {"qk_norm": True},
    {"sliding_window": 4},
    {"sliding_window": 4, "global_every": 2},
    {"attn_sinks": True},
    {"sliding_window": 3, "attn_sinks": True},
    {"attention": "mla", "n_kv_heads": None},
    {"attention": "mla", "n_kv_heads": None, "sliding_window": 5, "attn_sinks": True, "mla_kv_rank": 24},
]
IDS = ["qk-norm", "window", "window-global", "sinks", "window-sinks", "mla", "mla-window-sinks"]


def randomised(model):
    """Sinks and norm gains away from their init, so a dropped or misplaced one would show."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("sinks"):
                p.normal_(0, 2)
            elif name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("changes", SWITCHES, ids=IDS)
@pytest.mark.parametrize("static", [True, False], ids=["static", "growing"])
def test_cached_decoding_equals_full_recompute(nano, changes, static):
    model = randomised(MiniMindLM(nano.replace(**changes)).eval())
    seq = torch.randint(0, nano.vocab_size, (2, 24))
    with torch.no_grad():
        full = model(seq).logits
        cache = model.new_cache(static=static)
        pieces = [model(seq[:, :7], cache=cache).logits, model(seq[:, 7:11], cache=cache).logits]
        pieces += [model(seq[:, t:t + 1], cache=cache).logits for t in range(11, 24)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("changes", SWITCHES, ids=IDS)
def test_sdpa_and_explicit_paths_agree(nano, changes):
    a = randomised(MiniMindLM(nano.replace(**changes)).eval())
    b = MiniMindLM(nano.replace(**changes, attn_impl="explicit")).eval()
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, nano.vocab_size, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(a(idx).logits, b(idx).logits, atol=1e-5, rtol=1e-5)


def test_a_windowed_layer_sees_only_its_window(nano):
    """One layer, window 4: the output at position t depends on tokens t-3..t and on nothing earlier."""
    model = MiniMindLM(nano.replace(n_layers=1, sliding_window=4)).eval()
    a = torch.randint(0, nano.vocab_size, (1, 16))
    b = a.clone()
    b[0, 5] = (a[0, 5] + 1) % nano.vocab_size
    with torch.no_grad():
        diff = (model(a).logits - model(b).logits).abs().amax(-1)[0]
    assert (diff[:5] == 0).all() and (diff[5:9] > 0).all() and (diff[9:] == 0).all()
    bias = window_bias(torch.arange(6), torch.arange(6), 2, torch.float32)
    assert ((bias == 0) == torch.tensor([[j <= i and i - j < 2 for j in range(6)] for i in range(6)])).all()


def test_a_windowed_cache_stops_growing_at_the_window(nano):
    cfg = nano.replace(sliding_window=4, global_every=2, max_seq_len=64)  # layer 0 windowed, layer 1 global
    model = MiniMindLM(cfg).eval()
    cache = model.new_cache(static=False)
    with torch.no_grad():
        for t in range(40):
            model(torch.tensor([[t % nano.vocab_size]]), cache=cache)
    assert cache.keys[0].shape[2] == 3 and cache.keys[1].shape[2] == 40
    per_layer = kv_cache_bytes_per_token(cfg, 4) // cfg.n_layers
    assert cache.nbytes() == per_layer * (3 + 40)
    assert kv_cache_bytes(cfg, 40, 4) == per_layer * (4 + 40)  # at most the window, counting the new token


def test_sliding_window_matches_transformers_mistral(nano):
    """Mistral is a Llama with a sliding window: the same weights give the same logits past the window."""
    cfg = nano.replace(n_layers=2, sliding_window=5, vocab_size=97)
    ours = randomised(MiniMindLM(cfg).eval())
    kwargs = {k: v for k, v in to_hf_config_dict(cfg.replace(sliding_window=None)).items() if k != "mlp_bias"}
    config = transformers.MistralConfig(**kwargs, sliding_window=5)
    config._attn_implementation = "eager"
    theirs = transformers.MistralForCausalLM(config).eval()
    missing, unexpected = theirs.load_state_dict(to_hf_state_dict(ours.state_dict(), cfg.replace(sliding_window=None)),
                                                 strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing)
    idx = torch.randint(0, cfg.vocab_size, (2, 30))
    with torch.no_grad():
        assert (ours(idx).logits - theirs(idx).logits).abs().max().item() <= 1e-4
        full = MiniMindLM(cfg.replace(sliding_window=None)).eval()
        full.load_state_dict(ours.state_dict())
        assert (full(idx).logits - ours(idx).logits).abs().max().item() > 1e-3  # the window does change them


def test_a_sink_is_a_key_with_no_value():
    """attend() with sinks equals softmax over [scores, sink] with the sink's column dropped from the sum."""
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    sinks = torch.tensor([-1.0, 0.0, 2.0, 30.0])
    out, weights = attend(q, k, v, n_rep=1, bias=None, causal=True, dropout_p=0.0, explicit=True, sinks=sinks)
    scores = q @ k.transpose(-2, -1) / 8 ** 0.5
    scores = scores.masked_fill(~torch.ones(6, 6).tril().bool(), float("-inf"))
    full = torch.softmax(torch.cat([scores, sinks.view(1, 4, 1, 1).expand(2, 4, 6, 1)], dim=-1), dim=-1)
    torch.testing.assert_close(weights, full[..., :6])
    torch.testing.assert_close(out, full[..., :6] @ v)
    assert weights[:, 3].sum(-1).max() < 1e-6  # a huge sink takes all the mass: that head writes nothing
    sdpa, _ = attend(q, k, v, n_rep=1, bias=None, causal=True, dropout_p=0.0, explicit=False, sinks=sinks)
    torch.testing.assert_close(sdpa, out, atol=1e-5, rtol=1e-5)


def test_mla_caches_the_latent_and_counts_its_bytes(nano):
    cfg = get_preset("minimind-26m", attention="mla", n_kv_heads=None, mla_kv_rank=128, mla_rope_dim=32)
    gqa = get_preset("minimind-26m")
    assert kv_cache_bytes_per_token(cfg, 2) == 8 * (128 + 32) * 2 == 2_560
    assert kv_cache_bytes_per_token(gqa, 2) == 2 * 8 * 2 * 64 * 2 == 4_096
    small = nano.replace(attention="mla", n_kv_heads=None, mla_kv_rank=12, mla_rope_dim=4)
    model = MiniMindLM(small).eval()
    cache = model.new_cache(static=False)
    with torch.no_grad():
        model(torch.randint(0, small.vocab_size, (1, 9)), cache=cache)
    assert cache.keys[0].shape == (1, 1, 9, 12) and cache.values[0].shape == (1, 1, 9, 4)
    assert cache.nbytes() == kv_cache_bytes_per_token(small, 4) * 9


@pytest.mark.parametrize(("changes", "message"), [
    ({"sliding_window": 0}, "sliding_window=0"),
    ({"global_every": 2}, "needs a sliding_window"),
    ({"attention": "mla"}, "leave n_kv_heads null"),
    ({"attention": "mla", "n_kv_heads": None, "pos_encoding": "learned"}, "needs pos_encoding='rope'"),
    ({"attention": "mla", "n_kv_heads": None, "qk_norm": True}, "qk_norm is not defined"),
    ({"attention": "mla", "n_kv_heads": None, "mla_rope_dim": 3}, "even number"),
    ({"attention": "flash"}, "attention='flash'"),
    ({"attn_sinks": True, "causal": False}, "causal attention"),
])
def test_bad_combinations_are_one_line_errors(nano, changes, message):
    with pytest.raises(ConfigError, match=message):
        nano.replace(**changes)
