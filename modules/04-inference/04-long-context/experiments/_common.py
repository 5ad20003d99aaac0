"""Shared by the long-context lesson's experiments: one trained RoPE model, read at 8x its context.

The model is the position-encoding lesson's RoPE model (``01-foundation/02-position-encoding``,
``exp5_extrapolation``): the ``shakespeare-char`` preset (4 layers x 128, 4 heads of 32, theta 1e4)
trained by the library's loop on 64-character windows of TinyShakespeare. In full mode its settings are
exactly exp5's, and both lessons get it from ``mmlab.lab.lm.cached_train_lm``, which keeps the trained
weights in the lab cache (``$MMLAB_LAB_CACHE``, default ``~/.cache/mmlab/lab``) under a hash of every
setting: whichever lesson runs first trains it, the other loads it. Quick runs train a smaller budget
(cached too); smoke runs train a few steps and cache nothing.

Everything else here is measurement: held-out windows of ``EVAL_LEN`` characters, the loss at every
position, the same loss read through a sliding window of the trained length, and copies of the model
whose rotation tables are scaled (``RopeScaling``) or set by hand.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mmlab.config import RopeScaling
from mmlab.lab.lm import (
    cached_train_lm,
    loss_per_position,
    shakespeare_config,
    shakespeare_val_windows,
)
from mmlab.model.lm import MiniMindLM
from mmlab.model.rope import rope_tables

TRAIN_LEN = 64  # the windows the model was trained on (exp5's)
EVAL_LEN = 512  # where we read it: 8x
STRIDE = 16  # sliding-window reading: every prediction sees 48-63 earlier characters
# spans of positions (0-based, end excluded); the docs say positions 1-64, 65-128, ...
SPANS = {"1-64": (0, 64), "65-128": (64, 128), "129-256": (128, 256), "257-512": (256, 512)}
INSIDE, FAR = "1-64", "257-512"


def model_settings(exp: Any) -> dict[str, Any]:
    """How the RoPE model is trained: in full mode, exp5_extrapolation's settings exactly."""
    return {"steps": exp.pick(full=800, quick=300, smoke=2), "lr": 2e-3, "seed": exp.seed,
            "block_size": TRAIN_LEN, "eval_batches": exp.pick(20, 3, 2)}


def trained_model(exp: Any) -> tuple[MiniMindLM, dict[str, Any]]:
    """The lesson's RoPE model (from the lab cache when it is there) and the settings it was trained with."""
    s = model_settings(exp)
    cfg = shakespeare_config(pos_encoding="rope", max_seq_len=EVAL_LEN)
    r = cached_train_lm(cfg, s.pop("steps"), s.pop("lr"), cache=exp.mode != "smoke", log=exp.log, **s)
    settings = {k: v for k, v in r["settings"].items() if k != "model"}
    settings.update(model="shakespeare-char (4 x 128, 4 heads of 32, RoPE theta 1e4)",
                    final_val_loss=r["final_val_loss"], shared_with="01-foundation/02-position-encoding exp5")
    return r["model"].eval(), settings


def scaling(kind: str | None, factor: float) -> RopeScaling | None:
    """A RoPE scaling of the trained length (``None`` or factor 1 with ``linear``/``ntk``: none at all)."""
    return None if kind is None else RopeScaling(kind=kind, factor=float(factor), original_max_seq_len=TRAIN_LEN)


def with_rope(model: MiniMindLM, rope_scaling: RopeScaling | None, max_len: int = EVAL_LEN) -> MiniMindLM:
    """The same weights with other rotation tables: only the non-learned cos/sin buffers change."""
    scaled = MiniMindLM(model.cfg.replace(max_seq_len=max_len, rope_scaling=rope_scaling))
    scaled.load_state_dict(model.state_dict())
    return scaled.eval()


def with_inv_freq(model: MiniMindLM, inv_freq: torch.Tensor, attention_factor: float = 1.0,
                  max_len: int = EVAL_LEN) -> MiniMindLM:
    """The same weights with rotation tables built from frequencies chosen by hand (one per pair)."""
    m = with_rope(model, None, max_len)
    m.rope_cos, m.rope_sin = rope_tables(inv_freq, max_len, attention_factor)
    return m


def val_windows(n: int, length: int = EVAL_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` held-out windows of ``length`` characters (``mmlab.lab.lm.shakespeare_val_windows``)."""
    return shakespeare_val_windows(n, length)


@torch.no_grad()
def sliding_loss_per_position(model: MiniMindLM, x: torch.Tensor, y: torch.Tensor, window: int = TRAIN_LEN,
                              stride: int = STRIDE, batch: int = 256) -> torch.Tensor:
    """The loss at each position when the model reads at most ``window`` characters: positions
    ``< window`` as usual; then chunks of ``window`` starting every ``stride``, each scoring its last
    ``stride`` positions — every prediction sees between ``window - stride`` and ``window - 1`` earlier
    characters, all at positions the model was trained on. What a model does without any long context."""
    model.eval()
    n, length = x.shape
    if (length - window) % stride:
        raise ValueError(f"length - window = {length - window} is not a multiple of stride={stride}")
    out = torch.zeros(length)
    out[:window] = loss_per_position(model, x[:, :window], y[:, :window])
    starts = list(range(stride, length - window + 1, stride))
    xs = torch.cat([x[:, s:s + window] for s in starts])  # (len(starts) * n, window), start-major
    ys = torch.cat([y[:, s + window - stride:s + window] for s in starts])
    losses = []
    for i in range(0, len(xs), batch):
        logits = model(xs[i:i + batch]).logits[:, -stride:]
        losses.append(F.cross_entropy(logits.float().transpose(1, 2), ys[i:i + batch], reduction="none"))
    per = torch.cat(losses).view(len(starts), n, stride).mean(1)  # (starts, stride)
    for j, s in enumerate(starts):
        out[s + window - stride:s + window] = per[j]
    return out


def span_mean(curve: torch.Tensor | list[float], span: str) -> float:
    a, b = SPANS[span]
    return float(torch.as_tensor(curve)[a:b].mean())


def smooth(curve: torch.Tensor | list[float], k: int = 8) -> list[float]:
    """A trailing moving average over ``k`` positions (for plots)."""
    c = torch.as_tensor(curve, dtype=torch.float64)
    cs = torch.cat([torch.zeros(1, dtype=c.dtype), c.cumsum(0)])
    idx = torch.arange(1, len(c) + 1)
    lo = (idx - k).clamp(min=0)
    return ((cs[idx] - cs[lo]) / (idx - lo)).tolist()
