"""The fused Functions (mmlab.model.fused) against the plain tensor code they replace: values and gradients
in float32 and bfloat16, torch.autograd.gradcheck in float64, and the whole model equal with the switch on
and off."""

import json

import pytest
import torch
import torch.nn.functional as F

from mmlab.config import ModelConfig
from mmlab.model import MiniMindLM
from mmlab.model.fused import rms_norm, rope_qk, silu_mul
from mmlab.model.rope import apply_rope, precompute_rope


def plain_rms_norm(x, weight, eps):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def grads(f, *inputs):
    """Outputs of f and the gradients of a fixed random projection of them w.r.t. every input."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = f(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    torch.manual_seed(123)
    loss = sum((o.float() * torch.randn(o.shape)).sum() for o in outs)
    loss.backward()
    return [o.detach() for o in outs], [t.grad for t in inputs]


# tolerances: fp32 differs only in rounding order; bf16 results are rounded to 8 bits of mantissa
TOL = {torch.float32: {"atol": 1e-5, "rtol": 1e-5}, torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_equals_the_plain_version(dtype):
    torch.manual_seed(0)
    x = (torch.randn(3, 5, 48) * 3).to(dtype)
    w = (1 + 0.1 * torch.randn(48)).to(dtype)
    (fo,), fg = grads(lambda a, b: rms_norm(a, b, 1e-5), x, w)
    (po,), pg = grads(lambda a, b: plain_rms_norm(a, b, 1e-5), x, w)
    assert fo.dtype == po.dtype
    torch.testing.assert_close(fo, po, **TOL[dtype])
    for a, b in zip(fg, pg, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_rms_norm_mixed_dtypes_follow_the_plain_promotion():
    """bf16 activations with an fp32 weight (autocast: a q_norm on a bf16 projection): an fp32 result."""
    x, w = torch.randn(4, 16).bfloat16(), torch.randn(16)
    (fo,), fg = grads(lambda a, b: rms_norm(a, b, 1e-6), x, w)
    (po,), pg = grads(lambda a, b: plain_rms_norm(a, b, 1e-6), x, w)
    assert fo.dtype == po.dtype == torch.float32
    torch.testing.assert_close(fo, po)
    for a, b in zip(fg, pg, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_qk_equals_apply_rope_on_each(dtype):
    torch.manual_seed(0)
    cos, sin = precompute_rope(16, 32, 10_000.0)
    q = torch.randn(2, 4, 32, 16).to(dtype)
    k = torch.randn(2, 2, 32, 16).to(dtype)
    fo, fg = grads(lambda a, b: rope_qk(a, b, cos, sin), q, k)
    po, pg = grads(lambda a, b: (apply_rope(a, cos, sin), apply_rope(b, cos, sin)), q, k)
    for a, b in zip(fo + fg, po + pg, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_rope_qk_on_transposed_views_and_a_position_offset():
    """The model hands RoPE transposed (non-contiguous) q and k, and decoding uses the tables' later rows."""
    torch.manual_seed(1)
    cos, sin = precompute_rope(8, 64, 500.0)
    c, s = cos[40:43], sin[40:43]
    q = torch.randn(2, 3, 4, 8).transpose(1, 2)  # (B, H, T, D) as a view of (B, T, H, D)
    k = torch.randn(2, 3, 1, 8).transpose(1, 2)
    fo, fg = grads(lambda a, b: rope_qk(a, b, c, s), q, k)
    po, pg = grads(lambda a, b: (apply_rope(a, c, s), apply_rope(b, c, s)), q, k)
    for a, b in zip(fo + fg, po + pg, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_equals_the_plain_version(dtype):
    torch.manual_seed(0)
    g, u = (torch.randn(3, 7, 40) * 4).to(dtype), torch.randn(3, 7, 40).to(dtype)
    fo, fg = grads(silu_mul, g, u)
    po, pg = grads(lambda a, b: F.silu(a) * b, g, u)
    for a, b in zip(fo + fg, po + pg, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_gradcheck_in_float64():
    torch.manual_seed(0)
    d = dict(dtype=torch.float64, requires_grad=True)
    x, w = torch.randn(2, 3, 6, **d), torch.randn(6, **d)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-5), (x, w))
    cos, sin = precompute_rope(6, 5, 100.0)
    q, k = torch.randn(1, 2, 5, 6, **d), torch.randn(1, 1, 5, 6, **d)
    assert torch.autograd.gradcheck(lambda a, b: rope_qk(a, b, cos.double(), sin.double()), (q, k))
    g, u = torch.randn(2, 5, **d), torch.randn(2, 5, **d)
    assert torch.autograd.gradcheck(silu_mul, (g, u))
    # second use of a Function in one graph: gradients accumulate like the plain ops'
    assert torch.autograd.gradcheck(lambda a: silu_mul(a, a) + rms_norm(a, w.detach()[:5], 1e-5), (g,))


