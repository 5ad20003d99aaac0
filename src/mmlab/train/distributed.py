"""Distributed data parallel through ``torchrun``: gloo on CPU, nccl on CUDA.

    torchrun --nproc_per_node 2 -m mmlab.cli train pretrain ...

Every rank draws the same global batch from a generator with the same seed and keeps its own rows,
so N processes with batch B see exactly the batches of one process with batch N * B. DDP averages
gradients across ranks during backward; only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from mmlab.device import resolve_device


@dataclass
class DistInfo:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        device = resolve_device(name)
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def all_reduce_sum(self, value: float | int) -> float | int:
        if not self.enabled:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64)
        if torch_dist.get_backend() == "nccl":
            t = t.cuda()
        torch_dist.all_reduce(t)
        out = t.item()
        return int(out) if isinstance(value, int) else out

    def no_sync(self, model: torch.nn.Module, last: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of an accumulation step."""
        if self.enabled and not last and hasattr(model, "no_sync"):
            return model.no_sync()
        return contextlib.nullcontext()


def setup(timeout_s: float | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); a no-op otherwise. ``timeout_s``:
    how long a collective may wait (the first caller sets it; a streamed corpus's first shard build needs
    hours where a training step needs seconds)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch_dist.is_initialized():
        import datetime

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        extra = {"timeout": datetime.timedelta(seconds=timeout_s)} if timeout_s else {}
        torch_dist.init_process_group(backend=backend, **extra)
    return DistInfo(True, rank, world, local_rank)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def teardown() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def setup_was_main() -> bool:
    """Whether this process is rank 0 (or not distributed): the one that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0
