"""The one training loop. Every stage (pretrain, SFT, LoRA, DPO, GRPO, distillation) plugs in an
*objective* (how a batch becomes a loss) and a *batch source* (where batches come from); the loop
around them — optimizer, schedule, accumulation, clipping, mixed precision, evaluation, logging,
checkpoints, resume, distributed data parallel — exists once, here.

Gradient accumulation is scaled by tokens, not by micro-batches: the loss of each micro-batch is a
*sum* divided by the number of target tokens in the whole optimizer step (all micro-batches, all
processes). A big batch and the same batch split into micro-batches then give the same gradient
even when micro-batches hold different numbers of target tokens (SFT with masks).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from mmlab.device import resolve_device
from mmlab.errors import MMLabError
from mmlab.model.lm import IGNORE_INDEX, MiniMindLM
from mmlab.tokenizer.base import Tokenizer
from mmlab.train import distributed as dist
from mmlab.train.checkpoint import CheckpointError, load_trainer_state, load_weights, save_checkpoint
from mmlab.train.config import TrainConfig
from mmlab.train.optim import build_optimizer, lr_at

Batch = Any


BEST_META = "best.json"  # in <out>/best: the step and val loss of the weights kept there


class TrainingDiverged(MMLabError):
    """The loss or the gradient became NaN/inf; the message names the step and the last good checkpoint."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class Objective(Protocol):
    """How a batch becomes a loss. Returns (sum of per-token losses, number of tokens, metrics)."""

    def __call__(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, int, dict[str, float]]: ...

    def count_tokens(self, batch: Batch) -> int: ...


class BatchSource(Protocol):
    def sample(self, split: str, rows: int, generator: torch.Generator) -> Batch: ...

    def slice_rows(self, batch: Batch, start: int, stop: int) -> Batch: ...

    def eval_batches(self, split: str) -> list[Batch]: ...


class NextTokenLoss:
    """Pretraining (and SFT, through IGNORE_INDEX targets): cross-entropy of the next token.
    In training mode an MoE model's load-balancing loss is added (weighted by the micro-batch's
    tokens, so accumulation stays exact); evaluation reports the cross-entropy alone."""

    def __call__(self, model, batch):
        x, y = batch
        out = model(x)
        logits = out.logits
        n = self.count_tokens(batch)
        loss_sum = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1),
                                   ignore_index=IGNORE_INDEX, reduction="sum")
        if out.aux_loss is not None and model.training:
            loss_sum = loss_sum + out.aux_loss.float() * n
        return loss_sum, n, {}

    def count_tokens(self, batch) -> int:
        return int((batch[1] != IGNORE_INDEX).sum())


@dataclass
class TrainResult:
    steps: int
    final_train_loss: float | None
    final_val_loss: float | None
    best_val_loss: float | None
    elapsed_s: float  # wall time of fit(), evaluation and checkpoints included
    tokens_seen: int
    out_dir: Path
    best_step: int | None = None  # the evaluation with the lowest val loss (its weights: out_dir/best with keep_best)
    history: list[dict[str, Any]] = field(default_factory=list)


def _move(batch: Batch, device: torch.device) -> Batch:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_move(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _move(v, device) for k, v in batch.items()}
    return batch


