"""The experiment runtime: what every comparative experiment of the tutorial shares.

An experiment is a script with a docstring (its question) and a ``main(exp)`` function:

    \"\"\"Does normalization keep activations at a constant scale through depth?\"\"\"
    from mmlab.lab import Experiment

    def main(exp: Experiment) -> None:
        steps = exp.pick(full=600, quick=60, smoke=3)
        ...
        exp.metric("val_loss", {"rmsnorm": 1.71, ...})            # measured, never typed
        exp.finding("RMSNorm ends lower than no norm", holds=a < b, rmsnorm=a, none=b)
        exp.table("final", ["variant", "val loss"], rows)         # rendered into the docs
        exp.savefig(fig)

    if __name__ == "__main__":
        Experiment.cli(__doc__, main, __file__)

Modes: full (the committed results, <= 10 min on 2 cores), ``--quick`` (<= 60 s, same questions at a
smaller budget) and ``--smoke`` (seconds, end to end, for tests). Only full runs write into the
lesson's ``results/`` folder by default; quick and smoke runs write to ``results/quick/`` and a
temporary folder, so they can never overwrite committed results.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmlab.device import environment, resolve_device
from mmlab.errors import MMLabError


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)  # NaN / inf are results too (a diverged run); JSON has no literal for them
    return value


class Experiment:
    """One run of an experiment script: its mode, seed, device, output folder and results."""

    def __init__(
        self,
        name: str,
        question: str,
        mode: str = "full",
        seed: int = 0,
        out_dir: str | Path | None = None,
        device: str = "cpu",
        threads: int | None = None,
        lesson_dir: Path | None = None,
    ):
        if mode not in ("full", "quick", "smoke"):
            raise ValueError(f"mode={mode!r}")
        self.name, self.question, self.mode, self.seed = name, question, mode, seed
        self.device = resolve_device(device)
        if threads:
            torch.set_num_threads(threads)
        if out_dir is None:
            if mode == "smoke":
                out_dir = Path(tempfile.mkdtemp(prefix=f"mmlab-{name}-"))
            elif lesson_dir is not None:
                out_dir = lesson_dir / "results" / ("quick" if mode == "quick" else "")
            else:
                out_dir = Path("results")
        self.out_dir = Path(out_dir)
        self.config: dict[str, Any] = {}
        self.metrics: dict[str, Any] = {}
        self.findings: list[dict[str, Any]] = []
        self.tables: dict[str, dict[str, Any]] = {}
        self.figures: list[str] = []
        self.t0 = time.perf_counter()
        self.seed_everything(seed)

    # ---- helpers for the script -------------------------------------------------------------
    def pick(self, full: Any, quick: Any, smoke: Any | None = None) -> Any:
        """The value for this mode (smoke falls back to quick when not given)."""
        if self.mode == "full":
            return full
        if self.mode == "smoke" and smoke is not None:
            return smoke
        return quick

    @staticmethod
    def seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def log(self, message: str) -> None:
        print(f"[{self.name} {time.perf_counter() - self.t0:6.1f}s] {message}", file=sys.stderr, flush=True)

    def set_config(self, **config: Any) -> None:
        self.config.update(config)

    def metric(self, key: str, value: Any) -> None:
        self.metrics[key] = value

    def finding(self, claim: str, holds: bool, **evidence: Any) -> bool:
        """A sentence and the boolean the script computed from its measurements. A finding that is
        false is a result, reported as false."""
        self.findings.append({"claim": claim, "holds": bool(holds), "evidence": evidence})
        self.log(f"finding: {claim} -> {'holds' if holds else 'DOES NOT HOLD'}")
        return bool(holds)

    def table(self, key: str, headers: list[str], rows: list[list[Any]], caption: str = "") -> None:
        """A table of measured values that docs can render (``<!-- mmlab:result NAME table=KEY -->``)."""
        self.tables[key] = {"headers": headers, "rows": rows, "caption": caption}

    def savefig(self, fig: Any, suffix: str = "") -> Path:
        """Save a matplotlib figure as ``<name>[_suffix].png`` next to the JSON."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{self.name}{'_' + suffix if suffix else ''}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig)
        self.figures.append(path.name)
        return path

    # ---- results ----------------------------------------------------------------------------
    def result(self) -> dict[str, Any]:
        return _jsonable({
            "experiment": self.name,
            "question": self.question,
            "mode": self.mode,
            "quick": self.mode != "full",
            "seed": self.seed,
            "config": self.config,
            "metrics": self.metrics,
            "tables": self.tables,
            "findings": self.findings,
            "figures": self.figures,
            "environment": {k: v for k, v in environment().items() if k not in ("platform",)},
            "runtime_s": round(time.perf_counter() - self.t0, 2),
        })

    def save(self) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{self.name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.result(), indent=2) + "\n")
        os.replace(tmp, path)
        self.log(f"results: {path}")
        return path

    # ---- command line -----------------------------------------------------------------------
    @classmethod
    def cli(cls, doc: str | None, main: Callable[[Experiment], None], file: str,
            argv: list[str] | None = None) -> Experiment:
        script = Path(file).resolve()
        parser = argparse.ArgumentParser(prog=script.name, description=doc,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--quick", action="store_true", help="the same questions at a small budget (<= 60 s)")
        mode.add_argument("--smoke", action="store_true", help="a few steps end to end (tests)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--out", default=None, help="output folder (default: the lesson's results/)")
        parser.add_argument("--device", default="cpu", help="cpu (default) | cuda | mps | auto")
        parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        args = parser.parse_args(argv)
        exp = cls(
            name=script.stem,
            question=(doc or "").strip().splitlines()[0] if doc else script.stem,
            mode="smoke" if args.smoke else ("quick" if args.quick else "full"),
            seed=args.seed,
            out_dir=args.out,
            device=args.device,
            threads=args.threads,
            lesson_dir=script.parent.parent,
        )
        try:
            main(exp)
        except MMLabError as e:  # bad input or missing data: one line naming it, no traceback, nothing written
            print(f"{script.name}: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        exp.save()
        return exp
