"""Weight-only quantization: keep each linear layer's weight as int8 or int4, compute in floating point.

Decoding one token at a time reads every weight once per token and does only two flops with it, so on
most hardware decode speed is set by *memory traffic*, not arithmetic. Storing weights in fewer bits
shrinks the model (int8: ~4x smaller than fp32, int4: ~8x) and, with a kernel that dequantizes in
registers, speeds decoding up by the same factor. Activations stay in floating point; only the stored
weights are rounded ("weight-only", as in gpt-fast's ``quantize.py`` or llama.cpp's Q8_0 / Q4_0).

The recipe, for a weight ``W`` (out, in):

* **Symmetric.** One scale ``s`` per row (or per group): ``q = clamp(round(W / s), -qmax, qmax)`` with
  ``qmax = 2^(bits-1) - 1`` (127 or 7) and ``s = max|W| / qmax``; dequantized ``W ≈ q * s``. Trained
  weights are centred on zero, so a zero-point (asymmetric quantization) buys little and would cost an
  extra add per weight. We do not use -128 / -8, so the grid is the same on both sides of zero.
* **Per output channel.** Each row of ``W`` produces one output feature; rows differ in scale by 10x or
  more, and a single scale for the whole matrix would waste most of the grid on the small rows. A
  per-row scale also commutes with the matmul: ``x (s ⊙ Q)^T = (x Q^T) ⊙ s``, so it can be applied to
  the (B, out) output instead of the (out, in) weight (what ``QuantLinear`` does without groups).
* **Groups along the input dimension** (``group_size=g``: one scale per ``g`` consecutive inputs of a
  row). One large weight ("outlier", common in LLMs along some input features) sets the scale of its
  whole row and leaves the other weights of that row only a few grid steps; with groups it spoils only
  its own group. The price is one scale per ``g`` weights (fp32 here: +32/g bits per weight).
* **Round to nearest** loses up to half a grid step per weight, ``|W - q s| <= s / 2``, and knows nothing
  about which weights matter most to the outputs. GPTQ / AWQ choose the rounding (or rescale columns)
  with calibration data and lose less, especially at 4 bits; we keep the plain baseline.
* **int4 packing.** Two 4-bit values share one uint8 byte (the low nibble holds the even column, the
  high nibble the odd one, each stored as ``q + 8`` in 0..15), so int4 really takes half of int8's bytes.

What stays in floating point, and why: the embedding and the LM head (``skip=("lm_head", "router")``).
In our models they are usually the *same* tied matrix, read as a table by ``nn.Embedding`` (a lookup, not
a matmul), so quantizing the head would either quantize the embedding too or store a second copy. The
head also writes the logits directly, with no later layer or norm to absorb its rounding error, and
keeping it in high precision is common practice (llama.cpp keeps its output matrix at 6 bits or more).
A MoE router stays in floating point too: a small error in its scores changes which experts run.
Norm gains and biases are tiny and stay as they are.

On a CPU without fused int8/int4 kernels, dequantize-on-the-fly is *slower* than fp32: every call first
converts the whole weight to floating point (reading the int weight, writing a float copy, then the
matmul reads that copy again). ``QuantLinear.cache_dequantized`` keeps the float copy instead, which is
as fast as fp32 but holds *more* memory than the fp32 model. ``benchmarks/quant_decode.py`` measures both.

    >>> summary = quantize_model(model, bits=4, group_size=32)   # in place; returns what it did
    >>> save_checkpoint("runs/q4", model, tokenizer)              # loaded back by load_model
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmlab.errors import ConfigError, MMLabError

SUPPORTED_BITS = (8, 4)
DEFAULT_SKIP = ("lm_head", "router")


def qmax(bits: int) -> int:
    """The largest integer of the symmetric grid: 127 for int8, 7 for int4."""
    return 2 ** (bits - 1) - 1


def check_settings(bits: int, group_size: int | None, in_features: int, name: str = "weight") -> None:
    """Refuse (one line, naming the layer) settings that cannot quantize a layer with ``in_features`` inputs."""
    if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise ConfigError(f"bits={bits!r}: weight-only quantization supports {' or '.join(map(str, SUPPORTED_BITS))}")
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
            raise ConfigError(f"group_size={group_size!r} must be a positive integer (or None: one scale per row)")
        if in_features % group_size:
            divisors = [g for g in (32, 64, 128, 256) if in_features % g == 0]
            hint = f" (e.g. {', '.join(map(str, divisors))})" if divisors else ""
            raise ConfigError(f"{name}: in_features={in_features} is not divisible by group_size={group_size}; pick "
                              f"a divisor of {in_features}{hint} or no group size")
    if bits == 4 and in_features % 2:
        raise ConfigError(f"{name}: int4 packs two values per byte, so in_features={in_features} must be even")


# ---- int4 packing --------------------------------------------------------------------------------

def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q: (..., n) integers in [-8, 7], n even -> uint8 (..., n // 2); column 2j in the low nibble,
    column 2j+1 in the high nibble, each as q + 8 (0..15)."""
    if q.shape[-1] % 2:
        raise ConfigError(f"pack_int4 needs an even number of columns, got {q.shape[-1]}")
    if q.numel() and (int(q.min()) < -8 or int(q.max()) > 7):
        raise ConfigError(f"pack_int4 takes values in [-8, 7], got [{int(q.min())}, {int(q.max())}]")
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, dtype: torch.dtype = torch.int8) -> torch.Tensor:
    """The inverse of ``pack_int4``: uint8 (..., n // 2) -> (..., n) of ``dtype``. Dequantization asks for a
    float dtype directly: writing the nibbles straight into the float tensor skips an int8 copy."""
    nibbles = torch.empty((*packed.shape, 2), dtype=dtype, device=packed.device)
    nibbles[..., 0] = packed & 0x0F  # even columns
    nibbles[..., 1] = packed >> 4  # odd columns
    return nibbles.sub_(8).flatten(-2)


