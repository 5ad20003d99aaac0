"""MiniMind Lab: learn how a modern LLM is built and trained, by measurement.

The library is organised so that data flows one way:
``data -> tokenizer -> model <- train / infer / eval``; ``lab`` and ``cli`` sit on top.
"""

from mmlab.config import PRESETS, ModelConfig, RopeScaling, get_preset
from mmlab.errors import ConfigError, MMLabError

__version__ = "0.1.0"

__all__ = ["PRESETS", "ConfigError", "MMLabError", "ModelConfig", "RopeScaling", "__version__", "get_preset"]
