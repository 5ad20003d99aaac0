"""Mapping between mmlab's model and Hugging Face `transformers`' Llama and Qwen3.

A model with the Llama switches (RMSNorm, Pre-LN, RoPE, causal, SwiGLU, residuals, no biases) has
the same tensors as LlamaForCausalLM under other names; with ``qk_norm`` on as well it is a Qwen3
(Qwen3ForCausalLM: the same, plus an RMSNorm over head_dim on queries and keys), and with routed
experts and no shared one a Qwen3-MoE (Qwen3MoeForCausalLM). These functions translate names and
config. This module does not import `transformers`: the caller builds the HF objects.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from mmlab.config import ModelConfig, RopeScaling
from mmlab.errors import ConfigError

# mmlab name -> HF Llama name; {i} is the layer index
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight",  # Qwen3 (qk_norm)
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn.gate_proj.weight": "mlp.gate_proj.weight",
    "ffn.up_proj.weight": "mlp.up_proj.weight",
    "ffn.down_proj.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {"tok_emb.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
              "lm_head.weight": "lm_head.weight"}


_LLAMA_SWITCHES = {"norm": "rmsnorm", "norm_position": "pre", "pos_encoding": "rope", "causal": True,
                   "ffn_act": "swiglu", "residual": True, "bias": False, "use_attn": True, "use_ffn": True,
                   "parallel_block": False, "sliding_window": None, "attn_sinks": False, "attention": "gqa"}


def hf_architecture(cfg: ModelConfig) -> str:
    """The `transformers` model_type that ``cfg`` would be: "llama", "qwen3" (QK-norm) or "qwen3_moe"."""
    if cfg.qk_norm:
        return "qwen3_moe" if cfg.n_experts else "qwen3"
    return "llama"


def hf_incompatibilities(cfg: ModelConfig) -> list[str]:
    """The switches that keep ``cfg`` from being its ``hf_architecture`` (empty list: it is one)."""
    arch = hf_architecture(cfg)
    name = {"llama": "Llama", "qwen3": "Qwen3", "qwen3_moe": "Qwen3-MoE"}[arch]
    problems = [f"{k}={getattr(cfg, k)!r} ({name}: {v!r})" for k, v in _LLAMA_SWITCHES.items() if getattr(cfg, k) != v]
    if arch == "llama" and cfg.n_experts:
        problems.append(f"n_experts={cfg.n_experts} (a Llama is dense; experts export as Qwen3-MoE, which also "
                        "needs qk_norm=True)")
    if arch == "qwen3_moe" and cfg.n_shared_experts:
        problems.append(f"n_shared_experts={cfg.n_shared_experts} (Qwen3-MoE has routed experts only)")
    if cfg.rope_scaling is not None and cfg.rope_scaling.kind == "ntk":
        problems.append(f"rope_scaling.kind='ntk' (no static NTK scaling in transformers' {name})")
    return problems


def llama_incompatibilities(cfg: ModelConfig) -> list[str]:
    """The switches that make ``cfg`` differ from a Llama (empty list: it is one)."""
    problems = hf_incompatibilities(cfg.replace(qk_norm=False))
    if cfg.qk_norm:
        problems.insert(0, "qk_norm=True (Llama: False; a model with QK-norm is a Qwen3)")
    return problems


def to_hf_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """Keyword arguments for the config class of ``hf_architecture(cfg)`` (LlamaConfig, Qwen3Config or
    Qwen3MoeConfig)."""
    arch = hf_architecture(cfg)
    problems = hf_incompatibilities(cfg)
    if problems:
        raise ConfigError(f"not a {arch}-compatible config: " + "; ".join(problems))
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        rope = {"rope_type": s.kind, "rope_theta": cfg.rope_theta, "factor": s.factor}
        if s.kind == "yarn":
            rope |= {"original_max_position_embeddings": s.original_max_seq_len,
                     "beta_fast": s.beta_fast, "beta_slow": s.beta_slow}
    out = {
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
        "attention_dropout": cfg.resolved_attn_dropout,
        "initializer_range": cfg.init_std,
    }
    if arch == "llama":
        return out | {"mlp_bias": False}
    out |= {"use_sliding_window": False, "sliding_window": None, "max_window_layers": cfg.n_layers}
    if arch == "qwen3_moe":  # every layer sparse; our top-1 keeps the raw probability, as norm_topk_prob=False
        out |= {"num_experts": cfg.n_experts, "num_experts_per_tok": cfg.n_experts_per_tok,
                "moe_intermediate_size": cfg.resolved_ffn_size, "decoder_sparse_step": 1, "mlp_only_layers": [],
                "norm_topk_prob": cfg.moe_norm_topk and cfg.n_experts_per_tok > 1,
                "router_aux_loss_coef": cfg.moe_aux_loss_coef, "output_router_logits": False}
    return out


def to_llama_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """Keyword arguments for ``transformers.LlamaConfig``."""
    problems = llama_incompatibilities(cfg)
    if problems:
        raise ConfigError("not a Llama-compatible config: " + "; ".join(problems))
    return to_hf_config_dict(cfg)


_EXPERT_NAMES = [  # mmlab -> Qwen3-MoE (and MiniMind's routed experts): the router is `mlp.gate`
    (re.compile(r"blocks\.(\d+)\.ffn\.router\.weight"), r"model.layers.\1.mlp.gate.weight"),
    (re.compile(r"blocks\.(\d+)\.ffn\.experts\.(\d+)\.(gate|up|down)_proj\.weight"),
     r"model.layers.\1.mlp.experts.\2.\3_proj.weight"),
]


def to_hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename an mmlab state dict to LlamaForCausalLM's (or Qwen3's, Qwen3-MoE's) names."""
    out = {}
    for name, tensor in state.items():
        expert = next(((p, t) for p, t in _EXPERT_NAMES if p.fullmatch(name)), None)
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
        if expert is not None:
            out[expert[0].sub(expert[1], name)] = tensor
        elif m:
            out[f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"] = tensor
        else:
            out[_TOP_NAMES[name]] = tensor
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def unfuse_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers >= 5 holds a layer's experts as two 3-d tensors, ``mlp.experts.gate_up_proj``
    (experts, 2 * ffn, hidden) and ``mlp.experts.down_proj`` (experts, hidden, ffn): split them into the
    per-expert matrices of the hub's files."""
    out = {}
    for name, tensor in state.items():
        m = re.fullmatch(r"(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)", name)
        if m is None:
            out[name] = tensor
            continue
        for e in range(tensor.shape[0]):
            if m.group(2) == "down_proj":
                out[f"{m.group(1)}.{e}.down_proj.weight"] = tensor[e]
            else:
                gate, up = tensor[e].chunk(2, dim=0)
                out[f"{m.group(1)}.{e}.gate_proj.weight"], out[f"{m.group(1)}.{e}.up_proj.weight"] = gate, up
    return out


def from_hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename a LlamaForCausalLM (or Qwen3, Qwen3-MoE) state dict to mmlab's names (inverse of to_hf_state_dict)."""
    layer_inv = {v: k for k, v in _LAYER_NAMES.items()}
    top_inv = {v: k for k, v in _TOP_NAMES.items()}
    out = {}
    for name, tensor in unfuse_experts(state).items():
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
        expert = re.fullmatch(r"model\.layers\.(\d+)\.mlp\.(?:gate|experts\.(\d+)\.(gate|up|down)_proj)\.weight",
                              name)
        if expert is not None:
            layer, e, which = expert.groups()
            ours = "router" if e is None else f"experts.{e}.{which}_proj"
            out[f"blocks.{layer}.ffn.{ours}.weight"] = tensor
        elif m and m.group(2) in layer_inv:
            out[f"blocks.{m.group(1)}.{layer_inv[m.group(2)]}"] = tensor
        elif name in top_inv:
            out[top_inv[name]] = tensor
        elif not name.endswith("rotary_emb.inv_freq"):
            raise ConfigError(f"unexpected tensor in a Llama state dict: {name}")
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
        out["lm_head.weight"] = out["tok_emb.weight"]
    return out


def from_llama_config_dict(d: dict[str, Any]) -> ModelConfig:
    """The ModelConfig of a ``transformers`` Llama, Qwen3 or Qwen3-MoE config.json (by its ``model_type``;
    inverse of to_hf_config_dict).

    Reads both layouts of RoPE settings (``rope_parameters`` of transformers >= 5, ``rope_theta`` +
    ``rope_scaling`` before). Anything our model cannot reproduce exactly is refused with the reason.
    """
    problems = []
    arch = d.get("model_type", "llama")
    extra: dict[str, Any] = {}
    if arch in ("qwen3", "qwen3_moe"):
        extra["qk_norm"] = True
        if d.get("use_sliding_window"):
            problems.append("use_sliding_window=true (not yet a switch of mmlab's attention)")
    if arch == "qwen3_moe":
        if d.get("decoder_sparse_step", 1) != 1 or d.get("mlp_only_layers"):
            problems.append("dense layers between the sparse ones (decoder_sparse_step / mlp_only_layers): mmlab's "
                            "MoE models have experts in every layer")
        try:
            k = int(d.get("num_experts_per_tok", 8))
            n_experts = d.get("num_experts") or d.get("num_local_experts") or 128  # transformers 5's name
            extra |= {"n_experts": int(n_experts), "n_experts_per_tok": k, "n_shared_experts": 0,
                      "moe_norm_topk": bool(d.get("norm_topk_prob", False)) or k == 1,  # top-1: no effect
                      "moe_aux_loss_coef": float(d.get("router_aux_loss_coef", 0.001))}
            if d.get("moe_intermediate_size") is not None:
                d = {**d, "intermediate_size": int(d["moe_intermediate_size"])}
        except (TypeError, ValueError) as e:
            raise ConfigError(f"not a Qwen3-MoE config: {e}") from None
        if k == 1 and d.get("norm_topk_prob", False):
            problems.append("norm_topk_prob=true with top-1 (every weight would be 1; mmlab's top-1 keeps the "
                            "router's probability, so the router still learns from the task loss)")
    if d.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={d['hidden_act']!r} (mmlab's SwiGLU uses 'silu')")
    problems += [f"{k}=true (mmlab's Llama has no biases)" for k in ("attention_bias", "mlp_bias") if d.get(k)]
    if d.get("pretraining_tp", 1) not in (1, None):
        problems.append(f"pretraining_tp={d['pretraining_tp']} (sliced projections)")
    sizes = {}
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings", "num_key_value_heads", "head_dim"):
        value = d.get(key)
        if value is None and key in ("num_key_value_heads", "head_dim"):
            continue  # optional: default to num_attention_heads and hidden_size / num_attention_heads
        if value is None:
            raise ConfigError(f"not a Llama config: the field {key!r} is missing")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"not a Llama config: {key}={value!r} must be a positive integer")
        sizes[key] = value
    hidden, n_heads = sizes["hidden_size"], sizes["num_attention_heads"]
    n_kv = sizes.get("num_key_value_heads", n_heads)
    fields = {"vocab_size": sizes["vocab_size"], "hidden_size": hidden, "n_layers": sizes["num_hidden_layers"],
              "n_heads": n_heads, "n_kv_heads": None if n_kv == n_heads else n_kv,
              "ffn_size": sizes["intermediate_size"], "max_seq_len": sizes["max_position_embeddings"]}
    head_dim = sizes.get("head_dim") or hidden // n_heads
    if head_dim * n_heads != hidden:
        problems.append(f"head_dim={head_dim} != hidden_size / num_attention_heads = {hidden / n_heads:g}")
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise ConfigError(f"not a Llama config: rope_parameters / rope_scaling must be an object, got {rope!r}")
    theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    kind = rope.get("rope_type", rope.get("type", "default"))
    scaling = None
    if kind in ("linear", "yarn") and not isinstance(rope.get("factor", 1.0), (int, float)):
        raise ConfigError(f"not a Llama config: the rope factor {rope.get('factor')!r} is not a number")
    if kind == "linear":
        scaling = RopeScaling(kind="linear", factor=float(rope["factor"]))
    elif kind == "yarn":
        extras = [k for k in ("attention_factor", "mscale", "mscale_all_dim") if rope.get(k) is not None]
        if rope.get("truncate", True) is not True:
            extras.append("truncate")
        if extras:
            problems.append(f"YaRN with {', '.join(extras)} (mmlab's YaRN has the paper's defaults only)")
        factor = rope.get("factor") or fields["max_seq_len"] / rope["original_max_position_embeddings"]
        scaling = RopeScaling(kind="yarn", factor=float(factor),
                              original_max_seq_len=int(rope.get("original_max_position_embeddings")
                                                       or fields["max_seq_len"]),
                              beta_fast=float(rope.get("beta_fast") or 32.0),
                              beta_slow=float(rope.get("beta_slow") or 1.0))
    elif kind != "default":
        problems.append(f"rope_type={kind!r} (mmlab has default, linear and yarn)")
    if problems:
        raise ConfigError(f"this {arch} model cannot be loaded as an mmlab model: " + "; ".join(problems))
    dropout = float(d.get("attention_dropout") or 0.0)
    return ModelConfig(**fields, **extra, norm_eps=float(d.get("rms_norm_eps", 1e-6)), rope_theta=float(theta),
                       rope_scaling=scaling, tie_embeddings=bool(d.get("tie_word_embeddings", False)),
                       attn_dropout=dropout or None, init_std=float(d.get("initializer_range", 0.02)),
                       name=str(d.get("_name_or_path") or "llama"))


# ---- MiniMind2's own transformers format (model_type "minimind", MiniMindForCausalLM) ----------------------
# Its dense model is a Llama under the same tensor names; its MoE layers name the router `mlp.gate` and the
# always-on experts `mlp.shared_experts`.
_MOE_NAMES = [
    (re.compile(r"model\.layers\.(\d+)\.mlp\.gate\.weight"), r"blocks.\1.ffn.router.weight"),
    (re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight"),
     r"blocks.\1.ffn.experts.\2.\3_proj.weight"),
    (re.compile(r"model\.layers\.(\d+)\.mlp\.shared_experts\.(\d+)\.(gate|up|down)_proj\.weight"),
     r"blocks.\1.ffn.shared.\2.\3_proj.weight"),
]


def minimind_ffn_size(hidden: int) -> int:
    """MiniMind2's FeedForward when ``intermediate_size`` is null: 8/3 of the width, rounded up to 64."""
    return 64 * ((int(hidden * 8 / 3) + 63) // 64)


def from_minimind_config_dict(d: dict[str, Any], tied: bool) -> tuple[ModelConfig, list[str]]:
    """The ModelConfig of a MiniMind2 ``config.json`` (its ``MiniMindConfig`` fields and defaults), and notes
    on what is not carried over. ``tied``: whether the weights share the embedding and the LM head."""
    problems, notes = [], []
    if d.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={d['hidden_act']!r} (mmlab's SwiGLU uses 'silu')")
    hidden = d.get("hidden_size", 512)
    n_heads = d.get("num_attention_heads", 8)
    n_kv = d.get("num_key_value_heads", 2)
    for key, value in (("hidden_size", hidden), ("num_attention_heads", n_heads), ("num_key_value_heads", n_kv)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{key}={value!r} must be a positive integer")
    head_dim = d.get("head_dim") or hidden // n_heads
    if head_dim * n_heads != hidden:
        problems.append(f"head_dim={head_dim} != hidden_size / num_attention_heads")
    if d.get("inference_rope_scaling") or d.get("rope_scaling"):
        problems.append("inference_rope_scaling / rope_scaling is on: MiniMind's own YaRN variant rescales the "
                        "frequencies, which mmlab's RoPE does not reproduce (set it to false to import the model "
                        "at its trained context)")
    if problems:
        raise ConfigError("this MiniMind model cannot be loaded as an mmlab model: " + "; ".join(problems))
    try:
        moe = {}
        if d.get("use_moe"):
            if d.get("scoring_func", "softmax") != "softmax":
                raise ConfigError(f"scoring_func={d['scoring_func']!r} (mmlab's router is a softmax)")
            moe = {"n_experts": int(d.get("n_routed_experts", 4)),
                   "n_experts_per_tok": int(d.get("num_experts_per_tok", 2)),
                   "n_shared_experts": int(d.get("n_shared_experts", 1)),
                   "moe_norm_topk": bool(d.get("norm_topk_prob", True)),
                   "moe_aux_loss_coef": float(d.get("aux_loss_alpha", 0.1))}
        cfg = ModelConfig(
            vocab_size=int(d.get("vocab_size", 6400)), hidden_size=hidden, n_layers=int(d.get("num_hidden_layers", 8)),
            n_heads=n_heads, n_kv_heads=None if n_kv == n_heads else n_kv,
            ffn_size=int(d.get("intermediate_size") or minimind_ffn_size(hidden)),
            max_seq_len=int(d.get("max_position_embeddings", 32768)), norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            rope_theta=float(d.get("rope_theta", 1e6)), tie_embeddings=tied, dropout=float(d.get("dropout", 0.0)),
            name=str(d.get("_name_or_path") or "minimind"), **moe)
    except (TypeError, ValueError) as e:  # a field of the wrong type ("8" heads, null sizes)
        raise ConfigError(f"a malformed MiniMind config: {e}") from None
    return cfg, notes


def from_minimind_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename a MiniMindForCausalLM state dict to mmlab's names (MoE layers included)."""
    dense, out = {}, {}
    for name, tensor in state.items():
        for pattern, target in _MOE_NAMES:
            if pattern.fullmatch(name):
                out[pattern.sub(target, name)] = tensor
                break
        else:
            dense[name] = tensor
    return from_hf_state_dict(dense, cfg) | out