# ---- tensors -------------------------------------------------------------------------------------

def quantize_tensor(w: torch.Tensor, bits: int = 8, group_size: int | None = None,
                    name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric round-to-nearest quantization of a weight w: (out, in).

    Returns ``q`` — int8 (out, in) for 8 bits, packed uint8 (out, in // 2) for 4 bits — and ``scales``,
    float32 (out, in // group_size), i.e. (out, 1) per output channel when ``group_size`` is None.
    """
    if w.dim() != 2:
        raise ConfigError(f"{name}: expected a 2-D weight (out, in), got shape {tuple(w.shape)}")
    out_features, in_features = w.shape
    check_settings(bits, group_size, in_features, name)
    w = w.detach().float()
    if not torch.isfinite(w).all():
        raise ConfigError(f"{name}: the weight holds NaN or inf values; nothing to quantize")
    g = group_size or in_features
    groups = w.reshape(out_features, in_features // g, g)  # (out, G, g)
    scales = groups.abs().amax(dim=-1) / qmax(bits)  # (out, G): the largest weight lands on +-qmax
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero group is exact anyway
    q = torch.round(groups / scales[..., None]).clamp(-qmax(bits), qmax(bits)).to(torch.int8)
    q = q.reshape(out_features, in_features)
    return (pack_int4(q) if bits == 4 else q), scales


def dequantize_tensor(q: torch.Tensor, scales: torch.Tensor, bits: int,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q * scale, back to a float (out, in) weight of ``dtype`` (the group size is read from ``scales``)."""
    # a fresh float tensor, scaled in place: one weight-sized allocation per call (exact: |q| <= 127 fits
    # even bf16's 8-bit mantissa)
    w = unpack_int4(q, dtype) if bits == 4 else q.to(dtype, copy=True)  # never scale q itself in place
    out_features, in_features = w.shape
    n_groups = scales.shape[1]
    w.view(out_features, n_groups, in_features // n_groups).mul_(scales.to(dtype)[..., None])
    return w


# ---- the layer -----------------------------------------------------------------------------------

class QuantLinear(nn.Module):
    """An inference-only stand-in for ``nn.Linear``: int weight + float scales (+ bias), all buffers.

    ``forward`` dequantizes the weight on every call (nothing kept) unless ``cache_dequantized`` is on;
    x: (..., in_features) -> (..., out_features), computed in x's dtype.
    """

    def __init__(self, in_features: int, out_features: int, bits: int = 8, group_size: int | None = None,
                 bias: bool = False, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 name: str = "QuantLinear"):
        super().__init__()
        check_settings(bits, group_size, in_features, name)
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        int_shape = (out_features, in_features // 2) if bits == 4 else (out_features, in_features)
        self.register_buffer("qweight", torch.zeros(int_shape, dtype=torch.uint8 if bits == 4 else torch.int8,
                                                    device=device))
        n_groups = in_features // (group_size or in_features)
        self.register_buffer("scales", torch.ones(out_features, n_groups, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)
        # the float weight, when cache_dequantized is on: not saved, but counted by model_nbytes
        self.register_buffer("dequantized", None, persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, group_size: int | None = None,
                    name: str = "linear") -> QuantLinear:
        layer = cls(linear.in_features, linear.out_features, bits, group_size, linear.bias is not None,
                    linear.weight.dtype, linear.weight.device, name)
        q, scales = quantize_tensor(linear.weight, bits, group_size, name)
        layer.qweight.copy_(q)
        layer.scales.copy_(scales)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer

    @property
    def cache_dequantized(self) -> bool:
        return self.dequantized is not None

    @cache_dequantized.setter
    def cache_dequantized(self, on: bool) -> None:
        self.dequantized = self.weight() if on else None

    def weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dequantized weight (out, in), in the scales' dtype unless ``dtype`` is given."""
        return dequantize_tensor(self.qweight, self.scales, self.bits, dtype or self.scales.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        if self.dequantized is not None:
            return F.linear(x, self.dequantized.to(x.dtype), bias)
        # one scale per output: scale the (..., out) result, not the weight; not in fp16, where x @ ints (up to
        # 127 per weight, before the scale) can pass fp16's largest value, 65504, and become inf
        if self.group_size is None and x.dtype != torch.float16:
            ints = unpack_int4(self.qweight, x.dtype) if self.bits == 4 else self.qweight.to(x.dtype)
            y = F.linear(x, ints) * self.scales[:, 0].to(x.dtype)
            return y + bias if bias is not None else y
        return F.linear(x, self.weight(x.dtype), bias)

    def extra_repr(self) -> str:
        groups = f"group_size={self.group_size}" if self.group_size else "per-channel"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, {groups}, "
                f"bias={self.bias is not None}")


# ---- models --------------------------------------------------------------------------------------

@dataclass
class QuantConfig:
    """What ``quantize_model`` did, saved as quant_config.json beside a quantized checkpoint's weights."""

    bits: int = 8
    group_size: int | None = None
    skip: list[str] = field(default_factory=lambda: list(DEFAULT_SKIP))
    layers: list[str] = field(default_factory=list)  # the quantized layers, by full name
    source: dict[str, Any] = field(default_factory=dict)  # where it came from (informative only)

    def __post_init__(self) -> None:
        check_settings(self.bits, self.group_size, 2 * (self.group_size or 1))  # bits and group_size alone
        if not isinstance(self.layers, list) or not all(isinstance(n, str) for n in self.layers):
            raise ConfigError(f"quant config layers={self.layers!r} must be a list of layer names")

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> QuantConfig:
        try:
            data = json.loads(Path(path).read_text())
            return cls(**data)
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise ConfigError(f"{path}: invalid quantization config ({e})") from None
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


def _skipped(name: str, skip: Sequence[str]) -> bool:
    """A layer is skipped when its full name, its last part, or a parent's name is listed."""
    return any(name == s or name.rsplit(".", 1)[-1] == s or name.startswith(s + ".") for s in skip)


def model_nbytes(model: nn.Module) -> int:
    """Bytes the model holds: every parameter and buffer once (a tied matrix once, int4 as packed bytes,
    the RoPE tables and any cached dequantized weights included)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers()) if t is not None}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _replace(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)


def quantize_model(model: nn.Module, bits: int = 8, group_size: int | None = None,
                   skip: Sequence[str] = DEFAULT_SKIP, cache_dequantized: bool = False) -> dict[str, Any]:
    """Replace every ``nn.Linear`` not in ``skip`` by a ``QuantLinear``, in place; return a summary.

    Every layer is checked before any is replaced, so a bad setting leaves the model as it was. The
    model's ``quant_config`` attribute records what was done (``save_checkpoint`` writes it out).
    """
    from mmlab.model.lora import lora_layers

    if getattr(model, "quant_config", None) is not None:
        raise ConfigError("the model is already quantized (load the full-precision checkpoint to re-quantize)")
    if any(True for _ in lora_layers(model)):
        raise ConfigError("the model has LoRA layers: merge them first (mmlab.model.lora.remove_lora)")
    skip = [skip] if isinstance(skip, str) else list(skip)
    linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    targets = [(n, m) for n, m in linear if not _skipped(n, skip)]
    if not targets:
        raise ConfigError(f"no linear layer left to quantize after skip={skip}")
    shared: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(p), []).append(pname)
    for name, module in targets:
        check_settings(bits, group_size, module.in_features, name)
        others = [n for n in shared.get(id(module.weight), []) if not n.startswith(name + ".")]
        if others:  # e.g. an LM head tied to the embedding
            raise ConfigError(f"{name} shares its weight with {', '.join(others)}; quantizing it would change that "
                              "too (keep it in skip)")
    before = model_nbytes(model)
    n_params = 0
    for name, module in targets:
        layer = QuantLinear.from_linear(module, bits, group_size, name)
        layer.cache_dequantized = cache_dequantized
        n_params += module.weight.numel()
        _replace(model, name, layer)
    model.quant_config = QuantConfig(bits, group_size, skip, [n for n, _ in targets])
    after = model_nbytes(model)
    return {"bits": bits, "group_size": group_size, "layers": len(targets), "quantized_params": n_params,
            "kept_linear": [n for n, _ in linear if _skipped(n, skip)], "bytes_before": before,
            "bytes_after": after, "compression": before / after}


def apply_quant_config(model: nn.Module, cfg: QuantConfig) -> None:
    """Give a freshly built model the empty QuantLinear layers ``cfg`` names (its weights are loaded next)."""
    modules = dict(model.named_modules())
    for name in cfg.layers:
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            raise ConfigError(f"quantized layer {name!r} is not a linear layer of this model")
        _replace(model, name, QuantLinear(module.in_features, module.out_features, cfg.bits, cfg.group_size,
                                          module.bias is not None, module.weight.dtype, module.weight.device, name))
    model.quant_config = cfg


def set_dequantized_cache(model: nn.Module, on: bool) -> None:
    """Keep (or drop) a float copy of every quantized weight: fp32 speed, but more memory than fp32."""
    for module in model.modules():
        if isinstance(module, QuantLinear):
            module.cache_dequantized = on


# ---- checkpoints ---------------------------------------------------------------------------------

def held_out_tokens(ckpt: str | Path, tokenizer: Any, max_tokens: int) -> tuple[torch.Tensor | None, str]:
    """The first ``max_tokens + 1`` tokens of the val split the checkpoint was pretrained with, and a note;
    ``(None, why)`` when the checkpoint records no text corpus (or it cannot be read)."""
    from mmlab.data.corpus import load_corpus
    from mmlab.data.pretrain import PretrainData, tokenize_corpus
    from mmlab.train.checkpoint import pretraining_corpus

    run, why = pretraining_corpus(ckpt)
    if run is None:
        return None, why
    data = run["data"]
    try:
        corpus = load_corpus(data, seed=run["seed"])
        if run["sha256"] and corpus.sha256() != run["sha256"]:
            return None, f"the corpus {data!r} changed since the checkpoint was trained on it"
        tokens = tokenize_corpus(corpus, tokenizer)
        val = PretrainData.from_tokens(tokens, run["val_fraction"], run["block_size"] or 2, corpus.source).val
    except MMLabError as e:
        return None, f"cannot read the corpus {data!r}: {e}"
    return val[: max_tokens + 1], f"{min(len(val) - 1, max_tokens):,} held-out tokens of {data}"


# what a checkpoint folder holds (mmlab.train.checkpoint): --overwrite replaces only such a folder
_CKPT_FILES = {"model.safetensors", "config.json", "tokenizer.json", "char_vocab.json", "teaching_bpe.json",
               "trainer_state.pt", "quant_config.json", "adapter.safetensors", "adapter_config.json"}


def quantize_checkpoint(ckpt: str | Path, out: str | Path, bits: int = 8, group_size: int | None = None,
                        skip: Sequence[str] = DEFAULT_SKIP, eval_tokens: int = 4096,
                        overwrite: bool = False) -> dict[str, Any]:
    """Quantize a checkpoint's model into a new checkpoint folder ``out`` (weights, config, tokenizer and
    quant_config.json; no trainer state: it is for inference). When the checkpoint records its corpus, the
    loss on the first ``eval_tokens`` held-out tokens is measured before and after. Nothing is written
    unless everything before the write succeeded."""
    from mmlab.train.checkpoint import (
        QUANT_CONFIG,
        load_checkpoint_tokenizer,
        load_model,
        resolve_checkpoint,
        save_checkpoint,
    )
    from mmlab.train.evaluate import summed_loss

    folder = resolve_checkpoint(ckpt)
    if (folder / QUANT_CONFIG).is_file():
        raise ConfigError(f"{folder} is already quantized; quantize the full-precision checkpoint instead")
    out = Path(out)
    if out.exists() and (out.resolve() == folder.resolve() or out.resolve() in folder.resolve().parents):
        raise ConfigError(f"--out {out} would replace the checkpoint being quantized (or a folder holding it); "
                          "choose another folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"--out {out} already exists and is not empty; pass --overwrite to replace it "
                          "(nothing was written)")
    if overwrite and out.is_dir():  # replace a checkpoint folder, never an arbitrary folder's contents
        foreign = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.name not in _CKPT_FILES)
        if foreign:
            raise ConfigError(f"refusing to overwrite {out}: it holds files that are not a checkpoint's "
                              f"({', '.join(foreign[:5])})")
    model = load_model(folder).eval()
    tokenizer = load_checkpoint_tokenizer(folder)
    for name, m in model.named_modules():  # refuse bad settings before the (slow) evaluation
        if isinstance(m, nn.Linear) and not _skipped(name, skip):
            check_settings(bits, group_size, m.in_features, name)
    val, note = held_out_tokens(folder, tokenizer, eval_tokens) if eval_tokens > 0 else (None, "not asked")
    block = model.cfg.max_seq_len

    def loss() -> float | None:
        if val is None or len(val) < 2:
            return None
        nats, n = summed_loss(model, val, block)
        return nats / n

    loss_before = loss()
    summary = quantize_model(model, bits, group_size, skip)
    loss_after = loss()
    model.quant_config.source = {"checkpoint": str(folder)}
    save_checkpoint(out, model, tokenizer)
    return {**summary, "out": str(out), "file_bytes_before": (folder / "model.safetensors").stat().st_size,
            "file_bytes_after": (out / "model.safetensors").stat().st_size, "eval": note,
            "val_loss_before": loss_before, "val_loss_after": loss_after,
            "val_loss_change": None if loss_before is None else loss_after - loss_before,
            "perplexity_ratio": None if loss_before is None else math.exp(loss_after - loss_before)}
