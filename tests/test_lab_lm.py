"""Helpers the long-context lesson added: RoPE tables from any frequencies, fine-tuning with ``train_lm``
from given weights, and a trained model shared through the lab cache."""

import pytest
import torch

from mmlab.config import RopeScaling, get_preset
from mmlab.errors import MMLabError
from mmlab.model.lm import MiniMindLM
from mmlab.model.rope import precompute_rope, rope_inv_freq, rope_tables


@pytest.mark.parametrize("kind", [None, "linear", "ntk", "yarn"])
def test_rope_tables_are_what_precompute_rope_builds(kind):
    scaling = RopeScaling(kind=kind, factor=8.0, original_max_seq_len=64) if kind else None
    inv_freq, factor = rope_inv_freq(32, 1e4, scaling)
    for ours, ref in zip(rope_tables(inv_freq, 128, factor), precompute_rope(32, 128, 1e4, scaling), strict=True):
        assert ours.shape == (128, 32) and torch.equal(ours, ref)


def test_model_with_tables_set_by_hand_equals_the_scaled_config():
    """Writing the buffers from ``rope_inv_freq`` gives the model that the scaling config builds."""
    cfg = get_preset("nano", max_seq_len=128)
    scaled_cfg = cfg.replace(rope_scaling=RopeScaling(kind="yarn", factor=4.0, original_max_seq_len=32))
    plain, scaled = MiniMindLM(cfg).eval(), MiniMindLM(scaled_cfg).eval()
    scaled.load_state_dict(plain.state_dict())
    inv_freq, factor = rope_inv_freq(cfg.head_dim, cfg.rope_theta, scaled_cfg.rope_scaling)
    plain.rope_cos, plain.rope_sin = rope_tables(inv_freq, 128, factor)  # registered buffers: replaced
    x = torch.randint(cfg.vocab_size, (2, 100))
    with torch.no_grad():
        assert torch.equal(plain(x).logits, scaled(x).logits)


def _tiny_source():
    from mmlab.lab.lm import TensorBatches

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 128, (32, 16), generator=g)
    return TensorBatches({"train": (x[:24], x[:24].roll(-1, 1)), "val": (x[24:], x[24:].roll(-1, 1))}, 8)


def test_train_lm_fine_tunes_from_given_weights():
    from mmlab.lab.lm import train_lm

    cfg = get_preset("nano", max_seq_len=16)
    torch.manual_seed(123)
    start = MiniMindLM(cfg)
    # a config that differs only where no weights live (a longer table, a scaling) still loads
    longer = cfg.replace(max_seq_len=64, rope_scaling=RopeScaling(kind="yarn", factor=4.0, original_max_seq_len=16))
    tuned = train_lm(longer, 2, 1e-6, source=_tiny_source(), block_size=16, batch_size=4, eval_batches=1, warmup=0,
                     init=start)["model"]
    fresh = train_lm(longer, 2, 1e-6, source=_tiny_source(), block_size=16, batch_size=4, eval_batches=1,
                     warmup=0)["model"]
    w0, w1, w2 = (m.blocks[0].attn.q_proj.weight.detach() for m in (start, tuned, fresh))
    assert (w1 - w0).abs().max() < 1e-4  # two steps at lr 1e-6: still the given weights
    assert (w2 - w0).abs().max() > 1e-2  # not a fresh initialisation


def test_cached_train_lm_trains_once_and_loads_the_same_model(tmp_path, monkeypatch, mirror_file):
    from mmlab.lab.lm import cached_train_lm, shakespeare_config

    monkeypatch.setenv("MMLAB_DATA_MIRROR", str(mirror_file("tinyshakespeare_input.txt").parent))
    monkeypatch.setenv("MMLAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MMLAB_LAB_CACHE", str(tmp_path / "lab"))
    cfg = shakespeare_config(hidden_size=32, n_layers=1, n_heads=2, max_seq_len=32)
    args = {"seed": 0, "batch_size": 2, "block_size": 16, "eval_batches": 1}
    logs = []
    first = cached_train_lm(cfg, 2, 1e-3, log=logs.append, **args)
    assert not first["from_cache"] and first["val_curve"] and len(list((tmp_path / "lab").iterdir())) == 1
    second = cached_train_lm(cfg, 2, 1e-3, log=logs.append, **args)
    assert second["from_cache"] and second["path"] == first["path"] and "loaded" in logs[-1]
    assert second["final_val_loss"] == first["final_val_loss"] and second["settings"] == first["settings"]
    for a, b in zip(first["model"].state_dict().values(), second["model"].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # another setting is another model; cache=False writes nothing
    other = cached_train_lm(cfg, 2, 1e-3, cache=False, **{**args, "seed": 1})
    assert other["path"] is None and not other["from_cache"] and len(list((tmp_path / "lab").iterdir())) == 1
    with pytest.raises(MMLabError, match="plain JSON value"):
        cached_train_lm(cfg, 2, 1e-3, source=_tiny_source())
