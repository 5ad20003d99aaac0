"""Post-training stages (SFT, LoRA, DPO): a base checkpoint -> fine-tuned checkpoints that the next stage loads,
held-out metrics before/after, clear errors for bad input."""

import json
import subprocess
import sys

import pytest

from mmlab.config import get_preset
from mmlab.errors import MMLabError
from mmlab.model.lora import LoRAConfig
from mmlab.train.checkpoint import load_model
from mmlab.train.config import TrainConfig
from mmlab.train.pretrain import pretrain
from mmlab.train.sft import evaluate_sft, rouge_l, sft, split_heldout, task_conversations


def tcfg(out, **kw):
    base = {"max_iters": 6, "batch_size": 4, "eval_interval": 3, "eval_batches": 2, "log_interval": 3,
            "warmup_iters": 1, "lr": 3e-3, "progress": False}
    return TrainConfig(out_dir=str(out), **{**base, **kw})


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    """A tiny base model with a BPE tokenizer (it has the chat template's tokens)."""
    out = tmp_path_factory.mktemp("base")
    pretrain(get_preset("nano", max_seq_len=64, vocab_size=300), "synthetic-stories", tcfg(out), tokenizer="bpe")
    return out


def test_rouge_l_is_the_lcs_f1():
    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert rouge_l("", "a b") == 0.0 and rouge_l("x y", "a b") == 0.0
    assert rouge_l("the cat", "the big cat") == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))


def test_heldout_split_is_fixed_and_disjoint():
    convs = task_conversations(50)
    a_train, a_val = split_heldout(convs, 0.2, seed=3)
    _b_train, b_val = split_heldout(convs, 0.2, seed=3)
    assert a_val == b_val and len(a_val) == 10 and len(a_train) == 40
    assert not {json.dumps(c) for c in a_val} & {json.dumps(c) for c in a_train}


def test_heldout_prompts_never_repeat_a_training_prompt():
    """The synthetic tasks repeat prompts (multiplication up to 12, a fixed toy world of facts): such
    held-out items are dropped and counted, for conversations and for preference pairs alike."""
    from mmlab.train.dpo import synthetic_pairs
    from mmlab.train.sft import drop_repeated_prompts, split_prompt

    train, val = split_heldout(task_conversations(600), 0.2)
    kept, dropped = drop_repeated_prompts(train, val, lambda c: split_prompt(c)[0])
    assert dropped > 0 and len(kept) + dropped == len(val)
    assert not {c[0]["content"] for c in kept} & {c[0]["content"] for c in train}
    p_train, p_val = split_heldout(synthetic_pairs(600), 0.2)
    p_kept, p_dropped = drop_repeated_prompts(p_train, p_val, lambda p: p.prompt)
    assert p_dropped > 0 and not {json.dumps(p.prompt) for p in p_kept} & {json.dumps(p.prompt) for p in p_train}


def test_synthetic_pairs_always_differ_even_for_a_few_items():
    from mmlab.train.dpo import synthetic_pairs

    for n in range(1, 13):  # small n: some tasks have no other item to lend a wrong answer
        assert all(p.chosen != p.rejected for p in synthetic_pairs(n))


def test_loss_on_every_token_is_the_mask_ablation(base_ckpt, tmp_path):
    masked = sft(base_ckpt, "synthetic-tasks", tcfg(tmp_path / "a"), evaluate=False, n_synthetic=200)
    every = sft(base_ckpt, "synthetic-tasks", tcfg(tmp_path / "b"), evaluate=False, n_synthetic=200,
                train_on_prompt=True)
    assert every.result.tokens_seen > masked.result.tokens_seen  # prompt tokens are targets too
    assert json.loads((tmp_path / "b" / "sft_eval.json").read_text())["train_on_prompt"] is True
    # held-out losses count the answers only, whatever the training loss counted
    assert every.encoding["val"] == masked.encoding["val"]


