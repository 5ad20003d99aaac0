"""Shared by the tool-use lesson's experiments: the lessons' pretrained base with a longer context, SFT on
tool traces or on direct answers (the same problems, steps and tokens per step), and the held-out problems.

A tool trace is 100-170 tokens with the lessons' 1,024-token BPE (JSON and the template's tags split into
many small pieces), longer than the base's 128 positions. RoPE has no learned position table, so the base
is reloaded with ``max_seq_len`` 256 (``tool_base``): the same weights, and positions past 128 are learned in
SFT. The tool schemas are not rendered in the system turn (``SHOW_TOOLS``): the preamble alone is ~570
tokens here; the models learn their two tools from the SFT traces instead.
"""

import json
from pathlib import Path
from typing import Any

from mmlab.data.tool_tasks import ToolTask, heldout_tool_tasks, make_tool_tasks
from mmlab.lab.posttrain import _build, base_settings, lesson_base
from mmlab.train.agent_rl import tool_task_prompts
from mmlab.train.grpo import RLPrompt

SEQ = 256  # the models' context: the longest tool trace fits
SHOW_TOOLS = False
MAX_TURNS = 3
MAX_NEW = 96  # per turn: a unit-conversion call is ~80 tokens
SFT_LR = 1e-3
VERSION = 1  # part of the cached checkpoints' names: raise it when what a build produces changes


def sft_settings(exp: Any, style: str, steps: int | None = None) -> dict[str, Any]:
    """How one SFT model is trained: ``style`` "tool" (traces that call a tool) or "direct" (answers at once),
    on the same problems, from the same base, for the same steps of 16 packed rows of 256 tokens."""
    smoke = exp.mode == "smoke"
    return {"version": VERSION, "base": base_settings(exp), "max_seq_len": SEQ, "style": style,
            "n_problems": 200 if smoke else 20_000, "problems_seed": exp.seed,
            "train": {"max_iters": 3 if smoke else (steps or 600), "batch_size": 4 if smoke else 16,
                      "block_size": 64 if smoke else SEQ, "lr": SFT_LR, "warmup_iters": 1 if smoke else 30,
                      "eval_interval": 3 if smoke else 200, "eval_batches": 2 if smoke else 5,
                      "weight_decay": 0.0, "seed": exp.seed, "device": "cpu"}}


def tool_base(exp: Any) -> Path:
    """``lesson_base`` with a context of ``SEQ`` positions (the same weights: RoPE has no position table)."""
    from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model, save_checkpoint

    base = lesson_base(exp)

    def build(out: Path) -> None:
        model = load_model(base)
        longer = type(model)(model.cfg.replace(max_seq_len=SEQ))
        longer.load_state_dict(model.state_dict())
        save_checkpoint(out / "ckpt", longer, load_checkpoint_tokenizer(base))

    return _build(exp, "toolbase", {"version": VERSION, "base": base_settings(exp), "max_seq_len": SEQ}, build)


def train_problems(exp: Any, n: int) -> list[ToolTask]:
    return make_tool_tasks(n, seed=exp.seed)


def heldout(exp: Any, n: int | None = None) -> list[ToolTask]:
    """Held-out problems (another seed; no prompt of the SFT problems, except the 64 one-digit products)."""
    n_train = sft_settings(exp, "tool")["n_problems"]
    return heldout_tool_tasks(n or exp.pick(280, 56, 14), seed=exp.seed + 10_000,
                              train=train_problems(exp, n_train))


def prompts(tasks: list[ToolTask]) -> list[RLPrompt]:
    return tool_task_prompts(tasks)


def lesson_sft(exp: Any, style: str, steps: int | None = None) -> Path:
    """``tool_base`` after SFT on tool traces (``style="tool"``) or direct answers (``"direct"``); cached."""
    from mmlab.train.config import TrainConfig
    from mmlab.train.sft import sft

    s = sft_settings(exp, style, steps)
    base = tool_base(exp)

    def build(out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        data = out / "problems.jsonl"
        with data.open("w") as f:
            for t in train_problems(exp, s["n_problems"]):
                f.write(json.dumps({"messages": t.tool_trace() if style == "tool" else t.direct()}) + "\n")
        sft(base, str(data), TrainConfig(out_dir=str(out), progress=False, **s["train"]), evaluate=False)

    return _build(exp, f"sft-{style}", s, build)
