"""The ``mmlab`` command. Subcommands parse flags and call library functions; no logic lives here.

Errors a user can fix (a bad flag, an unknown preset, a malformed config file) are printed as one
line on stderr with exit status 2 (usage) or 1 (bad input), never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmlab import __version__
from mmlab.errors import MMLabError


def _cmd_info(args: argparse.Namespace) -> int:
    from mmlab.device import environment

    env = environment()
    if args.json:
        print(json.dumps(env, indent=2))
    else:
        width = max(map(len, env))
        for key, value in env.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _load_config(args: argparse.Namespace):
    from mmlab.config import ModelConfig, get_preset

    if args.config:
        return ModelConfig.from_json(args.config)
    return get_preset(args.preset)


def _cmd_model_summary(args: argparse.Namespace) -> int:
    from mmlab.model.summary import format_summary, summarize

    summary = summarize(_load_config(args), context=args.context)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _cmd_model_presets(args: argparse.Namespace) -> int:
    from mmlab.config import PRESETS
    from mmlab.model.summary import param_breakdown

    for name, cfg in PRESETS.items():
        n = sum(param_breakdown(cfg).values())
        print(f"{name:<18}{n:>14,} params  {cfg.n_layers} layers x {cfg.hidden_size} hidden, "
              f"{cfg.n_heads}/{cfg.kv_heads} heads, vocab {cfg.vocab_size}")
    return 0


def _cmd_data_list(args: argparse.Namespace) -> int:
    from mmlab.data.registry import REGISTRY, HubFile, cache_dir, mirror_dir
    from mmlab.data.synthetic import SYNTHETIC_CORPORA

    print(f"cache: {cache_dir()}   mirror (MMLAB_DATA_MIRROR): {mirror_dir() or 'unset'}")
    for ds in REGISTRY.values():
        if isinstance(ds, HubFile):
            print(f"{ds.name:<24}{ds.approx_size:>13}  {ds.kind:<6} {ds.description} [hub: {ds.repo_id}, "
                  f"{ds.stage}]")
        else:
            print(f"{ds.name:<24}{ds.size:>11,} B  {ds.kind:<6} {ds.description}")
    for name in SYNTHETIC_CORPORA:
        print(f"{name:<24}{'built-in':>13}  text   deterministic story-world corpus (no file, works offline)")
    return 0


def _cmd_data_path(args: argparse.Namespace) -> int:
    from mmlab.data.registry import dataset_path

    print(dataset_path(args.name, download=not args.no_download))
    return 0


def _cmd_data_download(args: argparse.Namespace) -> int:
    from mmlab.data.registry import REGISTRY, HubFile, fetch, get_dataset

    names = [n for n, d in REGISTRY.items() if not isinstance(d, HubFile)] if args.all else args.names
    if not names:
        raise MMLabError("name at least one dataset, or pass --all")
    for name in names:
        print(f"{name}: {fetch(get_dataset(name), force=args.force)}")
    return 0


def _cmd_data_verify(args: argparse.Namespace) -> int:
    from mmlab.data.hub import hub_path, local_copy
    from mmlab.data.registry import REGISTRY, DataError, HubFile, dataset_path, get_dataset

    failures = 0
    for name in args.names or list(REGISTRY):
        try:
            ds = get_dataset(name)
            if isinstance(ds, HubFile) and not args.names and local_copy(ds) is None:
                print(f"-       {name}: not fetched (hub file, {ds.approx_size}: `mmlab data download {name}`)")
                continue
            path = hub_path(ds, download=False, rehash=True) if isinstance(ds, HubFile) else \
                dataset_path(name, download=False)
            print(f"ok      {name}: {path}")
        except DataError as e:
            failures += 1
            print(f"FAILED  {name}: {e}")
    return 1 if failures else 0


def _train_config(args: argparse.Namespace):
    """The flags given on the command line, over the saved run's config when resuming."""
    from mmlab.train.config import TrainConfig

    given = {k: getattr(args, k) for k in ("max_iters", "batch_size", "block_size", "grad_accum", "lr", "min_lr",
                                           "warmup_iters", "lr_decay_iters", "schedule", "optimizer",
                                           "weight_decay", "grad_clip", "dtype",
                                           "device", "compile", "eval_interval", "eval_batches", "log_interval",
                                           "seed")
             if getattr(args, k, None) is not None}
    if args.resume:
        return TrainConfig.for_resume(args.out, **given)
    given.setdefault("dtype", "auto")  # the command line picks this machine's dtype (the library's default: fp32)
    return TrainConfig(out_dir=args.out, **given)


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """The TrainConfig flags every training stage shares, and --out / --resume / --overwrite."""
    p.add_argument("--out", required=True, help="run folder: checkpoint, metrics.jsonl, loss.png")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (only a run's own files are deleted; other folders are refused)")
    p.add_argument("--max-iters", type=_positive_int)
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--block-size", type=_positive_int, help="tokens per row (default: the model's max_seq_len)")
    p.add_argument("--grad-accum", type=_positive_int, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float)
    p.add_argument("--min-lr", type=float)
    p.add_argument("--warmup-iters", type=int)
    p.add_argument("--lr-decay-iters", type=_positive_int,
                   help="step where the decay reaches min_lr (default: max_iters; on --resume, the run's own)")
    p.add_argument("--schedule", choices=["cosine", "constant", "wsd"])
    p.add_argument("--optimizer", choices=["adamw", "sgd", "muon"],
                   help="adamw (default), sgd with momentum, or muon (hidden matrices; AdamW for the rest)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto (default): bf16 where this machine runs it fast for the model's width, else fp32 "
                        "(`mmlab info` shows the choice and why)")
    p.add_argument("--device", help="auto | cpu | cuda | mps")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--eval-interval", type=_positive_int)
    p.add_argument("--eval-batches", type=_positive_int)
    p.add_argument("--log-interval", type=_positive_int)
    p.add_argument("--seed", type=int)


def _add_rollout_flags(p: argparse.ArgumentParser, ppo_epochs: int) -> None:
    """The flags `train grpo` and `train ppo` share: sampling, the clip, the KL to the reference, the tasks."""
    p.add_argument("--group-size", type=_positive_int, default=8, help="completions sampled per prompt (G)")
    p.add_argument("--kl-coef", type=float, default=0.04, help="weight of the KL penalty to the reference")
    p.add_argument("--clip-eps", type=float, default=0.2, help="PPO clip range of the probability ratio")
    p.add_argument("--ppo-epochs", type=_positive_int, default=ppo_epochs,
                   help=f"optimizer steps per rollout batch (default {ppo_epochs})")
    p.add_argument("--max-new-tokens", type=_positive_int, default=12)
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the rollouts")
    p.add_argument("--tasks", default=None, help="comma-separated task kinds (add,sub,mul,copy,reverse,fact)")


def _parse_set(items: list[str]) -> dict[str, Any]:
    """``--set n_kv_heads=1 --set causal=false`` -> {"n_kv_heads": 1, "causal": False}: values are JSON
    (numbers, true/false, null), anything else is a string."""
    changes: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise MMLabError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set n_kv_heads=1")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        changes[key.strip()] = value
    return changes


def _cmd_train_pretrain(args: argparse.Namespace) -> int:
    from mmlab.config import ModelConfig
    from mmlab.train import distributed
    from mmlab.train.pretrain import pretrain

    if args.resume and (args.preset or args.config or args.tokenizer != "auto"):
        print("note: --preset, --config and --tokenizer are ignored with --resume: the run continues with its "
              "own model and tokenizer", file=sys.stderr)
    model_cfg = ModelConfig.from_json(args.config) if args.config else (args.preset or "shakespeare-char")
    if args.set:
        if args.resume:
            raise MMLabError("--set changes the model, which a resumed run cannot do: start a new run with --out")
        from mmlab.config import get_preset

        base = model_cfg if isinstance(model_cfg, ModelConfig) else get_preset(model_cfg)
        model_cfg = base.replace(**_parse_set(args.set))
    try:
        result = pretrain(model_cfg, args.data, _train_config(args), tokenizer=args.tokenizer, resume=args.resume,
                          overwrite=args.overwrite, stream=args.stream)
    finally:
        distributed.teardown()
    if not distributed.setup_was_main():
        return 0
    val = "n/a" if result.final_val_loss is None else f"{result.final_val_loss:.4f}"
    print(f"done: {result.steps} steps in {result.elapsed_s:.1f} s, final val loss {val}; "
          f"checkpoint {result.out_dir / 'ckpt'}, plot {result.out_dir / 'loss.png'}")
    return 0


SFT_DEFAULTS = {"max_iters": 300, "lr": 5e-4, "warmup_iters": 20, "eval_interval": 50, "batch_size": 16,
                "weight_decay": 0.0}
LORA_DEFAULTS = SFT_DEFAULTS | {"lr": 2e-3}


def _cmd_train_sft(args: argparse.Namespace) -> int:
    """`mmlab train sft` and `mmlab train lora`: one stage, with or without an adapter."""
    from mmlab.model.lora import LoRAConfig
    from mmlab.train.sft import sft

    lora = None
    if args.train_command == "lora":
        lora = LoRAConfig(rank=args.rank, alpha=args.alpha, dropout=args.lora_dropout, target_modules=args.targets,
                          train_modules=args.train_modules)
    cfg = _stage_config(args, LORA_DEFAULTS if lora else SFT_DEFAULTS)
    if not args.resume and not args.base:
        raise MMLabError("--base is required: the checkpoint (or run folder) to fine-tune")
    run = sft(args.base, args.data, cfg, mode=args.mode, val_fraction=args.val_fraction, lora=lora,
              resume=args.resume, overwrite=args.overwrite, n_generate=args.eval_items,
              train_on_prompt=args.loss_on == "all")
    out = Path(cfg.out_dir)
    print(f"\ntrainable parameters: {run.trainable:,} of {run.total:,} ({run.trainable / run.total:.1%})")
    for split, rep in run.encoding.items():
        if rep["cut_at_block"] or rep["dropped"]:
            print(f"{split}: {rep['cut_at_block']} conversation(s) cut at the block, {rep['dropped']} dropped "
                  f"(no answer token left; first: {', '.join(rep['dropped_records'][:5])})")
    rows = [("answer loss (nats/token)", "answer_loss"), ("exact match", "exact_match"), ("ROUGE-L", "rouge_l")]
    if run.before:
        print(f"held out ({run.after.get('n_heldout')} conversations):   before      after")
        for label, key in rows:
            print(f"  {label:<26}{run.before[key]:>8.4f}  {run.after[key]:>8.4f}")
    for sample in run.after.get("samples", []):
        print(f"\n  prompt:    {sample['prompt'][:100]!r}\n  reference: {sample['reference'][:100]!r}\n"
              f"  answer:    {sample['answer'][:100]!r}")
    print(f"\ncheckpoint {out / 'ckpt'}, held-out report {out / 'sft_eval.json'}, plot {out / 'loss.png'}")
    return 0


DPO_DEFAULTS = {"max_iters": 200, "lr": 2e-4, "warmup_iters": 10, "eval_interval": 50, "batch_size": 8,
                "weight_decay": 0.0}


def _stage_config(args: argparse.Namespace, defaults: dict[str, Any]):
    """The stage's TrainConfig: flags given on the command line, else the stage's defaults (on --resume,
    the run's own config)."""
    from mmlab.train.config import TrainConfig

    if args.resume:
        return _train_config(args)
    given = _train_config(args).to_dict()
    explicit = {k for k in given if getattr(args, k, None) is not None}
    return TrainConfig.from_dict(given | {k: v for k, v in defaults.items() if k not in explicit})


def _cmd_train_dpo(args: argparse.Namespace) -> int:
    from mmlab.train.dpo import dpo

    if not args.resume and not args.base:
        raise MMLabError("--base is required: the checkpoint (usually an SFT run) to preference-tune")
    cfg = _stage_config(args, DPO_DEFAULTS)
    record = dpo(args.base, args.data, cfg, beta=args.beta, val_fraction=args.val_fraction, resume=args.resume,
                 overwrite=args.overwrite, n_generate=args.eval_items)
    print(f"\npairs: {record['pairs']['train']} train, {record['pairs']['val']} held out; skipped (no answer token "
          f"within the block): {record['skipped']['train_count']} train, {record['skipped']['val_count']} held out")
    keys = [k for k in ("loss", "reward_margin", "accuracy", "chosen_reward", "rejected_reward", "exact_match")
            if k in record["after"]]
    if record["before"]:
        print("held out:                     before      after")
        for k in keys:
            print(f"  {k:<26}{record['before'][k]:>8.4f}  {record['after'][k]:>8.4f}")
    out = Path(cfg.out_dir)
    print(f"\ncheckpoint {out / 'ckpt'}, held-out report {out / 'dpo_eval.json'}, plot {out / 'loss.png'}")
    return 0


GRPO_DEFAULTS = {"max_iters": 100, "lr": 5e-4, "warmup_iters": 5, "eval_interval": 100, "batch_size": 8,
                 "weight_decay": 0.0, "log_interval": 5}
DISTILL_DEFAULTS = {"max_iters": 500, "lr": 2e-3, "warmup_iters": 50, "eval_interval": 100, "batch_size": 16}


def _cmd_train_grpo(args: argparse.Namespace) -> int:
    """`mmlab train grpo` and `mmlab train ppo`: the same rollouts and rewards, two ways to get a baseline."""
    is_ppo = args.train_command == "ppo"
    if not args.resume and not args.base:
        raise MMLabError("--base is required: the checkpoint (an SFT or DPO run) to train with rewards")
    cfg = _stage_config(args, GRPO_DEFAULTS)
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    shared = {"group_size": args.group_size, "kl_coef": args.kl_coef, "clip_eps": args.clip_eps,
              "ppo_epochs": args.ppo_epochs, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
              "tasks": tasks, "resume": args.resume, "overwrite": args.overwrite}
    if is_ppo:
        from mmlab.train import ppo as stage

        record = stage.ppo(args.base, cfg, gamma=args.gamma, lam=args.lam, vf_coef=args.vf_coef,
                           cliprange_value=args.cliprange_value, **shared)
    else:
        from mmlab.train import grpo as stage

        record = stage.grpo(args.base, cfg, reward=args.reward, **shared)
    rollouts = record["rollouts"]
    if rollouts:
        first, last = rollouts[0], rollouts[-1]
        print(f"\nrollout reward {first['reward']:.3f} -> {last['reward']:.3f}, sampled accuracy "
              f"{first['accuracy']:.3f} -> {last['accuracy']:.3f} over {len(rollouts)} rollout batches")
    if record["before"]:
        print(f"held-out exact match ({record['heldout_prompts']} prompts, greedy): "
              f"{record['before']['exact_match']:.3f} -> {record['after']['exact_match']:.3f}")
    if is_ppo:
        m = record["memory"]
        print(f"wall time {record['wall_s']:.1f} s, peak RSS {m['peak_rss_mib']:.0f} MiB, weights + gradients + "
              f"AdamW state {m['model_state_mib']:.1f} MiB (policy and critic)")
    out = Path(cfg.out_dir)
    print(f"checkpoint {out / 'ckpt'}, report {out / stage.EVAL_FILE}")
    return 0


def _cmd_train_agent_rl(args: argparse.Namespace) -> int:
    """`mmlab train agent-rl`: multi-turn RL with tools on the synthetic tool tasks."""
    from mmlab.data.tool_tasks import parse_kinds
    from mmlab.train.agent_rl import EVAL_FILE, agent_rl, tool_task_prompts, tool_task_split

    if args.resume:
        raise MMLabError("train agent-rl has no --resume: its runs are short; start again with --overwrite")
    try:
        kinds = parse_kinds(args.kinds)
    except ValueError as e:
        raise MMLabError(f"--kinds: {e}") from None
    cfg = _stage_config(args, GRPO_DEFAULTS)
    train, heldout = tool_task_split(args.n_prompts, args.n_heldout, cfg.seed, kinds)
    record = agent_rl(args.base, cfg, tool_task_prompts(train), tool_task_prompts(heldout),
                      heldout_groups=[t.label for t in heldout],
                      loss=args.loss, group_size=args.group_size, ppo_epochs=args.ppo_epochs, clip_eps=args.clip_eps,
                      eps_high=args.eps_high, kl_coef=args.kl_coef, max_turns=args.max_turns,
                      max_new_tokens=args.max_new_tokens, temperature=args.temperature, show_tools=args.show_tools,
                      overwrite=args.overwrite)
    rollouts = record["rollouts"]
    if rollouts:
        print(f"\nrollout reward {rollouts[0]['reward']:.3f} -> {rollouts[-1]['reward']:.3f} over "
              f"{len(rollouts)} rollout batches")
    b, a = record["before"], record["after"]
    print(f"held-out accuracy ({record['heldout_prompts']} tasks, greedy episodes): {b['accuracy']:.3f} -> "
          f"{a['accuracy']:.3f}; episodes that call a tool {b['used_tool']:.2f} -> {a['used_tool']:.2f}")
    for group in a["by_group"]:
        print(f"  {group:<28} {b['by_group'][group]:.3f} -> {a['by_group'][group]:.3f}")
    out = Path(cfg.out_dir)
    print(f"checkpoint {out / 'ckpt'}, report {out / EVAL_FILE}")
    return 0


def _cmd_train_distill(args: argparse.Namespace) -> int:
    from mmlab.config import ModelConfig
    from mmlab.train.distill import distill

    if not args.resume and not args.teacher:
        raise MMLabError("--teacher is required: the checkpoint to distill from")
    student = ModelConfig.from_json(args.student_config) if args.student_config else args.student
    cfg = _stage_config(args, DISTILL_DEFAULTS)
    record = distill(args.teacher, args.data, student, cfg, temperature=args.temperature, alpha=args.alpha,
                     resume=args.resume, overwrite=args.overwrite)
    print(f"\nstudent ({record['student_params']:,} params) val loss {record['student_val_loss']:.4f}; teacher "
          f"({record['teacher_params']:,} params) {record['teacher_val_loss']:.4f} on the same "
          f"{record['val_tokens']:,} held-out tokens")
    print(f"checkpoint {Path(cfg.out_dir) / 'ckpt'}, report {Path(cfg.out_dir) / 'distill_eval.json'}")
    return 0


def _cmd_speedrun(args: argparse.Namespace) -> int:
    from mmlab.speedrun import get_speedrun_preset, plan, speedrun

    if args.tflops is not None and not args.tflops > 0:
        raise MMLabError(f"--tflops {args.tflops} must be a positive number (the sustained TFLOP/s of your GPU)")
    if args.plan:
        get_speedrun_preset(args.preset)
        r = plan(args.preset, args.tflops)
        tokens = f"{r['tokens'] / 1e9:.2f}B" if r["tokens"] >= 1e8 else f"{r['tokens'] / 1e6:.1f}M"
        print(f"{r['preset']}: {r['params']:,} parameters; pretraining {r['steps']:,} steps x {r['tokens_per_step']:,} "
              f"tokens = {tokens} tokens ({r['tokens_per_param']:.1f} per parameter: {r['budget_note']})")
        corpus = (f"the first of {', '.join(r['corpora'])} that is local (or, with --download, fetchable)"
                  if r["corpora"] else "tinystories-train-2mib")
        print(f"  {r['flops_per_token'] / 1e6:.0f} MFLOP per token, {r['flops']:.2e} FLOP in all; {r['dtype']}, "
              f"torch.compile {'on' if r['compile'] else 'off'}; corpus: {corpus}")
        if "hours" in r:
            print(f"  at a sustained {r['sustained_tflops']:g} TFLOP/s: about {r['hours']:.1f} hours of pretraining "
                  "(an estimate; measure yours: benchmarks/gpu_pretrain.py)")
        return 0
    overrides = {k: v for k, v in (("dtype", args.dtype), ("device", args.device),
                                   ("compile", False if args.no_compile else None)) if v is not None}
    card = speedrun(args.out, preset=args.preset, from_stage=getattr(args, "from"), overwrite=args.overwrite,
                    scale=args.scale, overrides=overrides, download=args.download)
    print(f"\nreport card: {Path(args.out) / 'report.md'} ({card['total_minutes']:.1f} minutes in all)")
    print((Path(args.out) / "report.md").read_text())
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from mmlab.infer.sample import sample_text

    stats: dict = {}
    for piece in sample_text(args.ckpt, args.prompt, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                             repetition_penalty=args.repetition_penalty, seed=args.seed, device=args.device,
                             draft=args.draft, speculate=args.speculate, stats=stats):
        print(piece, end="", flush=True)
    print()
    if stats:
        print(f"speculative decoding: {stats['accepted']} of {stats['proposed']} draft tokens accepted "
              f"({stats['acceptance_rate']:.1%}); {stats['target_forwards']} forward passes of the model, "
              f"{stats['draft_forwards']} of the draft", file=sys.stderr)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from mmlab.infer.server import ServerConfig, serve
    except ImportError as e:  # the `serve` extra is missing
        raise MMLabError(f"mmlab serve needs FastAPI and uvicorn ({e}): pip install \"minimind-lab[serve]\"") from None

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    serve(args.ckpt, ServerConfig(host=args.host, port=args.port, max_tokens_limit=args.max_tokens_limit,
                                  default_max_tokens=args.default_max_tokens, max_prompt_tokens=args.max_prompt_tokens,
                                  queue=args.queue, batch=args.batch, model_name=args.model_name),
          device=args.device)
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from mmlab.infer.chat import chat

    chat(args.ckpt, system=args.system, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
         top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
         device=args.device)
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from mmlab.infer.quant import quantize_checkpoint

    r = quantize_checkpoint(args.ckpt, args.out, bits=args.bits, group_size=args.group_size,
                            eval_tokens=args.eval_tokens, overwrite=args.overwrite)
    mib = 2 ** 20
    groups = f"groups of {r['group_size']}" if r["group_size"] else "one scale per output channel"
    print(f"int{r['bits']} ({groups}): {r['layers']} linear layers, {r['quantized_params']:,} weights; kept in "
          f"floating point: {', '.join(sorted({n.rsplit('.', 1)[-1] for n in r['kept_linear']})) or 'none'}")
    print(f"model bytes  {r['bytes_before'] / mib:8.3f} MiB -> {r['bytes_after'] / mib:8.3f} MiB "
          f"({r['compression']:.2f}x smaller)")
    print(f"file bytes   {r['file_bytes_before'] / mib:8.3f} MiB -> {r['file_bytes_after'] / mib:8.3f} MiB")
    if r["val_loss_before"] is None:
        print(f"val loss     not measured ({r['eval']})")
    else:
        print(f"val loss     {r['val_loss_before']:.4f} -> {r['val_loss_after']:.4f} ({r['val_loss_change']:+.4f} "
              f"nats/token, perplexity x{r['perplexity_ratio']:.3f}) on {r['eval']}")
    print(f"quantized checkpoint: {r['out']} (mmlab sample --ckpt {r['out']})")
    return 0


def _add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """The sampling flags `mmlab sample` and `mmlab chat` share, and --device."""
    p.add_argument("--max-new-tokens", type=_positive_int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=_positive_int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto")


def _cmd_hf(args: argparse.Namespace) -> int:
    """`mmlab export hf` and `mmlab import hf`."""
    from mmlab.hf_export import export_hf, import_hf

    if args.command == "export":
        r = export_hf(args.ckpt, args.out, overwrite=args.overwrite)
        done = (f"exported {args.ckpt} -> {r['out']} ({', '.join(r['files'])}); load it with "
                f"transformers.AutoModelForCausalLM.from_pretrained({r['out']!r})")
    else:
        r = import_hf(args.hf, args.out, overwrite=args.overwrite)
        done = (f"imported {args.hf} -> {r['out']} (tokenizer: {r['tokenizer'] or 'none'}); "
                f"try: mmlab sample --ckpt {r['out']}")
    for note in r["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(done)
    return 0


def _cmd_gguf(args: argparse.Namespace) -> int:
    """`mmlab export gguf`."""
    from mmlab.gguf_export import export_gguf

    r = export_gguf(args.ckpt, args.out, dtype=args.type, overwrite=args.overwrite)
    for note in r["notes"]:
        print(f"note: {note}", file=sys.stderr)
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(r["tensor_types"].items()))
    print(f"exported {args.ckpt} -> {r['out']} ({r['bytes'] / 2**20:.2f} MiB, GGUF {r['arch']}, type {r['type']}: "
          f"{r['tensors']} tensors, {kinds}); run it with llama.cpp: llama-cli -m {r['out']}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from mmlab.eval.tasks import check_task, format_report, run_eval

    check_task(args.task)  # before loading anything: a typo fails at once
    result = run_eval(args.ckpt, args.task, limit=args.limit, data=args.data, split=args.split, out=args.out,
                      device=args.device, seed=args.seed, max_new_tokens=args.max_new_tokens, progress=True)
    print(format_report(result))
    if args.out:
        print(f"results: {args.out}")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from mmlab.quickstart import quickstart

    quickstart(out=args.out, max_iters=args.max_iters, overwrite=args.overwrite, compile_model=args.compile,
               experiments=not args.no_experiments)
    return 0


def _cmd_exp_list(args: argparse.Namespace) -> int:
    from mmlab.lab.registry import discover

    for script in discover():
        status = "results committed" if script.results_json.is_file() else "no results yet"
        print(f"{script.id:<48} {status:<18} {script.question()}")
    return 0


def _cmd_exp_run(args: argparse.Namespace) -> int:
    import time

    from mmlab.lab.registry import cpu_cores, discover, find, run, run_many

    if args.all == bool(args.id):
        raise MMLabError("name one experiment ID, or pass --all")
    scripts = discover() if args.all else [find(args.id)]
    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    jobs = args.jobs if args.jobs is not None else (cpu_cores() if mode != "full" else 1)
    failed, total, start = [], 0.0, time.perf_counter()
    if jobs == 1 or len(scripts) == 1:  # one after another, each printing as it goes
        for script in scripts:
            print(f"== {script.id} ({mode})", file=sys.stderr, flush=True)
            code, seconds = run(script, mode)
            total += seconds
            print(f"== {script.id}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {seconds:.1f} s",
                  file=sys.stderr, flush=True)
            if code:
                failed.append(script.id)
    else:
        print(f"== {len(scripts)} experiments ({mode}), {jobs} at a time; the TIMED ones (speed findings) alone",
              file=sys.stderr, flush=True)

        def started(script, threads):
            print(f"== {script.id} ({mode}, {threads} thread{'s' if threads != 1 else ''}"
                  f"{', alone' if script.timed() else ''}) started", file=sys.stderr, flush=True)

        def done(f):
            nonlocal total
            total += f.seconds
            n = len(scripts) - len(finished_ids) - 1
            finished_ids.append(f.script.id)
            elapsed = time.perf_counter() - start
            eta = elapsed / len(finished_ids) * n
            sys.stderr.write(f.output if f.output.endswith("\n") or not f.output else f.output + "\n")
            print(f"== {f.script.id}: {'ok' if f.code == 0 else f'FAILED (exit {f.code})'} in {f.seconds:.1f} s "
                  f"[{len(finished_ids)}/{len(scripts)}, {elapsed:.0f} s so far, ETA {eta:.0f} s]",
                  file=sys.stderr, flush=True)
            if f.code:
                failed.append(f.script.id)

        finished_ids: list[str] = []
        run_many(scripts, mode, jobs, started, done)
    if len(scripts) > 1:
        print(f"{len(scripts) - len(failed)}/{len(scripts)} experiments ok in {time.perf_counter() - start:.1f} s "
              f"(wall; {total:.1f} s of runs)" + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from mmlab.data.corpus import load_corpus
    from mmlab.tokenizer.base import BPE_FILE, CHAR_FILE
    from mmlab.tokenizer.teaching_bpe import TEACHING_BPE_FILE
    from mmlab.train.pretrain import build_tokenizer

    out = Path(args.out)
    existing = [n for n in (BPE_FILE, CHAR_FILE, TEACHING_BPE_FILE) if (out / n).exists()]
    if existing and not args.overwrite:
        raise MMLabError(f"{out} already holds a tokenizer ({existing[0]}); pass --overwrite or another --out")
    corpus = load_corpus(args.data)
    text_bytes = sum(len(d.encode("utf-8")) for d in corpus.documents)
    print(f"training a {args.kind} tokenizer with {args.vocab_size:,} tokens on {args.data} "
          f"({text_bytes:,} bytes)", file=sys.stderr)
    t0 = time.perf_counter()
    tok = build_tokenizer(args.kind, corpus, args.vocab_size)
    took = time.perf_counter() - t0
    for name in existing:
        (out / name).unlink()
    path = tok.save(out)
    sample = "\n".join(corpus.documents)[:1_000_000]
    ratio = len(sample.encode("utf-8")) / max(len(tok.encode(sample, allow_special=False)), 1)
    print(f"vocabulary {tok.vocab_size:,} tokens, trained in {took:.1f} s; {ratio:.2f} bytes per token on the "
          f"first {min(len(sample), 1_000_000):,} characters")
    print(f"saved: {path}  (use it with: mmlab train pretrain --tokenizer {out} ...)")
    return 0


def _cmd_recipe_list(args: argparse.Namespace) -> int:
    from mmlab.recipes import RECIPES

    for r in RECIPES.values():
        target = f"; target val loss <= {r.target_val_loss}" if r.target_val_loss is not None else ""
        print(f"{r.name:<18} {r.summary} ({r.train['max_iters']:,} steps, about {r.budget_minutes:g} min on 2 CPU "
              f"cores{target})")
    return 0


def _cmd_recipe_run(args: argparse.Namespace) -> int:
    from mmlab.recipes import get_recipe, run_recipe

    recipe = get_recipe(args.name)
    out = args.out or f"runs/{recipe.name}"
    overrides = {k: v for k, v in (("dtype", args.dtype), ("compile", False if args.no_compile else None))
                 if v is not None}
    result = run_recipe(recipe.name, out, overwrite=args.overwrite, max_iters=args.max_iters,
                        results_dir=args.results_dir, **overrides)
    m = result["metrics"]
    split = "the whole val split" if result["mode"] == "full" else "the start of the val split (shortened run)"
    print(f"\n{recipe.name}: val loss {m['val_loss']:.4f} on {split} ({m['val_bits_per_byte']:.3f} bits "
          f"per byte) after {m['tokens_seen']:,} tokens in {m['train_minutes']:.1f} min of training "
          f"({m['wall_minutes']:.1f} min in all, {m['tokens_per_s']:,.0f} tokens/s)")
    for f in result["findings"]:
        print(f"  {'holds' if f['holds'] else 'DOES NOT HOLD'}: {f['claim']}")
    for s in m["samples"]:
        print(f"\n--- sample (seed {s['seed']}, temperature {s['temperature']}) ---\n{s['text']}")
    where = args.results_dir or out
    print(f"\nresults: {where}/{result['experiment']}.json   measured weights: {out}/{m['weights']} "
          f"(step {m['evaluated_step']}); last checkpoint: {out}/ckpt")
    return 0


def _cmd_exercise_check_block(args: argparse.Namespace) -> int:
    from mmlab.lab.exercise import check_block_file, format_checks

    checks = check_block_file(args.file)
    print(format_checks(checks))
    return 0 if all(c.ok for c in checks) else 1


def _cmd_lab_render(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmlab.lab.registry import modules_root
    from mmlab.lab.render import render_all, render_files

    root = modules_root()
    extra = [p for p in (root.parent / n for n in ("README.md", "README.zh.md", "ROADMAP.zh.md")) if p.is_file()]
    if args.files:  # only these files (a translator renders their own pages)
        missing = [f for f in args.files if not Path(f).is_file()]
        if missing:
            raise MMLabError(f"lab render: no such file: {', '.join(missing)}")
        changed = render_files([Path(f).resolve() for f in args.files], root, write=not args.check)
    else:
        changed = render_all(root, extra, write=not args.check)
    for path in changed:
        print(f"{'out of date' if args.check else 'rendered'}: {Path(path)}")
    if args.check and changed:
        print("run `mmlab lab render` to regenerate the result blocks from the committed JSON", file=sys.stderr)
        return 1
    return 0


def _cmd_lab_i18n(args: argparse.Namespace) -> int:
    from mmlab.lab.i18n import check_translations
    from mmlab.lab.registry import modules_root

    state = check_translations(modules_root().parent, args.lang)
    for problem in state["problems"]:
        print(problem)
    total = len(state["missing"])
    if args.list_missing:
        print("\n".join(f"missing: {m}" for m in state["missing"]))
    print(f"{args.lang}: {len(state['problems'])} problem(s); {total} file(s) not translated yet", file=sys.stderr)
    return 1 if state["problems"] or (args.require_all and total) else 0


def _cmd_lab_lint_quizzes(args: argparse.Namespace) -> int:
    from mmlab.docsite.quizlint import main as lint_main

    for lesson in args.lessons:
        if not (Path(lesson) / "quiz.md").is_file():
            raise MMLabError(f"{lesson}: not a lesson folder (it has no quiz.md)")
    return lint_main(args.lessons)


def _cmd_docs_build(args: argparse.Namespace) -> int:
    from mmlab.docsite import build_site

    r = build_site(args.out)
    print(f"built the site (strict): {r.pages} pages, {r.translated} of them also in Chinese, in {r.seconds:.1f} s "
          f"-> {r.out / 'index.html'}")
    return 0


def _cmd_docs_serve(args: argparse.Namespace) -> int:
    from mmlab.docsite import build_site, make_server, site_dir

    out = site_dir(args.out)
    server = make_server(out, args.host, args.port)  # bound first: a busy port is reported before the build
    try:
        r = build_site(out)
        host, port = server.server_address[:2]
        print(f"built the site (strict): {r.pages} pages in {r.seconds:.1f} s; serving {r.out} at "
              f"http://{host}:{port}/ (Ctrl-C stops)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535 (0: any free port), got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmlab",
        description="MiniMind Lab: build, train and measure a small Llama-style language model.",
    )
    parser.add_argument("--version", action="version", version=f"mmlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    info = sub.add_parser("info", help="versions, device, threads and bf16 support of this machine",
                          description="Print versions, the auto-selected device, threads and bf16 support.")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=_cmd_info)

    model = sub.add_parser("model", help="inspect model configurations",
                           description="Inspect model configurations and presets.")
    model_sub = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    summary = model_sub.add_parser(
        "summary", help="parameters per component, FLOPs per token, KV-cache bytes per token",
        description="Parameters per component, forward FLOPs per token and KV-cache bytes per token.")
    source = summary.add_mutually_exclusive_group()
    source.add_argument("--preset", default="nano", help="a named preset (see `mmlab model presets`)")
    source.add_argument("--config", help="a ModelConfig JSON file instead of a preset")
    summary.add_argument("--context", type=_positive_int, default=None,
                         help="context length for the attention FLOPs (default: the config's max_seq_len)")
    summary.add_argument("--json", action="store_true", help="print JSON instead of a table")
    summary.set_defaults(func=_cmd_model_summary)
    presets = model_sub.add_parser("presets", help="list the named presets",
                                   description="List the named model presets with their sizes.")
    presets.set_defaults(func=_cmd_model_presets)

    data = sub.add_parser("data", help="the dataset registry: list, locate, download, verify",
                          description="Named datasets: cache ($MMLAB_DATA_DIR) -> mirror ($MMLAB_DATA_MIRROR) -> "
                                      "download, each checked against its sha256.")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    p = data_sub.add_parser("list", help="every registered dataset", description="List every registered dataset.")
    p.set_defaults(func=_cmd_data_list)
    p = data_sub.add_parser("path", help="the verified local path of a dataset",
                            description="Print the verified local path of a dataset (downloading if needed).")
    p.add_argument("name")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    p.set_defaults(func=_cmd_data_path)
    p = data_sub.add_parser("download", help="download datasets into the cache",
                            description="Download datasets into the cache, checking their sha256.")
    p.add_argument("names", nargs="*")
    p.add_argument("--all", action="store_true",
                   help="every small pinned dataset (the hub corpora, GBs each, only when named)")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.set_defaults(func=_cmd_data_download)
    p = data_sub.add_parser("verify", help="check cached / mirrored files against their sha256",
                            description="Check every (or the named) dataset's local file; exit 1 on a failure.")
    p.add_argument("names", nargs="*")
    p.set_defaults(func=_cmd_data_verify)

    train = sub.add_parser("train", help="train a model", description="Train a model.")
    train_sub = train.add_subparsers(dest="train_command", metavar="STAGE", required=True)
    p = train_sub.add_parser("pretrain", help="pretrain from scratch on a corpus",
                             description="Pretrain a model from scratch on a text corpus (next-token prediction).")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", default=None, help="model preset (default: shakespeare-char)")
    source.add_argument("--config", help="a ModelConfig JSON file instead of a preset")
    p.add_argument("--data", default=None,
                   help="a dataset name (`mmlab data list`), synthetic-stories, a .txt/.jsonl/.parquet path, a folder "
                        "of them or a glob in quotes (default: tinyshakespeare; on --resume, the run's own)")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="tokenize the files into sharded token files in bounded memory (default: yes for a folder, "
                        "a glob, parquet or more than 32 MiB of text; small files are read into memory)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change one ModelConfig field of the preset or config, e.g. --set n_kv_heads=1 "
                        "--set ffn_act=relu2 (repeatable; values are JSON: 1, 0.5, true, null; else a string)")
    p.add_argument("--tokenizer", default="auto",
                   help="char | bpe | a saved tokenizer folder (default: char for small vocabularies, else bpe)")
    _add_train_flags(p)
    p.set_defaults(func=_cmd_train_pretrain)

    for stage, about in (("sft", "supervised fine-tuning of every weight"),
                         ("lora", "supervised fine-tuning of a LoRA adapter (the base stays frozen)")):
        defaults = LORA_DEFAULTS if stage == "lora" else SFT_DEFAULTS
        p = train_sub.add_parser(
            stage, help=about,
            description=f"{about[0].upper() + about[1:]}: a base checkpoint learns to answer in the chat template, "
                        "with the loss on the assistant's tokens only; held-out quality is measured before and after "
                        f"(answer loss, exact match, ROUGE-L). Defaults differ from pretraining: "
                        f"{', '.join(f'{k}={v}' for k, v in defaults.items())}.")
        p.add_argument("--base", help="the checkpoint (or run folder) to fine-tune; on --resume, the run's own")
        p.add_argument("--data", default="synthetic-tasks",
                       help="synthetic-tasks (default), instructions-1k, or a .json/.jsonl file of records")
        p.add_argument("--mode", choices=["pack", "pad"], default="pack",
                       help="pack conversations end to end (default) or pad one per row")
        p.add_argument("--loss-on", choices=["assistant", "all"], default="assistant",
                       help="the tokens the loss counts: the assistant's answers (default) or every token "
                            "(the ablation of the loss mask)")
        p.add_argument("--val-fraction", type=float, default=0.1, help="share of conversations held out")
        p.add_argument("--eval-items", type=_positive_int, default=200,
                       help="held-out conversations answered greedily for exact match and ROUGE-L")
        if stage == "lora":
            p.add_argument("--rank", type=_positive_int, default=8)
            p.add_argument("--alpha", type=float, default=16.0)
            p.add_argument("--lora-dropout", type=float, default=0.0)
            p.add_argument("--targets", default="q_proj,v_proj",
                           help="comma-separated layer names (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
                                "down_proj), all-linear, or re:<regex> on full names")
            p.add_argument("--train-modules", default="",
                           help="comma-separated modules trained in full beside the adapter, e.g. tok_emb (the "
                                "embeddings, when the chat template's tokens are new to the base)")
        _add_train_flags(p)
        p.set_defaults(func=_cmd_train_sft)

    p = train_sub.add_parser(
        "dpo", help="direct preference optimisation against a frozen reference",
        description="Preference-tune a checkpoint (usually an SFT run; a frozen copy is the reference) on pairs of "
                    "answers, one preferred: the DPO loss with implicit rewards beta*log(pi/ref). Held-out reward "
                    "margin and preference accuracy are measured before and after. Defaults: "
                    f"{', '.join(f'{k}={v}' for k, v in DPO_DEFAULTS.items())}.")
    p.add_argument("--base", help="the checkpoint (or run folder) to tune; on --resume, the run's own")
    p.add_argument("--data", default="synthetic-pairs",
                   help="synthetic-pairs (default: correct vs incorrect task answers), preferences-1k, or a "
                        ".json/.jsonl file of {instruction|prompt|messages, chosen, rejected}")
    p.add_argument("--beta", type=float, default=0.1, help="the DPO temperature (default 0.1)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of pairs held out")
    p.add_argument("--eval-items", type=_positive_int, default=200,
                   help="held-out prompts answered greedily (synthetic-pairs: exact-match accuracy)")
    _add_train_flags(p)
    p.set_defaults(func=_cmd_train_dpo)

    p = train_sub.add_parser(
        "grpo", help="reinforcement learning with verifiable rewards (GRPO)",
        description="Sample a group of completions per prompt from the policy, reward the exact answer (plus a small "
                    "format reward), normalise rewards within each group, and take clipped policy-gradient steps "
                    "with a KL penalty to the starting model. Prompts: the built-in verifiable tasks. Defaults: "
                    f"{', '.join(f'{k}={v}' for k, v in GRPO_DEFAULTS.items())} (--batch-size = prompts per step).")
    p.add_argument("--base", help="the checkpoint (or run folder) to train; on --resume, the run's own")
    _add_rollout_flags(p, ppo_epochs=1)
    p.add_argument("--reward", choices=["exact", "think"], default="exact",
                   help="exact: the exact answer on the tasks (default); think: multi-step arithmetic problems, the "
                        "exact answer after a closed <think> block plus a format reward (a reasoning model's; "
                        "raise --max-new-tokens to fit the thinking, e.g. 100)")
    _add_train_flags(p)
    p.set_defaults(func=_cmd_train_grpo)

    p = train_sub.add_parser(
        "ppo", help="reinforcement learning with verifiable rewards (PPO with a critic)",
        description="The same rollouts and rewards as `train grpo`, with a learned baseline: a critic (a copy of the "
                    "base with a scalar value head) predicts the return per token; per-token rewards are the "
                    "checker's score at the last token minus kl_coef times the log-ratio to the starting model; "
                    "GAE(gamma, lambda) advantages, clipped policy and value losses, --ppo-epochs steps per rollout "
                    "batch. The critic is saved in the checkpoint's trainer state (the checkpoint itself is a plain "
                    f"policy). Defaults: {', '.join(f'{k}={v}' for k, v in GRPO_DEFAULTS.items())} "
                    "(--batch-size = prompts per step; --group-size = completions per prompt, 1 is allowed).")
    p.add_argument("--base", help="the checkpoint (or run folder) to train; on --resume, the run's own")
    _add_rollout_flags(p, ppo_epochs=4)
    p.add_argument("--gamma", type=float, default=1.0, help="discount per token (default 1: the reward is at the end)")
    p.add_argument("--lam", type=float, default=0.95, help="GAE lambda: 1 = Monte-Carlo returns, 0 = one-step TD")
    p.add_argument("--vf-coef", type=float, default=0.1, help="weight of the value loss")
    p.add_argument("--cliprange-value", type=float, default=0.2,
                   help="how far a value may move from the rollout's before the value loss clips it")
    _add_train_flags(p)
    p.set_defaults(func=_cmd_train_grpo)

    p = train_sub.add_parser(
        "agent-rl", help="multi-turn reinforcement learning with tools (GRPO or CISPO)",
        description="Run --group-size sampled episodes per prompt with the policy: it may call the calculator or the "
                    "unit converter (run by a sandboxed tool runner), read the responses and answer; the reward is 1 "
                    "for the exact final answer. Tool responses are masked out of the loss. Prompts: the synthetic "
                    "tool tasks (python -m mmlab.data.tool_tasks writes their SFT traces; SFT on them first). "
                    f"Defaults: {', '.join(f'{k}={v}' for k, v in GRPO_DEFAULTS.items())} (--batch-size = prompts "
                    "per step).")
    p.add_argument("--base", required=True, help="the checkpoint (or run folder) to train: an SFT run on tool traces")
    p.add_argument("--loss", choices=["grpo", "cispo"], default="grpo",
                   help="grpo: PPO's clipped surrogate (default); cispo: a clipped importance weight on every token")
    p.add_argument("--group-size", type=_positive_int, default=8, help="episodes sampled per prompt (G)")
    p.add_argument("--ppo-epochs", type=_positive_int, default=1, help="optimizer steps per rollout batch")
    p.add_argument("--clip-eps", type=float, default=0.2, help="grpo's clip range of the probability ratio")
    p.add_argument("--eps-high", type=float, default=0.28, help="cispo's cap on the importance weight (1 + eps_high)")
    p.add_argument("--kl-coef", type=float, default=0.0, help="weight of the KL penalty to the reference (default 0)")
    p.add_argument("--max-turns", type=_positive_int, default=3, help="assistant turns per episode")
    p.add_argument("--max-new-tokens", type=_positive_int, default=96, help="tokens per assistant turn")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the rollouts")
    p.add_argument("--n-prompts", type=_positive_int, default=2000, help="training tasks")
    p.add_argument("--n-heldout", type=_positive_int, default=100, help="held-out tasks scored before and after")
    p.add_argument("--kinds", default=None, help="comma-separated task kinds: mul, convert (default: both)")
    p.add_argument("--show-tools", action="store_true",
                   help="render the tool schemas in the system turn (off: the model knows its tools from SFT)")
    _add_train_flags(p)
    p.set_defaults(func=_cmd_train_agent_rl)

    p = train_sub.add_parser(
        "distill", help="distil a larger teacher into a smaller student",
        description="Train a small student on a corpus with the teacher's softened next-token distribution "
                    "(temperature T, KL) mixed with the hard labels (alpha: 1 = soft only, 0 = hard only). "
                    f"Defaults: {', '.join(f'{k}={v}' for k, v in DISTILL_DEFAULTS.items())}.")
    p.add_argument("--teacher", help="the teacher checkpoint (or run folder)")
    student = p.add_mutually_exclusive_group()
    student.add_argument("--student", default="nano", help="the student's preset (default: nano)")
    student.add_argument("--student-config", help="a ModelConfig JSON file for the student")
    p.add_argument("--data", default=None, help="the corpus (default: the teacher's own training data)")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the soft-target term (0..1)")
    _add_train_flags(p)
    p.set_defaults(func=_cmd_train_distill)

    p = sub.add_parser("speedrun", help="the whole pipeline, tokenizer to GRPO, ending in a report card",
                       description="Tokenizer -> pretrain -> SFT -> DPO -> GRPO -> evaluation, each stage starting "
                                   "from the last one's checkpoint, then a report card (report.md, report.png): time "
                                   "per stage, losses, and every stage's held-out exact match on the verifiable tasks. "
                                   "The laptop preset is sized for 2 CPU cores; the card records each stage's wall "
                                   "time.")
    p.add_argument("--preset", default="laptop", choices=["laptop", "minimind-26m", "minimind-104m"],
                   help="laptop (default; 2 CPU cores), minimind-26m or minimind-104m (one or more GPUs)")
    p.add_argument("--download", action="store_true",
                   help="fetch the preset's real corpora from the Hugging Face hub when they are not local (GBs)")
    p.add_argument("--plan", action="store_true",
                   help="print the preset's token budget, steps and FLOPs (and, with --tflops, hours), then stop")
    p.add_argument("--tflops", type=float, default=None,
                   help="with --plan: the sustained bf16 TFLOP/s your GPU reaches, for a time estimate")
    p.add_argument("--out", default="runs/speedrun", help="folder for the stages and the report")
    p.add_argument("--from", default="pretrain", choices=["pretrain", "sft", "dpo", "grpo", "eval"],
                   help="re-run from this stage on, reusing the earlier stages' checkpoints")
    p.add_argument("--overwrite", action="store_true", help="replace the stages being re-run")
    p.add_argument("--scale", type=float, default=1.0, help="shorten every stage by this factor (e.g. 0.01)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="override every stage's precision")
    p.add_argument("--device", help="override every stage's device")
    p.add_argument("--no-compile", action="store_true", help="never torch.compile")
    p.set_defaults(func=_cmd_speedrun)

    p = sub.add_parser("sample", help="generate text from a checkpoint",
                       description="Generate text from a checkpoint, streaming tokens as they come.")
    p.add_argument("--ckpt", required=True, help="a checkpoint folder or a run folder holding ckpt/")
    p.add_argument("--prompt", default="", help="text to continue (default: start of text)")
    _add_sampling_args(p, max_new_tokens=200)
    p.add_argument("--draft", default=None,
                   help="a smaller checkpoint with the same tokenizer: speculative decoding (same distribution)")
    p.add_argument("--speculate", type=_positive_int, default=4, help="tokens the draft proposes per round")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server and a web chat page for a checkpoint",
                       description="Serve a checkpoint over HTTP: GET / (a chat page), GET /health, GET /v1/models, "
                                   "POST /v1/chat/completions and /v1/completions (stream true/false). Up to --batch "
                                   "requests are decoded together (continuous batching over a paged KV cache with "
                                   "prefix caching); up to --queue more wait, further ones get 429.")
    p.add_argument("--ckpt", required=True, help="a checkpoint folder or a run folder holding ckpt/")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="port (default: 8000; 0: any free port)")
    p.add_argument("--max-tokens-limit", type=_positive_int, default=1024, help="the largest max_tokens accepted")
    p.add_argument("--default-max-tokens", type=_positive_int, default=256,
                   help="max_tokens of a request that gives none")
    p.add_argument("--max-prompt-tokens", type=_positive_int, default=None,
                   help="the longest prompt accepted (default: the model's context)")
    p.add_argument("--queue", type=int, default=8, help="requests that may wait behind the running ones (default: 8)")
    p.add_argument("--batch", type=_positive_int, default=16,
                   help="requests decoded together (default: 16; 1: one at a time, sliding past the context)")
    p.add_argument("--model-name", default=None, help="the model id clients see (default: the run folder's name)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads for the model (default: torch's choice; on a small machine 1 leaves a core "
                        "to the HTTP side: benchmarks/serve_load.py --threads measures it)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("chat", help="chat with a checkpoint in the terminal",
                       description="Chat with a checkpoint: the conversation goes through the chat template and the "
                                   "reply streams in. /reset forgets the conversation, /quit leaves.")
    p.add_argument("--ckpt", required=True, help="a checkpoint folder or a run folder holding ckpt/")
    p.add_argument("--system", default=None, help="a system message put before the conversation")
    _add_sampling_args(p, max_new_tokens=256)
    p.set_defaults(func=_cmd_chat)

    p = sub.add_parser("quantize", help="int8 / int4 weight-only quantization of a checkpoint",
                       description="Quantize a checkpoint's linear layers to int8 or int4 (symmetric, round to "
                                   "nearest; the embedding / LM head stay in floating point) into a new checkpoint "
                                   "folder; print the size before and after and, when the checkpoint records its "
                                   "corpus, the held-out loss before and after.")
    p.add_argument("--ckpt", required=True, help="a checkpoint folder or a run folder holding ckpt/")
    p.add_argument("--bits", type=int, choices=[8, 4], required=True, help="bits per weight")
    p.add_argument("--group-size", type=_positive_int, default=None,
                   help="one scale per this many inputs of a row, e.g. 32, 64, 128 (default: one per row)")
    p.add_argument("--out", required=True, help="folder for the quantized checkpoint")
    p.add_argument("--eval-tokens", type=int, default=4096,
                   help="held-out tokens for the loss before/after (0: skip; default 4096)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=_cmd_quantize)

    for verb, about in (("export", "write a checkpoint as a Hugging Face folder or a GGUF file (llama.cpp)"),
                        ("import", "read a Hugging Face Llama folder into a checkpoint")):
        top = sub.add_parser(verb, help=about, description=f"{about[0].upper() + about[1:]}.")
        top_sub = top.add_subparsers(dest=f"{verb}_command", metavar="FORMAT", required=True)
        if verb == "export":
            p = top_sub.add_parser(
                "hf", help="a folder transformers loads (LlamaForCausalLM + tokenizer + chat template)",
                description="Write the checkpoint as a Hugging Face Llama folder: config.json, model.safetensors, "
                            "generation_config.json, tokenizer.json and tokenizer_config.json (with the ChatML "
                            "chat template). AutoModelForCausalLM and AutoTokenizer load it. Only models with the "
                            "Llama switches can be exported; a LoRA adapter is merged in.")
            p.add_argument("--ckpt", required=True, help="a checkpoint folder or a run folder holding ckpt/")
        else:
            p = top_sub.add_parser(
                "hf", help="a Llama folder (safetensors) -> an mmlab checkpoint",
                description="Read a Hugging Face Llama folder (config.json, model.safetensors or shards, "
                            "tokenizer.json) into an mmlab checkpoint folder that every mmlab command loads.")
            p.add_argument("--hf", required=True, help="the Hugging Face model folder")
        p.set_defaults(func=_cmd_hf)
        p.add_argument("--out", required=True, help="the folder to write")
        p.add_argument("--overwrite", action="store_true", help="replace an earlier export / import in --out")
        if verb == "export":
            p = top_sub.add_parser(
                "gguf", help="one .gguf file for llama.cpp / ollama (f32, f16 or Q8_0, tokenizer + chat template)",
                description="Write the checkpoint as one GGUF file (llama.cpp's llama architecture, or qwen3 for a "
                            "model with qk_norm): the weights in f32, f16 or Q8_0 (norm gains stay f32), the "
                            "byte-level BPE (tokens, merges, special tokens) and the ChatML chat template. llama.cpp "
                            "and the tools built on it (llama-cpp-python, ollama) load it. Only dense models with the "
                            "Llama / Qwen3 switches and a byte-level BPE tokenizer can be exported; a LoRA adapter is "
                            "merged in. Needs the gguf package: pip install \"minimind-lab[gguf]\".")
            p.add_argument("--ckpt", required=True, help="a checkpoint folder or a run folder holding ckpt/")
            p.add_argument("--out", required=True, help="the .gguf file to write")
            p.add_argument("--type", choices=("f16", "f32", "q8_0"), default="f16",
                           help="weights of the matrices: f16 (default), f32, or q8_0 (8-bit blocks of 32, ~half "
                                "of f16)")
            p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
            p.set_defaults(func=_cmd_gguf)

    p = sub.add_parser("eval", help="evaluate a checkpoint: perplexity, multiple choice, exact match",
                       description="Evaluate a checkpoint on one task. Tasks: perplexity (loss and bits per byte on "
                                   "--data), arc-easy-test, commonsenseqa-val, hellaswag-100 (multiple choice by "
                                   "log-likelihood), synthetic-tasks, gsm8k-test (greedy answers, exact match). "
                                   "Accuracies are reported next to chance with a 95% Wilson interval, plus a "
                                   "breakdown and failure samples.")
    p.add_argument("--ckpt", required=True, help="a checkpoint folder or a run folder holding ckpt/")
    p.add_argument("--task", required=True, help="perplexity | arc-easy-test | commonsenseqa-val | hellaswag-100 | "
                                                 "synthetic-tasks | gsm8k-test")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="the first N items (perplexity: N tokens; synthetic-tasks: N items, default 300)")
    p.add_argument("--out", default=None, help="write the full result (breakdown, failures) to this JSON file")
    p.add_argument("--data", default=None,
                   help="perplexity: a corpus name (`mmlab data list`) or a .txt path (default: the run's own)")
    p.add_argument("--split", choices=["all", "val"], default="all",
                   help="perplexity: the whole corpus, or the part pretraining held out (val)")
    p.add_argument("--seed", type=int, default=99_991, help="synthetic-tasks: which items are drawn")
    p.add_argument("--max-new-tokens", type=_positive_int, default=None,
                   help="exact-match tasks: longest answer (default 16 synthetic, 256 GSM8K)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_eval)

    exp = sub.add_parser("exp", help="the tutorial's comparative experiments",
                         description="List and run the experiments under modules/.")
    exp_sub = exp.add_subparsers(dest="exp_command", metavar="SUBCOMMAND", required=True)
    p = exp_sub.add_parser("list", help="every experiment, its question and whether results exist",
                           description="List every experiment with its question.")
    p.set_defaults(func=_cmd_exp_list)
    p = exp_sub.add_parser("run", help="run one experiment (ID) or all of them (--all)",
                           description="Run experiments, each in its own process. Full mode writes the lesson's "
                                       "results/; --quick writes results/quick/; --smoke a temporary folder.")
    p.add_argument("id", nargs="?", help="e.g. 01-normalization/exp1_deep_stack (or just exp1_deep_stack)")
    p.add_argument("--all", action="store_true", help="every experiment")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small budget (<= 60 s each)")
    mode.add_argument("--smoke", action="store_true", help="a few steps each (tests)")
    p.add_argument("--jobs", type=_positive_int, default=None,
                   help="experiments run side by side, the cores shared among them (default: one per core with "
                        "--quick / --smoke, 1 for full runs, whose committed results should not share the machine); "
                        "experiments in mmlab.lab.registry.TIMED (speed findings) always run alone")
    p.set_defaults(func=_cmd_exp_run)

    tk = sub.add_parser("tokenizer", help="train a tokenizer", description="Train and save tokenizers.")
    tk_sub = tk.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)
    p = tk_sub.add_parser("train", help="train a tokenizer on a dataset and save it",
                          description="Train a tokenizer on a corpus and save it to a folder that "
                                      "`mmlab train pretrain --tokenizer DIR` reads.")
    p.add_argument("--data", required=True, help="a dataset name (`mmlab data list`), synthetic-stories, or a path")
    p.add_argument("--vocab-size", type=_positive_int, required=True,
                   help="tokens in the vocabulary, counting 256 bytes and 3 special tokens (BPE)")
    p.add_argument("--out", required=True, help="folder for the tokenizer file")
    p.add_argument("--kind", choices=["bpe", "teaching-bpe", "char"], default="bpe",
                   help="bpe: Hugging Face tokenizers (fast); teaching-bpe: the plain-Python merge loop of the "
                        "tokenization lesson (slow); char: one token per character (--vocab-size ignored)")
    p.add_argument("--overwrite", action="store_true", help="replace a tokenizer already in --out")
    p.set_defaults(func=_cmd_tokenizer_train)

    ex = sub.add_parser("exercise", help="check your solution of a lesson exercise",
                        description="Check a learner's code against the library's own implementation.")
    ex_sub = ex.add_subparsers(dest="exercise_command", metavar="EXERCISE", required=True)
    p = ex_sub.add_parser("check-block", help="compare your MyBlock with mmlab's transformer block",
                          description="Load mmlab's Block weights into the MyBlock class of FILE and compare the "
                                      "norm, attention, FFN, the whole block, gradients and causality "
                                      "(modules/02-architecture/02-transformer-block/exercise/).")
    p.add_argument("file", help="a Python file defining MyBlock(cfg) with forward(x, rope)")
    p.set_defaults(func=_cmd_exercise_check_block)

    rc = sub.add_parser("recipe", help="reproduce a complete training recipe and measure it",
                        description="Named end-to-end runs (data, tokenizer, model, schedule) that report the val "
                                    "loss on the whole val split, bits per byte, time and samples.")
    rc_sub = rc.add_subparsers(dest="recipe_command", metavar="SUBCOMMAND", required=True)
    p = rc_sub.add_parser("list", help="the recipes", description="List the recipes.")
    p.set_defaults(func=_cmd_recipe_list)
    p = rc_sub.add_parser("run", help="train a recipe, evaluate it and write its results",
                          description="Train a recipe into --out, evaluate it on the whole val split, sample, and "
                                      "write recipe_NAME.json and .png.")
    p.add_argument("name", help="a recipe (`mmlab recipe list`)")
    p.add_argument("--out", default=None, help="run folder (default: runs/NAME)")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier run in --out first")
    p.add_argument("--max-iters", type=_positive_int, default=None,
                   help="stop early (a smoke run; its results are marked as such)")
    p.add_argument("--results-dir", default=None, help="where the results JSON and plot go (default: --out)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None,
                   help="override the recipe's precision (fp32 on CPUs without fast bf16)")
    p.add_argument("--no-compile", action="store_true", help="do not torch.compile (no C++ compiler here)")
    p.set_defaults(func=_cmd_recipe_run)

    lab = sub.add_parser("lab", help="docs result blocks", description="Maintain the docs' result blocks.")
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="SUBCOMMAND", required=True)
    p = lab_sub.add_parser("render", help="regenerate every <!-- mmlab:result --> block from committed JSON",
                           description="Regenerate every result block in modules/**/*.md and README.md.")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is out of date")
    p.add_argument("files", nargs="*", help="render only these Markdown files (default: every one)")
    p.set_defaults(func=_cmd_lab_render)
    p = lab_sub.add_parser("i18n", help="check the Chinese edition against the English pages",
                           description="Check every translated page (README.zh.md, ROADMAP.zh.md, each lesson's "
                                       "*.zh.md): the same headings, figures, result blocks and code blocks as its "
                                       "English file, the same correct option per quiz question, result blocks "
                                       "up to date with every string in the lesson's i18n/<lang>.json. Exit 1 on a "
                                       "problem (with --require-all, also on a missing translation).")
    p.add_argument("--lang", default="zh", choices=["zh"])
    p.add_argument("--list-missing", action="store_true", help="name every file not translated yet")
    p.add_argument("--require-all", action="store_true", help="a missing translation is a problem too")
    p.set_defaults(func=_cmd_lab_i18n)
    p = lab_sub.add_parser("lint-quizzes", help="check that every quiz can only be passed by knowing the lesson",
                           description="Lint modules/*/*/quiz.md: four options, a Why-not note per wrong option, "
                                       "the right option rarely the longest and spread over A-D, questions on the "
                                       "lesson's own results and code, no typed numbers the results do not hold. "
                                       "Prints the figures and the problems as JSON; exit 1 on a problem.")
    p.add_argument("lessons", nargs="*", help="lesson folders to lint alone (default: every lesson)")
    p.set_defaults(func=_cmd_lab_lint_quizzes)

    docs = sub.add_parser("docs", help="the learning site: build it or serve it",
                          description="The learning site, generated from the Markdown beside the code (lessons, "
                                      "learning paths, interactive quizzes). Needs the docs extra: in a clone, "
                                      "pip install -e \".[docs]\".")
    docs_sub = docs.add_subparsers(dest="docs_command", metavar="SUBCOMMAND", required=True)
    site_help = "site folder (default: build/site in the clone's root when run inside it, else here)"
    p = docs_sub.add_parser("build", help="build the site (strict: a broken link or a missing image fails)",
                            description="Build the site into --out. Strict: any MkDocs warning (a broken link, a "
                                        "missing image) fails the build and leaves an earlier site in place.")
    p.add_argument("--out", default=None, help=site_help)
    p.set_defaults(func=_cmd_docs_build)
    p = docs_sub.add_parser("serve", help="build the site, then serve it on this machine",
                            description="Build the site into --out, then serve it as static files until Ctrl-C.")
    p.add_argument("--out", default=None, help=site_help)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_port, default=8001,
                   help="port (default: 8001, beside `mmlab serve`'s 8000; 0: any free port)")
    p.set_defaults(func=_cmd_docs_serve)

    p = sub.add_parser("quickstart", help="train a tiny Shakespeare model in about two minutes, then sample",
                       description="Train the shakespeare-char preset on TinyShakespeare (the synthetic corpus "
                                   "when it is unreachable), show the loss falling, save the plot, print a sample; "
                                   "then run the quick-start experiments (normalization, RoPE, attention) in "
                                   "quick mode and print where their plots are.")
    p.add_argument("--out", default="runs/quickstart", help="run folder (default: runs/quickstart)")
    p.add_argument("--max-iters", type=_positive_int, default=None, help="optimizer steps (default: the recipe's)")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier run in --out first")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model: faster steps after a one-time compilation (needs a C++ compiler)")
    p.add_argument("--no-experiments", action="store_true", help="skip the quick-start experiments after training")
    p.set_defaults(func=_cmd_quickstart)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: argparse prints one line and exits with 2
    try:
        return args.func(args)
    except MMLabError as e:
        print(f"mmlab: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mmlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