def test_dropped_conversations_are_named_by_their_line_in_the_file(base_ckpt, tmp_path):
    """A prompt too long for the block leaves no answer token: the conversation is dropped, counted, and
    named by its line in the file (not by its index in the shuffled split)."""
    data = tmp_path / "d.jsonl"
    lines = [{"instruction": f"Say {i}.", "output": str(i)} for i in range(30)]
    lines[16] = {"instruction": "word " * 200, "output": "long"}  # line 17 of the file
    data.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.warns(UserWarning, match="d.jsonl:17"):
        run = sft(base_ckpt, str(data), tcfg(tmp_path / "r"), evaluate=False, val_fraction=0.1)
    enc = run.encoding["train"] if run.encoding["train"]["dropped"] else run.encoding["val"]
    assert enc["dropped"] == 1 and enc["dropped_records"] == [f"{data}:17"]


def test_full_sft_then_lora_each_loads_the_last(base_ckpt, tmp_path):
    run = sft(base_ckpt, "synthetic-tasks", tcfg(tmp_path / "sft"), n_generate=8, max_new_tokens=8)
    assert run.trainable == run.total
    report = json.loads((tmp_path / "sft" / "sft_eval.json").read_text())
    for when in ("before", "after"):
        assert {"answer_loss", "exact_match", "rouge_l", "samples"} <= set(report[when])
    assert report["after"]["answer_loss"] < report["before"]["answer_loss"]  # it learns the answers' format
    sft_model = load_model(tmp_path / "sft")
    # LoRA on top of the SFT checkpoint: only the adapter trains, and the result loads as a plain model
    lora = LoRAConfig(rank=2, alpha=4, target_modules=["q_proj", "v_proj"])
    run2 = sft(tmp_path / "sft", "synthetic-tasks", tcfg(tmp_path / "lora"), lora=lora, n_generate=4,
               max_new_tokens=4)
    assert 0 < run2.trainable < 0.1 * run2.total
    assert (tmp_path / "lora" / "ckpt" / "adapter.safetensors").is_file()
    merged = load_model(tmp_path / "lora")
    assert not any(".lora_" in n for n, _ in merged.named_parameters())
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in sft_model.parameters())
    # resume continues the same LoRA run
    run3 = sft(None, None, TrainConfig.for_resume(tmp_path / "lora", max_iters=8), lora=lora, resume=True,
               n_generate=2, max_new_tokens=2)
    assert run3.result.steps == 2


def test_bad_sft_input_is_a_clear_error(base_ckpt, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "Say hi.", "output": "hi"}) + "\n" + json.dumps({"instruction": "x"})
                   + "\n")
    with pytest.raises(MMLabError, match=r"bad.jsonl:2: no string field 'output'"):
        sft(base_ckpt, str(bad), tcfg(tmp_path / "r1"))
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps([{"instruction": "Say hi.", "output": " "}]))
    with pytest.raises(MMLabError, match=r"empty.json\[0\]: field 'output' is empty"):
        sft(base_ckpt, str(empty), tcfg(tmp_path / "r2"))
    char_base = tmp_path / "char"
    pretrain(get_preset("nano"), "tinyshakespeare", tcfg(char_base, max_iters=2), tokenizer="char")
    with pytest.raises(MMLabError, match="no <\\|im_start\\|>"):
        sft(char_base, "synthetic-tasks", tcfg(tmp_path / "r3"))
    assert not (tmp_path / "r1").exists()  # nothing was written for a refused run


def test_evaluate_counts_prompts_that_fill_the_context(base_ckpt):
    model = load_model(base_ckpt)
    from mmlab.train.checkpoint import load_checkpoint_tokenizer

    tok = load_checkpoint_tokenizer(base_ckpt)
    long = [[{"role": "user", "content": "tell me " * 200}, {"role": "assistant", "content": "no"}]]
    r = evaluate_sft(model, tok, long + task_conversations(2), block_size=64, max_new_tokens=4)
    assert r["n_heldout"] == 3 and r["n_generated"] == 2


