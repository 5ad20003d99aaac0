"""Weight-only int8 / int4 quantization: error bounds, packing, groups, a quantized model, checkpoints, CLI."""

import copy

import pytest
import torch
from torch import nn

from mmlab.cli import main
from mmlab.config import get_preset
from mmlab.errors import ConfigError, MMLabError
from mmlab.infer.quant import (
    QuantConfig,
    QuantLinear,
    dequantize_tensor,
    model_nbytes,
    pack_int4,
    quantize_model,
    quantize_tensor,
    unpack_int4,
)
from mmlab.model.lm import MiniMindLM
from mmlab.train.checkpoint import CheckpointError, load_model, load_weights, save_checkpoint
from mmlab.train.config import TrainConfig
from mmlab.train.trainer import Trainer


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("group_size", [None, 32])
def test_round_to_nearest_error_is_at_most_half_a_step(bits, group_size):
    w = torch.randn(48, 128) * 0.02
    w[3] = 0.0  # an all-zero row must come back exactly
    q, scales = quantize_tensor(w, bits, group_size)
    assert q.dtype == (torch.uint8 if bits == 4 else torch.int8)
    assert scales.shape == (48, 128 // (group_size or 128))
    step = scales.repeat_interleave(group_size or 128, dim=1)  # each weight's own scale
    err = (w - dequantize_tensor(q, scales, bits)).abs()
    assert (err <= step / 2 * (1 + 1e-5)).all()
    assert err[3].max() == 0
    assert err.max() > 0.1 * step.min()  # it is a real rounding, not a copy


def test_int4_packing_is_exact_and_halves_the_bytes():
    values = torch.randint(-8, 8, (16, 64), dtype=torch.int8)
    packed = pack_int4(values)
    assert packed.dtype == torch.uint8 and packed.shape == (16, 32)
    assert torch.equal(unpack_int4(packed), values)
    assert torch.equal(unpack_int4(packed, torch.float32), values.float())  # straight to floats, as dequantizing does
    assert packed.nbytes * 2 == values.nbytes
    assert pack_int4(torch.tensor([[1, -2]], dtype=torch.int8)).item() == (1 + 8) | ((-2 + 8) << 4)  # low = even col
    with pytest.raises(ConfigError, match=r"\[-8, 7\]"):
        pack_int4(torch.tensor([[8, 0]]))
    linear = nn.Linear(64, 32, bias=False)
    q8, q4 = QuantLinear.from_linear(linear, 8), QuantLinear.from_linear(linear, 4)
    assert q4.qweight.nbytes * 2 == q8.qweight.nbytes == 64 * 32


def test_groups_beat_per_channel_on_a_matrix_with_outlier_columns():
    w = torch.randn(64, 256) * 0.02
    w[:, [5, 77, 200]] *= 50  # a few input features carry much larger weights in every row
    errors = {}
    for g in (None, 32):
        q, s = quantize_tensor(w, 4, g)
        errors[g] = (w - dequantize_tensor(q, s, 4)).pow(2).mean().item()
    # per-channel: every row's step is set by its outlier, so the ordinary weights mostly round to 0;
    # with groups of 32 only 3 of the 8 groups per row pay for an outlier
    assert errors[32] < 0.5 * errors[None]


@pytest.mark.parametrize("group_size", [None, 16])
def test_quant_linear_computes_x_times_the_dequantized_weight(group_size):
    linear = nn.Linear(32, 24, bias=True)
    x = torch.randn(3, 5, 32)
    for bits in (8, 4):
        layer = QuantLinear.from_linear(linear, bits, group_size)
        expected = x @ layer.weight().T + linear.bias
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
        layer.cache_dequantized = True  # the cached path computes the same, and its copy counts as memory
        assert layer.dequantized is not None and model_nbytes(layer) > 32 * 24 * 4
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
        assert layer(x.bfloat16()).dtype == torch.bfloat16


def test_per_channel_int8_does_not_overflow_in_fp16():
    torch.manual_seed(0)
    linear = nn.Linear(512, 8, bias=False)
    nn.init.uniform_(linear.weight, 0.5, 1.0)  # positive weights: the int sums add up, 64..127 each
    layer = QuantLinear.from_linear(linear, bits=8)
    x = torch.full((1, 512), 4.0)  # x @ ints alone would be about 512 * 4 * 127 > 65504
    expected = x @ layer.weight().T
    got = layer(x.half()).float()
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-1)


