"""Knowledge distillation: a small student learns from a larger teacher's full next-token distribution.

Hard labels say only which token came next; the teacher's distribution also says which others were
plausible, and how plausible ("dark knowledge", Hinton et al., 2015). With temperature T both
distributions are softened (logits / T) and the student minimises

    loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, next token)

(T^2 keeps the soft term's gradients on the scale of the hard term's). alpha = 1: soft targets only;
alpha = 0: plain pretraining; in between: both. Evaluation always reports the plain cross-entropy, so
every variant is measured on the same scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmlab.model.lm import IGNORE_INDEX


def check_distill_settings(temperature: float, alpha: float) -> None:
    from mmlab.errors import ConfigError

    if not temperature > 0 or not 0 <= alpha <= 1:
        raise ConfigError(f"temperature={temperature} must be > 0 and alpha={alpha} in [0, 1]")


class DistillLoss:
    """Soft (teacher KL at temperature T) plus hard (cross-entropy) next-token loss, summed over tokens."""

    def __init__(self, teacher: torch.nn.Module, temperature: float = 2.0, alpha: float = 0.5):
        check_distill_settings(temperature, alpha)
        self.teacher, self.t, self.alpha = teacher.eval(), temperature, alpha
        for p in teacher.parameters():
            p.requires_grad_(False)

    def __call__(self, model, batch):
        x, y = batch
        logits = model(x).logits.float()
        mask = y != IGNORE_INDEX
        n = int(mask.sum())
        hard = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        if not model.training or self.alpha == 0:
            return hard, n, {}  # evaluation: the plain next-token loss, comparable across variants
        with torch.no_grad():
            teacher = self.teacher.to(x.device)(x).logits.float()
        log_s = F.log_softmax(logits / self.t, dim=-1)
        log_t = F.log_softmax(teacher / self.t, dim=-1)
        kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # KL(teacher || student) per position
        soft = (kl * mask).sum() * self.t**2
        return self.alpha * soft + (1 - self.alpha) * hard, n, {"soft": float(soft.detach()) / max(n, 1)}

    def count_tokens(self, batch) -> int:
        return int((batch[1] != IGNORE_INDEX).sum())


def distill(teacher: str | Path, data: str | None, student: Any, train_cfg: Any, *, temperature: float = 2.0,
            alpha: float = 0.5, resume: bool = False, overwrite: bool = False, **trainer_kwargs: Any) -> dict[str, Any]:
    """Train a ``student`` (a ModelConfig or preset name; its vocabulary is the teacher's) on the
    corpus ``data`` (default: the teacher's own) with the teacher's soft targets. The student's and the
    teacher's held-out losses go to ``distill_eval.json``."""
    import time

    from mmlab.config import ModelConfig, get_preset
    from mmlab.data.corpus import load_corpus
    from mmlab.data.pretrain import PretrainData, tokenize_corpus
    from mmlab.errors import MMLabError
    from mmlab.model.lm import MiniMindLM
    from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model, load_trainer_state, resolve_checkpoint
    from mmlab.train.evaluate import summed_loss
    from mmlab.train.pretrain import PretrainBatches, clear_run
    from mmlab.train.stages import refuse_existing_run, saved_stage, stage_device, write_report
    from mmlab.train.trainer import Trainer

    out = Path(train_cfg.out_dir)
    refuse_existing_run(out, resume, overwrite)
    if resume:
        saved = saved_stage(out, "distill")
        teacher, data, temperature, alpha = saved["teacher"], saved["data"], saved["temperature"], saved["alpha"]
        student = ModelConfig.from_json(resolve_checkpoint(out / "ckpt") / "config.json")
    check_distill_settings(temperature, alpha)
    teacher_ckpt = resolve_checkpoint(teacher)
    tok = load_checkpoint_tokenizer(teacher_ckpt)
    teacher_model = load_model(teacher_ckpt, device=stage_device(train_cfg))
    if data is None:
        data = load_trainer_state(teacher_ckpt).get("extra", {}).get("data") if (teacher_ckpt / "trainer_state.pt"
                                                                                ).is_file() else None
        if data is None:
            raise MMLabError(f"{teacher}: no record of its training data; pass --data")
    cfg = get_preset(student) if isinstance(student, str) else student
    cfg = cfg.replace(vocab_size=teacher_model.cfg.vocab_size)
    block = train_cfg.block_size or min(cfg.max_seq_len, teacher_model.cfg.max_seq_len)
    if block > min(cfg.max_seq_len, teacher_model.cfg.max_seq_len):
        raise MMLabError(f"block_size={block} is longer than the student's or the teacher's max_seq_len")
    corpus = load_corpus(data, seed=train_cfg.seed)
    tokens = PretrainData.from_tokens(tokenize_corpus(corpus, tok), train_cfg.val_fraction, block, corpus.source)
    source = PretrainBatches(tokens, block, train_cfg.batch_size, train_cfg.eval_batches, data_name=data)
    torch.manual_seed(train_cfg.seed)
    model = MiniMindLM(cfg)
    if overwrite and not resume:
        clear_run(out)
    extra_state = {"stage": "distill", "teacher": str(teacher), "data": data, "temperature": temperature,
                   "alpha": alpha}
    trainer = Trainer(model, DistillLoss(teacher_model, temperature, alpha), source, train_cfg, tokenizer=tok,
                      resume=resume, extra_state=extra_state, **trainer_kwargs)
    t0 = time.perf_counter()
    result = trainer.fit()
    val = tokens.val[: 64 * block + 1]  # the same held-out tokens for student and teacher

    def loss_of(m: torch.nn.Module) -> float:
        nats, n = summed_loss(m, val, block)
        return nats / n

    record = {"teacher": str(teacher), "data": data, "temperature": temperature, "alpha": alpha,
              "student_params": sum(p.numel() for p in model.parameters()),
              "teacher_params": sum(p.numel() for p in teacher_model.parameters()),
              "student_val_loss": loss_of(model), "teacher_val_loss": loss_of(teacher_model),
              "val_tokens": len(val) - 1, "steps": result.steps, "train_s": result.elapsed_s,
              "wall_s": time.perf_counter() - t0}
    write_report(out, "distill_eval.json", record)
    return record