class Trainer:
    def __init__(
        self,
        model: MiniMindLM,
        objective: Objective,
        data: BatchSource,
        cfg: TrainConfig,
        tokenizer: Tokenizer | None = None,
        resume: bool = False,
        extra_state: dict[str, Any] | None = None,
        on_log: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.cfg, self.objective, self.data, self.tokenizer = cfg, objective, data, tokenizer
        self.dist = dist.setup()
        self.device = resolve_device(cfg.device) if not self.dist.enabled else self.dist.device(cfg.device)
        self.dtype_reason = None
        if cfg.dtype == "auto":  # this machine's fastest correct setting for this model (mmlab.device)
            from mmlab.device import training_dtype

            dtype, self.dtype_reason = training_dtype(self.device, getattr(model, "cfg", None))
            cfg = self.cfg = dataclasses.replace(cfg, dtype=dtype)
        self.out = Path(cfg.out_dir)
        self.ckpt_path = self.out / "ckpt"
        self.metrics_path = self.out / "metrics.jsonl"
        self.extra_state = extra_state or {}
        self.on_log = on_log
        if getattr(model, "quant_config", None) is not None:  # QuantLinear weights are frozen int buffers
            raise MMLabError("the model is quantized (inference only); train the full-precision checkpoint instead")
        if self.out.exists() and not self.out.is_dir():
            raise MMLabError(f"--out {self.out} is a file, not a folder")
        has_ckpt = any((self.out / n).exists() for n in ("ckpt", "ckpt.old"))
        if self.dist.is_main and not resume and has_ckpt:
            raise MMLabError(
                f"{self.out} already holds a run; pass --resume to continue it, or choose another --out "
                "(nothing was overwritten)"
            )
        if resume and not has_ckpt:
            raise MMLabError(f"nothing to resume in {self.out}: no checkpoint (the run stopped before its first "
                             "one); start it again without --resume")
        if self.dist.is_main and not resume and self.metrics_path.exists():
            self.metrics_path.unlink()  # metrics of a run that never reached a checkpoint: it starts over
        torch.manual_seed(cfg.seed)
        self.model = model.to(self.device)  # the raw module: what we save (no wrapper prefixes)
        self.optimizer = build_optimizer(self.model, cfg)
        self.step = 0
        self.generator = torch.Generator().manual_seed(cfg.seed)  # data order: same on every rank
        self.history: list[dict[str, Any]] = []
        self.step_metrics: dict[str, float] = {}
        self.last_good_ckpt: Path | None = None
        self._scaler_state: dict[str, Any] | None = None
        if resume:
            self._resume()
        self.forward_model: torch.nn.Module = self.model
        if cfg.compile:
            self.forward_model = torch.compile(self.forward_model)
        if self.dist.enabled:
            self.forward_model = dist.wrap(self.forward_model, self.device)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.dtype)
        # fp16 has a narrow range: scale the loss so small gradients do not flush to zero, and skip
        # steps whose gradients overflowed (bf16 has fp32's range and needs none of this)
        fp16 = cfg.dtype == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type if fp16 else "cpu", enabled=fp16)
        if self._scaler_state is not None:
            self.scaler.load_state_dict(self._scaler_state)

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "train_config": self.cfg.to_dict(),
            "rng": {"torch": torch.get_rng_state(), "data": self.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "python": random.getstate(), "numpy": np.random.get_state()},
            "extra": self.extra_state,
            "grad_scaler": self.scaler.state_dict(),
            # a data source that walks its data in order (sharded corpora) keeps its place here
            "data_position": self.data.state_dict() if hasattr(self.data, "state_dict") else None,
        }

    def _resume(self) -> None:
        try:
            load_weights(self.model, self.ckpt_path)
            state = load_trainer_state(self.ckpt_path)
        except CheckpointError as e:
            raise MMLabError(f"cannot resume: {e}") from None
        self.model.to(self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        if self.step >= self.cfg.max_iters:
            raise MMLabError(f"the run in {self.out} is already at step {self.step}; pass --max-iters larger than "
                             f"{self.step} to continue it")
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.generator.set_state(state["rng"]["data"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        self.extra_state = state.get("extra", {})
        if state.get("data_position") is not None and hasattr(self.data, "load_state_dict"):
            try:
                self.data.load_state_dict(state["data_position"])
            except MMLabError as e:
                raise MMLabError(f"cannot resume {self.out}: {e}") from None
        self._scaler_state = state.get("grad_scaler") or None
        self.last_good_ckpt = self.ckpt_path
        # metrics after the checkpoint belong to the lost part of the run: drop them. Every rank reads the
        # history (keep_best compares against it, and all ranks must take the same decision), then rank 0
        # rewrites the file.
        if self.metrics_path.is_file():
            kept = []
            for line in self.metrics_path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by the crash we are recovering from
                if isinstance(record, dict) and record.get("step", 0) <= self.step:
                    kept.append(record)
            self.history = kept
            self.dist.barrier()
            if self.dist.is_main:
                self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        # best weights saved after the checkpoint come from the lost part of the run too
        best = self.out / "best"
        if self.dist.is_main and best.exists():
            try:
                best_step = json.loads((best / BEST_META).read_text())["step"]
            except (OSError, ValueError, KeyError, TypeError):
                best_step = None  # no record of its step: it cannot be trusted
            if best_step is None or best_step > self.step:
                shutil.rmtree(best)
        self.dist.barrier()

    def _best_val(self) -> float:
        """The lowest val loss logged before the latest evaluation (the history includes a resumed run's);
        infinite when no best weights are on disk (e.g. dropped on resume), so the next evaluation saves."""
        if not (self.out / "best").exists():
            return math.inf
        evals = [r["val_loss"] for r in self.history if "val_loss" in r]
        return min(evals[:-1], default=math.inf)

    def save_best(self, val_loss: float) -> None:
        if self.dist.is_main:
            best = self.out / "best"
            save_checkpoint(best, self.model, self.tokenizer)
            (best / BEST_META).write_text(json.dumps({"step": self.step, "val_loss": val_loss}) + "\n")
            shutil.rmtree(best.with_name("best.old"), ignore_errors=True)  # only the best is worth keeping
        self.dist.barrier()

    def save(self) -> None:
        if self.dist.is_main:
            save_checkpoint(self.ckpt_path, self.model, self.tokenizer, self.state_dict())
            self.last_good_ckpt = self.ckpt_path
        self.dist.barrier()

    # ---- one optimizer step -----------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _train_step(self) -> tuple[float, float, int]:
        cfg, world, rank = self.cfg, self.dist.world_size, self.dist.rank
        micro = []
        for _ in range(cfg.grad_accum):  # every rank draws the same global micro-batch, keeps its rows
            batch = self.data.sample("train", cfg.batch_size * world, self.generator)
            micro.append(self.data.slice_rows(batch, rank * cfg.batch_size, (rank + 1) * cfg.batch_size))
        local_tokens = sum(self.objective.count_tokens(b) for b in micro)
        global_tokens = self.dist.all_reduce_sum(local_tokens)
        if global_tokens == 0:
            raise MMLabError(f"step {self.step}: the batch has no target tokens (is every label masked?)")
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_total = torch.zeros((), device=self.device)
        self.step_metrics: dict[str, float] = {}  # the objective's own numbers (DPO accuracy, GRPO KL, ...)
        for i, batch in enumerate(micro):
            batch = _move(batch, self.device)
            with self.dist.no_sync(self.forward_model, last=i == len(micro) - 1), self._autocast():
                loss_sum, _, metrics = self.objective(self.forward_model, batch)
                # DDP averages gradients over ranks, so scale by world / global tokens
                loss = loss_sum * (world / global_tokens)
            self.scaler.scale(loss).backward()
            for k, v in metrics.items():  # mean over the micro-batches of this rank
                self.step_metrics[k] = self.step_metrics.get(k, 0.0) + float(v) / len(micro)
            loss_total += loss_sum.detach()
        grad_norm = float("nan")
        self.scaler.unscale_(self.optimizer)  # true gradients before clipping (a no-op unless fp16)
        if cfg.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        loss_value = self.dist.all_reduce_sum(float(loss_total)) / global_tokens
        overflow_ok = self.scaler.is_enabled()  # fp16: an overflowed step is skipped, not fatal
        if not math.isfinite(loss_value) or (cfg.grad_clip > 0 and not math.isfinite(grad_norm) and not overflow_ok):
            where = self.last_good_ckpt or "none saved yet"
            raise TrainingDiverged(
                f"training diverged at step {self.step}: loss {loss_value}, gradient norm {grad_norm}; "
                f"the last good checkpoint is {where} (try a lower --lr or more warmup)",
                step=self.step,
            )
        self.scaler.step(self.optimizer)  # plain optimizer.step() unless fp16 (then skipped on overflow)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, grad_norm, global_tokens

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss per token on fixed train and val batches (the same windows every time)."""
        self.model.eval()
        out = {}
        for split in ("train", "val"):
            batches = self.data.eval_batches(split)
            if not batches:
                continue
            total, count = 0.0, 0
            for batch in batches:
                with self._autocast():
                    loss_sum, n, _ = self.objective(self.model, _move(batch, self.device))
                total, count = total + float(loss_sum), count + n
            out[f"{split}_loss"] = total / max(count, 1)
        self.model.train()
        return out

    # ---- the loop ---------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.dist.is_main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.on_log:
                self.on_log(record)

    def fit(self) -> TrainResult:
        cfg = self.cfg
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / "train_config.json")
        self.model.train()
        start_step = self.step
        bar = _Progress(cfg.max_iters, start_step, enabled=cfg.progress and self.dist.is_main)
        if self.dtype_reason:
            bar.message(f"dtype auto -> {cfg.dtype}: {self.dtype_reason}")
        t0 = time.perf_counter()
        window_t, window_tokens = time.perf_counter(), 0
        overhead = 0.0  # seconds spent evaluating and checkpointing: not training time
        tokens_seen = 0
        last_train = None
        try:
            while self.step < cfg.max_iters:
                loss, grad_norm, n_tokens = self._train_step()
                self.step += 1
                tokens_seen += n_tokens
                window_tokens += n_tokens
                last_train = loss
                is_last = self.step == cfg.max_iters
                if self.step % cfg.log_interval == 0 or is_last:
                    now = time.perf_counter()
                    rate = window_tokens / max(now - window_t, 1e-9)
                    window_t, window_tokens = now, 0
                    record = {"step": self.step, "loss": loss, "lr": lr_at(self.step - 1, cfg),
                              "grad_norm": grad_norm, "tokens_per_s": rate, "elapsed_s": now - t0,
                              "train_s": now - t0 - overhead, **self.step_metrics}
                    if hasattr(self.data, "epochs"):  # passes over the training tokens, for ordered sources
                        record["epoch"] = self.data.epochs
                    self._log(record)
                    bar.update(self.step, loss, rate, record.get("epoch"))
                t_pause = time.perf_counter()
                if self.step % cfg.eval_interval == 0 or is_last:
                    record = {"step": self.step, **self.evaluate(), "elapsed_s": t_pause - t0,
                              "train_s": t_pause - t0 - overhead}
                    self._log(record)
                    bar.message(_format_eval(record))
                    if cfg.keep_best and record.get("val_loss", math.inf) < self._best_val():
                        self.save_best(record["val_loss"])
                        bar.message(f"step {self.step}: lowest val loss so far; saved {self.out / 'best'}")
                if cfg.save_checkpoints and (self.step % cfg.resolved_ckpt_interval == 0 or is_last):
                    self.save()
                    bar.message(f"step {self.step}: saved checkpoint {self.ckpt_path}")
                paused = time.perf_counter() - t_pause
                overhead += paused
                window_t += paused  # keep tokens/s a training rate
        finally:
            bar.close()
            if self.dist.is_main and self.history and cfg.plot:
                from mmlab.train.plots import plot_losses

                plot_losses(self.history, self.out / "loss.png", title=self.out.name)
        evals = [r for r in self.history if "val_loss" in r]
        best = min(evals, key=lambda r: r["val_loss"]) if evals else None
        return TrainResult(
            steps=self.step - start_step,
            final_train_loss=last_train,
            final_val_loss=evals[-1]["val_loss"] if evals else None,
            best_val_loss=min(r["val_loss"] for r in evals) if evals else None,
            elapsed_s=time.perf_counter() - t0,
            tokens_seen=tokens_seen,
            out_dir=self.out,
            history=self.history,
            best_step=best["step"] if best else None,
        )


def _format_eval(r: dict[str, Any]) -> str:
    parts = [f"step {r['step']}"]
    parts += [f"{k.replace('_', ' ')} {r[k]:.4f}" for k in ("train_loss", "val_loss") if k in r]
    return ", ".join(parts) + f" ({r['train_s']:.1f} s of training)"


class _Progress:
    """tqdm on a terminal; plain log lines (one per log interval) when output is a file or a pipe."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.enabled, self.bar = enabled, None
        self.tty = sys.stderr.isatty()
        self.t0, self.initial, self.total = time.perf_counter(), initial, total
        if enabled and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float, tokens_per_s: float, epoch: float | None = None) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            extra = {"epoch": f"{epoch:.4g}"} if epoch is not None else {}
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", **extra)
        else:
            done = step - self.initial
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / max(done, 1) * (self.total - step)
            at = f"  epoch {epoch:.4g}" if epoch is not None else ""
            print(f"step {step}/{self.total}  loss {loss:.4f}  {tokens_per_s:,.0f} tok/s{at}  "
                  f"elapsed {elapsed:.0f} s  ETA {eta:.0f} s", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