def test_cli_sft_help_and_missing_base():
    proc = subprocess.run([sys.executable, "-m", "mmlab.cli", "train", "lora", "--out", "/tmp/x-never"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--base is required" in proc.stderr


# ---- DPO --------------------------------------------------------------------------------------
def test_dpo_loss_is_log2_at_the_reference_and_matches_the_formula():
    import copy
    import math

    import torch

    from mmlab.model.lm import MiniMindLM
    from mmlab.train.dpo import DPOLoss, sequence_logprobs

    torch.manual_seed(0)
    policy = MiniMindLM(get_preset("nano"))
    ref = copy.deepcopy(policy)
    x = torch.randint(0, 128, (4, 12))
    y = x.roll(-1, 1)
    y[:, :5] = -100  # the prompt part: not scored
    objective = DPOLoss(ref, beta=0.5)
    loss, n, metrics = objective(policy, (x, y))
    assert n == 2 and loss.item() / n == pytest.approx(math.log(2), abs=1e-6) and metrics["reward_margin"] == 0
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    loss, _, _ = objective(policy, (x, y))
    lp, lr_ = sequence_logprobs(policy, x, y), sequence_logprobs(ref, x, y)
    margin = 0.5 * ((lp[:2] - lr_[:2]) - (lp[2:] - lr_[2:]))
    assert loss.item() == pytest.approx(-torch.nn.functional.logsigmoid(margin).sum().item(), rel=1e-5)


@pytest.mark.parametrize("record, message", [
    ({"instruction": "Hi", "chosen": "a"}, "field 'rejected' must be a non-empty string"),
    ({"instruction": "Hi", "chosen": " ", "rejected": "b"}, "field 'chosen' must be a non-empty string"),
    ({"instruction": "Hi", "chosen": "a", "rejected": "a "}, "the same answer"),
    ({"chosen": "a", "rejected": "b"}, "no prompt"),
    ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "the prompt is empty"),
    ({"messages": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"}, "role='bot'"),
])
def test_bad_preference_records_name_the_record(record, message):
    from mmlab.data.registry import DataError
    from mmlab.train.dpo import pair_from_record

    with pytest.raises(DataError, match=r"p\[7\]: .*" + message):
        pair_from_record(record, "p[7]")


def test_pairs_stay_aligned_when_sliced_and_skips_are_counted(base_ckpt):
    from mmlab.train.checkpoint import load_checkpoint_tokenizer
    from mmlab.train.dpo import PreferenceBatches, PreferencePair, encode_pairs, synthetic_pairs

    tok = load_checkpoint_tokenizer(base_ckpt)
    pairs = synthetic_pairs(12)
    assert all(p.chosen != p.rejected for p in pairs)
    long = PreferencePair([{"role": "user", "content": "word " * 100}], "yes", "no")
    enc, skipped = encode_pairs(tok, [*pairs, long], max_len=65)
    assert skipped == [12] and len(enc) == 12
    src = PreferenceBatches(enc, enc[:4])
    import torch

    x, y = src.sample("train", 4, torch.Generator().manual_seed(0))
    xs, ys = src.slice_rows((x, y), 1, 3)
    assert torch.equal(xs, torch.cat([x[1:3], x[5:7]])) and torch.equal(ys, torch.cat([y[1:3], y[5:7]]))


def test_dpo_stage_learns_the_preference_and_resumes(base_ckpt, tmp_path):
    """A preference a tiny model can learn in a few steps (always answer "Yes." rather than "No."): the
    held-out reward margin and accuracy rise from the reference's 0 and chance (ties count half)."""
    from mmlab.train.dpo import dpo

    sft(base_ckpt, "synthetic-tasks", tcfg(tmp_path / "sft"), evaluate=False)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Is {i} a number?", "chosen": "Yes.", "rejected": "No."}) + "\n"
                             for i in range(60)))
    record = dpo(tmp_path / "sft", str(pairs), tcfg(tmp_path / "dpo", max_iters=20, lr=3e-3, batch_size=8,
                                                      eval_interval=10), beta=0.5)
    before, after = record["before"], record["after"]
    assert before["reward_margin"] == pytest.approx(0, abs=1e-5)  # the policy starts as the reference
    assert before["accuracy"] == 0.5  # every margin is a tie: chance
    assert after["reward_margin"] > 0.5 and after["accuracy"] == 1.0 and after["loss"] < before["loss"]
    assert record["pairs"] == {"train": 54, "val": 6}
    again = dpo(None, None, TrainConfig.for_resume(tmp_path / "dpo", max_iters=22), resume=True)
    assert again["steps"] == 2 and again["beta"] == 0.5 and again["before"] == before
    # synthetic pairs (a correct vs an incorrect task answer) also report exact-match task accuracy
    record = dpo(tmp_path / "sft", "synthetic-pairs", tcfg(tmp_path / "dpo2", max_iters=2), n_generate=4)
    assert "exact_match" in record["after"] and record["pairs"]["val"] > 0


# ---- GRPO -------------------------------------------------------------------------------------
def test_group_advantages_are_centred_per_group_and_zero_without_signal():
    import torch

    from mmlab.train.grpo import group_advantages

    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.1, 0.1, 0.1, 0.1]]))
    assert torch.allclose(adv[0].mean(), torch.tensor(0.0), atol=1e-6) and adv[0, 0] > 0 > adv[0, 1]
    assert torch.equal(adv[1], torch.zeros(4))


