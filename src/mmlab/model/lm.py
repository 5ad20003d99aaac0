"""The decoder-only language model: embeddings -> N blocks -> final norm -> LM head.

With the default config this is exactly a Llama (checked against `transformers`' LlamaForCausalLM);
every other config is a one-switch ablation of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmlab.config import ModelConfig
from mmlab.model.block import Block
from mmlab.model.kv_cache import KVCache
from mmlab.model.norm import RMSNorm, make_norm
from mmlab.model.position import alibi_bias, alibi_slopes, sinusoidal_table
from mmlab.model.rope import precompute_rope

IGNORE_INDEX = -100  # targets equal to this do not count in the loss (SFT masks prompts this way)


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T, vocab)
    loss: torch.Tensor | None = None  # mean cross-entropy over targets != IGNORE_INDEX
    attentions: list[torch.Tensor] | None = None  # per layer (B, H, T, T_k), when asked for
    # MoE: moe_aux_loss_coef * the load-balancing losses summed over layers (None for a dense model).
    # Not part of ``loss`` (so val losses compare across models); the training objective adds it.
    aux_loss: torch.Tensor | None = None


class MiniMindLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        if cfg.pos_encoding == "learned":
            self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.hidden_size)
        if cfg.pos_encoding == "sinusoidal":
            # The raw table has RMS 1/sqrt(2) per dimension, ~35x the token embeddings' init_std: added
            # as is, position would drown the token (measured: worse than no positions at all). We
            # scale it to the embeddings' RMS, the role sqrt(d) scaling of embeddings plays in Vaswani
            # et al., whose embeddings were initialised at 1/sqrt(d).
            table = sinusoidal_table(cfg.max_seq_len, cfg.hidden_size) * (cfg.init_std * math.sqrt(2))
            self.register_buffer("pos_table", table, persistent=False)
        if cfg.pos_encoding == "rope":
            rope_dim = cfg.mla_rope_dim if cfg.attention == "mla" else cfg.head_dim  # MLA rotates only its rope part
            cos, sin = precompute_rope(rope_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        if cfg.pos_encoding == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(cfg.n_heads), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        # Pre-LN leaves the residual stream un-normalised, so it needs one last norm; Post-LN's last
        # block already ends in a norm.
        self.norm = make_norm(cfg.norm if cfg.norm_position != "post" else "none", cfg.hidden_size, cfg.norm_eps,
                              cfg.fused_ops)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:  # one matrix reads tokens in and writes them out (saves V*C parameters)
            self.lm_head.weight = self.tok_emb.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Init: N(0, init_std) for every matrix and embedding, zeros for biases, ones for norm gains.

        With ``scaled_residual_init`` the two projections that write into the residual stream
        (attention ``o_proj``, FFN ``down_proj``) use init_std / sqrt(2 * n_layers): each of the
        2 * n_layers sub-layers then adds variance ~1/(2L), so the stream's scale stays ~constant
        with depth at initialisation (GPT-2).
        """
        std = self.cfg.init_std
        residual_std = std / math.sqrt(2 * self.cfg.n_layers) if self.cfg.scaled_residual_init else std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_out = name.endswith(("o_proj", "down_proj"))
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_out else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                module.reset_parameters()

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (a tied matrix counts once)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.tok_emb.weight.numel()
            if hasattr(self, "pos_emb"):
                n -= self.pos_emb.weight.numel()
        return n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> ModelOutput:
        """idx: (B, T) token ids; targets: (B, T) next-token ids (IGNORE_INDEX to skip);
        cache: past keys/values — idx then holds only the new tokens."""
        T = idx.shape[1]
        start = cache.seq_len if cache is not None else 0
        if start + T > self.cfg.max_seq_len:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than max_seq_len={self.cfg.max_seq_len}"
            )
        x = self.tok_emb(idx)
        # a paged cache (mmlab.infer.engine) decodes rows at different positions: (B, T) positions, and a
        # score bias that hides each row's padding
        positions = getattr(cache, "positions", None)
        if positions is None:
            positions = torch.arange(start, start + T, device=idx.device)
        rope, bias = None, getattr(cache, "bias", None)
        if self.cfg.pos_encoding == "learned":
            x = x + self.pos_emb(positions)
        elif self.cfg.pos_encoding == "sinusoidal":
            x = x + self.pos_table[positions].to(x.dtype)
        elif self.cfg.pos_encoding == "rope":
            rope = (self.rope_cos[positions], self.rope_sin[positions])
            if positions.dim() == 2:  # (B, T, D) -> (B, 1, T, D): one position per row and token, for every head
                rope = (rope[0].unsqueeze(1), rope[1].unsqueeze(1))
        elif self.cfg.pos_encoding == "alibi":
            key_positions = torch.arange(start + T, device=idx.device)
            bias = alibi_bias(self.alibi_slopes, positions, key_positions)
        x = self.dropout(x)
        attentions = [] if need_weights else None
        for block in self.blocks:
            x, weights = block(x, rope, bias, cache, need_weights)
            if attentions is not None:
                attentions.append(weights)
        if cache is not None:
            cache.advance(T)
        logits = self.lm_head(self.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
            )
        aux_loss = None
        if self.cfg.n_experts:
            aux_loss = self.cfg.moe_aux_loss_coef * sum(block.ffn.aux_loss for block in self.blocks)
        return ModelOutput(logits=logits, loss=loss, attentions=attentions, aux_loss=aux_loss)

    def new_cache(self, max_len: int | None = None, static: bool = True) -> KVCache:
        """An empty KV cache for this model (``max_len`` defaults to max_seq_len)."""
        windows = [self.cfg.layer_window(i) for i in range(self.cfg.n_layers)]
        return KVCache(self.cfg.n_layers, max_len or self.cfg.max_seq_len, static=static, windows=windows)
