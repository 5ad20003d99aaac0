"""Shared by the decoding lesson's experiments: the model, real story prompts, text statistics, the draft.

* The model is the post-training lessons' shared pretrained base (``mmlab.lab.posttrain.lesson_base``: 4 x 128,
  GQA, a 1,024-token BPE, pretrained on the first 2 MiB of TinyStories), built once and cached.
* Prompts are the openings of held-out stories (``tinystories-valid-1k``: the TinyStories *validation* split,
  never trained on); the rest of each story is the human continuation the samples are compared with.
* Text statistics work on words (letters, digits and apostrophes) and punctuation marks, lower-cased, so the
  numbers do not depend on the tokenizer: distinct-n, the share of repeated n-grams, and the share of *invented
  words* — words that never occur in the model's training text.
* The drafts for speculative decoding share the target's tokenizer. The free one is an *early exit*: a copy of
  the target's first block with its embedding, final norm and head. The trained one starts as that copy and is
  then distilled from the target on the target's own training text (soft targets only, temperature 1: the
  draft learns to predict the target's distribution, which is what acceptance measures). It is trained once
  per mode and cached in the lab cache (``$MMLAB_LAB_CACHE``, default ``~/.cache/mmlab/lab``) under a hash of
  every setting; smoke runs train theirs in the run's folder.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

from mmlab.data.corpus import load_corpus
from mmlab.lab.posttrain import base_settings, cache_root, lesson_base, stage_config
from mmlab.model.lm import MiniMindLM
from mmlab.tokenizer.base import ENDOFTEXT
from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model

TRAIN_TEXT = "tinystories-train-2mib"  # what lesson_base was trained on
HELDOUT_TEXT = "tinystories-valid-1k"  # stories the model never saw
WORD = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")


# ---- the model and the prompts -------------------------------------------------------------------
def target(exp: Any) -> tuple[MiniMindLM, Any, dict[str, Any]]:
    """The lesson's model (``lesson_base``), its tokenizer and how it was trained."""
    folder = lesson_base(exp)
    return load_model(folder).eval(), load_checkpoint_tokenizer(folder), base_settings(exp)


def stop_ids(tok: Any) -> list[int]:
    eot = tok.token_to_id(ENDOFTEXT)
    return [] if eot is None else [eot]


def held_out_stories() -> list[str]:
    """The held-out stories, in file order, in the training text's layout (one newline between paragraphs).
    The file has no separators: a story starts at a paragraph that opens with "Once upon a time" and runs to
    the next such paragraph (stories that open otherwise stay attached to the one before; the file's first
    lines, the end of a story cut off, are skipped)."""
    text = load_corpus(HELDOUT_TEXT).documents[0]
    stories: list[list[str]] = []
    for para in (p.strip() for p in text.split("\n\n")):
        if para.startswith("Once upon a time"):
            stories.append([])
        if para and stories:
            stories[-1].append(para)
    return ["\n".join(s) for s in stories]


def story_prompts(tok: Any, n: int, prompt_tokens: int, continuation_tokens: int) -> list[tuple[list[int], list[int]]]:
    """``n`` (prompt ids, human continuation ids): the first ``prompt_tokens`` tokens of a held-out story and
    the next ``continuation_tokens`` of the same story. Stories too short for both are skipped."""
    out = []
    for story in held_out_stories():
        ids = tok.encode(story, allow_special=False)
        if len(ids) >= prompt_tokens + continuation_tokens:
            out.append((ids[:prompt_tokens], ids[prompt_tokens:prompt_tokens + continuation_tokens]))
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} held-out stories have {prompt_tokens + continuation_tokens} tokens")