def test_grpo_loss_is_the_policy_gradient_at_ratio_one_and_clips_beyond():
    import torch

    from mmlab.model.lm import MiniMindLM
    from mmlab.train.grpo import GRPOLoss, token_logprobs

    torch.manual_seed(0)
    model = MiniMindLM(get_preset("nano"))
    x = torch.randint(0, 128, (4, 10))
    y = x.roll(-1, 1)
    y[:, :6] = -100
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    with torch.no_grad():
        old = token_logprobs(model, x, y)
    objective = GRPOLoss(None, kl_coef=0.0, clip_eps=0.2)
    loss, n, _ = objective(model, (x, y, adv, old))
    mask = (y != -100).float()
    assert n == int(mask.sum()) and loss.item() == pytest.approx(-(adv[:, None] * mask).sum().item(), rel=1e-5)
    # pretend the sampling policy gave these tokens much lower probability: ratio = e >> 1 + eps. The clip
    # removes the gradient of the row with a positive advantage (it already gained enough) but not of the row
    # with a negative one (min() keeps its unclipped, more pessimistic term)
    def grads(advantages):
        model.zero_grad()
        loss, _, metrics = objective(model, (x, y, torch.tensor(advantages), old - 1.0))
        loss.backward()
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()], metrics

    both, metrics = grads([1.0, -1.0, 0.0, 0.0])
    negative_only, _ = grads([0.0, -1.0, 0.0, 0.0])
    assert metrics["clip_fraction"] == pytest.approx(0.25)  # the positive row's tokens: a quarter of them
    assert any(g.abs().max() > 0 for g in both)
    for a, b in zip(both, negative_only, strict=True):
        torch.testing.assert_close(a, b)
    # and a rollout's first use (old = nan) means ratio 1 exactly, whatever dtype the rollout ran in
    loss, _, metrics = objective(model, (x, y, adv, torch.full(x.shape, float("nan"))))
    assert loss.item() == pytest.approx(-(adv[:, None] * mask).sum().item(), rel=1e-5) and metrics["clip_fraction"] == 0


def test_grpo_stage_runs_rollouts_and_the_checkpoint_loads(base_ckpt, tmp_path):
    from mmlab.train.grpo import grpo

    sft(base_ckpt, "synthetic-tasks", tcfg(tmp_path / "sft"), evaluate=False)
    record = grpo(tmp_path / "sft", tcfg(tmp_path / "grpo", max_iters=4, batch_size=2, eval_interval=4),
                  group_size=4, ppo_epochs=2, max_new_tokens=6, n_prompts=50, n_heldout=8)
    assert len(record["rollouts"]) == 2  # 4 steps, each rollout batch served for 2 steps
    assert {"reward", "accuracy", "length", "signal"} <= set(record["rollouts"][0])
    assert {"exact_match", "samples"} <= set(record["before"]) and record["heldout_prompts"] == 8
    load_model(tmp_path / "grpo")


