"""What every post-training stage does the same way: read a run's saved settings on resume, refuse to
touch an existing run early (before minutes of evaluation), and pick the device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmlab.device import resolve_device
from mmlab.errors import MMLabError


def saved_stage(out: str | Path, stage: str) -> dict[str, Any]:
    """The settings a ``stage`` run saved in its checkpoint (``extra_state``); an error for another stage."""
    from mmlab.train.checkpoint import load_trainer_state

    extra = load_trainer_state(Path(out) / "ckpt").get("extra", {})
    if extra.get("stage") != stage:
        raise MMLabError(f"{out} is not a {stage} run (stage {extra.get('stage')!r}); start a new --out")
    return extra


def refuse_existing_run(out: str | Path, resume: bool, overwrite: bool) -> None:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MMLabError(f"--out {out} is a file, not a folder")
    if not resume and not overwrite and any((out / n).exists() for n in ("ckpt", "ckpt.old")):
        raise MMLabError(f"{out} already holds a run; pass --resume to continue it, --overwrite to replace it, or "
                         "choose another --out (nothing was overwritten)")


def stage_device(train_cfg: Any) -> torch.device:
    return resolve_device(train_cfg.device)


def write_report(out: str | Path, name: str, record: dict[str, Any], **json_kwargs: Any) -> None:
    """A stage's held-out report (``<out>/<name>``), written by rank 0 only (under DDP every rank holds the
    same model and would write the same file at once), through a temporary file so a crash never leaves
    half a report."""
    import json

    from mmlab.train.distributed import setup_was_main

    if not setup_was_main():
        return
    path = Path(out) / name
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, **json_kwargs) + "\n")
    tmp.replace(path)
