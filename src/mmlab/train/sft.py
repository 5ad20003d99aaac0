"""Supervised fine-tuning (SFT), with or without LoRA: a base checkpoint learns to answer in the chat
template, graded only on the assistant's tokens.

Everything here is glue around shared pieces: conversations and batches come from ``mmlab.data.sft``,
the loop is the one ``Trainer`` with ``NextTokenLoss`` (targets hold ``IGNORE_INDEX`` outside the
assistant's tokens), checkpoints are the usual folders (a LoRA run stores the untouched base and the
adapter), and held-out quality is measured by ``evaluate_sft`` before and after.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mmlab.data.registry import DataError
from mmlab.data.sft import EncodedExamples, Messages, SFTBatches, encode_examples, load_conversations, pad_batch
from mmlab.data.synthetic import make_tasks
from mmlab.errors import MMLabError
from mmlab.model.lm import MiniMindLM
from mmlab.model.lora import LoRAConfig, apply_lora, trainable_parameters
from mmlab.tokenizer.base import Tokenizer, TokenizerError
from mmlab.tokenizer.chat import IM_END, IM_START, encode_chat, parse_reply
from mmlab.train.checkpoint import (
    load_checkpoint_tokenizer,
    load_model,
    resolve_checkpoint,
)
from mmlab.train.config import TrainConfig
from mmlab.train.trainer import NextTokenLoss, Trainer, TrainResult

SYNTHETIC_TASKS = "synthetic-tasks"
EVAL_FILE = "sft_eval.json"


# ---- data ------------------------------------------------------------------------------------
def task_conversations(n: int, seed: int = 0) -> list[Messages]:
    """The built-in verifiable tasks (arithmetic, copy, reverse, facts) as one-turn conversations."""
    return [[{"role": "user", "content": t.prompt}, {"role": "assistant", "content": t.answer}]
            for t in make_tasks(n, seed=seed)]


def load_sft_data(data: str, seed: int = 0, n_synthetic: int = 3000, with_names: bool = False) -> Any:
    """Conversations of ``data``: ``synthetic-tasks``, a registry dataset (``instructions-1k``), or a
    ``.json`` / ``.jsonl`` file of Alpaca-style or chat-style records. ``with_names``: also where each
    came from (``file:line``, ``file[i]``, ``synthetic task i``)."""
    if data == SYNTHETIC_TASKS:
        convs = task_conversations(n_synthetic, seed)
        return (convs, [f"synthetic task {i}" for i in range(len(convs))]) if with_names else convs
    path = Path(data)
    if path.suffix not in (".json", ".jsonl"):
        from mmlab.data.registry import dataset_path

        path = dataset_path(data)
    if not path.is_file():
        raise DataError(f"SFT data {data!r}: no such file")
    convs, names = load_conversations(path, with_names=True)
    if not convs:
        raise DataError(f"{path}: no conversations")
    return (convs, names) if with_names else convs


def split_heldout(convs: Sequence[Messages], val_fraction: float, seed: int = 0) -> tuple[list, list]:
    """A fixed held-out split: the conversations are shuffled with ``seed`` once, the last fraction is
    held out (at least one, and at least one left to train on)."""
    if not 0 < val_fraction < 1:
        raise MMLabError(f"val_fraction={val_fraction} must be in (0, 1)")
    order = list(range(len(convs)))
    random.Random(seed).shuffle(order)
    n_val = min(len(convs) - 1, max(1, round(len(convs) * val_fraction)))
    if n_val < 1:
        raise DataError(f"{len(convs)} conversation(s): too few to hold any out")
    return [convs[i] for i in order[:-n_val]], [convs[i] for i in order[-n_val:]]


def drop_repeated_prompts(train: Sequence, val: Sequence, prompt_of) -> tuple[list, int]:
    """The held-out items whose prompt (``prompt_of(item)``) never appears among the training items, and
    how many were dropped: an answer to a prompt trained on measures memory, not generalisation (the
    synthetic tasks draw multiplication and facts from small sets, so repeats are common)."""
    seen = {json.dumps(prompt_of(x), sort_keys=True) for x in train}
    kept = [x for x in val if json.dumps(prompt_of(x), sort_keys=True) not in seen]
    return kept, len(val) - len(kept)


def check_chat_tokenizer(tok: Tokenizer, where: str) -> None:
    missing = [t for t in (IM_START, IM_END) if tok.token_to_id(t) is None]
    if missing:
        raise MMLabError(f"{where}: its tokenizer has no {', '.join(missing)} token(s), so it cannot use the chat "
                         "template; pretrain the base with a BPE tokenizer (`--tokenizer bpe`), which has them")


# ---- held-out quality ------------------------------------------------------------------------
def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over whitespace words: the longest common subsequence, as precision and recall."""
    c, r = candidate.split(), reference.split()
    if not c or not r:
        return float(c == r)
    prev = [0] * (len(r) + 1)
    for word in c:
        cur = [0]
        for j, ref_word in enumerate(r):
            cur.append(prev[j] + 1 if word == ref_word else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec)


