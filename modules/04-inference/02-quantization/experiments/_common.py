"""Shared by the quantization lesson's experiments: one trained model, its held-out text, its variants.

The model is the ``shakespeare-char`` architecture widened to 4 layers x 256 (SwiGLU 768, 4 heads of
64), so every quantized layer has 256 or 768 inputs and group sizes 32, 64 and 128 all divide them
(with 128 inputs a group of 128 would just be per-channel). It is trained on TinyShakespeare
characters with the library's loop (``mmlab.lab.lm.train_lm``); full and quick runs keep the trained
weights in the lab cache (``$MMLAB_LAB_CACHE``, default ``~/.cache/mmlab/lab``) under a hash of every
setting, so both experiments (and re-runs) share one training run. Smoke runs train a few steps and
cache nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from typing import Any

import torch

from mmlab.data.pretrain import PretrainData
from mmlab.infer.quant import quantize_model
from mmlab.lab.lm import shakespeare_config, shakespeare_tokens, train_lm
from mmlab.lab.posttrain import cache_root
from mmlab.model.lm import MiniMindLM
from mmlab.train.evaluate import summed_loss

BLOCK = 128
# name -> (bits, group_size); None bits = a float format
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "bf16": {"dtype": torch.bfloat16},
    "int8 per-channel": {"bits": 8, "group_size": None},
    "int8 g64": {"bits": 8, "group_size": 64},
    "int4 g32": {"bits": 4, "group_size": 32},
    "int4 g64": {"bits": 4, "group_size": 64},
    "int4 g128": {"bits": 4, "group_size": 128},
    "int4 per-channel": {"bits": 4, "group_size": None},
}


def config():
    return shakespeare_config(hidden_size=256, ffn_size=768, max_seq_len=BLOCK)


def settings(exp: Any) -> dict[str, Any]:
    return {"model": config().to_dict(), "steps": exp.pick(full=400, quick=80, smoke=3), "lr": 3e-3,
            "batch_size": exp.pick(16, 8, 4), "block_size": BLOCK, "warmup": exp.pick(40, 8, 1), "seed": exp.seed,
            "data": "tinyshakespeare"}


def trained_model(exp: Any) -> tuple[MiniMindLM, dict[str, Any]]:
    """The lesson's trained fp32 model (from the cache when it is there) and how it was trained."""
    s = settings(exp)
    key = hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_root() / f"quant-lesson-{key}.pt"
    model = MiniMindLM(config())
    if exp.mode != "smoke" and path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        exp.log(f"loaded the trained model from {path}")
        return model.eval(), s
    exp.log(f"training the lesson's model ({s['steps']} steps; cached for later runs)")
    r = train_lm(config(), s["steps"], s["lr"], seed=s["seed"], batch_size=s["batch_size"], block_size=BLOCK,
                 warmup=s["warmup"], eval_batches=exp.pick(10, 2, 1))
    model = r["model"]
    if exp.mode != "smoke":
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return model.eval(), s


def val_tokens(n: int) -> torch.Tensor:
    """The first ``n + 1`` tokens of TinyShakespeare's held-out split (the last 10%)."""
    _, tokens = shakespeare_tokens()
    return torch.as_tensor(PretrainData.from_tokens(tokens, 0.1, BLOCK).val[: n + 1]).long()


def val_loss(model: MiniMindLM, tokens: torch.Tensor) -> float:
    """Mean next-token loss (nats per character) over ``tokens``, in windows of ``BLOCK``."""
    with torch.no_grad():
        nats, count = summed_loss(model, tokens, BLOCK)
    return nats / count


def variant(base: MiniMindLM, name: str) -> MiniMindLM:
    """A copy of ``base`` in the format ``name`` (see ``VARIANTS``)."""
    v = VARIANTS[name]
    model = copy.deepcopy(base)
    if "dtype" in v:
        model = model.to(v["dtype"])
    if "bits" in v:
        quantize_model(model, v["bits"], v["group_size"])
    return model.eval()
