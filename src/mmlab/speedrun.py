"""`mmlab speedrun`: the whole pipeline — tokenizer -> pretrain -> SFT -> DPO -> GRPO -> evaluation — on a
laptop, ending in a report card (``report.md`` and ``report.png``).

Every stage is the library's own stage function (``pretrain``, ``sft``, ``dpo``, ``grpo``), writing its
usual run folder under ``<out>/<stage>/``; the next stage starts from the previous stage's checkpoint.
``--from STAGE`` re-runs from that stage on, reusing the earlier stages' checkpoints. The evaluation
measures every stage's checkpoint on the same held-out task prompts, so the card shows what each
stage added.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmlab.config import ModelConfig, get_preset
from mmlab.errors import MMLabError

STAGES = ("pretrain", "sft", "dpo", "grpo", "eval")
CHAT_STAGES = ("sft", "dpo", "grpo")
STAGE_FILE = "stage.json"  # in each stage folder: its wall time and headline numbers


@dataclass(frozen=True)
class SpeedrunPreset:
    name: str
    about: str
    model: ModelConfig
    corpus: str  # the pretraining corpus (a registry name; synthetic-stories when it is not reachable)
    pretrain: dict[str, Any]
    sft: dict[str, Any]
    dpo: dict[str, Any]
    grpo: dict[str, Any]
    grpo_options: dict[str, Any] = field(default_factory=dict)
    dpo_beta: float = 0.1
    heldout: int = 200  # task prompts for the evaluation
    sft_conversations: int = 40_000  # synthetic task conversations for SFT (enough not to repeat them for epochs)
    # real data, tried in order before the fallback: the first one present (or, with download=True, fetchable)
    corpora: tuple[str, ...] = ()
    sft_data: tuple[str, ...] = ()
    dpo_data: tuple[str, ...] = ()
    budget_note: str = ""  # why the pretraining token budget is what it is

    @property
    def tokens_per_step(self) -> int:
        t = self.pretrain
        return t["batch_size"] * t.get("block_size", self.model.max_seq_len) * t.get("grad_accum", 1)

    @property
    def pretrain_tokens(self) -> int:
        return self.tokens_per_step * self.pretrain["max_iters"]


def _laptop() -> SpeedrunPreset:
    model = ModelConfig(name="speedrun-laptop", vocab_size=2048, hidden_size=192, n_layers=4, n_heads=4,
                        n_kv_heads=2, max_seq_len=256, rope_theta=1e4)
    common = {"eval_batches": 10, "log_interval": 25, "seed": 1337, "device": "cpu"}
    return SpeedrunPreset(
        name="laptop", about="4 x 192 (GQA), BPE 2048 on TinyStories; sized for 2 CPU cores",
        model=model, corpus="tinystories-train-2mib",
        # 2 MiB of TinyStories is ~0.5M tokens, so 1,200 steps of 4,096 tokens already repeat it many times;
        # longer pretraining overfits it (the val loss rises)
        pretrain=common | {"max_iters": 1200, "batch_size": 16, "block_size": 256, "lr": 3e-3, "warmup_iters": 60,
                           "schedule": "wsd", "eval_interval": 200, "dtype": "bf16"},
        sft=common | {"max_iters": 1500, "batch_size": 16, "block_size": 256, "lr": 1e-3, "warmup_iters": 50,
                      "eval_interval": 250, "weight_decay": 0.0, "dtype": "bf16"},
        # a small rate: DPO raises preference accuracy but, at larger rates, cuts the tasks' exact match more
        dpo=common | {"max_iters": 150, "batch_size": 8, "block_size": 256, "lr": 5e-5, "warmup_iters": 10,
                      "eval_interval": 50, "weight_decay": 0.0},
        # a small rate: the GRPO lesson's exp3_learning_rate measures held-out accuracy falling at 3e-4
        grpo=common | {"max_iters": 300, "batch_size": 8, "block_size": 256, "lr": 3e-5, "warmup_iters": 10,
                       "eval_interval": 300, "weight_decay": 0.0, "log_interval": 10},
        grpo_options={"group_size": 8, "kl_coef": 0.04, "max_new_tokens": 12},
        budget_note="2 MiB of TinyStories seen many times over: sized for 2 CPU cores, not for a good model",
    )


# The GPU presets: bf16 autocast, SDPA (flash attention where the GPU has it), torch.compile, and batches sized
# for a 24 GB card. The budgets are for one process: under `torchrun --nproc_per_node N` each rank takes
# batch_size rows, so the same steps see N times the tokens (divide max_iters by N to keep the budget).
_GPU = {"eval_batches": 20, "log_interval": 50, "seed": 1337, "device": "auto", "dtype": "bf16", "compile": True}
_REAL_CORPORA = ("minimind-pretrain", "tinystories-v2-train", "fineweb-edu-sample")


def _gpu_preset(name: str, model: ModelConfig, pretrain: dict[str, Any], sft_steps: int, about: str,
                budget_note: str) -> SpeedrunPreset:
    post = {"batch_size": 32, "block_size": 512, "weight_decay": 0.0}
    return SpeedrunPreset(
        name=name, about=about, model=model, corpus="tinystories-train-2mib",
        # val_fraction: 0.5% of a GB-sized corpus is millions of held-out tokens, plenty for 20 eval batches
        pretrain=_GPU | {"block_size": 512, "schedule": "wsd", "eval_interval": 1000, "val_fraction": 0.005} | pretrain,
        sft=_GPU | post | {"max_iters": sft_steps, "lr": 3e-4, "warmup_iters": 100, "eval_interval": 500},
        dpo=_GPU | post | {"max_iters": 500, "batch_size": 16, "lr": 1e-5, "warmup_iters": 20, "eval_interval": 100,
                           "compile": False},
        grpo=_GPU | post | {"max_iters": 300, "batch_size": 16, "lr": 1e-5, "warmup_iters": 10, "eval_interval": 300,
                            "log_interval": 10, "compile": False},
        grpo_options={"group_size": 8, "kl_coef": 0.04, "max_new_tokens": 16},
        corpora=_REAL_CORPORA, sft_data=("minimind-sft",), dpo_data=("minimind-dpo",), budget_note=budget_note)


def _minimind_26m() -> SpeedrunPreset:
    # 64 x 512 tokens a step, 15,000 steps: 0.49B tokens, about 19 per parameter (Chinchilla's ~20)
    return _gpu_preset(
        "minimind-26m", get_preset("minimind-26m"),
        {"max_iters": 15_000, "batch_size": 64, "lr": 1e-3, "warmup_iters": 500},
        sft_steps=3000, about="MiniMind's 26M model, BPE 6400, on real corpora (for one GPU)",
        budget_note="about 20 tokens per parameter, Chinchilla's compute-optimal ratio (MiniMind's own recipe is "
                    "one epoch over its pretraining file)")


def _minimind_104m() -> SpeedrunPreset:
    # 32 x 512 x 2 accumulated = 32,768 tokens a step, 30,000 steps: 0.98B tokens
    return _gpu_preset(
        "minimind-104m", get_preset("minimind-104m"),
        {"max_iters": 30_000, "batch_size": 32, "grad_accum": 2, "lr": 6e-4, "warmup_iters": 1000},
        sft_steps=5000, about="MiniMind's 104M model (16 x 768), BPE 6400, on real corpora (for one GPU)",
        budget_note="about 9 tokens per parameter: under Chinchilla's 20 (2B tokens) to keep one GPU's run "
                    "within a working day; raise max_iters to train longer")


PRESETS = {"laptop": _laptop, "minimind-26m": _minimind_26m, "minimind-104m": _minimind_104m}


def plan(name: str, sustained_tflops: float | None = None) -> dict[str, Any]:
    """What a preset's pretraining will do: tokens, steps, FLOPs, and (given the sustained bf16 TFLOP/s a GPU
    reaches on this model) the hours it takes. The hours are an estimate, not a measurement."""
    from mmlab.model.summary import flops_per_token, param_breakdown

    p = get_speedrun_preset(name)
    block = p.pretrain.get("block_size", p.model.max_seq_len)
    fpt = flops_per_token(p.model, context=block)["train"]  # 3 x forward; attention at the full context
    params = sum(param_breakdown(p.model).values())
    out = {"preset": name, "params": params, "tokens_per_step": p.tokens_per_step, "steps": p.pretrain["max_iters"],
           "tokens": p.pretrain_tokens, "tokens_per_param": p.pretrain_tokens / params, "flops_per_token": fpt,
           "flops": fpt * p.pretrain_tokens, "budget_note": p.budget_note, "corpora": list(p.corpora),
           "dtype": p.pretrain.get("dtype"), "compile": p.pretrain.get("compile", False)}
    if sustained_tflops:
        out["sustained_tflops"] = sustained_tflops
        out["hours"] = out["flops"] / (sustained_tflops * 1e12) / 3600
    return out


def get_speedrun_preset(name: str) -> SpeedrunPreset:
    if name not in PRESETS:
        raise MMLabError(f"unknown speedrun preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]()


def _scaled(train: dict[str, Any], scale: float) -> dict[str, Any]:
    """Shorten a stage (tests, smoke runs): steps, warmup and intervals times ``scale``."""
    if scale == 1.0:
        return dict(train)
    out = dict(train)
    out["max_iters"] = max(2, int(train["max_iters"] * scale))
    out["warmup_iters"] = min(train.get("warmup_iters", 0), out["max_iters"] // 2)
    for key in ("eval_interval", "log_interval"):
        if key in train:
            out[key] = max(1, min(out["max_iters"], int(train[key] * scale)))
    out["eval_batches"] = min(train.get("eval_batches", 20), 4)
    return out


def _reachable(corpus: str, download: bool = False, log=print) -> bool:
    from mmlab.data.registry import DataError, HubFile, dataset_path, get_dataset

    try:
        dataset_path(corpus, download=False)
        return True
    except DataError:
        if not download:
            return False
    ds = get_dataset(corpus)
    log(f"downloading {corpus} ({ds.approx_size if isinstance(ds, HubFile) else f'{ds.size:,} B'})")
    try:
        dataset_path(corpus, download=True)
        return True
    except DataError as e:
        log(f"note: {e}")
        return False


def _first_reachable(candidates: tuple[str, ...], fallback: str, download: bool, log) -> str:
    return next((c for c in candidates if _reachable(c, download, log)), fallback)


def speedrun(out: str | Path, preset: str = "laptop", from_stage: str = "pretrain", overwrite: bool = False,
             scale: float = 1.0, overrides: dict[str, Any] | None = None, log=print,
             download: bool = False) -> dict[str, Any]:
    """Run the pipeline into ``out``; returns the report card's data (also ``<out>/report.json``).
    ``overrides``: TrainConfig fields applied to every stage (e.g. ``{"dtype": "fp32", "compile": False}``).
    The GPU presets train on the first of their real corpora that is in the cache or mirror (``download``: or
    that can be fetched), SFT and DPO on MiniMind's files likewise; otherwise on the built-in data."""
    from mmlab.train.config import TrainConfig
    from mmlab.train.dpo import SYNTHETIC_PAIRS, dpo
    from mmlab.train.grpo import grpo
    from mmlab.train.pretrain import pretrain
    from mmlab.train.sft import SYNTHETIC_TASKS, sft

    if from_stage not in STAGES:
        raise MMLabError(f"unknown stage {from_stage!r}; stages: {', '.join(STAGES)}")
    if not 0 < scale <= 1:
        raise MMLabError(f"scale={scale} must be in (0, 1]")
    p = get_speedrun_preset(preset)
    out = Path(out)
    todo = STAGES[STAGES.index(from_stage):]
    for stage in STAGES[:STAGES.index(from_stage)]:
        if stage != "eval" and not (out / stage / "ckpt").exists():
            raise MMLabError(f"--from {from_stage} needs the {stage} stage's checkpoint in {out / stage}; run the "
                             "earlier stages first")
    for stage in todo:
        if stage != "eval" and (out / stage / "ckpt").exists() and not overwrite:
            raise MMLabError(f"{out / stage} already holds a run; pass --overwrite to replace the stages from "
                             f"{from_stage} on (earlier stages are kept), or choose another --out")
    corpus = _first_reachable(p.corpora, p.corpus, download, log) if "pretrain" in todo else p.corpus
    if corpus == p.corpus and not _reachable(p.corpus):
        corpus = "synthetic-stories"
    if p.corpora and corpus not in p.corpora and "pretrain" in todo:
        log(f"note: none of {', '.join(p.corpora)} is in the cache or the mirror (`mmlab data download NAME`, or "
            f"--download); pretraining on {corpus}, a small corpus: the model will not get far")
    elif corpus == "synthetic-stories":
        log(f"note: {p.corpus} is not reachable (no cache, no MMLAB_DATA_MIRROR); pretraining on the built-in "
            "synthetic-stories corpus instead")
    sft_data = _first_reachable(p.sft_data, SYNTHETIC_TASKS, download, log) if "sft" in todo else SYNTHETIC_TASKS
    dpo_data = _first_reachable(p.dpo_data, SYNTHETIC_PAIRS, download, log) if "dpo" in todo else SYNTHETIC_PAIRS
    extra = overrides or {}

    def cfg(stage: str, train: dict[str, Any]) -> TrainConfig:
        return TrainConfig(out_dir=str(out / stage), progress=False, **(_scaled(train, scale) | extra))

    def record(stage: str, t0: float, **numbers: Any) -> None:
        (out / stage).mkdir(parents=True, exist_ok=True)
        (out / stage / STAGE_FILE).write_text(json.dumps({"stage": stage, "wall_s": time.perf_counter() - t0,
                                                          **numbers}, indent=2, default=str) + "\n")

    for stage in todo:
        t0 = time.perf_counter()
        log(f"== speedrun {preset}: {stage}")
        if stage == "pretrain":
            result = pretrain(p.model, corpus, cfg("pretrain", p.pretrain), tokenizer="bpe", overwrite=overwrite)
            record("pretrain", t0, corpus=corpus, steps=result.steps, final_val_loss=result.final_val_loss,
                   tokens_seen=result.tokens_seen)
        elif stage == "sft":
            run = sft(out / "pretrain", sft_data, cfg("sft", p.sft), overwrite=overwrite, evaluate=False,
                      n_synthetic=max(100, int(p.sft_conversations * scale)),
                      val_fraction=0.1 if sft_data == SYNTHETIC_TASKS else 0.01)
            record("sft", t0, data=sft_data, steps=run.result.steps, final_val_loss=run.result.final_val_loss)
        elif stage == "dpo":
            r = dpo(out / "sft", dpo_data, cfg("dpo", p.dpo), beta=p.dpo_beta, overwrite=overwrite,
                    n_generate=max(5, int(100 * scale)), max_val_pairs=max(8, int(300 * scale)),
                    val_fraction=0.1 if dpo_data == SYNTHETIC_PAIRS else 0.01)
            record("dpo", t0, data=dpo_data, steps=r["steps"], before=_numbers(r["before"]),
                   after=_numbers(r["after"]))
        elif stage == "grpo":
            r = grpo(out / "dpo", cfg("grpo", p.grpo), overwrite=overwrite, n_heldout=max(5, int(100 * scale)),
                     **p.grpo_options)
            record("grpo", t0, steps=r["steps"], rollouts=r["rollouts"])
        else:
            evaluate_stages(out, p, scale, log)
            record("eval", t0)
    return write_report(out, p)


