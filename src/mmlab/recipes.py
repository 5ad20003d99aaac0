"""Recipes: a named, complete training run (data, tokenizer, model, schedule) that one command
reproduces and that reports what it reached: ``mmlab recipe run shakespeare-char``.

A recipe trains through the same ``pretrain`` as every other run, then measures the final model on
the *whole* validation split (every token once, in non-overlapping windows; not the random batches
the loop uses for its progress reports), converts the loss to bits per byte, writes samples, and
saves everything as a results JSON in the lab's format (findings, tables, a plot), so the tiny-model
lesson renders its numbers from it like any experiment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmlab.config import ModelConfig
from mmlab.errors import MMLabError
from mmlab.train.config import TrainConfig


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    data: str
    tokenizer: str  # "char" or "bpe" (trained on the corpus with vocab_size)
    model: dict[str, Any]  # ModelConfig fields
    train: dict[str, Any]  # TrainConfig fields (out_dir aside)
    prompts: tuple[str, ...]
    sample_tokens: int
    budget_minutes: float = 30.0
    target_val_loss: float | None = None  # the loss the recipe promises on the whole val split
    references: dict[str, float] = field(default_factory=dict)  # label -> val loss, drawn on the plot
    # a corpus too large for memory is streamed into shards, and measured on another corpus (its own valid
    # split), at most eval_chars of it
    eval_data: str | None = None
    eval_chars: int | None = None
    needs: str = ""  # what a full run needs that this project's machines may not have (then no results)

    def model_config(self) -> ModelConfig:
        return ModelConfig(name=self.name, **self.model)

    def train_config(self, out_dir: str, **overrides: Any) -> TrainConfig:
        return TrainConfig(out_dir=out_dir, **{**self.train, **overrides})

    def fingerprint(self) -> str:
        """Changes whenever anything that shapes the run changes: committed results must match it."""
        spec = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("summary", "references", "needs")}
        for k in ("eval_data", "eval_chars"):  # fields added later: unset, they leave older recipes' prints alone
            if spec[k] is None:
                del spec[k]
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


# the TinyStories recipes' shared model, schedule and prompts (each recipe changes what differs)
_TINYSTORIES_MODEL = dict(vocab_size=2048, hidden_size=256, n_layers=4, n_heads=4, max_seq_len=256, rope_theta=1e4,
                          dropout=0.1, attn_dropout=0.0)
_TINYSTORIES_TRAIN = dict(max_iters=1200, batch_size=32, block_size=256, lr=2e-3, min_lr=2e-4, warmup_iters=100,
                          schedule="cosine", weight_decay=0.1, beta2=0.99, grad_clip=1.0, eval_interval=100,
                          eval_batches=20, log_interval=25, dtype="bf16", compile=True)
_TINYSTORIES_PROMPTS = ("Once upon a time", "Tom and Lily went to the park.", "One day, a little bird")

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            name="shakespeare-char",
            summary="TinyShakespeare, one token per character: 4 layers x 256, 256 characters of context",
            data="tinyshakespeare",
            tokenizer="char",
            # attn_dropout=0: attention-weight dropout under torch.compile + bf16 autocast once gave NaN
            # gradients here; the latest benchmark run no longer reproduces it (recipe_throughput.json,
            # nan_with_attention_dropout), but the committed recipe results were made without it
            model=dict(vocab_size=65, hidden_size=256, n_layers=4, n_heads=4, max_seq_len=256, rope_theta=1e4,
                       dropout=0.1, attn_dropout=0.0),
            # bf16 autocast + torch.compile: the most tokens/s on this project's CPU (AMX): recipe_throughput.json
            # (benchmarks/recipe_throughput.py); residual dropout costs a share of that, but 1,800 steps are
            # about 15 epochs of TinyShakespeare, where a model without regularisation can memorise;
            # `mmlab recipe run --dtype fp32 --no-compile` on machines without bf16 units or a compiler
            train=dict(max_iters=1800, batch_size=32, block_size=256, lr=2e-3, min_lr=2e-4, warmup_iters=100,
                       schedule="cosine", weight_decay=0.1, beta2=0.99, grad_clip=1.0, eval_interval=200,
                       eval_batches=20, log_interval=25, dtype="bf16", compile=True),
            prompts=("ROMEO:", "First Citizen:\n", "KING HENRY:"),
            sample_tokens=400,
            target_val_loss=1.55,
            references={"nanoGPT CPU recipe (1.886)": 1.886, "nanoGPT GPU recipe (1.47)": 1.47},
        ),
        Recipe(
            name="tinystories-bpe",
            summary="2 MiB of TinyStories with a byte-level BPE of 2,048 tokens trained on it",
            data="tinystories-train-2mib",
            tokenizer="bpe",
            model=_TINYSTORIES_MODEL,
            # 2 MiB is about 0.55M tokens: 1,200 steps of 8,192 tokens are ~18 epochs, so the run keeps
            # the weights of its lowest val loss (keep_best) and is measured and sampled from those
            train=_TINYSTORIES_TRAIN | dict(keep_best=True),
            prompts=_TINYSTORIES_PROMPTS,
            sample_tokens=160,
        ),
        Recipe(
            name="tinystories-full-bpe",
            summary="all of TinyStories V2 (streamed into shards), the same model and 2,048-token BPE",
            data="tinystories-v2-train",
            tokenizer="bpe",
            # the same 1,200 steps of 8,192 tokens, now a small part of one epoch: every batch is new text, so
            # neither dropout nor keep_best is needed; val_fraction is small because the measurement uses the
            # official validation split
            model=_TINYSTORIES_MODEL | dict(dropout=0.0),
            train=_TINYSTORIES_TRAIN | dict(val_fraction=0.001),
            prompts=_TINYSTORIES_PROMPTS,
            sample_tokens=160,
            eval_data="tinystories-v2-valid",
            eval_chars=4 << 20,
            needs="the full TinyStories V2 (`mmlab data download tinystories-v2-train tinystories-v2-valid`)",
        ),
    ]
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise MMLabError(f"unknown recipe {name!r}; available: {', '.join(RECIPES)}")
    return RECIPES[name]


_MISSING = object()


def recipe_overrides(recipe: Recipe, max_iters: int | None = None, **train_overrides: Any) -> dict[str, Any]:
    """The TrainConfig fields a run changes from the recipe: none means the run *is* the recipe (full).
    ``max_iters`` also scales the evaluation interval and warmup to the shorter run."""
    overrides: dict[str, Any] = dict(train_overrides)
    if max_iters is not None:
        overrides |= {"max_iters": max_iters, "eval_interval": max(1, min(max_iters, recipe.train["eval_interval"])),
                      "warmup_iters": min(recipe.train["warmup_iters"], max_iters // 2)}
    return {k: v for k, v in overrides.items() if recipe.train.get(k, _MISSING) != v}


def run_recipe(name: str, out: str, overwrite: bool = False, max_iters: int | None = None,
               results_dir: str | None = None, **train_overrides: Any) -> dict[str, Any]:
    """Train recipe ``name`` into ``out``, measure it, and write ``<results_dir or out>/recipe_<name>.json``
    and its plot. ``max_iters`` shortens the run (a smoke test) and ``train_overrides`` change TrainConfig
    fields (e.g. ``dtype="fp32", compile=False`` on a machine without bf16 units): such a run is not the
    recipe, and its results say so (mode ``smoke``)."""
    import numpy as np

    from mmlab.data.corpus import Corpus, load_corpus
    from mmlab.data.pretrain import PretrainData, tokenize_corpus
    from mmlab.infer.sample import sample_text
    from mmlab.lab.runtime import Experiment
    from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model
    from mmlab.train.evaluate import split_loss
    from mmlab.train.pretrain import pretrain

    recipe = get_recipe(name)
    overrides = recipe_overrides(recipe, max_iters, **train_overrides)
    full = not overrides  # the run is the recipe only when nothing differs from the recipe's own settings
    run_files = [n for n in ("ckpt", "ckpt.old", "best") if (Path(out) / n).exists()]
    if run_files and not overwrite:  # before the tokenizer is trained: fail in a second, not a minute
        raise MMLabError(f"{out} already holds a run ({', '.join(run_files)}); pass --overwrite to replace it, or "
                         "choose another --out (nothing was overwritten)")
    cfg = recipe.train_config(out, **overrides)
    exp = Experiment(f"recipe_{name}", f"What does the {name} recipe reach in {recipe.budget_minutes:g} minutes?",
                     mode="full" if full else "smoke", seed=cfg.seed, out_dir=results_dir or out)
    exp.set_config(recipe=name, fingerprint=recipe.fingerprint(), data=recipe.data, tokenizer=recipe.tokenizer,
                   model=recipe.model, train=cfg.to_dict() | {"out_dir": None})
    exp.log(f"recipe {name}: {recipe.summary}")
    t0 = time.perf_counter()
    result = pretrain(recipe.model_config(), recipe.data, cfg, tokenizer=recipe.tokenizer, overwrite=overwrite)
    wall_s = time.perf_counter() - t0
    train_s = max((r.get("train_s", 0.0) for r in result.history), default=0.0)

    # the whole val split, every token once; with keep_best, the weights of the lowest val loss
    weights = result.out_dir / "best" if cfg.keep_best else result.out_dir / "ckpt"
    model = load_model(weights)
    tok = load_checkpoint_tokenizer(weights)
    exp.metric("evaluated_step", result.best_step if cfg.keep_best else result.steps)
    exp.metric("weights", weights.name)  # "best" or "ckpt", inside the run folder
    if recipe.eval_data:  # a streamed corpus: measured on its own validation file (the first eval_chars)
        held = load_corpus(recipe.eval_data, seed=cfg.seed)
        docs, size = [], 0
        for doc in held.documents:
            if recipe.eval_chars is not None and size >= recipe.eval_chars:
                break
            docs.append(doc)
            size += len(doc)
        ids = tokenize_corpus(Corpus(held.name, docs, held.source), tok)
        val = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        train_tokens = None
    else:
        corpus = load_corpus(recipe.data, seed=cfg.seed)
        data = PretrainData.from_tokens(tokenize_corpus(corpus, tok), cfg.val_fraction, cfg.block_size,
                                        corpus.source)
        val, train_tokens = data.val, len(data.train)
    val = val if full else val[: 4 * cfg.block_size + 1]  # a smoke run only checks the plumbing
    exp.log(f"evaluating on {'the whole val split' if full else 'the start of the val split'} ({len(val):,} tokens)")
    measured = split_loss(model, val, tok, cfg.block_size)
    val_loss, bpb = measured.loss, measured.bits_per_byte
    n_params = sum(p.numel() for p in model.parameters())
    exp.metric("val_loss", val_loss)
    exp.metric("val_bits_per_byte", bpb)
    exp.metric("val_tokens", measured.tokens)
    exp.metric("val_bytes", measured.bytes)
    exp.metric("bytes_per_token", measured.bytes_per_token)
    exp.metric("params", n_params)
    exp.metric("vocab_size", tok.vocab_size)
    exp.metric("tokens_seen", result.tokens_seen)
    exp.metric("train_minutes", train_s / 60)
    exp.metric("wall_minutes", wall_s / 60)
    exp.metric("tokens_per_s", result.tokens_seen / max(train_s, 1e-9))
    epochs = [r["epoch"] for r in result.history if "epoch" in r]  # a streamed corpus: the loop counts them
    exp.metric("epochs", result.tokens_seen / train_tokens if train_tokens else (epochs[-1] if epochs else None))

    evals = [r for r in result.history if "val_loss" in r]
    exp.table("curve", ["step", "train minutes", "train loss (20 batches)", "val loss (20 batches)"],
              [[r["step"], r["train_s"] / 60, r.get("train_loss"), r["val_loss"]] for r in evals],
              caption="The loop's progress estimates: 20 fixed random batches per split.")
    exp.table("summary", ["parameters", "tokens seen", "epochs", "train minutes", "tokens/s", "weights of step",
                          "val loss (whole split)", "bits per byte"],
              [[n_params, result.tokens_seen, exp.metrics["epochs"], exp.metrics["train_minutes"],
                exp.metrics["tokens_per_s"], exp.metrics["evaluated_step"], val_loss, bpb]])
    if recipe.target_val_loss is not None:
        where = "on the whole val split" if full else "on the start of the val split (a shortened run)"
        exp.finding(f"val loss <= {recipe.target_val_loss} {where}", val_loss <= recipe.target_val_loss,
                    val_loss=val_loss)
    exp.finding(f"the run takes <= {recipe.budget_minutes:g} minutes on this machine",
                wall_s / 60 <= recipe.budget_minutes, wall_minutes=wall_s / 60, cpu_threads=torch.get_num_threads())

    samples = []
    for i, prompt in enumerate(recipe.prompts):
        n_new = recipe.sample_tokens if full else 16
        text = "".join(sample_text(str(weights), prompt, max_new_tokens=n_new, temperature=0.8, seed=i,
                                   device="cpu"))
        samples.append({"prompt": prompt, "seed": i, "temperature": 0.8, "text": text})
    exp.metric("samples", samples)
    exp.savefig(plot_recipe(recipe, exp.tables["curve"]["rows"], val_loss, exp.metrics["evaluated_step"]))
    exp.save()
    return exp.result()


def plot_recipe(recipe: Recipe, curve: list[list[Any]], val_loss: float, evaluated_step: int | None) -> Any:
    """The loss curves against training time, the whole-split val loss at the step whose weights were
    measured, the references and the target. ``curve``: rows of the results' ``curve`` table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    minutes = [row[1] for row in curve]
    ax.plot(minutes, [row[2] for row in curve], "o-", ms=3, label="train (20 batches)")
    ax.plot(minutes, [row[3] for row in curve], "o-", ms=3, label="val (20 batches)")
    at = next((row[1] for row in curve if row[0] == evaluated_step), minutes[-1] if minutes else None)
    if at is not None:
        ax.plot([at], [val_loss], "k*", ms=11,
                label=f"val, whole split: {val_loss:.3f} (weights of step {evaluated_step or curve[-1][0]})")
    for i, (label, value) in enumerate(recipe.references.items()):
        ax.axhline(value, ls=":", color=f"C{i + 3}", label=label)
    if recipe.target_val_loss is not None:
        ax.axhline(recipe.target_val_loss, ls="--", color="k", lw=0.8, label=f"target {recipe.target_val_loss}")
    ax.set_xlabel("training time (minutes, evaluation excluded)")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(f"recipe {recipe.name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