# ---- distillation -----------------------------------------------------------------------------
def test_distill_loss_soft_and_hard_terms():
    import copy

    import torch

    from mmlab.model.lm import MiniMindLM
    from mmlab.train.distill import DistillLoss

    torch.manual_seed(0)
    student = MiniMindLM(get_preset("nano"))
    x = torch.randint(0, 128, (2, 12))
    y = x.roll(-1, 1)
    hard = torch.nn.functional.cross_entropy(student(x).logits.flatten(0, 1), y.flatten(), reduction="sum")
    # a teacher identical to the student: the soft term is 0, so alpha=1 gives 0 and alpha=0.5 half the hard loss
    same = DistillLoss(copy.deepcopy(student), temperature=2.0, alpha=1.0)
    assert same(student, (x, y))[0].item() == pytest.approx(0.0, abs=1e-4)
    half = DistillLoss(copy.deepcopy(student), temperature=2.0, alpha=0.5)
    assert half(student, (x, y))[0].item() == pytest.approx(0.5 * hard.item(), rel=1e-4)
    student.eval()  # evaluation reports the plain cross-entropy whatever alpha is
    assert same(student, (x, y))[0].item() == pytest.approx(hard.item(), rel=1e-4)


def test_distill_stage_trains_a_smaller_student(base_ckpt, tmp_path):
    from mmlab.train.distill import distill

    student = get_preset("nano", hidden_size=32, n_layers=1, n_heads=2, n_kv_heads=1)
    record = distill(base_ckpt, None, student, tcfg(tmp_path / "student"), temperature=2.0, alpha=0.5)
    assert record["data"] == "synthetic-stories"  # the teacher's own corpus, from its checkpoint
    assert record["student_params"] < record["teacher_params"]
    assert record["student_val_loss"] > 0 and record["teacher_val_loss"] > 0
    assert load_model(tmp_path / "student").cfg.hidden_size == 32


# ---- the speedrun ------------------------------------------------------------------------------
def test_speedrun_every_stage_loads_the_last_and_writes_a_report_card(tmp_path, mirror_file, monkeypatch):
    from mmlab.speedrun import speedrun

    monkeypatch.setenv("MMLAB_DATA_MIRROR", str(mirror_file("tinystories_train_head2MiB.txt").parent))
    monkeypatch.setenv("MMLAB_DATA_DIR", str(tmp_path / "cache"))
    small = {"dtype": "fp32", "compile": False, "batch_size": 4, "block_size": 64}
    card = speedrun(tmp_path / "run", "laptop", scale=0.005, overrides=small, log=lambda *_: None)
    assert set(card["stages"]) == {"pretrain", "sft", "dpo", "grpo", "eval"}
    assert set(card["eval"]["stages"]) == {"pretrain", "sft", "dpo", "grpo"}
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| grpo |" in report and "exact match" in report and (tmp_path / "run" / "report.png").stat().st_size > 5000
    with pytest.raises(MMLabError, match="already holds a run"):
        speedrun(tmp_path / "run", "laptop", from_stage="dpo", scale=0.005, overrides=small, log=lambda *_: None)
    before = (tmp_path / "run" / "sft" / "ckpt" / "model.safetensors").stat().st_mtime_ns
    speedrun(tmp_path / "run", "laptop", from_stage="dpo", overwrite=True, scale=0.005, overrides=small,
             log=lambda *_: None)
    assert (tmp_path / "run" / "sft" / "ckpt" / "model.safetensors").stat().st_mtime_ns == before  # kept
    with pytest.raises(MMLabError, match="needs the pretrain stage"):
        speedrun(tmp_path / "other", "laptop", from_stage="sft", log=lambda *_: None)


