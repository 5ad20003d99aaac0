"""Direct preference optimisation (DPO): learn from pairs of answers to the same prompt, one preferred.

For a prompt x with a chosen answer y+ and a rejected answer y-, DPO (Rafailov et al., 2023) minimises

    -log sigmoid( beta * [ (log pi(y+|x) - log ref(y+|x)) - (log pi(y-|x) - log ref(y-|x)) ] )

where pi is the model being trained and ref a frozen copy of where it started. The bracket holds the
*implicit rewards* r = beta * log(pi / ref) of the two answers: the loss pushes the chosen answer's
reward above the rejected one's, and the reference keeps the model from drifting anywhere else (no
reward model, no sampling). Held-out metrics: the mean reward margin r+ - r- and the preference
accuracy (share of pairs with r+ > r-).

The loss plugs into the one ``Trainer`` as an objective; the data is a ``BatchSource`` of padded pairs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmlab.data.registry import DataError
from mmlab.data.sft import Example, Messages, chat_messages, pad_batch
from mmlab.data.synthetic import make_tasks
from mmlab.errors import ConfigError
from mmlab.model.lm import IGNORE_INDEX
from mmlab.tokenizer.base import Tokenizer, TokenizerError
from mmlab.tokenizer.chat import encode_chat, validate_messages

SYNTHETIC_PAIRS = "synthetic-pairs"


@dataclass(frozen=True)
class PreferencePair:
    prompt: Messages  # the conversation up to the answer
    chosen: str
    rejected: str
    where: str = field(default="", compare=False)  # the record it came from ("file:line", "file[i]")


def _conversation_pair(record: dict, where: str) -> tuple[Messages, str, str]:
    """MiniMind's ``dpo.jsonl``: ``chosen`` and ``rejected`` are whole conversations that share the turns
    before the last, an assistant answer: (the shared prompt, the chosen answer, the rejected answer)."""
    chosen, rejected = (chat_messages(record[k], where, k) for k in ("chosen", "rejected"))
    for key, conv in (("chosen", chosen), ("rejected", rejected)):
        if conv[-1]["role"] != "assistant":
            raise DataError(f"{where}: {key!r} must end with the assistant's answer, not a {conv[-1]['role']} turn")
    if chosen[:-1] != rejected[:-1]:
        raise DataError(f"{where}: 'chosen' and 'rejected' must share every turn before the answer (their prompts "
                        "differ)")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def pair_from_record(record: Any, where: str) -> PreferencePair:
    """``{instruction, input?, chosen, rejected}`` (preferences-1k), ``{prompt | messages, chosen, rejected}``
    with string answers, or MiniMind's ``{chosen: [messages], rejected: [messages]}``; ``where``
    ("file:line", "file[i]") goes into every error."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if isinstance(record.get("chosen"), list) or isinstance(record.get("rejected"), list):
        prompt, chosen, rejected = _conversation_pair(record, where)
        for key, answer in (("chosen", chosen), ("rejected", rejected)):
            if not answer.strip():
                raise DataError(f"{where}: the {key!r} answer is empty")
        if chosen.strip() == rejected.strip():
            raise DataError(f"{where}: 'chosen' and 'rejected' are the same answer: nothing to prefer")
        if not prompt:
            raise DataError(f"{where}: no prompt before the answers")
        return PreferencePair(prompt, chosen, rejected, where)
    for key in ("chosen", "rejected"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise DataError(f"{where}: field {key!r} must be a non-empty string or a list of messages")
    if record["chosen"].strip() == record["rejected"].strip():
        raise DataError(f"{where}: 'chosen' and 'rejected' are the same answer: nothing to prefer")
    if "messages" in record:
        prompt = chat_messages(record["messages"], where)
    elif isinstance(record.get("prompt"), str):
        prompt = [{"role": "user", "content": record["prompt"]}]
    elif isinstance(record.get("instruction"), str):
        extra = record.get("input") or ""
        if not isinstance(extra, str):
            raise DataError(f"{where}: field 'input' must be a string")
        prompt = [{"role": "user", "content": record["instruction"] + (f"\n\n{extra}" if extra.strip() else "")}]
    else:
        raise DataError(f"{where}: no prompt (expected 'instruction', 'prompt' or 'messages')")
    try:
        validate_messages(prompt)
    except TokenizerError as e:
        raise DataError(f"{where}: {e}") from None
    if not any(m["content"].strip() for m in prompt):
        raise DataError(f"{where}: the prompt is empty")
    return PreferencePair(prompt, record["chosen"], record["rejected"], where)


def _same_answers(record: Any) -> bool:
    """A well-formed record whose chosen and rejected answers are the same text (skipped and counted)."""
    if not isinstance(record, dict):
        return False
    c, r = record.get("chosen"), record.get("rejected")
    if isinstance(c, list) and isinstance(r, list):
        try:  # the answers as trained on: reasoning and tool calls rendered in
            _, c, r = _conversation_pair(record, "")
        except DataError:
            return False  # malformed: pair_from_record names the problem
    return isinstance(c, str) and isinstance(r, str) and c.strip() == r.strip() and c.strip() != ""


def synthetic_pairs(n: int, seed: int = 0) -> list[PreferencePair]:
    """Verifiable tasks with a correct (chosen) and an incorrect (rejected) answer: for arithmetic the
    result off by a small amount, otherwise another item's answer — so the effect of preference tuning
    on task accuracy can be measured."""
    rng = random.Random(seed + 1)
    items = make_tasks(n, seed=seed)
    pairs = []
    for t in items:
        if t.answer.lstrip("-").isdigit():
            wrong = str(int(t.answer) + rng.choice([-10, -2, -1, 1, 2, 10]))
        else:
            wrong = next((o.answer for o in rng.sample(items, len(items)) if o.answer != t.answer and o.task == t.task),
                         None) or _altered(t.answer)
        pairs.append(PreferencePair([{"role": "user", "content": t.prompt}], t.answer, wrong,
                                    f"synthetic pair {len(pairs)}"))
    return pairs


def _altered(answer: str) -> str:
    """A wrong answer when no other item of the task has one to lend (a small ``n``): the answer reversed,
    or, for a palindrome, with its last character doubled."""
    return answer[::-1] if answer[::-1] != answer else answer + answer[-1]


class PreferenceData(list):
    """The pairs, and ``skipped``: where a record had the same chosen and rejected answer (real data has
    a few; they carry no preference). Malformed records are errors; these are counted and reported."""

    def __init__(self, pairs: Sequence[PreferencePair] = (), skipped: Sequence[str] = ()):
        super().__init__(pairs)
        self.skipped = list(skipped)


def load_preferences(data: str, seed: int = 0, n_synthetic: int = 3000) -> PreferenceData:
    """Pairs of ``synthetic-pairs``, a registry dataset (``preferences-1k``) or a .json/.jsonl file."""
    if data == SYNTHETIC_PAIRS:
        return PreferenceData(synthetic_pairs(n_synthetic, seed))
    from mmlab.data.corpus import named_records

    path = Path(data)
    if path.suffix not in (".json", ".jsonl"):
        from mmlab.data.registry import dataset_path

        path = dataset_path(data)
    records = named_records(path)
    pairs, skipped = [], []
    for where, record in records:
        if _same_answers(record):
            skipped.append(where)
        else:
            pairs.append(pair_from_record(record, where))
    if not pairs:
        raise DataError(f"{path}: no preference pairs")
    if skipped:
        import warnings

        warnings.warn(f"{path}: skipped {len(skipped)} record(s) whose chosen and rejected answers are the same "
                      f"(first: {skipped[0]})", stacklevel=2)
    return PreferenceData(pairs, skipped)


@dataclass(frozen=True)
class EncodedPair:
    chosen: Example
    rejected: Example


def encode_pairs(tok: Tokenizer, pairs: Sequence[PreferencePair], max_len: int,
                 source: str = "pair") -> tuple[list[EncodedPair], list[int]]:
    """Template and tokenize each answer after its prompt; a pair whose prompt leaves no answer token
    within ``max_len`` is skipped and its index returned (counted, never silent). Answers are cut at
    ``max_len`` (both the same way, so the comparison stays fair)."""
    out, skipped = [], []
    for i, p in enumerate(pairs):
        try:
            c_ids, c_mask = encode_chat(tok, [*p.prompt, {"role": "assistant", "content": p.chosen}])
            r_ids, r_mask = encode_chat(tok, [*p.prompt, {"role": "assistant", "content": p.rejected}])
        except TokenizerError as e:
            raise DataError(f"{p.where or f'{source} {i}'}: {e}") from None
        c_ids, c_mask, r_ids, r_mask = c_ids[:max_len], c_mask[:max_len], r_ids[:max_len], r_mask[:max_len]
        if not any(c_mask[1:]) or not any(r_mask[1:]):
            skipped.append(i)
            continue
        out.append(EncodedPair(Example(c_ids, c_mask), Example(r_ids, r_mask)))
    return out, skipped


def pair_batch(pairs: Sequence[EncodedPair], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen answers in the first half of the rows, rejected in the second, padded together."""
    return pad_batch([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)


class PreferenceBatches:
    """A BatchSource of preference pairs (``rows`` = pairs per micro-batch)."""

    def __init__(self, train: Sequence[EncodedPair], val: Sequence[EncodedPair], pad_id: int = 0,
                 eval_batch_size: int = 16):
        if not train:
            raise DataError("no training pairs (every pair was empty or cut away)")
        self.train, self.val, self.pad_id = list(train), list(val), pad_id
        self._eval = [pair_batch(self.val[i:i + eval_batch_size], pad_id)
                      for i in range(0, len(self.val), eval_batch_size)]

    def sample(self, split: str, rows: int, generator: torch.Generator):
        idx = torch.randint(len(self.train), (rows,), generator=generator).tolist()
        return pair_batch([self.train[i] for i in idx], self.pad_id)

    def slice_rows(self, batch, start: int, stop: int):
        x, y = batch
        half = x.size(0) // 2
        keep = list(range(start, stop)) + list(range(half + start, half + stop))
        return x[keep], y[keep]

    def eval_batches(self, split: str):
        return self._eval if split == "val" else []


def sequence_logprobs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each row's target tokens (IGNORE_INDEX positions excluded): (B,)."""
    logits = model(x).logits.float()
    mask = y != IGNORE_INDEX
    logp = torch.gather(F.log_softmax(logits, dim=-1), 2, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


class DPOLoss:
    """The DPO objective against a frozen reference model. ``count_tokens`` counts *pairs*, so the
    trainer's loss is the mean over pairs (exact under accumulation)."""

    def __init__(self, reference: torch.nn.Module, beta: float = 0.1):
        if not beta > 0:
            raise ConfigError(f"beta={beta} must be > 0")
        self.reference, self.beta = reference.eval(), beta
        for p in self.reference.parameters():
            p.requires_grad_(False)

    def rewards(self, model: torch.nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Implicit rewards beta * log(pi / ref) of the chosen and the rejected answers: (P,), (P,)."""
        x, y = batch
        policy = sequence_logprobs(model, x, y)
        with torch.no_grad():
            ref = sequence_logprobs(self.reference.to(x.device), x, y)
        r = self.beta * (policy - ref)
        half = x.size(0) // 2
        return r[:half], r[half:]

    def __call__(self, model, batch):
        chosen, rejected = self.rewards(model, batch)
        margin = chosen - rejected
        loss_sum = -F.logsigmoid(margin).sum()
        return loss_sum, margin.numel(), {"reward_margin": margin.mean().item(),
                                          "accuracy": preference_accuracy(margin)}

    def count_tokens(self, batch) -> int:
        return batch[0].size(0) // 2


def preference_accuracy(margin: torch.Tensor) -> float:
    """Share of pairs whose chosen answer has the higher implicit reward; a tie counts half (at the start
    the policy *is* the reference, every margin is 0, and the accuracy is chance, 0.5)."""
    return ((margin > 0).float() + 0.5 * (margin == 0).float()).mean().item()


@torch.no_grad()
def preference_metrics(model: torch.nn.Module, objective: DPOLoss, batches: Sequence) -> dict[str, float]:
    """Held-out DPO loss, mean reward margin, preference accuracy, and the mean chosen / rejected
    rewards (how each moved relative to the reference)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chosen, rejected = [], []
    for x, y in batches:
        c, r = objective.rewards(model, (x.to(device), y.to(device)))
        chosen.append(c)
        rejected.append(r)
    model.train(was_training)
    if not chosen:
        return {}
    c, r = torch.cat(chosen), torch.cat(rejected)
    margin = c - r
    return {"loss": (-F.logsigmoid(margin)).mean().item(), "reward_margin": margin.mean().item(),
            "accuracy": preference_accuracy(margin), "chosen_reward": c.mean().item(),
            "rejected_reward": r.mean().item(), "pairs": int(margin.numel())}


# ---- the stage -------------------------------------------------------------------------------
EVAL_FILE = "dpo_eval.json"


def heldout_pairs(data: str, val_fraction: float, seed: int, max_val_pairs: int | None = None):
    """``dpo``'s split of ``data``: (training pairs, held-out pairs, how many held-out pairs were dropped because
    their prompt is also a training prompt, the records skipped for identical answers).
    Shared so that a control (e.g. plain SFT) can be measured on the same prompts."""
    from mmlab.train.sft import drop_repeated_prompts, split_heldout

    pairs = load_preferences(data, seed=seed)
    train_pairs, val_pairs = split_heldout(pairs, val_fraction, seed=seed)
    val_pairs, repeats = drop_repeated_prompts(train_pairs, val_pairs, lambda p: p.prompt)
    if not val_pairs:
        raise DataError(f"{data}: every held-out pair repeats a prompt of the training split; use more varied "
                        "pairs or a larger --val-fraction")
    return train_pairs, val_pairs[:max_val_pairs], repeats, pairs.skipped  # the held-out measurement's cost is bounded


def pair_task_accuracy(model: Any, tok: Any, pairs: Sequence[Any], block: int, n_generate: int | None) -> dict:
    """Greedy exact match of ``model``'s answers to the pairs' prompts against their chosen (correct) answers."""
    from mmlab.train.sft import evaluate_sft

    convs = [[*p.prompt, {"role": "assistant", "content": p.chosen}] for p in pairs]
    return evaluate_sft(model, tok, convs, block, max_new_tokens=16, n_generate=n_generate)


def dpo(base: str | Path | None, data: str | None, train_cfg: Any, *, beta: float = 0.1, val_fraction: float = 0.1,
        resume: bool = False, overwrite: bool = False, n_generate: int | None = 200, max_val_pairs: int | None = 500,
        **trainer_kwargs: Any) -> dict[str, Any]:
    """Preference-tune the checkpoint ``base`` (usually an SFT model; it is also the frozen reference) on
    the pairs of ``data`` into ``train_cfg.out_dir``. Held-out reward margin and preference accuracy
    before and after (and, for ``synthetic-pairs``, exact-match task accuracy) go to ``dpo_eval.json``."""
    import time

    from mmlab.errors import MMLabError
    from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model, resolve_checkpoint
    from mmlab.train.pretrain import clear_run
    from mmlab.train.sft import check_chat_tokenizer
    from mmlab.train.stages import refuse_existing_run, saved_stage, stage_device, write_report
    from mmlab.train.trainer import Trainer

    out = Path(train_cfg.out_dir)
    refuse_existing_run(out, resume, overwrite)
    if resume:
        saved = saved_stage(out, "dpo")
        base, data, beta, val_fraction = saved["base"], saved["data"], saved["beta"], saved["val_fraction"]
        max_val_pairs = saved.get("max_val_pairs", max_val_pairs)
    if base is None or data is None:
        raise MMLabError("DPO needs a base checkpoint and preference data")
    if not beta > 0:
        raise ConfigError(f"beta={beta} must be > 0")
    base_ckpt = resolve_checkpoint(base)
    tok = load_checkpoint_tokenizer(base_ckpt)
    check_chat_tokenizer(tok, str(base))
    device = stage_device(train_cfg)
    model, reference = load_model(base_ckpt, device=device), load_model(base_ckpt, device=device)
    block = train_cfg.block_size or model.cfg.max_seq_len
    if block > model.cfg.max_seq_len:
        raise MMLabError(f"block_size={block} is longer than the base model's max_seq_len={model.cfg.max_seq_len}")
    train_pairs, val_pairs, repeats, skipped = heldout_pairs(data, val_fraction, train_cfg.seed, max_val_pairs)
    train_enc, train_skipped = encode_pairs(tok, train_pairs, block + 1, f"{data} pair")
    val_enc, val_skipped = encode_pairs(tok, val_pairs, block + 1, f"{data} held-out pair")
    source = PreferenceBatches(train_enc, val_enc, eval_batch_size=max(16, train_cfg.batch_size))
    objective = DPOLoss(reference, beta)

    def measure() -> dict[str, Any]:
        m = preference_metrics(model, objective, source.eval_batches("val"))
        if data == SYNTHETIC_PAIRS:  # the preference is "correct answer": does task accuracy follow?
            task = pair_task_accuracy(model, tok, val_pairs, block, n_generate)
            m |= {"exact_match": task["exact_match"], "samples": task["samples"]}
        return m

    before = {} if resume else measure()
    if overwrite and not resume:
        clear_run(out)
    extra_state = {"stage": "dpo", "base": str(base), "data": data, "beta": beta, "val_fraction": val_fraction,
                   "max_val_pairs": max_val_pairs, "before": before}
    trainer = Trainer(model, objective, source, train_cfg, tokenizer=tok, resume=resume, extra_state=extra_state,
                      **trainer_kwargs)
    before = trainer.extra_state.get("before", before)  # on resume: the numbers measured before the first part
    t0 = time.perf_counter()
    result = trainer.fit()
    record = {"base": str(base), "data": data, "beta": beta, "before": before, "after": measure(),
              # the records cut away, named by their place in the file (not in the shuffled split)
              "skipped": {"train": [train_pairs[i].where or i for i in train_skipped[:20]],
                          "val": [val_pairs[i].where or i for i in val_skipped[:20]],
                          "train_count": len(train_skipped), "val_count": len(val_skipped)},
              "pairs": {"train": len(train_enc), "val": len(val_enc)}, "repeated_prompts_dropped": repeats,
              "identical_answers_skipped": {"count": len(skipped), "first": skipped[:5]},
              "steps": result.steps,
              "train_s": result.elapsed_s, "wall_s": time.perf_counter() - t0}
    write_report(out, EVAL_FILE, record)
    return record