def split_prompt(conv: Messages) -> tuple[Messages, str]:
    """The messages before the last assistant turn, and that turn's text (the reference answer)."""
    last = max(i for i, m in enumerate(conv) if m["role"] == "assistant")
    return conv[:last], conv[last]["content"]


@torch.no_grad()
def evaluate_sft(model: MiniMindLM, tok: Tokenizer, convs: Sequence[Messages], block_size: int,
                 max_new_tokens: int = 48, n_generate: int | None = None, n_samples: int = 3) -> dict[str, Any]:
    """Held-out quality of a chat model:

    - ``answer_loss``: mean loss (nats) per reference-answer token, prompts as context (teacher forcing);
    - ``exact_match``: share of greedy answers equal to the reference (after trimming spaces; the answer is
      what follows the reply's ``<think>`` block, if it wrote one);
    - ``rouge_l``: mean ROUGE-L F1 of greedy answers against the references;
    - ``samples``: a few prompts with the reference and the model's answer.
    """
    from mmlab.infer.generate import generate

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    examples = encode_examples(tok, convs, max_len=block_size + 1, source="held-out conversation",
                               on_drop="ignore")
    total, count = 0.0, 0
    for i in range(0, len(examples), 16):
        x, y = pad_batch(examples[i:i + 16], pad_id=0)
        logits = model(x.to(device)).logits.float()
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), reduction="sum",
                                                   ignore_index=-100).item()
        count += int((y != -100).sum())
    stop = tok.token_to_id(IM_END)
    exact, rouge, samples = [], [], []
    for conv in list(convs)[:n_generate]:
        prompt_msgs, reference = split_prompt(conv)
        ids, _ = encode_chat(tok, prompt_msgs, add_generation_prompt=True)
        room = min(max_new_tokens, model.cfg.max_seq_len - len(ids))
        if room <= 0:
            continue  # a prompt that fills the context: counted out of the generation metrics (n_generated)
        reply = tok.decode(generate(model, ids, room, temperature=0.0, stop_tokens=[stop])[0])
        answer = parse_reply(reply, tools=False).content.strip()  # a <think> block is not part of the answer
        exact.append(answer == reference.strip())
        rouge.append(rouge_l(answer, reference))
        if len(samples) < n_samples:
            samples.append({"prompt": prompt_msgs[-1]["content"], "reference": reference, "answer": answer})
    model.train(was_training)
    return {"answer_loss": total / count if count else math.nan, "answer_tokens": count,
            "exact_match": sum(exact) / len(exact) if exact else math.nan,
            "rouge_l": sum(rouge) / len(rouge) if rouge else math.nan,
            "n_generated": len(exact), "n_heldout": len(convs), "samples": samples}


# ---- the stage -------------------------------------------------------------------------------
@dataclass
class SFTRun:
    result: TrainResult
    before: dict[str, Any]
    after: dict[str, Any]
    encoding: dict[str, Any]
    trainable: int
    total: int

    def to_dict(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "encoding": self.encoding,
                "trainable_params": self.trainable, "total_params": self.total,
                "train_s": self.result.elapsed_s, "steps": self.result.steps,
                "final_val_loss": self.result.final_val_loss}