# ---- text statistics -----------------------------------------------------------------------------
def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: ``"Tom's dog ran."`` -> ``["tom's", "dog", "ran", "."]``."""
    return WORD.findall(text.lower())


def ngrams(ws: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]


def distinct(samples: list[list[str]], n: int) -> float:
    """distinct-n (Li et al. 2016) over a group of samples: distinct n-grams / all n-grams, pooled. Five
    identical samples score at most 1/5; five samples that share no n-gram and never repeat one score 1."""
    grams = [g for ws in samples for g in ngrams(ws, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeats(ws: list[str], n: int = 4) -> tuple[int, int]:
    """(how many of the sample's n-grams already occurred earlier in it, how many n-grams it has)."""
    seen: set[tuple[str, ...]] = set()
    again = 0
    for g in ngrams(ws, n):
        again += g in seen
        seen.add(g)
    return again, max(0, len(ws) - n + 1)


def repeated_share(samples: list[list[str]], n: int = 4) -> float:
    """The share of all n-grams that repeat an n-gram earlier in the same sample (0: no repetition)."""
    counts = [repeats(ws, n) for ws in samples]
    total = sum(c[1] for c in counts)
    return sum(c[0] for c in counts) / total if total else 0.0


def looping_share(samples: list[list[str]], n: int = 4, threshold: float = 0.5) -> float:
    """The share of samples whose second half mostly (> ``threshold``) repeats n-grams seen before: stuck in a
    loop."""
    stuck = 0
    for ws in samples:
        grams = ngrams(ws, n)
        half = len(grams) // 2
        early = set(grams[:half])
        late = grams[half:]
        again = 0
        for g in late:
            again += g in early
            early.add(g)
        stuck += bool(late) and again / len(late) > threshold
    return stuck / len(samples) if samples else 0.0


@lru_cache(maxsize=1)
def dictionary() -> frozenset[str]:
    """Every word of the model's training text."""
    return frozenset(w for d in load_corpus(TRAIN_TEXT).documents for w in words(d) if w[0].isalpha())


def invented_share(samples: list[list[str]]) -> float:
    """The share of words (not punctuation, not numbers) that never occur in the model's training text: words
    the model spelled out of sub-word pieces, e.g. ``"accross"``."""
    known = dictionary()
    ws = [w for s in samples for w in s if w[0].isalpha()]
    return sum(w not in known for w in ws) / len(ws) if ws else 0.0


@torch.no_grad()
def continuation_nats(model: MiniMindLM, pairs: list[tuple[list[int], list[int]]], batch: int = 64) -> tuple[
        float, int]:
    """Summed negative log-likelihood (nats) of each continuation given its prompt under ``model`` at
    temperature 1 (no filters), and the number of continuation tokens: total / count is the mean per token."""
    nats, count = 0.0, 0
    model.eval()
    for i in range(0, len(pairs), batch):
        chunk = [(p, c) for p, c in pairs[i:i + batch] if c]
        if not chunk:
            continue
        width = max(len(p) + len(c) for p, c in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width - 1, dtype=torch.bool)
        for r, (p, c) in enumerate(chunk):
            ids[r, :len(p) + len(c)] = torch.tensor(p + c)
            mask[r, len(p) - 1:len(p) + len(c) - 1] = True  # positions whose next token is a continuation token
        logp = F.log_softmax(model(ids).logits[:, :-1].float(), dim=-1)
        picked = logp.gather(-1, ids[:, 1:, None])[..., 0]
        nats -= float(picked[mask].sum())
        count += int(mask.sum())
    return nats, count


def text_stats(tok: Any, model: MiniMindLM, prompts: list[list[int]], outs: list[list[int]],
               per_prompt: int) -> dict[str, float]:
    """The lesson's measurements of one decoding strategy. ``outs[i]`` continues ``prompts[i]``; consecutive
    groups of ``per_prompt`` rows share a prompt (their distinct-2 measures how different they are)."""
    ws = [words(tok.decode(o)) for o in outs]
    nats, count = continuation_nats(model, list(zip(prompts, outs, strict=True)))
    groups = [ws[i:i + per_prompt] for i in range(0, len(ws), per_prompt)]
    return {
        "nll": nats / max(count, 1),
        "distinct2": sum(distinct(g, 2) for g in groups) / len(groups),
        "repeated4": repeated_share(ws, 4),
        "looping": looping_share(ws),
        "invented": invented_share(ws),
        "words": sum(len(w) for w in ws) / len(ws),
        "tokens": sum(len(o) for o in outs) / len(outs),
    }


def clean_cut(tok: Any, pairs: list[tuple[list[int], list[int]]]) -> int:
    """The index of the first (prompt, continuation) whose prompt ends between two words (the continuation
    starts with a space, a newline or a punctuation mark): the one to show a reader. 0 if there is none."""
    for i, (_, cont) in enumerate(pairs):
        first = tok.decode(cont[:1])
        if first and not first[0].isalnum():
            return i
    return 0


def sample_texts(tok: Any, prompt: list[int], continuations: dict[str, list[int]]) -> list[dict[str, str]]:
    """The prompt, then prompt + continuation for each strategy, for a ``text=`` result block."""
    return [{"title": "the prompt (the opening of a held-out story)", "text": tok.decode(prompt)}] + [
        {"title": name, "text": tok.decode(prompt + ids)} for name, ids in continuations.items()]


# ---- the draft for speculative decoding ----------------------------------------------------------------
def early_exit(model: MiniMindLM, n_layers: int) -> MiniMindLM:
    """A draft for free: a copy of the model's first ``n_layers`` blocks with its embedding, final norm and head
    (no training; "self-speculative" decoding)."""
    draft = MiniMindLM(model.cfg.replace(n_layers=n_layers))
    draft.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.startswith("blocks.") or int(k.split(".")[1]) < n_layers})
    return draft.eval()


