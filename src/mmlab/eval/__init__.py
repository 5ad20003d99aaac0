"""Evaluation: perplexity / bits per byte, multiple choice by log-likelihood, exact-match tasks.

Every accuracy is reported next to chance, with a 95% Wilson interval and a verdict ("not
distinguishable from chance" when |z| < 1.96), plus an error analysis (per category, failure samples).
"""

from mmlab.eval.stats import accuracy_vs_chance, binomial_stderr, wilson_interval
from mmlab.eval.tasks import TASKS, format_report, run_eval

__all__ = ["TASKS", "accuracy_vs_chance", "binomial_stderr", "format_report", "run_eval", "wilson_interval"]
