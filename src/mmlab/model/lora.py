"""LoRA: train a low-rank update of chosen weight matrices, freeze everything else.

A frozen linear layer ``y = x W^T`` gets a parallel path ``(alpha / r) * dropout(x) A^T B^T`` with
``A`` (r x in) and ``B`` (out x r). ``B`` starts at zero, so the adapted model starts exactly as the
base model; only ``A`` and ``B`` train — ``r * (in + out)`` numbers instead of ``in * out`` — and the
optimizer keeps state for them alone. After training the update can be merged into ``W`` (no extra
cost at inference) or kept apart as a small adapter file.

The same parameterisation as Hugging Face ``peft`` (same initialisation rule, same scaling, same
names ``lora_A`` / ``lora_B``): a test loads identical adapter weights into both and checks the
outputs and gradients.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmlab.errors import ConfigError

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # a module is adapted when its name's last part is listed, or when a pattern given as "re:<regex>"
    # matches its full name (e.g. "re:blocks\.[0-3]\.attn\.(q|v)_proj")
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    # modules trained in full beside the adapter (peft's ``modules_to_save``), by name: e.g. ["tok_emb"] when
    # fine-tuning introduces tokens the base never saw (the chat template's) and their embeddings must learn
    train_modules: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ConfigError(f"lora rank={self.rank!r} must be a positive integer")
        if not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ConfigError(f"lora alpha={self.alpha!r} must be a positive number")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora dropout={self.dropout!r} must be in [0, 1)")
        if isinstance(self.target_modules, str):
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        if self.target_modules == ["all-linear"]:
            self.target_modules = list(ALL_LINEAR)
        if not self.target_modules:
            raise ConfigError("lora target_modules is empty")
        if isinstance(self.train_modules, str):
            self.train_modules = [m.strip() for m in self.train_modules.split(",") if m.strip()]
        for t in self.target_modules:
            if t.startswith("re:"):
                try:
                    re.compile(t[3:])
                except re.error as e:
                    raise ConfigError(f"lora target {t!r}: invalid regular expression ({e})") from None

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def trains_fully(self, param_name: str) -> bool:
        """Whether the parameter ``param_name`` belongs to one of ``train_modules``."""
        return any(param_name == m or param_name.startswith(m + ".") for m in self.train_modules)

    def matches(self, name: str) -> bool:
        last = name.rsplit(".", 1)[-1]
        return any(re.fullmatch(t[3:], name) if t.startswith("re:") else t == last for t in self.target_modules)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device,
                                               dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device,
                                               dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's rule, as peft does
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The update B A * alpha / r, shaped like the base weight."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (no extra cost at inference). The base weight as it was
        is kept aside, so ``unmerge`` restores it bit for bit (W + D - D is not W in floating point)."""
        if not self.merged:
            self.unmerged_weight = self.base.weight.detach().clone()
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight.copy_(self.unmerged_weight)
            del self.unmerged_weight
            self.merged = False


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def fully_trained(model: nn.Module, cfg: LoRAConfig) -> dict[str, nn.Parameter]:
    """The parameters of ``cfg.train_modules``, each once under its first name (a tied matrix is found
    under either of its names)."""
    chosen = {id(p) for n, p in model.named_parameters(remove_duplicate=False) if cfg.trains_fully(n)}
    return {n: p for n, p in model.named_parameters() if id(p) in chosen}


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Wrap every ``nn.Linear`` whose name ``cfg`` targets, freeze every other parameter except those of
    ``cfg.train_modules``, and return the adapted names. The model keeps its class; its ``lora_config``
    attribute records ``cfg``."""
    if any(True for _ in lora_layers(model)):
        raise ConfigError("the model already has LoRA layers (merge or reload the base model first)")
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and cfg.matches(n)]
    if not targets:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(f"lora target_modules {cfg.target_modules} match no linear layer; the model has: "
                          f"{', '.join(linear)}")
    shared = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(p), []).append(name)
    for name, module in targets:
        names = shared.get(id(module.weight), [])
        if len(names) > 1:  # e.g. a tied LM head: merging would change the embedding too
            others = ", ".join(n for n in names if not n.startswith(name + "."))
            raise ConfigError(f"lora target {name!r} shares its weight with {others}; adapting it would also change "
                              "the other (untie the embeddings, or pick other targets)")
    unmatched = [m for m in cfg.train_modules if not any(n == m or n.startswith(m + ".")
                                                         for n, _ in model.named_parameters(remove_duplicate=False))]
    full = list(fully_trained(model, cfg).items())
    if unmatched:
        top = sorted({n.split(".")[0] for n, _ in model.named_parameters()})
        raise ConfigError(f"lora train_modules {unmatched} match no parameter; the model's modules: {', '.join(top)}")
    if any(cfg.matches(n.rpartition(".")[0]) for n, _ in full):
        raise ConfigError("lora: a module cannot be both adapted (target_modules) and trained in full (train_modules)")
    for p in model.parameters():
        p.requires_grad_(False)
    for _, p in full:
        p.requires_grad_(True)
    # the fully trained parameters as they were, so a checkpoint can store the untouched base beside the adapter
    model.lora_base_copies = {n: p.detach().clone() for n, p in full}
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, cfg.rank, cfg.alpha, cfg.dropout))
    model.lora_config = cfg
    return [n for n, _ in targets]


def merge_lora(model: nn.Module) -> None:
    for _, layer in lora_layers(model):
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for _, layer in lora_layers(model):
        layer.unmerge()


def remove_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Put plain ``nn.Linear`` layers back (with the update merged in, unless ``merge=False``)."""
    for name, layer in list(lora_layers(model)):
        if merge:
            layer.merge()
        else:
            layer.unmerge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.base)
    if hasattr(model, "lora_config"):
        del model.lora_config
    if hasattr(model, "lora_base_copies"):
        del model.lora_base_copies
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors by full name (``blocks.0.attn.q_proj.lora_A`` ...), and the parameters of the config's
    ``train_modules`` (trained in full, so they belong to the adapter too)."""
    state = {f"{name}.{part}": getattr(layer, part).detach() for name, layer in lora_layers(model)
             for part in ("lora_A", "lora_B")}
    cfg = getattr(model, "lora_config", None)
    if cfg is not None and cfg.train_modules:
        state |= {n: p.detach() for n, p in fully_trained(model, cfg).items()}
    return state


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write the adapter alone (its weights and its LoRAConfig) into folder ``path``."""
    from safetensors.torch import save_file

    cfg = getattr(model, "lora_config", None)
    if cfg is None:
        raise ConfigError("the model has no LoRA layers to save (apply_lora first)")
    if any(layer.merged for _, layer in lora_layers(model)):
        raise ConfigError("the adapter is merged into the weights; unmerge_lora before saving it apart")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in adapter_state_dict(model).items()}, str(path / ADAPTER_WEIGHTS))
    (path / ADAPTER_CONFIG).write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    return path