@pytest.mark.parametrize("extra", [{}, {"qk_norm": True}, {"n_kv_heads": 1, "ffn_act": "swiglu"}])
def test_the_model_is_the_same_with_fused_ops_on_and_off(extra):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, hidden_size=32, n_layers=2, n_heads=4, max_seq_len=16, **extra)
    fused, plain = MiniMindLM(cfg.replace(fused_ops=True)), MiniMindLM(cfg.replace(fused_ops=False))
    plain.load_state_dict(fused.state_dict())
    x = torch.randint(0, 50, (3, 16))
    outs = []
    for m in (fused, plain):
        out = m(x, targets=x)
        out.loss.backward()
        outs.append((out.logits.detach(), {n: p.grad for n, p in m.named_parameters()}))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-5)
    for n in outs[0][1]:
        torch.testing.assert_close(outs[0][1][n], outs[1][1][n], atol=1e-5, rtol=1e-4, msg=n)


# --- the dtype chosen per machine ----------------------------------------------------------------------

@pytest.mark.parametrize("flags, hidden, expected", [
    ([], 512, "fp32"),  # no AVX512-BF16 or AMX: bf16 would be emulated
    (["avx512f", "avx512_bf16"], 512, "bf16"),
    (["amx_tile", "amx_bf16"], 128, "bf16"),
    (["avx512_bf16"], 64, "fp32"),  # too narrow: casting costs more than the matmuls save
])
def test_training_dtype_on_a_cpu_follows_its_flags_and_the_width(monkeypatch, flags, hidden, expected):
    from mmlab import device

    monkeypatch.setattr(device, "cpu_model", lambda: ("test CPU", flags))
    dtype, why = device.training_dtype(torch.device("cpu"), ModelConfig(hidden_size=hidden, n_heads=4))
    assert dtype == expected and why  # always a reason, for `mmlab info` and the training log


def test_auto_dtype_resolves_in_the_trainer_and_is_saved(monkeypatch, tmp_path, capsys):
    from mmlab import device
    from mmlab.train.config import TrainConfig
    from mmlab.train.pretrain import pretrain

    monkeypatch.setattr(device, "cpu_model", lambda: ("test CPU", ["avx512_bf16"]))
    cfg = ModelConfig(vocab_size=64, hidden_size=128, n_layers=1, n_heads=4, max_seq_len=32)
    train = TrainConfig(out_dir=str(tmp_path / "run"), max_iters=2, batch_size=2, block_size=16, eval_interval=2,
                        eval_batches=1, dtype="auto", device="cpu", plot=False, log_interval=1)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world, " * 400)
    pretrain(cfg, str(corpus), train, tokenizer="char")
    saved = TrainConfig.from_dict(json.loads((tmp_path / "run" / "train_config.json").read_text()))
    assert saved.dtype == "bf16"  # what ran, so a resume continues in it
    assert "dtype auto -> bf16" in capsys.readouterr().err


def test_mmlab_info_says_which_dtype_training_picks(capsys):
    from mmlab.cli import main

    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["train_dtype_auto"].split(" (")[0] in ("fp32", "bf16")
