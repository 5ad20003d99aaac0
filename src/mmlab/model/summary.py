"""Model arithmetic: parameters per component, FLOPs per token, KV-cache bytes per token.

Parameters are counted on a model built on the ``meta`` device (shapes only, no memory), so even a
large preset is summarised instantly.
"""

from __future__ import annotations

from typing import Any

import torch

from mmlab.config import ModelConfig
from mmlab.model.ffn import make_ffn
from mmlab.model.lm import MiniMindLM

COMPONENTS = ("embedding", "position", "attention", "ffn", "norm", "lm_head")


def _component(name: str) -> str:
    if name.startswith("tok_emb"):
        return "embedding"
    if name.startswith("pos_emb"):
        return "position"
    if name.startswith("lm_head"):
        return "lm_head"
    if ".attn." in name:
        return "attention"
    if ".ffn." in name:
        return "ffn"
    return "norm"


def param_breakdown(cfg: ModelConfig) -> dict[str, int]:
    """Unique parameters per component (a tied LM head counts under ``embedding`` only)."""
    with torch.device("meta"):
        model = MiniMindLM(cfg)
    counts = dict.fromkeys(COMPONENTS, 0)
    for name, p in model.named_parameters():  # named_parameters() yields a shared tensor once
        counts[_component(name)] += p.numel()
    return counts


def flops_per_token(cfg: ModelConfig, context: int) -> dict[str, int]:
    """Forward FLOPs per token at a given context length (a multiply-add counts as 2 FLOPs).

    matmul: 2 * (every weight matrix a token passes through, the LM head included, the embedding
    lookup excluded; for MoE only the experts a token uses).
    attention: QK^T and AV cost 2 * 2 * n_layers * context * (n_heads * head_dim)
    for a token that attends to ``context`` keys (the worst case; causal averages half of that).
    Training costs about 3x forward (backward = 2x forward).
    """
    counts = param_breakdown(cfg)
    matmul_params = counts["attention"] + counts["ffn"] - _idle_expert_params(cfg) + cfg.vocab_size * cfg.hidden_size
    matmul = 2 * matmul_params
    attention = 4 * cfg.n_layers * context * cfg.n_heads * cfg.head_dim
    return {"matmul": matmul, "attention": attention, "forward": matmul + attention,
            "train": 3 * (matmul + attention)}


def _idle_expert_params(cfg: ModelConfig) -> int:
    """MoE: parameters of the routed experts a token does *not* use (n_experts - k per layer)."""
    if not cfg.n_experts:
        return 0
    with torch.device("meta"):
        expert = sum(p.numel() for p in make_ffn(cfg).parameters())
    return cfg.n_layers * (cfg.n_experts - cfg.n_experts_per_tok) * expert


def active_params(cfg: ModelConfig) -> int:
    """Parameters a token passes through: for MoE, the router, k routed and the shared experts of each
    layer, not all experts (equal to the total for a dense model)."""
    return sum(param_breakdown(cfg).values()) - _idle_expert_params(cfg)


def kv_cache_bytes_per_token(cfg: ModelConfig, bytes_per_value: int = 2) -> int:
    """2 (K and V) * n_layers * n_kv_heads * head_dim * bytes per value; for MLA, n_layers * (latent + rope
    key) * bytes per value."""
    if cfg.attention == "mla":
        return cfg.n_layers * (cfg.mla_kv_rank + cfg.mla_rope_dim) * bytes_per_value
    return 2 * cfg.n_layers * cfg.kv_heads * cfg.head_dim * bytes_per_value


def kv_cache_bytes(cfg: ModelConfig, context: int, bytes_per_value: int = 2) -> int:
    """The whole cache of one sequence of ``context`` tokens: a windowed layer holds at most its window."""
    per_layer = kv_cache_bytes_per_token(cfg, bytes_per_value) // cfg.n_layers
    return sum(per_layer * min(context, cfg.layer_window(i) or context) for i in range(cfg.n_layers))


def summarize(cfg: ModelConfig, context: int | None = None) -> dict[str, Any]:
    """Everything ``mmlab model summary`` prints, as a JSON-able dict."""
    context = context or cfg.max_seq_len
    counts = param_breakdown(cfg)
    total = sum(counts.values())
    return {
        "preset": cfg.name,
        "config": cfg.to_dict(),
        "params": {"total": total, "non_embedding": total - counts["embedding"] - counts["position"],
                   "active": active_params(cfg), "by_component": counts},
        "flops_per_token": {"context": context, **flops_per_token(cfg, context)},
        "kv_cache_bytes_per_token": {"fp32": kv_cache_bytes_per_token(cfg, 4),
                                     "bf16": kv_cache_bytes_per_token(cfg, 2)},
        "kv_cache_bytes_at_context": {"context": context, "bf16": kv_cache_bytes(cfg, context, 2)},
    }


def format_summary(s: dict[str, Any]) -> str:
    """A human-readable table of ``summarize``'s result."""
    cfg = s["config"]
    p = s["params"]
    kv = "MHA" if cfg["n_kv_heads"] in (None, cfg["n_heads"]) else ("MQA" if cfg["n_kv_heads"] == 1 else "GQA")
    head = (f"{s['preset']}: {cfg['n_layers']} layers, hidden {cfg['hidden_size']}, "
            f"{cfg['n_heads']} heads / {cfg['n_kv_heads'] or cfg['n_heads']} KV heads ({kv}), "
            f"vocab {cfg['vocab_size']}, context {cfg['max_seq_len']}")
    switches = (f"norm={cfg['norm']} ({cfg['norm_position']}), pos={cfg['pos_encoding']}, "
                f"ffn={cfg['ffn_act']}, tied={cfg['tie_embeddings']}" + (", qk_norm" if cfg.get("qk_norm") else "")
                + (f", attention={cfg['attention']}" if cfg.get("attention", "gqa") != "gqa" else "")
                + (", attn_sinks" if cfg.get("attn_sinks") else ""))
    lines = [head, switches, "", f"{'component':<12}{'params':>14}{'share':>9}"]
    for name, n in p["by_component"].items():
        if n:
            lines.append(f"{name:<12}{n:>14,}{100 * n / p['total']:>8.1f}%")
    lines += [f"{'total':<12}{p['total']:>14,}", f"{'non-embed.':<12}{p['non_embedding']:>14,}"]
    if cfg["n_experts"]:
        lines.append(f"{'active':<12}{p['active']:>14,}  (per token: {cfg['n_experts_per_tok']} of "
                     f"{cfg['n_experts']} routed experts + {cfg['n_shared_experts']} shared, in each layer)")
    lines.append("")
    f = s["flops_per_token"]
    lines.append(f"FLOPs/token (forward, context {f['context']}): {f['forward']:,} "
                 f"= matmul {f['matmul']:,} + attention {f['attention']:,}; training ~{f['train']:,}")
    k = s["kv_cache_bytes_per_token"]
    lines.append(f"KV cache/token: {k['bf16']:,} B in bf16, {k['fp32']:,} B in fp32"
                 + (" (MLA: the latent and the rope key)" if cfg.get("attention") == "mla" else ""))
    at = s.get("kv_cache_bytes_at_context")
    if at:
        lines.append(f"KV cache of one {at['context']:,}-token sequence: {at['bf16'] / 2**20:,.2f} MiB in bf16"
                     + (f" (sliding window {cfg['sliding_window']})" if cfg.get("sliding_window") else ""))
    return "\n".join(lines)
