"""Shared by the distillation lesson's experiments: the teacher (the lessons' shared pretrained model), the
student's shape, and one distillation run."""

from pathlib import Path
from typing import Any

from mmlab.config import ModelConfig
from mmlab.lab.posttrain import curve, lesson_base, stage_config
from mmlab.train.distill import distill

LR = 3e-3


def student(exp: Any) -> ModelConfig:
    """2 layers x 64: a student with about a seventh of the teacher's non-embedding parameters."""
    if exp.mode == "smoke":
        return ModelConfig(name="student", vocab_size=300, hidden_size=16, n_layers=1, n_heads=2, max_seq_len=64)
    return ModelConfig(name="student", vocab_size=1024, hidden_size=64, n_layers=2, n_heads=2, max_seq_len=128,
                       rope_theta=1e4)


def run(exp: Any, out: Path, steps: int, temperature: float, alpha: float, data: str | None = None) -> dict[str, Any]:
    """Distil the teacher into a fresh student: ``alpha`` = 0 is plain next-token training on the data (hard
    labels), 1 is the teacher's soft targets only. Returns ``distill_eval.json``'s record and the val curve."""
    cfg = stage_config(exp, out, steps, LR, weight_decay=0.1)
    r = distill(lesson_base(exp), data, student(exp), cfg, temperature=temperature, alpha=alpha)
    return r | {"val_curve": curve(out)}
