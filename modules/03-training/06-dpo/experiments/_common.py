"""Shared by the DPO lesson's experiments: a DPO run from the lessons' shared SFT checkpoint, with the
preference metrics on held-out pairs and on pairs it trained on."""

from pathlib import Path
from typing import Any

from mmlab.lab.posttrain import lesson_sft, stage_config
from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model
from mmlab.train.dpo import DPOLoss, PreferenceBatches, dpo, encode_pairs, load_preferences, preference_metrics
from mmlab.train.sft import split_heldout

LR = 1e-4
ROWS = 8  # pairs per step


def run(exp: Any, out: Path, data: str, beta: float, steps: int, n_gen: int) -> dict[str, Any]:
    """DPO of the shared SFT model on ``data``; before/after on held-out pairs (``dpo_eval.json``), plus
    the same metrics after training on up to 200 of the training pairs (to see memorisation)."""
    base = lesson_sft(exp)
    cfg = stage_config(exp, out, steps, LR, batch_size=4 if exp.mode == "smoke" else ROWS)
    r = dpo(base, data, cfg, beta=beta, n_generate=n_gen, max_val_pairs=exp.pick(300, 100, 8))
    tok = load_checkpoint_tokenizer(base)
    train_pairs, _ = split_heldout(load_preferences(data, seed=cfg.seed), 0.1, seed=cfg.seed)
    enc, _ = encode_pairs(tok, train_pairs[:exp.pick(200, 64, 8)], cfg.block_size + 1)
    seen = preference_metrics(load_model(out), DPOLoss(load_model(base), beta),
                              PreferenceBatches(enc, enc).eval_batches("val"))
    return r | {"after_train_pairs": seen}


def log_ratio(m: dict[str, float], beta: float) -> dict[str, float]:
    """The implicit rewards divided by beta: how far (in nats) the policy moved each answer's log-probability
    from the reference — comparable across betas, unlike the rewards themselves."""
    return {"chosen": m["chosen_reward"] / beta, "rejected": m["rejected_reward"] / beta}