def read_adapter_config(path: str | Path) -> LoRAConfig:
    file = Path(path) / ADAPTER_CONFIG
    if not file.is_file():
        raise ConfigError(f"{path}: not a LoRA adapter folder (no {ADAPTER_CONFIG})")
    try:
        data: dict[str, Any] = json.loads(file.read_text())
        return LoRAConfig(**data)
    except (json.JSONDecodeError, TypeError) as e:
        raise ConfigError(f"{file}: invalid adapter config ({e})") from None


def load_adapter(model: nn.Module, path: str | Path, apply: bool = True) -> list[str]:
    """Apply the adapter saved in ``path`` to a base model (``apply=False``: the model already has these
    LoRA layers; only load the tensors); every tensor must fit by name and shape."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg = read_adapter_config(path)
    weights = Path(path) / ADAPTER_WEIGHTS
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{weights}: cannot read the adapter ({e})") from None
    trainable = {n: p.requires_grad for n, p in model.named_parameters()} if apply else {}
    names = apply_lora(model, cfg) if apply else [n for n, _ in lora_layers(model)]
    own = {k: v for k, v in model.named_parameters() if ".lora_" in k} | fully_trained(model, cfg)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or wrong:
        if apply:  # leave the model as it came: plain layers, the same parameters trainable
            remove_lora(model, merge=False)
            for n, p in model.named_parameters():
                p.requires_grad_(trainable.get(n, True))
        if wrong:
            k = wrong[0]
            raise ConfigError(f"{path}: {k} has shape {tuple(state[k].shape)}, the model expects "
                              f"{tuple(own[k].shape)} (an adapter for another model config)")
        raise ConfigError(f"{path}: the adapter does not fit this model (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]})")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
    return names


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (a tied matrix counted once)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
