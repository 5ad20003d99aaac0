"""The experiment runtime (runtime.py), discovery (registry.py) and docs result blocks (render.py)."""

from mmlab.lab.runtime import Experiment

__all__ = ["Experiment"]