def test_quantized_model_logits_stay_close_and_int8_beats_int4():
    # Tolerance, from an estimate rather than fitted: for Gaussian weights, max|w| over a row of 128 is ~2.7
    # sigma, so the rounding noise (step / sqrt(12)) is ~0.6% of the weights' std at int8 and ~11% at int4,
    # and each matmul's output carries about that relative error. On this model the logits' relative error
    # is what the estimate says (measured 0.6% and 11%); errors can compound with depth, so we allow ~3x:
    # int8 within 2% and int4 within 30% of the logits' norm.
    cfg = get_preset("shakespeare-char")
    model = MiniMindLM(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 48))
    with torch.no_grad():
        ref = model(x).logits
    rel, sizes = {}, {}
    for bits in (8, 4):
        q = copy.deepcopy(model)
        summary = quantize_model(q, bits=bits)
        with torch.no_grad():
            rel[bits] = ((q(x).logits - ref).norm() / ref.norm()).item()
        sizes[bits] = model_nbytes(q)
        assert summary["layers"] == 7 * cfg.n_layers and summary["kept_linear"] == ["lm_head"]
        assert summary["bytes_before"] == model_nbytes(model) and summary["bytes_after"] == sizes[bits]
        assert q.lm_head.weight is q.tok_emb.weight  # the tied matrix is still shared, in fp32
    assert rel[8] < 0.02 and rel[4] < 0.30
    assert rel[8] < rel[4] / 4
    assert sizes[4] < sizes[8] < model_nbytes(model) / 2


def test_bad_settings_are_one_line_errors_and_leave_the_model_alone():
    model = MiniMindLM(get_preset("nano"))  # hidden 64, FFN 192
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError) as info:
        quantize_model(model, bits=4, group_size=48)
    assert "\n" not in str(info.value)
    assert "blocks.0.attn.q_proj" in str(info.value) and "group_size=48" in str(info.value)
    with pytest.raises(ConfigError, match="8 or 4"):
        quantize_model(model, bits=3)
    with pytest.raises(ConfigError, match="shares its weight with tok_emb.weight"):
        quantize_model(model, bits=8, skip=())  # the tied LM head
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    quantize_model(model, bits=8)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_model(model, bits=4)


def test_quantized_checkpoint_round_trip(tmp_path):
    cfg = get_preset("nano", bias=True)
    model = MiniMindLM(cfg).eval()
    quantize_model(model, bits=4, group_size=32)
    save_checkpoint(tmp_path / "q", model)
    assert (tmp_path / "q" / "quant_config.json").is_file()
    loaded = load_model(tmp_path / "q").eval()
    assert loaded.quant_config == model.quant_config
    assert isinstance(loaded.blocks[1].ffn.down_proj, QuantLinear) and loaded.blocks[1].ffn.down_proj.bias is not None
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randint(0, cfg.vocab_size, (1, 16))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    assert QuantConfig.from_json(tmp_path / "q" / "quant_config.json").layers == model.quant_config.layers
    with pytest.raises(CheckpointError, match="quantized model"):
        load_weights(MiniMindLM(cfg), tmp_path / "q")  # e.g. a trainer resuming into a plain model
    with pytest.raises(MMLabError, match="quantized"):  # int buffers cannot train: refused, not silently frozen
        Trainer(loaded, None, None, TrainConfig(out_dir=str(tmp_path / "train")))
    assert not (tmp_path / "train").exists()


def test_quant_config_that_disagrees_with_the_tensors_is_a_clear_error(tmp_path):
    model = MiniMindLM(get_preset("nano")).eval()
    quantize_model(model, bits=8)
    save_checkpoint(tmp_path / "q", model)
    edited = QuantConfig.from_json(tmp_path / "q" / "quant_config.json")
    edited.bits = 4  # int4 packs two values per byte: the saved int8 tensors no longer fit
    edited.to_json(tmp_path / "q" / "quant_config.json")
    with pytest.raises(CheckpointError, match="wrong shape.*qweight"):
        load_model(tmp_path / "q")


