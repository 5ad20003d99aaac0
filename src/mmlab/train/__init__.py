"""Training: one loop (trainer.py) with objectives plugged in; checkpoints; schedules; DDP."""

from mmlab.train.config import TrainConfig
from mmlab.train.trainer import NextTokenLoss, Trainer, TrainingDiverged, TrainResult

__all__ = ["NextTokenLoss", "TrainConfig", "TrainResult", "Trainer", "TrainingDiverged"]
