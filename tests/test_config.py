"""ModelConfig: presets, exact parameter counts, validation messages, JSON round-trip."""

import dataclasses
import json

import pytest

from mmlab.config import PRESETS, ModelConfig, RopeScaling, get_preset
from mmlab.errors import ConfigError
from mmlab.model import MiniMindLM
from mmlab.model.summary import active_params, param_breakdown, summarize


def total_params(cfg):
    return sum(param_breakdown(cfg).values())


@pytest.mark.parametrize(
    ("preset", "expected"),
    [("minimind-26m", 25_829_888), ("minimind-104m", 104_030_976), ("minimind-3", 63_912_192),
     ("minimind-3-moe", 198_416_640)],
)
def test_minimind_presets_have_minimind_parameter_counts(preset, expected):
    assert total_params(get_preset(preset)) == expected
    assert sum(p.numel() for p in MiniMindLM(get_preset(preset)).parameters()) == expected  # the model agrees


def test_minimind3_is_qwen3_shaped_and_its_moe_activates_one_expert():
    cfg = get_preset("minimind-3")
    assert (cfg.qk_norm, cfg.n_layers, cfg.hidden_size, cfg.n_heads, cfg.kv_heads, cfg.head_dim,
            cfg.resolved_ffn_size, cfg.vocab_size, cfg.tie_embeddings, cfg.rope_theta) == (
        True, 8, 768, 8, 4, 96, 2432, 6400, True, 1e6)
    moe = get_preset("minimind-3-moe")
    assert (moe.n_experts, moe.n_experts_per_tok, moe.n_shared_experts) == (4, 1, 0)
    assert active_params(moe) == 63_936_768 and active_params(cfg) == 63_912_192


def test_small_presets_sizes():
    assert total_params(get_preset("nano")) < 300_000
    # nanoGPT's CPU baby GPT is ~0.80M; ours is the same shape with SwiGLU and RoPE
    assert 700_000 < total_params(get_preset("shakespeare-char")) < 1_000_000
    cfg = get_preset("shakespeare-char")
    assert (cfg.n_layers, cfg.n_heads, cfg.hidden_size, cfg.max_seq_len, cfg.vocab_size) == (4, 4, 128, 64, 65)


def test_minimind_26m_shape():
    cfg = get_preset("minimind-26m")
    assert (cfg.hidden_size, cfg.n_layers, cfg.n_heads, cfg.kv_heads, cfg.vocab_size) == (512, 8, 8, 2, 6400)
    assert cfg.resolved_ffn_size == 1408 and cfg.rope_theta == 1e6 and cfg.tie_embeddings
    # the FFN size MiniMind derives: 8/3 * hidden rounded up to a multiple of 64
    assert cfg.replace(ffn_size=None).resolved_ffn_size == 1408
    assert get_preset("minimind-104m").resolved_ffn_size == 2048


def test_summary_counts_agree_with_the_real_model():
    from mmlab.model import MiniMindLM

    for name in ("nano", "shakespeare-char"):
        cfg = get_preset(name)
        assert MiniMindLM(cfg).num_params() == total_params(cfg)
    s = summarize(get_preset("minimind-26m"))
    # bf16 KV cache: 2 (K,V) * 8 layers * 2 KV heads * 64 dims * 2 bytes
    assert s["kv_cache_bytes_per_token"]["bf16"] == 2 * 8 * 2 * 64 * 2


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"n_heads": 8, "n_kv_heads": 3}, "n_heads=8 is not divisible by n_kv_heads=3"),
        ({"hidden_size": 100, "n_heads": 8}, "hidden_size=100 is not divisible by n_heads=8"),
        ({"hidden_size": 24, "n_heads": 8, "n_kv_heads": None}, "head_dim=3"),
        ({"norm": "batchnorm"}, "norm='batchnorm' is not one of"),
        ({"pos_encoding": "relative"}, "pos_encoding='relative'"),
        ({"ffn_act": "tanh"}, "ffn_act='tanh'"),
        ({"dropout": 1.5}, "dropout=1.5"),
        ({"vocab_size": 0}, "vocab_size=0 must be a positive integer"),
        ({"pos_encoding": "learned", "rope_scaling": RopeScaling()}, "only applies to rope"),
        ({"rope_scaling": {"kind": "yarn", "factor": 0.5}}, "rope_scaling.factor=0.5"),
        ({"rope_scaling": "yarn"}, "rope_scaling='yarn' must be null or an object"),
        ({"causal": "false"}, "causal='false' must be true or false"),  # "false" is truthy: never accept it
        ({"tie_embeddings": 0}, "tie_embeddings=0 must be true or false"),
        ({"n_kv_heads": True}, "n_kv_heads=True must be an integer or null"),
        ({"norm_eps": "1e-5"}, "norm_eps='1e-5' must be a finite number"),
        ({"ffn_mult": float("inf")}, "ffn_mult=inf must be a finite number or null"),
        ({"ffn_size": None, "ffn_mult": 0.001}, "the FFN would have 0 hidden units"),
        ({"hidden_size": 8, "n_heads": 4, "n_kv_heads": None,
          "rope_scaling": {"kind": "ntk", "factor": 2.0, "original_max_seq_len": 8}}, "too small for NTK"),
    ],
)
def test_invalid_configs_fail_with_one_clear_line(changes, fragment):
    with pytest.raises(ConfigError) as info:
        get_preset("minimind-26m", **changes)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_odd_head_dim_is_fine_without_rope():
    cfg = ModelConfig(hidden_size=24, n_heads=8, pos_encoding="learned", vocab_size=10)
    assert cfg.head_dim == 3


@pytest.mark.parametrize("name", list(PRESETS))
def test_json_round_trip(name, tmp_path):
    cfg = get_preset(name)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    path = tmp_path / "config.json"
    cfg.to_json(path)
    assert ModelConfig.from_json(path) == cfg


def test_json_round_trip_with_rope_scaling():
    cfg = get_preset("nano", rope_scaling=RopeScaling(kind="ntk", factor=2.0, original_max_seq_len=64))
    back = ModelConfig.from_json(cfg.to_json())
    assert back == cfg and isinstance(back.rope_scaling, RopeScaling)


def test_json_errors_name_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hidden_size": 64,\n "n_heads": }')
    with pytest.raises(ConfigError, match=r"bad.json: invalid JSON at line 2"):
        ModelConfig.from_json(bad)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"hiden_size": 64}))
    with pytest.raises(ConfigError, match=r"unknown.json: unknown ModelConfig field\(s\): hiden_size"):
        ModelConfig.from_json(unknown)
    with pytest.raises(ConfigError, match="config file not found"):
        ModelConfig.from_json(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="hidden_size"):
        ModelConfig.from_json('{"hidden_size": "wide"}')
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.json: not UTF-8"):
        ModelConfig.from_json(latin1)


def test_replace_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="unknown ModelConfig field"):
        get_preset("nano").replace(n_layer=3)
    with pytest.raises(ConfigError, match="unknown preset 'gpt5'"):
        get_preset("gpt5")


def test_config_is_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_preset("nano").n_layers = 3


def test_the_readme_states_the_minimind3_counts_the_presets_have():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in ("minimind-3", "minimind-3-moe"):
        s = summarize(get_preset(name))
        assert f"{s['params']['total']:,}" in readme and f"{s['params']['active']:,}" in readme