def _numbers(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float))}


def evaluate_stages(out: Path, p: SpeedrunPreset, scale: float = 1.0, log=print) -> dict[str, Any]:
    """Every stage's checkpoint on the same held-out prompts: exact match and answer loss on the
    verifiable tasks (prompts no stage trained on); the base model's val loss on its corpus."""
    from mmlab.device import resolve_device
    from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model
    from mmlab.train.grpo import task_prompts
    from mmlab.train.sft import evaluate_sft, load_sft_data

    n = max(5, int(p.heldout * scale))
    train_prompts = {c[0]["content"] for c in load_sft_data("synthetic-tasks", seed=p.sft.get("seed", 1337),
                                                            n_synthetic=max(100, int(p.sft_conversations * scale)))}
    heldout = [q for q in task_prompts(4 * n, seed=99_991) if q.messages[0]["content"] not in train_prompts][:n]
    convs = [[*q.messages, {"role": "assistant", "content": q.answer}] for q in heldout]
    results = {}
    for stage in ("pretrain", *CHAT_STAGES):
        ckpt = out / stage
        if not (ckpt / "ckpt").exists():
            continue
        model, tok = load_model(ckpt, device=resolve_device(p.pretrain.get("device", "auto"))), \
            load_checkpoint_tokenizer(ckpt)
        r = evaluate_sft(model, tok, convs, model.cfg.max_seq_len, max_new_tokens=12)
        results[stage] = {k: r[k] for k in ("exact_match", "rouge_l", "answer_loss", "samples")}
        log(f"   {stage:<9} exact match {r['exact_match']:.3f}  answer loss {r['answer_loss']:.3f}")
    report = {"heldout_prompts": len(convs), "stages": results}
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_report(out: Path, p: SpeedrunPreset) -> dict[str, Any]:
    """``report.json``, ``report.md`` and ``report.png`` from the stage folders."""
    stages = {s: json.loads((out / s / STAGE_FILE).read_text()) for s in STAGES if (out / s / STAGE_FILE).is_file()}
    evals = json.loads((out / "eval.json").read_text()) if (out / "eval.json").is_file() else {"stages": {}}
    card = {"preset": p.name, "about": p.about, "stages": stages, "eval": evals,
            "total_minutes": sum(s["wall_s"] for s in stages.values()) / 60}
    (out / "report.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    _plot_report(out, evals)
    lines = [f"# Speedrun report card: {p.name}", "", p.about, "",
             "| stage | wall time (min) | what it measured |", "|---|---|---|"]
    for name, s in stages.items():
        what = ""
        if name == "pretrain":
            what = f"val loss {s.get('final_val_loss', float('nan')):.4f} on {s.get('corpus')}"
        elif name == "sft":
            what = f"val loss on held-out answers {s.get('final_val_loss', float('nan')):.4f}"
        elif name == "dpo":
            b, a = s.get("before", {}), s.get("after", {})
            what = (f"held-out preference accuracy {b.get('accuracy', float('nan')):.3f} -> "
                    f"{a.get('accuracy', float('nan')):.3f}, reward margin {a.get('reward_margin', float('nan')):.3f}")
        elif name == "grpo" and s.get("rollouts"):
            r = s["rollouts"]
            what = f"rollout reward {r[0]['reward']:.3f} -> {r[-1]['reward']:.3f}"
        lines.append(f"| {name} | {s['wall_s'] / 60:.1f} | {what} |")
    lines += ["", f"Total: {card['total_minutes']:.1f} minutes.", ""]
    if evals["stages"]:
        lines += [f"Held-out verifiable tasks ({evals.get('heldout_prompts')} prompts no stage trained on; greedy "
                  "answers):", "", "| after stage | exact match | ROUGE-L | answer loss (nats/token) |",
                  "|---|---|---|---|"]
        for name, r in evals["stages"].items():
            lines.append(f"| {name} | {r['exact_match']:.3f} | {r['rouge_l']:.3f} | {r['answer_loss']:.3f} |")
        lines += ["", "![report](report.png)", ""]
        last = list(evals["stages"].values())[-1]
        lines += ["Samples from the last stage:", ""]
        lines += [f"- `{s['prompt']}` -> `{s['answer']}` (reference `{s['reference']}`)" for s in last["samples"]]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return card


def _plot_report(out: Path, evals: dict[str, Any]) -> None:
    from mmlab.lab.plots import figure

    fig, axes = figure(4, width=4.2)
    ax = axes[0][0]
    for stage in ("pretrain", "sft"):
        rec = [r for r in _metrics(out / stage / "metrics.jsonl") if "loss" in r]
        if rec:
            ax.plot([r["step"] for r in rec], [r["loss"] for r in rec], label=f"{stage} (train)")
    ax.set(xlabel="optimizer step", ylabel="loss (nats/token)", title="pretraining and SFT")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    rec = [r for r in _metrics(out / "dpo" / "metrics.jsonl") if "loss" in r]
    if rec:
        ax.plot([r["step"] for r in rec], [r["loss"] for r in rec], color="C2", label="train")
    val = [r for r in _metrics(out / "dpo" / "metrics.jsonl") if "val_loss" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", color="C3", label="held out")
    ax.set(xlabel="optimizer step", ylabel="DPO loss", title="DPO")
    ax.legend(fontsize=8)
    ax = axes[0][2]
    stage = json.loads((out / "grpo" / STAGE_FILE).read_text()) if (out / "grpo" / STAGE_FILE).is_file() else {}
    rollouts = stage.get("rollouts") or []
    if rollouts:
        window = max(1, len(rollouts) // 15)  # a moving average over the noisy per-batch means
        for key, color, label in (("reward", "C4", "reward"), ("accuracy", "C5", "exact answers")):
            values = [r[key] for r in rollouts]
            smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                      for i in range(len(values))]
            ax.plot(range(1, len(values) + 1), values, color=color, alpha=0.2)
            ax.plot(range(1, len(values) + 1), smooth, color=color, label=f"{label} (moving mean of {window})")
    ax.set(xlabel="rollout batch", ylabel="mean over the batch's completions", title="GRPO rollouts")
    ax.legend(fontsize=8)
    ax = axes[0][3]
    names = list(evals["stages"])
    ax.bar(names, [evals["stages"][n]["exact_match"] for n in names], color=[f"C{i}" for i in range(len(names))])
    ax.set(xlabel="after stage", ylabel="held-out exact match", title="what each stage added")
    fig.savefig(out / "report.png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
