"""Loss curves as PNG (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_losses(history: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in history if "loss" in r]
    evals = [r for r in history if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if train:
        steps, losses = [s for s, _ in train], [v for _, v in train]
        ax.plot(steps, losses, color="tab:blue", alpha=0.45, linewidth=1, label="train (batch)")
    if evals:
        if any("train_loss" in r for r in evals):
            ax.plot([r["step"] for r in evals], [r.get("train_loss") for r in evals], "o-",
                    color="tab:blue", markersize=3, label="train (eval batches)")
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", color="tab:orange",
                markersize=3, label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (nats / token)")
    ax.set_title(title or "training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