def test_minimind_26m_speedrun_path_runs_a_few_steps_on_cpu(tmp_path, mirror_file, monkeypatch):
    """The GPU preset's code path (26M model, BPE 6400, every stage), a few tiny steps on CPU, on MiniMind's
    files found in the mirror (hf/<repo>/<file>, small stand-ins in the real formats)."""
    from mmlab.data.registry import get_dataset
    from mmlab.speedrun import speedrun

    mirror = tmp_path / "mirror"
    files = _minimind_files(tmp_path)
    for name, key in (("minimind-pretrain", "pretrain"), ("minimind-sft", "sft"), ("minimind-dpo", "dpo")):
        ds = get_dataset(name)
        (mirror / "hf" / ds.repo_id).mkdir(parents=True, exist_ok=True)
        (mirror / "hf" / ds.repo_id / ds.filename).write_bytes(files[key].read_bytes())
    monkeypatch.setenv("MMLAB_DATA_MIRROR", str(mirror))
    monkeypatch.setenv("MMLAB_DATA_DIR", str(tmp_path / "cache"))
    # val_fraction: the stand-in corpus has 80 records, too few for the preset's 0.5% held out
    small = {"dtype": "fp32", "compile": False, "device": "cpu", "batch_size": 2, "block_size": 48,
             "val_fraction": 0.1}
    card = speedrun(tmp_path / "run", "minimind-26m", scale=0.0005, overrides=small, log=lambda *_: None)
    assert card["preset"] == "minimind-26m" and set(card["eval"]["stages"]) == {"pretrain", "sft", "dpo", "grpo"}
    assert load_model(tmp_path / "run" / "grpo").cfg.hidden_size == 512
    stages = card["stages"]
    assert (stages["pretrain"]["corpus"], stages["sft"]["data"], stages["dpo"]["data"]) == (
        "minimind-pretrain", "minimind-sft", "minimind-dpo")


def test_gpu_presets_state_their_token_budget(capsys):
    from mmlab.cli import main
    from mmlab.speedrun import get_speedrun_preset, plan

    for name, params, tokens in (("minimind-26m", 25_829_888, 491_520_000), ("minimind-104m", 104_030_976,
                                                                            983_040_000)):
        p, r = get_speedrun_preset(name), plan(name, sustained_tflops=50)
        assert (r["params"], r["tokens"]) == (params, tokens) and p.pretrain["dtype"] == "bf16"
        assert p.pretrain["compile"] and p.model.attn_impl == "sdpa" and p.pretrain["device"] == "auto"
        assert r["hours"] == pytest.approx(r["flops"] / 50e12 / 3600)
        for stage in ("pretrain", "sft", "dpo", "grpo"):  # every stage's settings are a valid TrainConfig
            TrainConfig(out_dir="x", **getattr(p, stage))
    # the README's budget table is plan()'s
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("<!-- readme:gpu-plan -->")[1].strip().splitlines()[2:4]
    for row in table:
        name, params, tokens, per_param, flops, hours = [c.strip() for c in row.strip("|").split("|")]
        r = plan(name, sustained_tflops=50)
        assert (params, tokens, per_param, flops, hours) == (
            f"{r['params']:,}", f"{r['tokens'] / 1e9:.2f}B", f"{r['tokens_per_param']:.1f}", f"{r['flops']:.2e}",
            f"{r['hours']:.1f}"), row
    assert main(["speedrun", "--preset", "minimind-104m", "--plan", "--tflops", "50"]) == 0
    out = capsys.readouterr().out
    assert "104,030,976 parameters" in out and "0.98B tokens" in out and "hours of pretraining" in out


def test_real_preference_data_loads_and_counts_its_identical_pairs(mirror_file, monkeypatch):
    """preferences-1k holds a few records whose two answers are the same: skipped, counted, reported."""
    from mmlab.train.dpo import load_preferences

    monkeypatch.setenv("MMLAB_DATA_MIRROR", str(mirror_file("instruction-data-with-preference.json").parent))
    with pytest.warns(UserWarning, match="skipped 6 record"):
        pairs = load_preferences("preferences-1k")
    assert len(pairs) + len(pairs.skipped) == 1100 and len(pairs.skipped) == 6
    assert all(p.chosen.strip() != p.rejected.strip() for p in pairs)


