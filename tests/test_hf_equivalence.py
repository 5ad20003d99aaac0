"""With the Llama switches, MiniMindLM *is* a Llama: same weights -> same logits as `transformers`."""

import pytest
import torch
import transformers  # a declared test dependency: a broken install must fail, not skip, these tests

from mmlab.config import RopeScaling, get_preset
from mmlab.errors import ConfigError
from mmlab.model import MiniMindLM
from mmlab.model.hf import from_hf_state_dict, llama_incompatibilities, to_hf_state_dict, to_llama_config_dict
from mmlab.model.rope import rope_inv_freq


def hf_llama(cfg):
    config = transformers.LlamaConfig(**to_llama_config_dict(cfg))
    config._attn_implementation = "eager"
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize(
    "changes",
    [
        {"n_kv_heads": None},  # MHA
        {"n_kv_heads": 2},  # GQA
        {"n_kv_heads": 1, "tie_embeddings": False},  # MQA, untied head
        {"n_kv_heads": 2, "rope_scaling": RopeScaling(kind="yarn", factor=4.0, original_max_seq_len=16)},
    ],
    ids=["mha", "gqa", "mqa-untied", "gqa-yarn"],
)
def test_logits_match_llama(changes):
    cfg = get_preset("nano", hidden_size=64, n_heads=4, n_layers=3, vocab_size=101, **changes)
    ours = MiniMindLM(cfg).eval()
    # random, not-at-init norms too, so a transposed or missing norm weight would show
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    theirs = hf_llama(cfg)
    missing, unexpected = theirs.load_state_dict(to_hf_state_dict(ours.state_dict(), cfg), strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing)  # tied head comes from the embedding
    idx = torch.randint(0, cfg.vocab_size, (2, 37))
    with torch.no_grad():
        ref = theirs(idx).logits
        got = ours(idx).logits
    assert (got - ref).abs().max().item() <= 1e-4


def test_state_dict_round_trip_through_hf_names():
    cfg = get_preset("nano")
    a = MiniMindLM(cfg)
    b = MiniMindLM(cfg)
    b.load_state_dict(from_hf_state_dict(to_hf_state_dict(a.state_dict(), cfg), cfg))
    idx = torch.randint(0, cfg.vocab_size, (1, 8))
    torch.testing.assert_close(a(idx).logits, b(idx).logits)


def test_yarn_frequencies_match_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = get_preset("nano", rope_scaling=RopeScaling(kind="yarn", factor=8.0, original_max_seq_len=32))
    config = transformers.LlamaConfig(**to_llama_config_dict(cfg))
    ref, ref_factor = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
    ours, factor = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    torch.testing.assert_close(ours, ref.float())
    assert factor == pytest.approx(ref_factor)


def test_non_llama_configs_are_refused_with_the_reason():
    cfg = get_preset("nano", norm="layernorm", ffn_act="gelu")
    assert len(llama_incompatibilities(cfg)) == 2
    with pytest.raises(ConfigError, match="norm='layernorm'"):
        to_llama_config_dict(cfg)


def _random_norms(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)


def fused_experts(state):
    """Our per-expert matrices as transformers >= 5 holds Qwen3-MoE experts: gate_up_proj (E, 2F, C) and
    down_proj (E, C, F) per layer (the inverse of ``unfuse_experts``)."""
    import re

    out, experts = {}, {}
    for name, tensor in state.items():
        m = re.fullmatch(r"(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight", name)
        if m:
            experts.setdefault(m.group(1), {})[(int(m.group(2)), m.group(3))] = tensor
        else:
            out[name] = tensor
    for prefix, parts in experts.items():
        n = 1 + max(e for e, _ in parts)
        out[f"{prefix}.gate_up_proj"] = torch.stack([torch.cat([parts[e, "gate"], parts[e, "up"]]) for e in range(n)])
        out[f"{prefix}.down_proj"] = torch.stack([parts[e, "down"] for e in range(n)])
    return out


@pytest.mark.parametrize("changes", [{}, {"n_experts": 4, "n_experts_per_tok": 1},
                                     {"n_experts": 4, "n_experts_per_tok": 2, "tie_embeddings": False}],
                         ids=["qwen3", "qwen3-moe-top1", "qwen3-moe-top2"])
def test_logits_match_qwen3_with_qk_norm(changes):
    """With QK-norm on, MiniMindLM is a Qwen3 (and with routed experts, a Qwen3-MoE): the same logits."""
    from mmlab.model.hf import hf_architecture, to_hf_config_dict, unfuse_experts

    cfg = get_preset("nano", hidden_size=64, n_heads=4, n_kv_heads=2, n_layers=3, vocab_size=101, qk_norm=True,
                     **changes)
    ours = MiniMindLM(cfg).eval()
    _random_norms(ours)
    if cfg.n_experts:
        assert hf_architecture(cfg) == "qwen3_moe"
        config = transformers.Qwen3MoeConfig(**to_hf_config_dict(cfg))
        config._attn_implementation = "eager"
        theirs = transformers.Qwen3MoeForCausalLM(config).eval()
    else:
        assert hf_architecture(cfg) == "qwen3"
        config = transformers.Qwen3Config(**to_hf_config_dict(cfg))
        config._attn_implementation = "eager"
        theirs = transformers.Qwen3ForCausalLM(config).eval()
    state = to_hf_state_dict(ours.state_dict(), cfg)
    if cfg.n_experts and any(k.endswith("experts.gate_up_proj") for k in theirs.state_dict()):  # transformers 5
        state = fused_experts(state)
        assert unfuse_experts(state).keys() == to_hf_state_dict(ours.state_dict(), cfg).keys()
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing)
    idx = torch.randint(0, cfg.vocab_size, (2, 37))
    with torch.no_grad():
        ref = theirs(idx).logits
        got = ours(idx).logits
    assert (got - ref).abs().max().item() <= 1e-4
    # and back: a Qwen3 state dict (fused or not) gives our weights
    back = MiniMindLM(cfg).eval()
    back.load_state_dict(from_hf_state_dict(theirs.state_dict(), cfg))
    with torch.no_grad():
        assert torch.equal(back(idx).logits, got)


def test_qk_norm_is_refused_by_llama_and_shared_experts_by_qwen3_moe():
    from mmlab.model.hf import hf_incompatibilities

    assert "qk_norm=True" in llama_incompatibilities(get_preset("nano", qk_norm=True))[0]
    moe = get_preset("nano", qk_norm=True, n_experts=4, n_shared_experts=1)
    assert any("n_shared_experts=1" in p for p in hf_incompatibilities(moe))
    assert any("n_experts=4" in p for p in hf_incompatibilities(get_preset("nano", n_experts=4)))
