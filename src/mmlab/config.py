"""Model configuration: one typed, validated dataclass and a table of named presets.

Every architectural choice a lesson ablates is a field here, so an experiment is "a few configs run
through the one model" rather than a private copy of the model.

    >>> cfg = get_preset("minimind-26m")
    >>> cfg.head_dim, cfg.resolved_ffn_size
    (64, 1408)
    >>> ModelConfig.from_json(cfg.to_json()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmlab.errors import ConfigError

NORMS = ("rmsnorm", "layernorm", "none")
NORM_POSITIONS = ("pre", "post", "sandwich")
POS_ENCODINGS = ("rope", "learned", "sinusoidal", "alibi", "none")
ATTN_IMPLS = ("sdpa", "explicit")
FFN_ACTS = ("swiglu", "gelu", "relu", "relu2", "linear")  # linear: no non-linearity (an ablation)
GATED_ACTS = ("swiglu",)
ROPE_SCALINGS = ("linear", "ntk", "yarn")
ATTENTIONS = ("gqa", "mla")  # gqa: MHA / GQA / MQA by n_kv_heads; mla: multi-head latent attention


@dataclass(frozen=True)
class RopeScaling:
    """How to stretch RoPE beyond the context it was trained on (used at inference for long context).

    kind: ``linear`` (position interpolation: every frequency divided by ``factor``),
          ``ntk`` (NTK-aware: raise the base so low frequencies stretch, high ones barely move),
          ``yarn`` (interpolate low frequencies, keep high ones, blend in between, and sharpen
          attention by ``0.1 ln(factor) + 1``).
    """

    kind: str = "yarn"
    factor: float = 4.0
    original_max_seq_len: int = 512
    beta_fast: float = 32.0  # YaRN: dims rotating more than this many times in the original context keep
    beta_slow: float = 1.0  # YaRN: dims rotating fewer times than this are fully interpolated

    def __post_init__(self) -> None:
        _check_types(self, prefix="rope_scaling.")
        self.validate()

    def validate(self) -> None:
        if self.kind not in ROPE_SCALINGS:
            raise ConfigError(f"rope_scaling.kind={self.kind!r} is not one of {', '.join(ROPE_SCALINGS)}")
        if not self.factor >= 1.0:
            raise ConfigError(f"rope_scaling.factor={self.factor} must be >= 1 (it stretches the context)")
        if self.original_max_seq_len <= 0:
            raise ConfigError(
                f"rope_scaling.original_max_seq_len={self.original_max_seq_len} must be positive"
            )
        if self.kind == "yarn" and not self.beta_fast > self.beta_slow > 0:
            raise ConfigError(
                f"rope_scaling needs beta_fast > beta_slow > 0, got {self.beta_fast} and {self.beta_slow}"
            )


@dataclass(frozen=True)
class ModelConfig:
    """Every switch of the decoder. Defaults give a Llama/MiniMind model (RMSNorm, Pre-LN, RoPE, GQA, SwiGLU).

    Width of the FFN: ``ffn_size`` if given, else ``ffn_mult * hidden_size`` rounded up to a multiple of
    ``ffn_multiple_of``. ``ffn_mult`` defaults to 8/3 for the gated SwiGLU (three matrices) and 4 for
    the two-matrix FFNs, so the default FFNs have about the same number of parameters.
    """

    vocab_size: int = 6400
    hidden_size: int = 512
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int | None = None  # None -> n_heads (MHA); 1 -> MQA; in between -> GQA
    max_seq_len: int = 512  # longest sequence the position tables cover
    # normalization
    norm: str = "rmsnorm"
    norm_position: str = "pre"
    norm_eps: float = 1e-5
    # positions
    pos_encoding: str = "rope"
    rope_theta: float = 1e6
    rope_scaling: RopeScaling | None = None
    # attention
    causal: bool = True  # False lets every token see the future (the lesson on what the mask is for)
    attn_impl: str = "sdpa"  # "explicit" computes softmax(QK^T/sqrt(d))V by hand and can return weights
    qk_norm: bool = False  # RMSNorm over head_dim on every query and key head, before RoPE (Qwen3, OLMo 2)
    # a query sees itself and the sliding_window - 1 tokens before it (Mistral, Gemma 3, gpt-oss); the KV cache
    # of a windowed layer keeps only that window. global_every=k: layers k-1, 2k-1, ... see everything (Gemma 3:
    # 6, five local layers to one global; gpt-oss: 2, alternating); 0: every layer is windowed.
    sliding_window: int | None = None
    global_every: int = 0
    attn_sinks: bool = False  # a learned logit per head that takes attention mass and gives no value (gpt-oss)
    # "mla": multi-head latent attention (DeepSeek-V2/V3): keys and values are expanded from a cached latent of
    # mla_kv_rank numbers per token, plus one shared RoPE key of mla_rope_dim; each query head has head_dim
    # "content" dimensions and mla_rope_dim rotated ones
    attention: str = "gqa"
    mla_kv_rank: int = 64
    mla_rope_dim: int = 16
    # feed-forward
    ffn_act: str = "swiglu"
    ffn_size: int | None = None
    ffn_mult: float | None = None
    ffn_multiple_of: int = 64
    # block and model
    use_attn: bool = True  # False drops every attention sub-layer (and its norm): an FFN-only model
    use_ffn: bool = True  # False drops every FFN sub-layer (and its norm): an attention-only model
    parallel_block: bool = False  # x + attn(norm(x)) + ffn(norm(x)) (GPT-J, PaLM) instead of one after the other
    # mixture of experts (0 experts: a dense FFN)
    n_experts: int = 0  # routed experts per layer, each an FFN of resolved_ffn_size
    n_experts_per_tok: int = 2  # top-k: experts each token is sent to
    n_shared_experts: int = 0  # experts every token goes through (DeepSeek-MoE, MiniMind)
    moe_aux_loss_coef: float = 0.01  # weight of the load-balancing loss in the training loss
    moe_norm_topk: bool = True  # renormalise the top-k router weights to sum to 1
    residual: bool = True
    tie_embeddings: bool = True
    dropout: float = 0.0  # on each sub-layer's output (and on attention weights unless attn_dropout is set)
    attn_dropout: float | None = None  # on the attention weights; None -> dropout
    bias: bool = False  # biases in the linear layers (Llama and MiniMind have none)
    init_std: float = 0.02
    scaled_residual_init: bool = True  # output projections get std / sqrt(2 * n_layers) (GPT-2)
    # RMSNorm, RoPE and SiLU*up as single autograd nodes with hand-written backward passes (model/fused.py);
    # the same numbers as the plain tensor code (tested), fewer and larger kernels. An implementation
    # choice, not a different model: configs that differ only here compare equal
    fused_ops: bool = field(default=True, compare=False)
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):  # accept the JSON form
            object.__setattr__(self, "rope_scaling", _rope_scaling_from_dict(self.rope_scaling))
        elif self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ConfigError(
                f"rope_scaling={self.rope_scaling!r} must be null or an object like "
                '{"kind": "yarn", "factor": 4.0, "original_max_seq_len": 512}'
            )
        self.validate()

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of layer ``layer`` (None: it attends to every earlier token)."""
        if self.sliding_window is None or (self.global_every and (layer + 1) % self.global_every == 0):
            return None
        return self.sliding_window

    @property
    def gated_ffn(self) -> bool:
        return self.ffn_act in GATED_ACTS

    @property
    def resolved_attn_dropout(self) -> float:
        return self.dropout if self.attn_dropout is None else self.attn_dropout

    @property
    def resolved_ffn_size(self) -> int:
        if self.ffn_size is not None:
            return self.ffn_size
        mult = self.ffn_mult if self.ffn_mult is not None else (8 / 3 if self.gated_ffn else 4.0)
        size = int(mult * self.hidden_size)
        m = self.ffn_multiple_of
        return m * math.ceil(size / m)

    # ---- validation ----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ConfigError with a one-line message naming the field when the config cannot work."""
        _check_types(self)
        for name in ("vocab_size", "hidden_size", "n_layers", "n_heads", "max_seq_len", "ffn_multiple_of"):
            value = getattr(self, name)
            if value <= 0:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        _choice("norm", self.norm, NORMS)
        _choice("norm_position", self.norm_position, NORM_POSITIONS)
        _choice("pos_encoding", self.pos_encoding, POS_ENCODINGS)
        _choice("attn_impl", self.attn_impl, ATTN_IMPLS)
        _choice("ffn_act", self.ffn_act, FFN_ACTS)
        _choice("attention", self.attention, ATTENTIONS)
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ConfigError(f"sliding_window={self.sliding_window} must be a positive integer or null")
        if self.global_every < 0 or (self.global_every and self.sliding_window is None):
            raise ConfigError(f"global_every={self.global_every} must be >= 0, and needs a sliding_window")
        if (self.sliding_window is not None or self.attn_sinks) and not self.causal:
            raise ConfigError("sliding_window and attn_sinks are for causal attention (causal=True)")
        if self.attention == "mla":
            if self.pos_encoding != "rope":
                raise ConfigError(f"attention='mla' decouples a RoPE part; it needs pos_encoding='rope', not "
                                  f"{self.pos_encoding!r}")
            if self.n_kv_heads not in (None, self.n_heads):
                raise ConfigError("attention='mla' has no KV heads to share (its keys and values come from one "
                                  "latent): leave n_kv_heads null")
            if self.qk_norm:
                raise ConfigError("qk_norm is not defined for attention='mla' (it normalises the latent instead)")
            if self.mla_kv_rank < 1 or self.mla_rope_dim < 2 or self.mla_rope_dim % 2:
                raise ConfigError(f"mla_kv_rank={self.mla_kv_rank} must be >= 1 and mla_rope_dim="
                                  f"{self.mla_rope_dim} an even number >= 2")
        if self.hidden_size % self.n_heads:
            raise ConfigError(
                f"hidden_size={self.hidden_size} is not divisible by n_heads={self.n_heads} "
                "(each head gets hidden_size / n_heads dimensions)"
            )
        kv = self.kv_heads
        if kv <= 0:
            raise ConfigError(f"n_kv_heads={self.n_kv_heads!r} must be a positive integer or null")
        if self.n_heads % kv:
            raise ConfigError(
                f"n_heads={self.n_heads} is not divisible by n_kv_heads={kv} "
                "(each KV head must serve a whole group of query heads)"
            )
        if self.pos_encoding == "rope" and self.head_dim % 2 and self.attention != "mla":
            raise ConfigError(
                f"head_dim={self.head_dim} (hidden_size / n_heads) is odd, but RoPE rotates pairs of "
                "dimensions: choose an even head_dim"
            )
        if self.rope_scaling is not None and self.rope_scaling.kind == "ntk" and self.head_dim <= 2:
            raise ConfigError(f"head_dim={self.head_dim} is too small for NTK scaling (needs > 2)")
        if self.pos_encoding == "sinusoidal" and self.hidden_size % 2:
            raise ConfigError(f"hidden_size={self.hidden_size} must be even for sinusoidal positions")
        if not self.rope_theta > 0:
            raise ConfigError(f"rope_theta={self.rope_theta} must be positive")
        if self.rope_scaling is not None:
            if self.pos_encoding != "rope":
                raise ConfigError(
                    f"rope_scaling is set but pos_encoding={self.pos_encoding!r}; it only applies to rope"
                )
            self.rope_scaling.validate()
        if self.ffn_size is not None and self.ffn_size <= 0:
            raise ConfigError(f"ffn_size={self.ffn_size!r} must be a positive integer or null")
        if self.ffn_mult is not None and not self.ffn_mult > 0:
            raise ConfigError(f"ffn_mult={self.ffn_mult} must be positive")
        if self.resolved_ffn_size < 1:
            raise ConfigError(f"the FFN would have {self.resolved_ffn_size} hidden units: raise ffn_mult or ffn_size")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout} must be in [0, 1)")
        if self.attn_dropout is not None and not 0.0 <= self.attn_dropout < 1.0:
            raise ConfigError(f"attn_dropout={self.attn_dropout} must be in [0, 1) or null")
        if not self.norm_eps > 0:
            raise ConfigError(f"norm_eps={self.norm_eps} must be positive")
        if not self.init_std > 0:
            raise ConfigError(f"init_std={self.init_std} must be positive")
        if self.parallel_block and (self.norm_position != "pre" or not (self.use_attn and self.use_ffn)):
            raise ConfigError("parallel_block=True needs norm_position='pre' and both use_attn and use_ffn")
        if self.n_experts < 0 or self.n_shared_experts < 0:
            raise ConfigError(f"n_experts={self.n_experts} and n_shared_experts={self.n_shared_experts} must be >= 0")
        if self.n_experts:
            if not 1 <= self.n_experts_per_tok <= self.n_experts:
                raise ConfigError(
                    f"n_experts_per_tok={self.n_experts_per_tok} must be between 1 and n_experts={self.n_experts}"
                )
            if not self.use_ffn:
                raise ConfigError("n_experts > 0 replaces the FFN with experts, but use_ffn=False removes it")
        if self.moe_aux_loss_coef < 0:
            raise ConfigError(f"moe_aux_loss_coef={self.moe_aux_loss_coef} must be >= 0")

    # ---- (de)serialisation ---------------------------------------------------------------------
    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated): ``cfg.replace(norm="layernorm")``."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown ModelConfig field(s): {', '.join(unknown)}")
        try:
            return cls(**data)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        except TypeError as e:  # e.g. a missing required argument
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> ModelConfig:
        """Parse JSON text, or read a ``.json`` file (a path)."""
        source = "config"
        text = str(text_or_path)
        if isinstance(text_or_path, Path) or not text.lstrip().startswith("{"):
            path = Path(text_or_path)
            if not path.is_file():
                raise ConfigError(f"config file not found: {path}")
            try:
                source, text = str(path), path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        try:
            data = json.loads(text)
        except UnicodeDecodeError as e:
            raise ConfigError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{source}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        return cls.from_dict(data, source=source)


