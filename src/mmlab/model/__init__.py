"""The decoder: one implementation whose every part is a switch of ModelConfig."""

from mmlab.model.attention import Attention, explicit_attention, repeat_kv
from mmlab.model.block import Block
from mmlab.model.ffn import MLP, SwiGLU
from mmlab.model.kv_cache import KVCache
from mmlab.model.lm import IGNORE_INDEX, MiniMindLM, ModelOutput
from mmlab.model.norm import RMSNorm
from mmlab.model.rope import apply_rope, precompute_rope

__all__ = [
    "IGNORE_INDEX", "MLP", "Attention", "Block", "KVCache", "MiniMindLM", "ModelOutput", "RMSNorm",
    "SwiGLU", "apply_rope", "explicit_attention", "precompute_rope", "repeat_kv",
]
