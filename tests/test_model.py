"""The decoder and its switches: shapes, gradients, the two attention paths, masks, init, learning."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mmlab.config import RopeScaling, get_preset
from mmlab.model import MiniMindLM, RMSNorm, explicit_attention, repeat_kv
from mmlab.model.position import alibi_slopes
from mmlab.model.rope import apply_rope, precompute_rope

SWITCHES = {
    "norm": ["rmsnorm", "layernorm", "none"],
    "norm_position": ["pre", "post", "sandwich"],
    "parallel_block": [True],
    "n_experts": [4],
    "pos_encoding": ["rope", "learned", "sinusoidal", "alibi", "none"],
    "ffn_act": ["swiglu", "gelu", "relu", "relu2", "linear"],
    "use_attn": [False],
    "use_ffn": [False],
    "qk_norm": [True],
    "sliding_window": [4],
    "attn_sinks": [True],
    "attention": ["mla"],
}


def one_at_a_time():
    """Every value of every switch, the others at their Llama defaults, plus a few combinations."""
    for field, values in SWITCHES.items():
        for v in values:
            yield {field: v, "n_kv_heads": None} if field == "attention" else {field: v}
    yield {"sliding_window": 3, "global_every": 2, "attn_sinks": True, "attention": "mla", "n_kv_heads": None}
    for kv, causal, residual, tie, impl in itertools.product([4, 2, 1], [True, False], [True, False],
                                                              [True, False], ["sdpa", "explicit"]):
        if (kv == 2) or (causal and residual):  # a spread, not the full product
            yield {"n_kv_heads": kv, "causal": causal, "residual": residual, "tie_embeddings": tie,
                   "attn_impl": impl}


@pytest.mark.parametrize("changes", list(one_at_a_time()), ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_every_switch_runs_forward_and_backward(nano, changes):
    model = MiniMindLM(nano.replace(**changes))
    idx = torch.randint(0, nano.vocab_size, (2, 16))
    out = model(idx, targets=idx)
    assert out.logits.shape == (2, 16, nano.vocab_size)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_initial_loss_is_near_uniform(nano):
    """A sane init predicts ~uniformly: loss ~ ln(vocab) on random next tokens.

    (Targets equal to the inputs would score better than chance at init: with tied embeddings the
    logit of the input token is |e|^2 / rms(e), larger than the others.)"""
    model = MiniMindLM(nano.replace(tie_embeddings=False))
    idx, targets = torch.randint(0, nano.vocab_size, (2, 4, 32))
    loss = model(idx, targets=targets).loss.item()
    assert abs(loss - math.log(nano.vocab_size)) < 0.1


def test_init_stds(nano):
    cfg = nano.replace(n_layers=8, hidden_size=256)
    model = MiniMindLM(cfg)
    q = model.blocks[0].attn.q_proj.weight
    o = model.blocks[0].attn.o_proj.weight
    assert abs(q.std().item() - 0.02) < 0.002
    assert abs(o.std().item() - 0.02 / math.sqrt(16)) < 0.001
    flat = MiniMindLM(cfg.replace(scaled_residual_init=False)).blocks[0].attn.o_proj.weight
    assert abs(flat.std().item() - 0.02) < 0.002


def test_tied_embeddings_share_one_tensor(nano):
    tied = MiniMindLM(nano)
    assert tied.lm_head.weight is tied.tok_emb.weight
    untied = MiniMindLM(nano.replace(tie_embeddings=False))
    assert untied.num_params() == tied.num_params() + nano.vocab_size * nano.hidden_size


@pytest.mark.parametrize("n_kv", [4, 2, 1])
@pytest.mark.parametrize("pos", ["rope", "alibi", "learned"])
@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_and_explicit_paths_agree(nano, n_kv, pos, causal):
    cfg = nano.replace(n_kv_heads=n_kv, pos_encoding=pos, causal=causal)
    a = MiniMindLM(cfg).eval()
    b = MiniMindLM(cfg.replace(attn_impl="explicit")).eval()
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, cfg.vocab_size, (2, 20))
    torch.testing.assert_close(a(idx).logits, b(idx).logits, atol=1e-5, rtol=1e-5)


def test_explicit_attention_matches_torch_sdpa():
    q, k, v = (torch.randn(2, 4, 9, 16) for _ in range(3))
    for causal in (True, False):
        out, w = explicit_attention(q, k, v, causal=causal)
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 9))


def test_attention_weights_are_causal(nano):
    model = MiniMindLM(nano).eval()
    out = model(torch.randint(0, nano.vocab_size, (1, 12)), need_weights=True)
    assert len(out.attentions) == nano.n_layers
    w = out.attentions[0]
    assert w.shape == (1, nano.n_heads, 12, 12)
    assert torch.all(w.triu(diagonal=1) == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, nano.n_heads, 12))


def test_causal_model_does_not_see_the_future_and_the_unmasked_one_does(nano):
    idx = torch.randint(0, nano.vocab_size, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % nano.vocab_size
    causal = MiniMindLM(nano).eval()
    torch.testing.assert_close(causal(idx).logits[:, :10], causal(changed).logits[:, :10])
    leaky = MiniMindLM(nano.replace(causal=False)).eval()
    assert not torch.allclose(leaky(idx).logits[:, :10], leaky(changed).logits[:, :10])


def test_repeat_kv_groups_heads():
    x = torch.randn(2, 2, 5, 8)
    y = repeat_kv(x, 3)
    assert y.shape == (2, 6, 5, 8)
    assert torch.equal(y[:, 0], x[:, 0]) and torch.equal(y[:, 2], x[:, 0]) and torch.equal(y[:, 3], x[:, 1])


def test_rmsnorm_normalises_rms_to_one():
    x = torch.randn(4, 10, 32) * 7 + 3
    y = RMSNorm(32, eps=1e-8)(x)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(4, 10), atol=1e-4, rtol=1e-4)


def test_rope_scores_depend_only_on_relative_position():
    cos, sin = precompute_rope(16, 64, 1e4)
    q, k = torch.randn(16), torch.randn(16)

    def score(m, n):
        qm = apply_rope(q.view(1, 1, 1, 16), cos[m:m + 1], sin[m:m + 1])
        kn = apply_rope(k.view(1, 1, 1, 16), cos[n:n + 1], sin[n:n + 1])
        return (qm * kn).sum().item()

    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)
    # a rotation preserves norms
    rotated = apply_rope(q.view(1, 1, 1, 16), cos[7:8], sin[7:8])
    assert rotated.norm().item() == pytest.approx(q.norm().item(), rel=1e-5)


def test_rope_scalings_stretch_low_frequencies():
    from mmlab.model.rope import rope_inv_freq

    base, _ = rope_inv_freq(32, 1e4)
    for kind in ("linear", "ntk", "yarn"):
        scaled, factor = rope_inv_freq(32, 1e4, RopeScaling(kind=kind, factor=4.0, original_max_seq_len=64))
        assert scaled[-1] < base[-1]  # the slowest pair turns slower: it covers a longer context
        if kind == "yarn":
            assert scaled[0] == base[0] and factor == pytest.approx(0.1 * math.log(4) + 1)


def test_alibi_slopes_match_the_paper():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    # 6 heads: the 4 slopes of 4 heads, then every other slope of 8 heads (the paper's code)
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]))


def test_sinusoidal_positions_are_scaled_like_the_token_embeddings(nano):
    model = MiniMindLM(nano.replace(pos_encoding="sinusoidal"))
    rms = model.pos_table.pow(2).mean().sqrt().item()
    assert rms == pytest.approx(nano.init_std, rel=0.05)


def test_attention_weights_in_training_mode_are_distributions(nano):
    model = MiniMindLM(nano.replace(dropout=0.5)).train()
    w = model(torch.randint(0, nano.vocab_size, (1, 12)), need_weights=True).attentions[0]
    torch.testing.assert_close(w.sum(-1), torch.ones(1, nano.n_heads, 12))


def test_too_long_input_is_a_clear_error(nano):
    with pytest.raises(ValueError, match="longer than max_seq_len=64"):
        MiniMindLM(nano)(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize("preset", ["nano"])
def test_a_tiny_model_learns_a_pattern(preset):
    """60 AdamW steps on a periodic sequence must take the loss from ln(V) to well below 1."""
    cfg = get_preset(preset)
    model = MiniMindLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pattern = torch.tensor([5, 17, 3, 99, 42, 7, 64, 1])
    data = pattern.repeat(9)[:65]
    x, y = data[:-1][None], data[1:][None]
    first = None
    for _ in range(60):
        loss = model(x, targets=y).loss
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 4.0 and loss.item() < 0.5


def test_removed_sublayers_take_no_parameters_and_cached_decoding_still_matches(nano):
    full = MiniMindLM(nano).num_params()
    for changes, gone in [({"use_ffn": False}, ("ffn.", "ffn_norm")), ({"use_attn": False}, ("attn.", "attn_norm"))]:
        model = MiniMindLM(nano.replace(**changes)).eval()
        names = [n for n, _ in model.named_parameters()]
        assert not [n for n in names if any(g in n for g in gone)]
        assert model.num_params() < full
        idx = torch.randint(0, nano.vocab_size, (1, 12))
        cache = model.new_cache()
        step_logits = [model(idx[:, :8], cache=cache).logits[:, -1]]
        for t in range(8, 12):
            step_logits.append(model(idx[:, t:t + 1], cache=cache).logits[:, -1])
        torch.testing.assert_close(torch.stack(step_logits, 1), model(idx).logits[:, 7:], atol=1e-5, rtol=1e-4)


def test_linear_ffn_is_one_matrix_of_rank_at_most_hidden_size(nano):
    """Without a non-linearity, expand-then-compress collapses to a single C x C matrix."""
    model = MiniMindLM(nano.replace(ffn_act="linear"))
    ffn = model.blocks[0].ffn
    x = torch.randn(3, 5, nano.hidden_size)
    merged = ffn.down_proj.weight @ ffn.up_proj.weight  # (C, C)
    torch.testing.assert_close(ffn(x), x @ merged.T, atol=1e-6, rtol=1e-5)
    assert torch.linalg.matrix_rank(merged) <= nano.hidden_size < ffn.up_proj.weight.shape[0]


@pytest.mark.parametrize("changes", [{"norm_position": "sandwich"}, {"parallel_block": True},
                                     {"n_experts": 4, "n_shared_experts": 1}])
def test_block_layouts_and_moe_decode_with_the_cache_like_without(nano, changes):
    model = MiniMindLM(nano.replace(**changes)).eval()
    idx = torch.randint(0, nano.vocab_size, (1, 12))
    cache = model.new_cache()
    steps = [model(idx[:, :8], cache=cache).logits[:, -1]]
    steps += [model(idx[:, t:t + 1], cache=cache).logits[:, -1] for t in range(8, 12)]
    torch.testing.assert_close(torch.stack(steps, 1), model(idx).logits[:, 7:], atol=1e-5, rtol=1e-4)


def test_parallel_block_is_attention_plus_ffn_of_one_norm(nano):
    block = MiniMindLM(nano.replace(parallel_block=True)).blocks[0]
    assert not hasattr(block, "ffn_norm")
    x = torch.randn(2, 6, nano.hidden_size)
    cos, sin = precompute_rope(nano.head_dim, nano.max_seq_len, nano.rope_theta)
    rope = (cos[:6], sin[:6])
    h = block.attn_norm(x)
    torch.testing.assert_close(block(x, rope)[0], x + block.attn(h, rope)[0] + block.ffn(h))