def test_grpo_learns_what_the_reward_asks_for(base_ckpt, tmp_path):
    """A reward a tiny model can discover by sampling (answers that start with the letter "a"): the
    rollouts' mean reward rises well above where it started."""
    from mmlab.train.checkpoint import load_checkpoint_tokenizer
    from mmlab.train.grpo import GRPOLoss, RLPrompt, RolloutSource
    from mmlab.train.trainer import Trainer

    model, tok = load_model(base_ckpt), load_checkpoint_tokenizer(base_ckpt)
    prompts = [RLPrompt([{"role": "user", "content": f"Say a word ({i})."}], "") for i in range(20)]
    source = RolloutSource(model, tok, prompts, group_size=8, max_new_tokens=3,
                           reward=lambda text, answer, finished: float(text.lstrip().startswith("a")))
    cfg = tcfg(tmp_path / "grpo", max_iters=40, batch_size=4, lr=1e-2, eval_interval=40, warmup_iters=0)
    Trainer(model, GRPOLoss(None, kl_coef=0.0), source, cfg).fit()
    rewards = [r["reward"] for r in source.history]
    first, last = sum(rewards[:8]) / 8, sum(rewards[-8:]) / 8
    assert last > first + 0.3 and last > 0.5, rewards


@pytest.mark.parametrize("args, fragment", [
    (["train", "grpo", "--base", "x", "--out", "o", "--tasks", "add,bogus"], "tasks ['bogus']: choose from"),
    (["train", "grpo", "--base", "x", "--out", "o", "--temperature", "0"], "temperature=0.0 must be > 0"),
    (["train", "grpo", "--base", "x", "--out", "o", "--temperature", "1e-6"], "sampling is greedy"),
    (["train", "dpo", "--base", "x", "--out", "o", "--beta", "0"], "beta=0.0 must be > 0"),
    (["train", "lora", "--base", "x", "--out", "o", "--rank", "2", "--lora-dropout", "1.5"], "lora dropout"),
    (["speedrun", "--scale", "0", "--out", "o"], "scale=0.0 must be in (0, 1]"),
])
def test_bad_stage_flags_are_one_clear_line_before_any_work(args, fragment, tmp_path, monkeypatch, capsys):
    from mmlab.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]
    assert not (tmp_path / "o").exists()  # nothing was written


def test_stage_reports_are_written_by_rank_zero_only(tmp_path, monkeypatch):
    from mmlab.train.stages import write_report

    monkeypatch.setenv("RANK", "1")
    write_report(tmp_path, "r.json", {"a": 1})
    assert not (tmp_path / "r.json").exists()
    monkeypatch.setenv("RANK", "0")
    write_report(tmp_path, "r.json", {"a": 1})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1} and not (tmp_path / "r.json.tmp").exists()


