"""Shared by the pretraining lesson's experiments: one model, one corpus, one way to train.

Every experiment trains the ``shakespeare-char`` model (4 layers x 128, 0.8M parameters) on
TinyShakespeare characters, in windows of 128 tokens, with the library's ``Trainer``; only the knob
under study changes. Loss is measured on fixed held-out windows (the same ones for every run).
"""

from typing import Any

from mmlab.lab.lm import shakespeare_config, train_lm

BLOCK = 128  # tokens per row
BATCH = 16  # rows per optimizer step (2,048 tokens)


def config(**overrides: Any):
    return shakespeare_config(max_seq_len=BLOCK, **overrides)


def run(steps: int, lr: float, *, seed: int, eval_batches: int, cfg=None, batch_size: int = BATCH,
        keep_model: bool = False, **train_overrides: Any) -> dict[str, Any]:
    """One training run; the result of ``train_lm`` (the model only with ``keep_model``) and its parameter
    counts."""
    cfg = cfg or config()
    r = train_lm(cfg, steps, lr, seed=seed, batch_size=batch_size, block_size=BLOCK, eval_batches=eval_batches,
                 eval_rows=BATCH, **train_overrides)  # every run is measured on the same held-out windows
    model = r["model"] if keep_model else r.pop("model")
    r["params"] = sum(p.numel() for p in model.parameters())
    r["non_embedding_params"] = r["params"] - model.tok_emb.weight.numel()
    return r


def curve_label(r: dict[str, Any]) -> str:
    return "diverged" if r["diverged_at"] is not None else f"{r['final_val_loss']:.3f}"