def _checkpoint_with_a_corpus(tmp_path):
    """A (random) char-level model whose trainer state records a text file as its corpus."""
    from mmlab.data.corpus import load_corpus
    from mmlab.tokenizer.char import CharTokenizer

    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 120)
    tok = CharTokenizer.from_corpus(text.read_text())
    model = MiniMindLM(get_preset("nano", vocab_size=tok.vocab_size))
    state = {"step": 1, "train_config": {"val_fraction": 0.1, "seed": 0},
             "extra": {"data": str(text), "corpus_sha256": load_corpus(str(text)).sha256()}}
    return save_checkpoint(tmp_path / "run" / "ckpt", model, tok, state)


def test_cli_quantize_then_sample(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MMLAB_DATA_DIR", str(tmp_path / "cache"))
    _checkpoint_with_a_corpus(tmp_path)
    out = tmp_path / "q8"
    assert main(["quantize", "--ckpt", str(tmp_path / "run"), "--bits", "8", "--group-size", "32",
                 "--out", str(out), "--eval-tokens", "256"]) == 0
    printed = capsys.readouterr().out
    assert "int8 (groups of 32): 14 linear layers" in printed and "MiB ->" in printed
    line = next(s for s in printed.splitlines() if s.startswith("val loss"))
    before, after = (float(v) for v in line.split()[2:5:2])
    assert abs(after - before) < 0.01 and "256 held-out tokens" in line
    assert (out / "quant_config.json").is_file() and not (out / "trainer_state.pt").exists()
    assert main(["sample", "--ckpt", str(out), "--prompt", "the ", "--max-new-tokens", "8", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("the ")


def test_cli_quantize_bad_group_size_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MMLAB_DATA_DIR", str(tmp_path / "cache"))
    _checkpoint_with_a_corpus(tmp_path)
    out = tmp_path / "q4"
    assert main(["quantize", "--ckpt", str(tmp_path / "run"), "--bits", "4", "--group-size", "48",
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mmlab: error: ") and "group_size=48" in err
    assert not out.exists() and not (tmp_path / "cache").exists()  # refused before any work


def test_quantized_bytes_match_the_formula():
    cfg = get_preset("nano")
    model = MiniMindLM(cfg)
    linear = [m for m in model.modules() if isinstance(m, nn.Linear) and m is not model.lm_head]
    n_weights = sum(m.weight.numel() for m in linear)
    rest = model_nbytes(model) - 4 * n_weights
    for bits, g in ((8, None), (4, None), (4, 32)):
        q = copy.deepcopy(model)
        quantize_model(q, bits, g)
        scales = sum(m.out_features * (m.in_features // (g or m.in_features)) for m in linear)
        assert model_nbytes(q) == rest + n_weights * bits // 8 + 4 * scales  # packed int4: half a byte each


def test_cli_quantize_overwrite_replaces_only_a_checkpoint_folder(tmp_path, monkeypatch, capsys):
    """--overwrite may replace an earlier quantized checkpoint, never a folder of other files, the source
    checkpoint or a folder holding it."""
    monkeypatch.setenv("MMLAB_DATA_DIR", str(tmp_path / "cache"))
    _checkpoint_with_a_corpus(tmp_path)
    args = ["quantize", "--ckpt", str(tmp_path / "run"), "--bits", "8", "--eval-tokens", "0", "--overwrite", "--out"]
    assert main([*args, str(tmp_path / "q")]) == 0
    assert main([*args, str(tmp_path / "q")]) == 0  # an earlier quantized checkpoint: replaced
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("keep me")
    for out, fragment in ((notes, "not a checkpoint's"), (tmp_path, "or a folder holding it"),
                          (tmp_path / "run", "or a folder holding it")):
        capsys.readouterr()
        assert main([*args, str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
    assert (notes / "thesis.txt").read_text() == "keep me"
    assert (tmp_path / "run" / "ckpt" / "model.safetensors").is_file()