def draft_settings(exp: Any) -> dict[str, Any]:
    return {"target": base_settings(exp), "draft": "early exit after block 1, then distilled", "layers": 1,
            "data": TRAIN_TEXT, "steps": exp.pick(full=400, quick=100, smoke=2),
            "batch_size": exp.pick(full=16, quick=8, smoke=4), "lr": 1e-3, "weight_decay": 0.0, "temperature": 1.0,
            "alpha": 1.0, "seed": exp.seed}


def trained_draft(exp: Any) -> tuple[MiniMindLM, dict[str, Any]]:
    """The trained draft: the target's early exit (block 1 of 4 + its final norm and head), then trained with the
    library's distillation loss (``DistillLoss``: soft targets only, temperature 1) on the target's own training
    text, so that its next-token distribution moves towards the target's. From the cache when it is there."""
    from mmlab.data.pretrain import PretrainData, tokenize_corpus
    from mmlab.train.distill import DistillLoss
    from mmlab.train.pretrain import PretrainBatches
    from mmlab.train.trainer import Trainer

    s = draft_settings(exp)
    key = hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:12]
    root = exp.out_dir / "_checkpoints" if exp.mode == "smoke" else cache_root()
    folder = root / f"decoding-draft-{key}"
    done = folder / "draft_settings.json"
    if not done.is_file():
        exp.log(f"distilling the draft ({s['steps']} steps; cached in {folder})")
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        teacher, tok, _ = target(exp)
        cfg = stage_config(exp, tmp, s["steps"], s["lr"], weight_decay=s["weight_decay"], batch_size=s["batch_size"],
                           plot=False)
        tokens = PretrainData.from_tokens(tokenize_corpus(load_corpus(s["data"]), tok), cfg.val_fraction,
                                          cfg.block_size)
        source = PretrainBatches(tokens, cfg.block_size, cfg.batch_size, cfg.eval_batches, data_name=s["data"])
        draft = early_exit(teacher, s["layers"]).train()
        result = Trainer(draft, DistillLoss(teacher, s["temperature"], s["alpha"]), source, cfg, tokenizer=tok).fit()
        (tmp / "draft_settings.json").write_text(json.dumps(s | {"val_loss": result.final_val_loss}, indent=2) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return load_model(folder).eval(), json.loads(done.read_text())
