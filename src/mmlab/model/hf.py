"""Mapping between mmlab's model and Hugging Face `transformers`' Llama.

A model with the Llama switches (RMSNorm, Pre-LN, RoPE, causal, SwiGLU, residuals, no biases) has
the same tensors as LlamaForCausalLM under other names; these functions translate names and config.
This module does not import `transformers`: the caller builds the HF objects.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from mmlab.config import ModelConfig
from mmlab.errors import ConfigError

# mmlab name -> HF Llama name; {i} is the layer index
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn.gate_proj.weight": "mlp.gate_proj.weight",
    "ffn.up_proj.weight": "mlp.up_proj.weight",
    "ffn.down_proj.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {"tok_emb.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
              "lm_head.weight": "lm_head.weight"}


def llama_incompatibilities(cfg: ModelConfig) -> list[str]:
    """The switches that make ``cfg`` differ from a Llama (empty list: it is one)."""
    wanted = {"norm": "rmsnorm", "norm_position": "pre", "pos_encoding": "rope", "causal": True,
              "ffn_act": "swiglu", "residual": True, "bias": False, "use_attn": True, "use_ffn": True,
              "parallel_block": False, "n_experts": 0}
    problems = [f"{k}={getattr(cfg, k)!r} (Llama: {v!r})" for k, v in wanted.items() if getattr(cfg, k) != v]
    if cfg.rope_scaling is not None and cfg.rope_scaling.kind == "ntk":
        problems.append("rope_scaling.kind='ntk' (no static NTK scaling in transformers' Llama)")
    return problems


def to_llama_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """Keyword arguments for ``transformers.LlamaConfig``."""
    problems = llama_incompatibilities(cfg)
    if problems:
        raise ConfigError("not a Llama-compatible config: " + "; ".join(problems))
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        rope = {"rope_type": s.kind, "rope_theta": cfg.rope_theta, "factor": s.factor}
        if s.kind == "yarn":
            rope |= {"original_max_position_embeddings": s.original_max_seq_len,
                     "beta_fast": s.beta_fast, "beta_slow": s.beta_slow}
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.resolved_ffn_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,  # transformers < 5
        "rope_parameters": rope,  # transformers >= 5
        "rope_scaling": None if cfg.rope_scaling is None else rope,  # transformers 4.x
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": cfg.resolved_attn_dropout,
        "initializer_range": cfg.init_std,
    }


def to_hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename an mmlab state dict to LlamaForCausalLM's names."""
    out = {}
    for name, tensor in state.items():
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
        if m:
            out[f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"] = tensor
        else:
            out[_TOP_NAMES[name]] = tensor
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def from_hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename a LlamaForCausalLM state dict to mmlab's names (inverse of to_hf_state_dict)."""
    layer_inv = {v: k for k, v in _LAYER_NAMES.items()}
    top_inv = {v: k for k, v in _TOP_NAMES.items()}
    out = {}
    for name, tensor in state.items():
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
        if m and m.group(2) in layer_inv:
            out[f"blocks.{m.group(1)}.{layer_inv[m.group(2)]}"] = tensor
        elif name in top_inv:
            out[top_inv[name]] = tensor
        elif not name.endswith("rotary_emb.inv_freq"):
            raise ConfigError(f"unexpected tensor in a Llama state dict: {name}")
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
        out["lm_head.weight"] = out["tok_emb.weight"]
    return out
