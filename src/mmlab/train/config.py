"""Training configuration: one dataclass for every stage (pretrain now; SFT, DPO, ... reuse it)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmlab.errors import ConfigError

SCHEDULES = ("cosine", "constant", "wsd")
DTYPES = ("fp32", "bf16", "fp16", "auto")
OPTIMIZERS = ("adamw", "sgd", "muon")


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    max_iters: int = 2000
    batch_size: int = 12  # rows per micro-batch per process
    block_size: int | None = None  # tokens per row; None -> the model's max_seq_len
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    min_lr: float | None = None  # None -> lr / 10
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # None -> max_iters
    schedule: str = "cosine"  # cosine | constant (after warmup) | wsd (warmup-stable-decay)
    decay_fraction: float = 0.2  # wsd: the last fraction of steps decays linearly to min_lr
    optimizer: str = "adamw"  # adamw | sgd (momentum beta1, Nesterov; weight decay as L2 on matrices) | muon
    muon_momentum: float = 0.95  # muon: momentum of the hidden matrices (the rest uses AdamW's betas)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    # fp32 | bf16 (autocast) | fp16 (autocast + loss scaling) | auto (mmlab.device.training_dtype: bf16 where
    # this device runs it fast for this model's width, else fp32; the CLI's default)
    dtype: str = "fp32"
    device: str = "auto"
    compile: bool = False
    eval_interval: int = 250
    eval_batches: int = 20
    log_interval: int = 10
    ckpt_interval: int | None = None  # None -> eval_interval
    seed: int = 1337
    val_fraction: float = 0.1
    progress: bool = True  # a progress bar on a terminal, log lines otherwise
    save_checkpoints: bool = True  # experiments that only need the losses turn this off
    keep_best: bool = False  # also keep the weights with the lowest val loss so far in <out_dir>/best
    plot: bool = True  # write loss.png at the end

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("max_iters", "batch_size", "grad_accum", "eval_interval", "eval_batches", "log_interval"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{name}={v!r} must be a positive integer")
        if self.block_size is not None and self.block_size <= 0:
            raise ConfigError(f"block_size={self.block_size} must be positive")
        if self.warmup_iters < 0:
            raise ConfigError(f"warmup_iters={self.warmup_iters} must be >= 0")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr} must be positive")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"min_lr={self.min_lr} must be in [0, lr={self.lr}]")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule={self.schedule!r} is not one of: {', '.join(SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer={self.optimizer!r} is not one of: {', '.join(OPTIMIZERS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r} is not one of: {', '.join(DTYPES)}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction={self.val_fraction} must be in [0, 1)")
        for name in ("lr", "grad_clip", "weight_decay", "beta1", "beta2", "val_fraction", "decay_fraction",
                     "muon_momentum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name}={value!r} must be a finite number")
        for name in ("beta1", "beta2", "muon_momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be in [0, 1)")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(f"decay_fraction={self.decay_fraction} must be in (0, 1]")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError("grad_clip and weight_decay must be >= 0")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed={self.seed} must be in [0, 2**63)")

    @property
    def resolved_min_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    @property
    def resolved_ckpt_interval(self) -> int:
        return self.ckpt_interval or self.eval_interval

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def for_resume(cls, out_dir: str | Path, **overrides: Any) -> TrainConfig:
        """The config saved in a run folder, with some fields overridden (e.g. a larger max_iters)."""
        path = Path(out_dir) / "train_config.json"
        if not path.is_file():
            raise ConfigError(f"cannot resume: {path} not found (is {out_dir} a run folder?)")
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
        if overrides.get("optimizer", saved.get("optimizer", "adamw")) != saved.get("optimizer", "adamw"):
            raise ConfigError(f"{out_dir} was trained with optimizer={saved.get('optimizer', 'adamw')!r}; its saved "
                              "optimizer state cannot continue another optimizer (start a new --out instead)")
        if "max_iters" in overrides and "lr_decay_iters" not in overrides and saved.get("lr_decay_iters") is None:
            # extending a run must not restart the schedule: the decay still ends where it was planned
            # to (then the rate stays at min_lr); pass --lr-decay-iters to plan a new decay
            overrides["lr_decay_iters"] = saved.get("max_iters")
        return cls.from_dict({**saved, **overrides, "out_dir": str(out_dir)})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**data)
