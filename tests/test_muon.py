"""Muon, written out, against PyTorch's own Muon + AdamW; and the optimizer choice in the trainer."""

import copy

import pytest
import torch

from mmlab.config import ModelConfig
from mmlab.errors import ConfigError
from mmlab.model.lm import MiniMindLM
from mmlab.train.config import TrainConfig
from mmlab.train.muon import MuonAdamW, orthogonalize
from mmlab.train.optim import build_optimizer


@pytest.mark.parametrize("shape", [(32, 96), (96, 32), (48, 48)])
def test_orthogonalize_matches_torch_and_flattens_the_spectrum(shape):
    from torch.optim._muon import _zeropower_via_newtonschulz

    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[:, 0] *= 100  # one dominant direction, as in a raw gradient
    ours = orthogonalize(g)
    ref = _zeropower_via_newtonschulz(g, (3.4445, -4.775, 2.0315), 5, 1e-7)
    assert torch.equal(ours, ref)
    s = torch.linalg.svdvals(ours.float())
    raw = torch.linalg.svdvals(g)
    # the dominant direction no longer dominates: singular values end near 1 (roughly 0.5-1.5)
    assert raw[0] / raw[1] > 5 and s.max() < 1.6 and (s > 0.5).float().mean() > 0.8


def test_muon_adamw_matches_torch_muon_plus_adamw():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    ours_model = MiniMindLM(cfg)
    ref_model = copy.deepcopy(ours_model)
    ours = build_optimizer(ours_model, TrainConfig(optimizer="muon", lr=1e-2, weight_decay=0.1))
    assert isinstance(ours, MuonAdamW)
    named = dict(ref_model.named_parameters())
    is_hidden = {n: p.dim() == 2 and n.startswith("blocks.") for n, p in named.items()}
    muon = torch.optim.Muon([p for n, p in named.items() if is_hidden[n]], lr=1e-2, weight_decay=0.1, momentum=0.95,
                            adjust_lr_fn="match_rms_adamw")
    rest = [p for n, p in named.items() if not is_hidden[n]]
    adamw = torch.optim.AdamW([{"params": [p for p in rest if p.dim() >= 2], "weight_decay": 0.1},
                               {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
                              lr=1e-2, betas=(0.9, 0.99), eps=1e-8, foreach=False)
    x = torch.randint(50, (4, 33), generator=torch.Generator().manual_seed(1))
    for _ in range(5):
        for model, opts in ((ours_model, [ours]), (ref_model, [muon, adamw])):
            for o in opts:
                o.zero_grad()
            model(x[:, :-1], targets=x[:, 1:]).loss.backward()
            for o in opts:
                o.step()
    for (name, a), b in zip(ours_model.named_parameters(), ref_model.parameters(), strict=True):
        # bit for bit: the same formulas in the same order (bf16 Newton-Schulz would amplify any rounding gap)
        assert torch.equal(a, b), name
    # and it moved: five steps at lr 1e-2 are not a no-op
    assert not torch.equal(ours_model.tok_emb.weight, MiniMindLM(cfg).tok_emb.weight)


def test_muon_refuses_non_matrices_and_bad_momentum():
    with pytest.raises(ValueError, match="2-D"):
        MuonAdamW([{"params": [torch.nn.Parameter(torch.ones(3))], "use_muon": True}])
    with pytest.raises(ConfigError, match="muon_momentum"):
        TrainConfig(optimizer="muon", muon_momentum=1.0)
    with pytest.raises(ConfigError, match="beta2"):
        TrainConfig(beta2=1.5)


def test_muon_run_resumes_bit_identically(tmp_path):
    """10 steps in one go == 5 steps, a checkpoint, and 5 more: Muon's state is saved and restored."""
    from mmlab.config import get_preset
    from mmlab.lab.lm import TensorBatches
    from mmlab.train.trainer import NextTokenLoss, Trainer

    x = torch.randint(0, 128, (32, 17), generator=torch.Generator().manual_seed(0))
    source = TensorBatches({"train": (x[:, :-1], x[:, 1:]), "val": (x[:8, :-1], x[:8, 1:])}, 8)

    def cfg(out, steps):
        return TrainConfig(out_dir=str(out), max_iters=steps, batch_size=4, eval_interval=5, eval_batches=1,
                           log_interval=5, warmup_iters=2, lr=1e-2, lr_decay_iters=10, optimizer="muon",
                           progress=False, plot=False,
                           device="cpu")

    torch.manual_seed(0)
    straight = MiniMindLM(get_preset("nano"))
    Trainer(straight, NextTokenLoss(), source, cfg(tmp_path / "a", 10)).fit()
    torch.manual_seed(0)
    Trainer(MiniMindLM(get_preset("nano")), NextTokenLoss(), source, cfg(tmp_path / "b", 5)).fit()
    resumed = MiniMindLM(get_preset("nano"))
    Trainer(resumed, NextTokenLoss(), source, TrainConfig.for_resume(tmp_path / "b", max_iters=10), resume=True).fit()
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_lora_factors_are_left_to_adamw():
    """Muon orthogonalises the blocks' full matrices; LoRA's low-rank factors (and everything frozen) are not
    in its group."""
    from mmlab.config import ModelConfig
    from mmlab.model.lm import MiniMindLM
    from mmlab.model.lora import LoRAConfig, apply_lora
    from mmlab.train.config import TrainConfig
    from mmlab.train.optim import build_muon

    model = MiniMindLM(ModelConfig(vocab_size=40, hidden_size=32, n_layers=1, n_heads=2, max_seq_len=16))
    apply_lora(model, LoRAConfig(rank=2, target_modules=["all-linear"]))
    opt = build_muon(model, TrainConfig(optimizer="muon"))
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [names[id(p)] for g in opt.param_groups if g.get("use_muon") for p in g["params"]]
    others = [names[id(p)] for g in opt.param_groups if not g.get("use_muon") for p in g["params"]]
    assert not muon and others and all(".lora_" in n for n in others)
