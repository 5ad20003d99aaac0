"""The training loop: it learns, accumulation is exact, resume after SIGKILL is bit-identical, DDP
matches one process, bad states stop with a clear message, existing runs are never overwritten."""

import itertools
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ENV
from conftest import train_cmd as _train_cmd
from mmlab.config import get_preset
from mmlab.errors import MMLabError
from mmlab.model import MiniMindLM
from mmlab.quickstart import QUICK_EXPERIMENTS
from mmlab.train import NextTokenLoss, TrainConfig, Trainer, TrainingDiverged
from mmlab.train.checkpoint import CheckpointError, load_model, load_weights, save_checkpoint
from mmlab.train.optim import lr_at, param_groups
from mmlab.train.pretrain import pretrain


def small_cfg(out, **kw):
    base = {"max_iters": 40, "batch_size": 4, "block_size": 32, "eval_interval": 20, "eval_batches": 2,
            "log_interval": 5, "warmup_iters": 5, "lr": 3e-3, "progress": False}
    return TrainConfig(out_dir=str(out), **{**base, **kw})


def test_a_tiny_model_learns_well_below_the_unigram_entropy(tmp_path, mirror_file, monkeypatch):
    """TinyShakespeare characters carry ~3.3 nats of unigram entropy; 300 steps of a tiny model must
    beat that by a wide margin (it learns which characters follow which)."""
    monkeypatch.setenv("MMLAB_DATA_MIRROR", str(mirror_file("tinyshakespeare_input.txt").parent))
    monkeypatch.setenv("MMLAB_DATA_DIR", str(tmp_path / "cache"))
    text = mirror_file("tinyshakespeare_input.txt").read_text()
    counts = torch.tensor([text.count(c) for c in sorted(set(text))], dtype=torch.float64)
    p = counts / counts.sum()
    unigram_entropy = float(-(p * p.log()).sum())
    cfg = small_cfg(tmp_path / "run", max_iters=300, batch_size=16, block_size=64, eval_interval=300,
                    eval_batches=10, lr=5e-3, warmup_iters=20)
    result = pretrain(get_preset("nano"), "tinyshakespeare", cfg, tokenizer="char")
    assert result.final_val_loss < unigram_entropy - 0.7, (result.final_val_loss, unigram_entropy)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 10_000
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "tokens_per_s", "elapsed_s"} <= set(records[0])


