"""Mixture of experts: the layer against a per-token reference, the balance loss, and a MoE model that
trains, resumes bit-identically and generates through the same loop, checkpoint and decoding code."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ENV, train_cmd
from mmlab.config import ConfigError, get_preset
from mmlab.infer.generate import generate
from mmlab.model import MiniMindLM
from mmlab.model.moe import MoE
from mmlab.model.summary import active_params, summarize
from mmlab.train.checkpoint import load_model


@pytest.fixture
def moe_cfg(nano):
    return nano.replace(n_experts=4, n_experts_per_tok=2, n_shared_experts=1)


def reference_moe(layer: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token, as the formula reads: the top-k experts' outputs weighted by their router
    probabilities (renormalised when k > 1: with k = 1 the raw probability is kept, as in Switch and
    MiniMind, so the task loss still trains the router), plus the shared experts."""
    out = []
    for token in x.reshape(-1, x.shape[-1]):
        p = torch.softmax(layer.router(token), -1)
        w, idx = p.topk(layer.top_k)
        if layer.norm_topk and layer.top_k > 1:
            w = w / w.sum()
        y = sum(wi * layer.experts[int(i)](token[None])[0] for wi, i in zip(w, idx, strict=True))
        out.append(y + sum(e(token[None])[0] for e in layer.shared))
    return torch.stack(out).view(x.shape)


@pytest.mark.parametrize(("k", "shared", "norm"), [(1, 0, True), (2, 1, True), (2, 0, False), (4, 0, True)])
def test_moe_layer_matches_the_per_token_formula(nano, k, shared, norm):
    torch.manual_seed(0)
    layer = MoE(nano.replace(n_experts=4, n_experts_per_tok=k, n_shared_experts=shared, moe_norm_topk=norm))
    x = torch.randn(2, 7, nano.hidden_size)
    torch.testing.assert_close(layer(x), reference_moe(layer, x), atol=1e-6, rtol=1e-5)
    assert int(layer.last_load.sum()) == 2 * 7 * k


def test_balance_loss_is_one_when_uniform_and_grows_with_imbalance(nano):
    layer = MoE(nano.replace(n_experts=4, n_experts_per_tok=1))
    x = torch.randn(64, nano.hidden_size)
    torch.nn.init.zeros_(layer.router.weight)  # uniform router probabilities
    layer(x)
    assert layer.aux_loss.item() == pytest.approx(1.0)
    with torch.no_grad():  # push every token towards expert 0
        layer.router.weight[0] = x.mean(0) * 50
    layer(x)
    assert layer.aux_loss.item() > 1.5
    layer.aux_loss.backward()
    assert layer.router.weight.grad.abs().sum() > 0  # the balance loss trains the router


def test_moe_model_output_and_validation(moe_cfg):
    model = MiniMindLM(moe_cfg)
    idx = torch.randint(0, moe_cfg.vocab_size, (2, 16))
    out = model(idx, targets=idx)
    assert out.aux_loss is not None and out.aux_loss.item() > 0
    assert MiniMindLM(moe_cfg.replace(n_experts=0))(idx).aux_loss is None
    for bad, field in [({"n_experts_per_tok": 5}, "n_experts_per_tok=5"), ({"n_experts": -1}, "n_experts=-1"),
                       ({"use_ffn": False}, "use_ffn=False"), ({"moe_aux_loss_coef": -0.1}, "moe_aux_loss_coef")]:
        with pytest.raises(ConfigError, match=field.replace("(", r"\(")):
            moe_cfg.replace(**bad)


def test_minimind_moe_preset_counts_match_the_readme():
    s = summarize(get_preset("minimind-moe"))
    readme = (__import__("pathlib").Path(__file__).parents[1] / "README.md").read_text()
    assert f"{s['params']['total']:,}" in readme and f"{s['params']['active']:,}" in readme
    dense = get_preset("minimind-26m")
    assert active_params(dense) == summarize(dense)["params"]["total"]
    assert s["params"]["active"] < s["params"]["total"]


def test_moe_trains_resumes_bit_identically_and_generates(tmp_path, run_env):
    env, config = run_env
    moe = ["--set", "n_experts=4", "--set", "n_experts_per_tok=2", "--set", "n_shared_experts=1",
           "--lr-decay-iters", "30"]
    ref = subprocess.run(train_cmd(tmp_path / "ref", config, "--max-iters", "30", *moe), env=env,
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    first = subprocess.run(train_cmd(tmp_path / "split", config, "--max-iters", "15", *moe), env=env,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    resumed = subprocess.run([sys.executable, "-m", "mmlab.cli", "train", "pretrain", "--out", str(tmp_path / "split"),
                              "--resume", "--max-iters", "30"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a, b = (load_file(tmp_path / run / "ckpt" / "model.safetensors") for run in ("ref", "split"))
    assert a.keys() == b.keys() and any(".experts.3." in name for name in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    model = load_model(tmp_path / "ref").eval()
    assert model.cfg.n_experts == 4
    prompt = [1, 2, 3]
    assert generate(model, prompt, 20, temperature=0.0) == generate(model, prompt, 20, temperature=0.0,
                                                                    use_cache=False)
    sample = subprocess.run([sys.executable, "-m", "mmlab.cli", "sample", "--ckpt", str(tmp_path / "ref"),
                             "--prompt", "the", "--max-new-tokens", "20"], env=ENV, capture_output=True, text=True,
                            timeout=120)
    assert sample.returncode == 0, sample.stderr