def sft(base: str | Path, data: str, train_cfg: TrainConfig, *, mode: str = "pack", val_fraction: float = 0.1,
        lora: LoRAConfig | None = None, resume: bool = False, overwrite: bool = False, n_generate: int | None = 200,
        max_new_tokens: int = 48, evaluate: bool = True, n_synthetic: int = 3000, train_on_prompt: bool = False,
        **trainer_kwargs: Any) -> SFTRun:
    """Fine-tune the checkpoint ``base`` on the conversations of ``data`` into ``train_cfg.out_dir``.
    ``lora``: train a LoRA adapter instead of every weight. ``train_on_prompt``: every token is a target,
    not only the assistant's (the ablation of the loss mask; held-out losses still count answers only).
    Held-out quality before and after goes to ``<out>/sft_eval.json``."""
    from mmlab.train.pretrain import clear_run
    from mmlab.train.stages import refuse_existing_run, saved_stage, stage_device, write_report

    out = Path(train_cfg.out_dir)
    refuse_existing_run(out, resume, overwrite)
    if mode not in ("pack", "pad"):
        raise MMLabError(f"mode={mode!r} is not one of: pack, pad")
    if resume:
        ckpt = resolve_checkpoint(out / "ckpt")
        saved = saved_stage(out, "sft")
        base, data, mode, val_fraction = saved["base"], saved["data"], saved["mode"], saved["val_fraction"]
        n_synthetic = saved.get("n_synthetic", n_synthetic)
        train_on_prompt = saved.get("train_on_prompt", train_on_prompt)
    if base is None or data is None:
        raise MMLabError("SFT needs a base checkpoint and data")
    base_ckpt = resolve_checkpoint(base)
    tok = load_checkpoint_tokenizer(base_ckpt)
    check_chat_tokenizer(tok, str(base))
    # a LoRA base comes back merged: SFT starts from what it computes
    model = load_model(base_ckpt, device=stage_device(train_cfg))
    block = train_cfg.block_size or model.cfg.max_seq_len
    if block > model.cfg.max_seq_len:
        raise MMLabError(f"block_size={block} is longer than the base model's max_seq_len={model.cfg.max_seq_len}")
    convs, names = load_sft_data(data, seed=train_cfg.seed, n_synthetic=n_synthetic, with_names=True)
    # split (conversation, name) pairs, so every message names a conversation by its place in the file
    train_named, val_named = split_heldout(list(zip(convs, names, strict=True)), val_fraction, seed=train_cfg.seed)
    val_named, repeats = drop_repeated_prompts(train_named, val_named, lambda cn: split_prompt(cn[0])[0])
    (train_convs, train_names), (val_convs, val_names) = (_unzip(train_named), _unzip(val_named))
    if not val_convs:
        raise DataError(f"{data}: every held-out conversation repeats a prompt of the training split, so nothing "
                        "measures generalisation; use more varied data or a larger --val-fraction")
    try:
        train_ex = encode_examples(tok, train_convs, max_len=block + 1, source=f"{data} conversation",
                                   names=train_names)
        val_ex = encode_examples(tok, val_convs, max_len=block + 1, source=f"{data} held-out conversation",
                                 names=val_names)
    except TokenizerError as e:
        raise DataError(f"{data}: {e}") from None
    encoding = {"train": _encoding_report(train_ex, train_names),
                "val": _encoding_report(val_ex, val_names) | {"repeated_prompts_dropped": repeats}}
    source = SFTBatches(train_ex, val_ex, pad_id=0, mode=mode, block_size=block,
                        eval_batch_size=max(16, train_cfg.batch_size), train_on_prompt=train_on_prompt)
    if resume and not lora and (ckpt / "adapter_config.json").is_file():
        raise MMLabError(f"{out} is a LoRA run; resume it with `mmlab train lora`")
    if lora is not None:  # before the evaluation, so bad targets fail in a second; B = 0: outputs unchanged
        apply_lora(model, lora)
    before = (evaluate_sft(model, tok, val_convs, block, max_new_tokens, n_generate)
              if evaluate and not resume else {})
    if overwrite and not resume:
        clear_run(out)
    trainable, total = trainable_parameters(model)
    extra_state = {"stage": "sft", "base": str(base), "data": data, "mode": mode, "val_fraction": val_fraction,
                   "n_synthetic": n_synthetic, "train_on_prompt": train_on_prompt,
                   "lora": asdict(lora) if lora else None, "before": before}
    trainer = Trainer(model, NextTokenLoss(), source, train_cfg, tokenizer=tok, resume=resume,
                      extra_state=extra_state, **trainer_kwargs)
    if resume and trainer.extra_state.get("lora") != extra_state["lora"]:
        raise MMLabError(f"{out} was trained with lora={trainer.extra_state.get('lora')}; resume it with the same "
                         "LoRA settings")
    before = trainer.extra_state.get("before", before)  # on resume: the numbers measured before the first part
    t0 = time.perf_counter()
    result = trainer.fit()
    after = evaluate_sft(model, tok, val_convs, block, max_new_tokens, n_generate) if evaluate else {}
    run = SFTRun(result, before, after, encoding, trainable, total)
    record = run.to_dict() | {"base": str(base), "data": data, "mode": mode, "lora": trainer.extra_state.get("lora"),
                              "train_on_prompt": train_on_prompt,
                              "wall_s": time.perf_counter() - t0}
    write_report(out, EVAL_FILE, record)
    return run


def _encoding_report(ex: EncodedExamples, names: Sequence[str]) -> dict[str, Any]:
    return {"conversations": len(names), "examples": len(ex), "cut_at_block": ex.truncated, "dropped": len(ex.dropped),
            "dropped_records": [names[i] for i in ex.dropped[:20]]}


def _unzip(named: Sequence[tuple[Messages, str]]) -> tuple[list[Messages], list[str]]:
    return [c for c, _ in named], [n for _, n in named]