class ListBatches:
    """A BatchSource over fixed batches, for exact comparisons."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def sample(self, split, rows, generator):
        idx = torch.randint(len(self.x), (rows,), generator=generator)
        return self.x[idx], self.y[idx]

    def slice_rows(self, batch, start, stop):
        return tuple(t[start:stop] for t in batch)

    def eval_batches(self, split):
        return [(self.x[:2], self.y[:2])]


def test_gradient_accumulation_matches_one_big_batch_even_with_uneven_masks(tmp_path):
    """4 micro-batches of 2 rows must give the same update as 1 batch of 8 rows, although the rows
    hold very different numbers of target tokens (per-micro-batch means would weight them wrongly)."""
    torch.manual_seed(0)
    x = torch.randint(0, 128, (8, 16))
    y = torch.randint(0, 128, (8, 16))
    y[:6, 2:] = -100  # six rows with only 2 targets, two rows with 16
    moments = []
    for accum, bs in ((1, 8), (4, 2)):
        torch.manual_seed(1)
        model = MiniMindLM(get_preset("nano"))
        cfg = small_cfg(tmp_path / f"acc{accum}", max_iters=1, batch_size=bs, grad_accum=accum, warmup_iters=0,
                        eval_interval=1, grad_clip=0.0)
        trainer = Trainer(model, NextTokenLoss(), _Sequential(x, y), cfg)
        trainer.fit()
        # Adam's first moment after one step is (1 - beta1) * gradient: compare gradients through it
        # (the update itself is ~lr * sign(g) at step 1, too sensitive to rounding where g ~ 0)
        moments.append([trainer.optimizer.state[p]["exp_avg"] for p in model.parameters()])
    for a, b in zip(*moments):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-4)
    assert sum(float(m.abs().sum()) for m in moments[0]) > 0


class _Sequential(ListBatches):
    """Serves rows in order, so both runs see the same 8 rows in one optimizer step."""

    def __init__(self, x, y):
        super().__init__(x, y)
        self.pos = 0

    def sample(self, split, rows, generator):
        out = self.x[self.pos:self.pos + rows], self.y[self.pos:self.pos + rows]
        self.pos += rows
        return out


def test_resume_after_sigkill_is_bit_identical(tmp_path, run_env):
    env, config = run_env
    iters = "200"
    ref = subprocess.run(_train_cmd(tmp_path / "ref", config, "--max-iters", iters), env=env,
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr

    # the same run, killed with SIGKILL right after its first checkpoint
    proc = subprocess.Popen(_train_cmd(tmp_path / "killed", config, "--max-iters", iters), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "saved checkpoint" in line:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(lines)
    killed_at = torch.load(tmp_path / "killed" / "ckpt" / "trainer_state.pt", weights_only=False)["step"]
    assert 0 < killed_at < int(iters)

    # resume with only --out and --resume: everything else comes from the run's saved config
    resume_cmd = [sys.executable, "-m", "mmlab.cli", "train", "pretrain", "--out", str(tmp_path / "killed"),
                  "--resume"]
    resumed = subprocess.run(resume_cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(tmp_path / "ref" / "ckpt" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "ckpt" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # and the metrics file tells one continuous story: every logged step once, in order
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == sorted(set(steps)) and steps[-1] == int(iters)


def _losses(run):
    """The logged training losses of a run folder, in order."""
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def test_ddp_with_two_processes_matches_one_process(tmp_path, run_env):
    env, _ = run_env
    config = tmp_path / "no_dropout.json"  # dropout masks depend on how rows are split over processes
    get_preset("nano", vocab_size=64).to_json(config)
    common = ("--max-iters", "15", "--log-interval", "1", "--eval-interval", "15", "--warmup-iters", "3",
              "--grad-accum", "2")  # accumulation exercises DDP's no_sync path
    single = subprocess.run(_train_cmd(tmp_path / "single", config, *common, "--batch-size", "8"),
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = _train_cmd(tmp_path / "ddp", config, *common, "--batch-size", "4")
    ddp = subprocess.run([*torchrun, *cmd[1:]], env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr

    one, two = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert len(one) == len(two) == 15
    for a, b in zip(one, two):
        assert a == pytest.approx(b, rel=1e-4)
    assert one[-1] < one[0]


def test_ddp_streams_one_tokenizer_and_one_set_of_shards(tmp_path, run_env):
    """Under torchrun a streamed corpus is tokenized once: rank 0 trains the BPE and builds the shards, the
    other ranks get the same tokenizer and reuse them, and the run matches one process's."""
    env, _ = run_env
    config = tmp_path / "no_dropout.json"
    get_preset("nano", vocab_size=300).to_json(config)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(2):
        (corpus / f"part{i}.txt").write_text("".join(f"Story {i}-{j}: the fox saw a {w} and ran home.\n<|endoftext|>\n"
                                                     for j in range(300) for w in ("cat", "tree")))
    common = ["--config", str(config), "--data", str(corpus), "--tokenizer", "bpe", "--block-size", "32",
              "--max-iters", "8", "--log-interval", "1", "--eval-interval", "8", "--eval-batches", "2",
              "--warmup-iters", "2", "--lr", "3e-3"]
    train = [sys.executable, "-m", "mmlab.cli", "train", "pretrain"]
    single = subprocess.run([*train, *common, "--out", str(tmp_path / "single"), "--batch-size", "8"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    env2 = {**env, "MMLAB_DATA_DIR": str(tmp_path / "cache2")}  # a fresh cache: the ranks build it themselves
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    ddp = subprocess.run([*torchrun, "-m", "mmlab.cli", "train", "pretrain", *common, "--out", str(tmp_path / "ddp"),
                          "--batch-size", "4"], env=env2, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    assert len(list((tmp_path / "cache2").glob("shards/*/manifest.json"))) == 1
    one, two = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert len(one) == len(two) == 8
    for a, b in zip(one, two):
        assert a == pytest.approx(b, rel=1e-4)


def test_an_existing_run_is_never_overwritten(tmp_path, run_env):
    env, config = run_env
    first = subprocess.run(_train_cmd(tmp_path / "run", config, "--max-iters", "5"), env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "run" / "ckpt" / "model.safetensors").read_bytes()
    other_data = subprocess.run([sys.executable, "-m", "mmlab.cli", "train", "pretrain", "--out",
                                 str(tmp_path / "run"), "--resume", "--data", "tinyshakespeare"],
                                env=env, capture_output=True, text=True, timeout=300)
    assert other_data.returncode == 1 and "was trained on 'the-verdict'" in other_data.stderr
    again = subprocess.run(_train_cmd(tmp_path / "run", config, "--max-iters", "5"), env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 1
    assert "already holds a run; pass --resume" in again.stderr and "Traceback" not in again.stderr
    assert (tmp_path / "run" / "ckpt" / "model.safetensors").read_bytes() == before


def test_divergence_stops_with_the_step_and_last_checkpoint(tmp_path):
    x = torch.randint(0, 128, (8, 16))
    model = MiniMindLM(get_preset("nano"))
    cfg = small_cfg(tmp_path / "nan", max_iters=30, eval_interval=10, batch_size=2)
    trainer = Trainer(model, _PoisonAfter(12), ListBatches(x, x), cfg)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 12: loss nan.*last good checkpoint is .*ckpt"):
        trainer.fit()
    # the checkpoint on disk is the good one from step 10
    state = torch.load(tmp_path / "nan" / "ckpt" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 10
    assert all(torch.isfinite(p).all() for p in load_model(tmp_path / "nan").parameters())


class _PoisonAfter(NextTokenLoss):
    def __init__(self, step):
        self.calls, self.step = 0, step

    def __call__(self, model, batch):
        loss, n, m = super().__call__(model, batch)
        if model.training:
            self.calls += 1
            if self.calls > self.step:
                loss = loss * float("nan")
        return loss, n, m


def test_checkpoint_from_another_config_is_refused_clearly(tmp_path):
    model = MiniMindLM(get_preset("nano"))
    save_checkpoint(tmp_path / "ckpt", model)
    other = MiniMindLM(get_preset("nano", n_layers=3))
    with pytest.raises(CheckpointError, match="n_layers: checkpoint 2 vs model 3"):
        load_weights(other, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_model(tmp_path / "ckpt")


def test_checkpoint_round_trip_keeps_tied_weights_and_has_no_wrapper_prefixes(tmp_path):
    model = MiniMindLM(get_preset("nano"))
    save_checkpoint(tmp_path / "ckpt", model)
    names = load_file(tmp_path / "ckpt" / "model.safetensors").keys()
    assert not any(n.startswith(("_orig_mod.", "module.")) for n in names)
    again = load_model(tmp_path / "ckpt")
    assert again.lm_head.weight is again.tok_emb.weight
    idx = torch.randint(0, 128, (1, 10))
    torch.testing.assert_close(model(idx).logits, again(idx).logits)


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = MiniMindLM(get_preset("nano"))
    save_checkpoint(tmp_path / "ckpt", model)
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("mmlab.train.checkpoint.torch.save", crash)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "ckpt", MiniMindLM(get_preset("nano")), trainer_state={"step": 1})
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_schedule_warmup_then_cosine_to_min_lr():
    cfg = TrainConfig(max_iters=1000, lr=1e-3, min_lr=1e-4, warmup_iters=100)
    lrs = [lr_at(s, cfg) for s in range(1000)]
    assert lrs[0] < lrs[50] < lrs[99] <= 1e-3
    assert max(lrs) == pytest.approx(1e-3, rel=1e-2)
    after_warmup = lrs[100:]
    assert all(a >= b for a, b in itertools.pairwise(after_warmup))  # monotone decay
    assert lrs[-1] == pytest.approx(1e-4, rel=1e-2)
    wsd = TrainConfig(max_iters=1000, lr=1e-3, min_lr=0.0, warmup_iters=10, schedule="wsd", decay_fraction=0.2)
    assert lr_at(500, wsd) == 1e-3 and lr_at(799, wsd) == 1e-3 and lr_at(999, wsd) < 1e-5
    assert lr_at(500, TrainConfig(schedule="constant", warmup_iters=10)) == 1e-3


def test_weight_decay_only_on_matrices():
    groups = param_groups(MiniMindLM(get_preset("nano")), 0.1)
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0


def test_bad_train_config_is_one_line():
    with pytest.raises(MMLabError, match="dtype='fp8' is not one of: fp32, bf16, fp16"):
        TrainConfig(dtype="fp8")
    with pytest.raises(MMLabError, match="max_iters=0 must be a positive integer"):
        TrainConfig(max_iters=0)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_autocast_trains_on_cpu(tmp_path, dtype):
    x = torch.randint(0, 128, (16, 16))
    model = MiniMindLM(get_preset("nano"))
    cfg = small_cfg(tmp_path / dtype, max_iters=30, dtype=dtype, eval_interval=30)
    result = Trainer(model, NextTokenLoss(), ListBatches(x, x.roll(-1, dims=1)), cfg).fit()
    assert math.isfinite(result.final_train_loss) and result.final_train_loss < math.log(128)
    assert next(model.parameters()).dtype == torch.float32  # autocast: master weights stay fp32


def test_sample_cli_streams_text(tmp_path, run_env):
    env, config = run_env
    subprocess.run(_train_cmd(tmp_path / "run", config, "--max-iters", "5"), env=env, check=True,
                   capture_output=True, timeout=300)
    out = subprocess.run([sys.executable, "-m", "mmlab.cli", "sample", "--ckpt", str(tmp_path / "run"),
                          "--prompt", "The ", "--max-new-tokens", "20", "--seed", "0"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("The ") and len(out.stdout.strip()) > 4
    bad = subprocess.run([sys.executable, "-m", "mmlab.cli", "sample", "--ckpt", str(tmp_path / "none")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "checkpoint not found" in bad.stderr and "Traceback" not in bad.stderr
    unknown_char = subprocess.run([sys.executable, "-m", "mmlab.cli", "sample", "--ckpt", str(tmp_path / "run"),
                                   "--prompt", "日本"], env=env, capture_output=True, text=True, timeout=120)
    assert unknown_char.returncode == 1 and "cannot be encoded" in unknown_char.stderr
    assert Path(tmp_path / "run" / "loss.png").is_file()


def test_quickstart_offline_without_mirror_uses_the_synthetic_corpus(tmp_path):
    env = {k: v for k, v in ENV.items() if k != "MMLAB_DATA_MIRROR"}
    env["MMLAB_DATA_DIR"] = str(tmp_path / "empty-cache")
    env["MMLAB_OFFLINE"] = "1"  # tests never touch the network, even on a machine that has one
    out = subprocess.run([sys.executable, "-m", "mmlab.cli", "quickstart", "--out", str(tmp_path / "qs"),
                          "--max-iters", "30"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    notices = [line for line in out.stderr.splitlines() if line.startswith("note:")]
    assert len(notices) == 1 and "synthetic-stories" in notices[0] and "MMLAB_DATA_MIRROR" in notices[0]
    assert "final val loss" in out.stdout and "sample" in out.stdout
    assert (tmp_path / "qs" / "loss.png").is_file()
    # then the quick-start experiments, each with its plot (offline, those that read TinyShakespeare are skipped)
    assert "FAILED" not in out.stdout, out.stdout[-2000:]
    for _, experiment_id, needs_text in QUICK_EXPERIMENTS:
        stem = experiment_id.split("/")[1]
        if needs_text:
            assert f"{experiment_id} skipped: it reads TinyShakespeare" in out.stdout
            continue
        assert f"{experiment_id} (" in out.stdout
        result = json.loads((tmp_path / "qs" / "experiments" / f"{stem}.json").read_text())
        assert result["mode"] == "quick"
        assert all((tmp_path / "qs" / "experiments" / name).is_file() for name in result["figures"])
    # --overwrite replaces the run and its experiment outputs, but refuses a folder with a user's file in it
    (tmp_path / "qs" / "experiments" / "notes.txt").write_text("mine")
    again = subprocess.run([sys.executable, "-m", "mmlab.cli", "quickstart", "--out", str(tmp_path / "qs"),
                            "--max-iters", "5", "--overwrite", "--no-experiments"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 1 and "notes.txt" in again.stderr
    assert (tmp_path / "qs" / "experiments" / "notes.txt").read_text() == "mine"


def test_torch_compile_trains_and_saves_plain_names(tmp_path):
    """--compile: the compiled module trains; the checkpoint holds the raw module's names."""
    x = torch.randint(0, 128, (16, 16))
    model = MiniMindLM(get_preset("nano", n_layers=1))
    cfg = small_cfg(tmp_path / "compiled", max_iters=4, eval_interval=4, compile=True)
    result = Trainer(model, NextTokenLoss(), ListBatches(x, x.roll(-1, dims=1)), cfg).fit()
    assert math.isfinite(result.final_train_loss)
    names = load_file(tmp_path / "compiled" / "ckpt" / "model.safetensors").keys()
    assert names and not any("_orig_mod" in n for n in names)


def test_resume_edge_cases_are_clear_and_safe(tmp_path, run_env):
    env, config = run_env

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "mmlab.cli", "train", "pretrain", *args], env=env,
                              capture_output=True, text=True, timeout=300)

    run = tmp_path / "run"
    assert subprocess.run(_train_cmd(run, config, "--max-iters", "20"), env=env, capture_output=True,
                          timeout=300).returncode == 0
    # a torn last line (the crash we recover from) is dropped, not a traceback
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 25, "loss": 3.1')
    at_end = cli("--out", str(run), "--resume")
    assert at_end.returncode == 1 and "already at step 20; pass --max-iters larger" in at_end.stderr
    extended = cli("--out", str(run), "--resume", "--max-iters", "30", "--preset", "minimind-26m")
    assert extended.returncode == 0, extended.stderr
    assert "--preset, --config and --tokenizer are ignored with --resume" in extended.stderr
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["max_iters"] == 30 and saved["lr_decay_iters"] == 20  # the schedule does not restart
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 30
    # a corrupt trainer state is named, not a traceback
    (run / "ckpt" / "trainer_state.pt").write_bytes(b"not a pickle")
    broken = cli("--out", str(run), "--resume", "--max-iters", "40")
    assert broken.returncode == 1 and "cannot read trainer state" in broken.stderr and "Traceback" not in broken.stderr


def test_set_changes_model_fields_from_the_command_line(tmp_path, run_env):
    env, config = run_env
    run = tmp_path / "run"
    done = subprocess.run(_train_cmd(run, config, "--max-iters", "2", "--set", "use_ffn=false", "--set",
                                     "n_kv_heads=1"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    saved = load_model(run).cfg
    assert saved.use_ffn is False and saved.n_kv_heads == 1


def test_overwrite_deletes_only_a_runs_own_files(tmp_path, run_env):
    env, config = run_env
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    refused = subprocess.run(_train_cmd(precious, config, "--max-iters", "3", "--overwrite"), env=env,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "refusing to overwrite" in refused.stderr
    assert (precious / "thesis.txt").read_text() == "years of work"
    run = tmp_path / "run"
    for _ in range(2):  # the second time replaces the first run
        ok = subprocess.run(_train_cmd(run, config, "--max-iters", "3", "--overwrite"), env=env,
                            capture_output=True, text=True, timeout=300)
        assert ok.returncode == 0, ok.stderr
    nothing = subprocess.run([sys.executable, "-m", "mmlab.cli", "train", "pretrain", "--out",
                              str(tmp_path / "empty"), "--resume"], env=env, capture_output=True, text=True)
    assert nothing.returncode == 1 and "cannot resume" in nothing.stderr and "Traceback" not in nothing.stderr


def test_a_crash_between_the_renames_is_recovered(tmp_path):
    """If a save died after moving ckpt -> ckpt.old but before moving the new one in, ckpt.old is
    found, and the next save does not delete it before the new checkpoint is in place."""
    model = MiniMindLM(get_preset("nano"))
    save_checkpoint(tmp_path / "ckpt", model)
    (tmp_path / "ckpt").rename(tmp_path / "ckpt.old")
    (tmp_path / ".ckpt.tmp-dead").mkdir()  # debris of the killed save
    assert load_model(tmp_path).num_params() == model.num_params()
    save_checkpoint(tmp_path / "ckpt", model)  # ckpt.old is removed only after the new ckpt is in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert oct((tmp_path / "ckpt").stat().st_mode & 0o777) != oct(0o700)


def test_sgd_optimizer_trains_and_cannot_resume_an_adamw_run(tmp_path):
    from mmlab.train.optim import build_optimizer

    model = MiniMindLM(get_preset("nano"))
    opt = build_optimizer(model, small_cfg(tmp_path, optimizer="sgd", lr=0.1, beta1=0.9))
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    x = torch.randint(0, 128, (4, 16))
    losses = []
    for _ in range(20):
        loss = model(x, x).loss
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 0.5
    with pytest.raises(MMLabError, match="optimizer='bogus' is not one of: adamw, sgd"):
        small_cfg(tmp_path, optimizer="bogus")
    (tmp_path / "run").mkdir()
    small_cfg(tmp_path / "run").save(tmp_path / "run" / "train_config.json")
    with pytest.raises(MMLabError, match="optimizer='adamw'"):
        TrainConfig.for_resume(tmp_path / "run", optimizer="sgd")
    assert TrainConfig.for_resume(tmp_path / "run", optimizer="adamw").optimizer == "adamw"


def test_keep_best_saves_the_weights_of_the_lowest_val_loss(tmp_path):
    from mmlab.lab.lm import TensorBatches

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 128, (64, 16), generator=g)
    source = TensorBatches({"train": (x[:48], x[:48].roll(-1, 1)), "val": (x[48:], x[48:].roll(-1, 1))}, 8)
    # a high learning rate so the val loss goes up and down: the best is rarely the last
    cfg = small_cfg(tmp_path / "run", max_iters=60, eval_interval=5, lr=3e-2, keep_best=True, warmup_iters=0)
    torch.manual_seed(0)
    result = Trainer(MiniMindLM(get_preset("nano")), NextTokenLoss(), source, cfg).fit()
    evals = {r["step"]: r["val_loss"] for r in result.history if "val_loss" in r}
    assert result.best_step == min(evals, key=evals.get)
    best = load_model(tmp_path / "run" / "best")
    best.eval()
    with torch.no_grad():
        total = [NextTokenLoss()(best, b)[:2] for b in source.eval_batches("val")]
    val = sum(float(s) for s, _ in total) / sum(n for _, n in total)
    assert val == pytest.approx(evals[result.best_step], rel=1e-5)
    assert not (tmp_path / "run" / "best.old").exists()


def test_resume_drops_best_weights_from_the_lost_part_of_a_run(tmp_path):
    """A crash after a new best but before the next checkpoint: on resume, that best (its step is later
    than the checkpoint's) is gone with the rest of the lost steps; an earlier best survives."""
    import json

    from mmlab.lab.lm import TensorBatches
    from mmlab.train.trainer import BEST_META

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 128, (64, 16), generator=g)
    source = TensorBatches({"train": (x[:48], x[:48].roll(-1, 1)), "val": (x[48:], x[48:].roll(-1, 1))}, 8)
    cfg = small_cfg(tmp_path / "run", max_iters=10, eval_interval=5, ckpt_interval=10, keep_best=True,
                    warmup_iters=0, lr=3e-3)
    torch.manual_seed(0)
    Trainer(MiniMindLM(get_preset("nano")), NextTokenLoss(), source, cfg).fit()
    best = tmp_path / "run" / "best"
    meta = json.loads((best / BEST_META).read_text())
    assert meta["step"] in (5, 10) and meta["val_loss"] > 0
    # pretend the best came from a step after the checkpoint (step 10), lost in a crash
    (best / BEST_META).write_text(json.dumps({"step": 11, "val_loss": 0.1}))
    resumed = Trainer(MiniMindLM(get_preset("nano")), NextTokenLoss(), source,
                      TrainConfig.for_resume(tmp_path / "run", max_iters=12), resume=True)
    assert not best.exists()
    assert all(r["step"] <= 10 for r in resumed.history)
    resumed.fit()
    assert json.loads((best / BEST_META).read_text())["step"] == 12  # the next evaluation keeps a best again