def _minimind_files(tmp_path):
    """Small files in MiniMind's own formats (jingyaogong/minimind_dataset): pretraining {"text"}, SFT and
    LoRA-identity {"conversations"} (with MiniMind-3's reasoning_content and tool calls), DPO
    {"chosen": [...], "rejected": [...]}."""
    def write(name, records):
        (tmp_path / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        return tmp_path / name

    turn = lambda role, content, **kw: {"role": role, "content": content, **kw}  # noqa: E731
    pre = write("pretrain_hq.jsonl", [{"text": f"<|im_start|>Story {i}: a cat sat on mat {i}.<|im_end|>"}
                                      for i in range(80)])
    sft_records = [{"conversations": [turn("user", f"What is {i} plus {i}?"),
                                      turn("assistant", str(2 * i), reasoning_content=f"{i} + {i} = {2 * i}.")]}
                   for i in range(40)]
    sft_records.append({"conversations": [
        turn("system", "You can call tools."), turn("user", "Weather in Paris?"),
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        turn("tool", "sunny, 21 C"), turn("assistant", "It is sunny in Paris.")]})
    sft_file = write("sft_mini_512.jsonl", sft_records)
    identity = write("lora_identity.jsonl", [{"conversations": [turn("user", f"{q} ({i})"),
                                                                turn("assistant", "I am MiniMind.")]}
                                             for i in range(5)
                                             for q in ("Who are you?", "你是谁？", "Your name?", "Hello!")])
    dpo_file = write("dpo.jsonl", [{"chosen": [turn("user", f"Is {i} a number?"), turn("assistant", "Yes.")],
                                    "rejected": [turn("user", f"Is {i} a number?"), turn("assistant", "No.")]}
                                   for i in range(40)])
    return {"pretrain": pre, "sft": sft_file, "lora": identity, "dpo": dpo_file}


def test_every_stage_reads_minimind_formats_and_names_bad_records(base_ckpt, tmp_path):
    from mmlab.data.sft import load_conversations
    from mmlab.train.dpo import dpo, load_preferences

    files = _minimind_files(tmp_path)
    convs = load_conversations(files["sft"])
    # MiniMind-3's reasoning and tool calls stay structured, and the chat template renders them (Qwen3's way)
    assert convs[0][1] == {"role": "assistant", "content": "0", "reasoning_content": "0 + 0 = 0."}
    from mmlab.tokenizer.chat import render_chat
    assert render_chat(convs[0]).endswith("<|im_start|>assistant\n<think>\n0 + 0 = 0.\n</think>\n\n0<|im_end|>\n")
    tool = render_chat(convs[-1])
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            '</tool_call><|im_end|>\n') in tool
    assert "<|im_start|>user\n<tool_response>\nsunny, 21 C\n</tool_response><|im_end|>\n" in tool
    assert load_preferences(str(files["dpo"]))[0].prompt == [{"role": "user", "content": "Is 0 a number?"}]

    # each stage trains on its file
    pretrain(get_preset("nano", max_seq_len=64, vocab_size=300), str(files["pretrain"]), tcfg(tmp_path / "pre"),
             tokenizer="bpe")
    run = sft(base_ckpt, str(files["sft"]), tcfg(tmp_path / "sft"), evaluate=False)
    assert run.result.steps == 6
    run = sft(tmp_path / "sft", str(files["lora"]), tcfg(tmp_path / "lora"), evaluate=False,
              lora=LoRAConfig(rank=2, alpha=4))
    assert (tmp_path / "lora" / "ckpt" / "adapter.safetensors").is_file()
    record = dpo(tmp_path / "sft", str(files["dpo"]), tcfg(tmp_path / "dpo", max_iters=2))
    assert record["steps"] == 2

    # a bad record in each format is named by file:line, before any run folder is made
    bad = {
        "pretrain": ({"txt": "typo"}, r"pretrain_hq.jsonl:81: no string field 'text'"),
        "sft": ({"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant"}]},
                r"sft_mini_512.jsonl:42: conversations\[1\].content must be a string"),
        "lora": ({"conversations": [{"role": "robot", "content": "hi"}]},
                 r"lora_identity.jsonl:21: conversations: message 0: role='robot'"),
        "dpo": ({"chosen": [{"role": "user", "content": "a?"}, {"role": "assistant", "content": "x"}],
                 "rejected": [{"role": "user", "content": "b?"}, {"role": "assistant", "content": "y"}]},
                r"dpo.jsonl:41: 'chosen' and 'rejected' must share every turn before the answer"),
    }
    for stage, (record, message) in bad.items():
        with open(files[stage], "a") as f:
            f.write(json.dumps(record) + "\n")
        with pytest.raises(MMLabError, match=message):
            if stage == "pretrain":
                pretrain(get_preset("nano"), str(files[stage]), tcfg(tmp_path / "bad-pre"), tokenizer="char")
            elif stage == "dpo":
                dpo(tmp_path / "sft", str(files[stage]), tcfg(tmp_path / "bad-dpo"))
            else:
                sft(base_ckpt, str(files[stage]), tcfg(tmp_path / f"bad-{stage}"), evaluate=False)
    assert not any((tmp_path / f"bad-{s}").exists() for s in ("pre", "sft", "lora", "dpo"))