def _check_types(obj: Any, prefix: str = "") -> None:
    """Every field must hold a value of its declared type: ``"false"`` is not a bool (it is truthy!),
    ``True`` is not an int, and floats must be finite. Checked before any comparison."""
    for f in dataclasses.fields(obj):
        value, kind = getattr(obj, f.name), str(f.type)
        optional = "None" in kind
        if value is None:
            if optional:
                continue
            raise ConfigError(f"{prefix}{f.name} must not be null")
        if kind.startswith("bool"):
            ok = isinstance(value, bool)
        elif kind.startswith("int"):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind.startswith("float"):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif kind.startswith("str"):
            ok = isinstance(value, str)
        else:
            continue
        if not ok:
            expected = {"bool": "true or false", "int": "an integer", "float": "a finite number",
                        "str": "a string"}[kind.split(" |")[0]]
            raise ConfigError(f"{prefix}{f.name}={value!r} must be {expected}{' or null' if optional else ''}")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of: {', '.join(allowed)}")


def _rope_scaling_from_dict(data: dict[str, Any]) -> RopeScaling:
    known = {f.name for f in dataclasses.fields(RopeScaling)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown rope_scaling field(s): {', '.join(unknown)}")
    if "factor" in data and isinstance(data["factor"], int) and not isinstance(data["factor"], bool):
        data = {**data, "factor": float(data["factor"])}
    return RopeScaling(**data)


# ---- presets -----------------------------------------------------------------------------------
# MiniMind2-small / MiniMind2 (jingyaogong/minimind): vocab 6400, tied embeddings, RoPE theta 1e6, GQA 8:2.
# Parameter counts are checked by tests (25,829,888 and 104,030,976).
PRESETS: dict[str, ModelConfig] = {
    "nano": ModelConfig(
        name="nano", vocab_size=128, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=2,
        max_seq_len=64, rope_theta=1e4,
    ),
    # nanoGPT's CPU "baby GPT" (4 layers, 4 heads, 128 wide, block 64), as a Llama-style model.
    "shakespeare-char": ModelConfig(
        name="shakespeare-char", vocab_size=65, hidden_size=128, n_layers=4, n_heads=4,
        max_seq_len=64, rope_theta=1e4,
    ),
    "minimind-26m": ModelConfig(
        name="minimind-26m", vocab_size=6400, hidden_size=512, n_layers=8, n_heads=8, n_kv_heads=2,
        ffn_size=1408, max_seq_len=512, rope_theta=1e6,
    ),
    # MiniMind's MoE recipe on the 26M body: 4 routed experts (top-2) and 1 shared expert per layer.
    "minimind-moe": ModelConfig(
        name="minimind-moe", vocab_size=6400, hidden_size=512, n_layers=8, n_heads=8, n_kv_heads=2,
        ffn_size=1408, max_seq_len=512, rope_theta=1e6, n_experts=4, n_experts_per_tok=2, n_shared_experts=1,
    ),
    "minimind-104m": ModelConfig(
        name="minimind-104m", vocab_size=6400, hidden_size=768, n_layers=16, n_heads=8, n_kv_heads=2,
        max_seq_len=512, rope_theta=1e6,
    ),
    # MiniMind-3 (2026-04), aligned with Qwen3: QK-norm, 8 x 768, 8 query / 4 KV heads of 96, FFN 2432, tied;
    # 63,912,192 parameters. Its MoE sibling: 4 routed experts, top-1, no shared expert (198,416,640 in all,
    # 63,936,768 active per token). Both load into transformers' Qwen3ForCausalLM / Qwen3MoeForCausalLM.
    "minimind-3": ModelConfig(
        name="minimind-3", vocab_size=6400, hidden_size=768, n_layers=8, n_heads=8, n_kv_heads=4,
        ffn_size=2432, max_seq_len=2048, rope_theta=1e6, norm_eps=1e-6, qk_norm=True,
    ),
    "minimind-3-moe": ModelConfig(
        name="minimind-3-moe", vocab_size=6400, hidden_size=768, n_layers=8, n_heads=8, n_kv_heads=4,
        ffn_size=2432, max_seq_len=2048, rope_theta=1e6, norm_eps=1e-6, qk_norm=True,
        n_experts=4, n_experts_per_tok=1, n_shared_experts=0,
    ),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset, optionally with fields overridden: ``get_preset("nano", norm="layernorm")``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    return cfg.replace(**overrides) if overrides else cfg
