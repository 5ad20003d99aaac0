"""Benchmarks run end to end in --quick mode (their figures are reported, never asserted as speeds)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pretrain_cpu_benchmark_quick(mirror_file, tmp_path):
    env = {**os.environ, "MMLAB_DATA_MIRROR": str(mirror_file("tinyshakespeare_input.txt").parent),
           "MMLAB_DATA_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pretrain_cpu.py"), "--quick"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    import torch

    from mmlab.device import bf16_supported

    runs = ["gpt2-fp32", "gpt2-bf16", "modern-fp32", "modern-bf16"]
    if not bf16_supported(torch.device("cpu")):  # emulated bf16: left out, and said so
        runs, skipped = [r for r in runs if "bf16" not in r], [r for r in runs if "bf16" in r]
        assert sorted(report["skipped"]) == sorted(skipped)
    assert [r["run"] for r in report["results"]] == runs
    for r in report["results"]:
        assert r["tokens_per_s"] > 0 and r["ms_per_iter"] > 0 and r["peak_rss_mib"] > 0
        # against its own dtype's GEMM peak a run stays below ~1 (2: room for a peak measured while the machine is
        # busy); against the fp32 peak a bf16 run may exceed 2 where bf16 GEMMs are 4x faster (AVX512-BF16, AMX)
        assert 0 < r["mfu_vs_own_dtype_peak"] < 2 and r["mfu_vs_fp32_peak"] > 0 and r["matmul_peak_gflops"]["fp32"] > 0
        losses = list(r["val_loss"].values())
        assert losses and losses[-1] < math.log(65)  # better than a uniform guess after 60 steps


def test_recipe_throughput_benchmark_quick():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recipe_throughput.py"), "--quick"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert [(r["dtype"], r["compile"]) for r in report["results"]] == [("fp32", False), ("bf16", False)]
    assert all(r["tokens_per_s"] > 0 for r in report["results"])


def test_quant_decode_benchmark_quick():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quant_decode.py"), "--quick"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    by_name = {r["variant"]: r for r in report["results"]}
    assert list(by_name) == ["fp32", "bf16", "int8", "int4-g32", "int8-cached", "int4-g32-cached"]
    assert all(r["decode_tokens_per_s"] > 0 for r in report["results"])
    # bytes are exact (speeds are only reported): int4 < int8 < bf16 < fp32 < fp32 + a cached copy
    sizes = [by_name[n]["model_bytes"] for n in ("int4-g32", "int8", "bf16", "fp32", "int8-cached")]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert by_name["int8"]["logits_rel_error_vs_fp32"] < by_name["int4-g32"]["logits_rel_error_vs_fp32"]


def test_speculative_decode_benchmark_quick():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speculative_decode.py"), "--quick"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    names = [r["variant"] for r in report["results"]]
    assert names[0] == "plain" and len(names) == 7
    assert all(r["tokens_per_s"] > 0 for r in report["results"])
    assert all(0 <= r["acceptance_rate"] <= 1 for r in report["results"][1:])


def test_decode_speed_benchmark_quick():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode_speed.py"), "--quick"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    rows = {r["row"]: r for r in report["rows"]}
    for fmt in ("fp32", "bf16", "int8", "int4-g32"):
        assert {f"mmlab {fmt} cache", f"mmlab {fmt} no cache"} <= set(rows)
    assert {"transformers fp32 cache", "transformers fp32 no cache", "transformers bf16 cache"} <= set(rows)
    assert all(r["decode_tokens_per_s"] > 0 for r in rows.values())
    # the exported model decodes the same greedy tokens as ours, with and without a cache
    for name in ("mmlab fp32 no cache", "mmlab fp32 growing cache", "transformers fp32 cache",
                 "transformers fp32 no cache"):
        assert rows[name]["tokens_equal_to_mmlab_fp32"] == 1.0, name


def test_tokenize_scale_benchmark_small_and_readme_figures(tmp_path):
    """The scale benchmark runs (at 2 MB), and the README's 1 GB figures are the committed JSON's."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tokenize_scale.py"), "--sizes", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads(proc.stdout)["runs"][0]
    assert run["tokens"] > 0 and run["mb_per_s"] > 0 and run["peak_rss_mb"] > 0
    committed = json.loads((ROOT / "benchmarks" / "results" / "tokenize_scale.json").read_text())
    big = max(committed["runs"], key=lambda r: r["corpus_mb"])
    readme = (ROOT / "README.md").read_text()
    assert f"took {big['seconds']:.0f} s at a peak RSS of {big['peak_rss_mb']:.0f} MB" in readme


def test_gpu_pretrain_benchmark_smoke_on_cpu():
    """The GPU benchmark's code path (the minimind-26m preset, BPE 6400 on generated text), 3 CPU steps."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_pretrain.py"), "--smoke"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["vocab_size"] == 6400 and report["steps"] == 3 and report["tokens_per_s"] > 0
    assert report["train_flops_per_token"] > 6 * 20e6  # a 26M model: over 6 FLOPs per parameter per token
    assert report["mfu_vs_spec"] is None and report["device"] == "cpu"
    # the README's memory proxies are the committed --cpu runs'
    readme = (ROOT / "README.md").read_text().replace("\n", " ")
    for name, batch, said in (("26m", 64, "peaked at {:.1f} GiB of RAM"), ("104m", 32, "micro-batches per step) at "
                                                                                        "{:.1f} GiB")):
        proxy = json.loads((ROOT / "benchmarks" / "results" / f"gpu_pretrain_cpu_memory_{name}.json").read_text())
        assert (proxy["preset"], proxy["batch_size"], proxy["block_size"], proxy["dtype"]) == (
            f"minimind-{name}", batch, 512, "bf16")
        assert said.format(proxy["peak_rss_gib"]) in readme, name


def test_serve_load_benchmark_quick():
    """The load benchmark drives both engines of the real server with concurrent streaming clients."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--quick"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    runs = {(r["engine"], r["clients"]): r for r in report["results"]}
    assert set(runs) == {(e, c) for e in ("one-at-a-time", "batched") for c in (1, 4)}
    for r in runs.values():
        assert r["completed"] == r["clients"] and r["rejected_429"] == 0 and r["tokens"] > 0
        assert 0 < r["ttft_p50_s"] <= r["latency_p95_s"]
    assert report["speedup_at_max_clients"] > 0  # a figure, not a timed assertion: the full run reports it
    committed = json.loads((ROOT / "benchmarks" / "results" / "serve_load.json").read_text())
    assert not committed["quick"] and committed["max_clients"] == 16
    readme = (ROOT / "README.md").read_text()
    assert f"{committed['speedup_at_max_clients']:.2f}x one-at-a-time's tokens/s at 16 streaming clients" in readme
    alone = committed["engine_alone_speedup_at_max_clients"]
    assert f"the engine alone, same requests without HTTP, gets {alone:.2f}x" in readme
    share = {r["clients"]: r["sampling_share"] for r in committed["engine_alone"]}[16]
    assert f"{share:.0%} of the engine's 16-row time is sampling" in readme
    assert committed["vocab"] > 6000  # lesson 21's model: MiniMind's vocabulary
    assert {r["clients"] for r in report["engine_alone"]} == {1, 4}
    assert all(r["tokens"] > 0 for r in report["engine_alone"])


def test_ppo_vs_grpo_benchmark_quick():
    """PPO (with its critic) and GRPO from the same base at equal rollouts: both run, and the report says what
    each cost (the full run's reward comparison is a figure, not an assertion)."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ppo_vs_grpo.py"), "--quick", "--threads", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    runs = {r["method"]: r for r in report["results"]}
    assert set(runs) == {"grpo", "ppo"} and report["equal_rollouts"]
    assert runs["grpo"]["completions_sampled"] == runs["ppo"]["completions_sampled"] > 0
    assert runs["ppo"]["model_state_mib"] > runs["grpo"]["model_state_mib"]  # the critic and its optimizer state


def test_cpu_step_benchmark_quick_and_readme_figures():
    """The step benchmark runs (the baby model, 4 variants interleaved), and the README's figures are the
    committed full run's."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cpu_step.py"), "--quick", "--threads", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    [baby] = report["models"]
    import torch

    from mmlab.device import bf16_supported

    dtypes = ("fp32", "bf16") if bf16_supported(torch.device("cpu")) else ("fp32",)  # emulated bf16: left out
    assert report["bf16"].startswith("timed" if len(dtypes) == 2 else "skipped: this CPU has neither")
    assert set(baby["variants"]) == {f"{k} {d}" for k in ("plain", "fused") for d in dtypes}
    assert all(v["ms_per_step"] > 0 and v["mfu"] > 0 for v in baby["variants"].values())
    assert report["auto_dtype"]["baby"]["dtype"] in ("fp32", "bf16") and report["lscpu"] is not None
    committed = json.loads((ROOT / "benchmarks" / "results" / "cpu_step.json").read_text())
    assert not committed["quick"] and [m["model"] for m in committed["models"]] == ["baby", "lesson-256",
                                                                                 "minimind-26m"]
    v = {m["model"]: m["variants"] for m in committed["models"]}
    cross = {r["hidden_size"]: r["bf16_speedup"] for r in committed["bf16_crossover"]}
    readme = (ROOT / "README.md").read_text()
    for said in (f"{v['baby']['plain fp32']['ms_per_step']:.1f} ms in plain fp32 -> "
                 f"{v['baby']['fused bf16']['ms_per_step']:.1f} ms with `--dtype auto` "
                 f"({v['baby']['fused bf16']['speedup_vs_plain_fp32']:.2f}x)",
                 f"minimind-26m {v['minimind-26m']['plain fp32']['ms_per_step']:.0f} -> "
                 f"{v['minimind-26m']['fused bf16']['ms_per_step']:.0f} ms "
                 f"({v['minimind-26m']['fused bf16']['speedup_vs_plain_fp32']:.2f}x)",
                 f"{v['minimind-26m']['fused fp32']['speedup_vs_plain_fp32']:.2f}x in fp32 at 26m",
                 f"{cross[64]:.2f}x at 64, {cross[512]:.2f}x at 512"):
        assert said in readme, said
    # the thresholds in the code are where the committed run says bf16 starts to pay
    from mmlab.device import CPU_BF16_MIN_HIDDEN
    from mmlab.model.attention import CPU_BF16_SDPA_MIN_KEYS

    assert cross[CPU_BF16_MIN_HIDDEN] > 1.2 and all(s < 1.0 for h, s in cross.items() if h < 64)
    sdpa = {r["length"]: r["bf16_over_fp32_fwd_bwd"] for r in committed["sdpa"]}
    assert all(sdpa[n] > 1.0 for n in sdpa if n < CPU_BF16_SDPA_MIN_KEYS // 2)  # bf16 slower well below it
    assert all(sdpa[n] < 1.0 for n in sdpa if n > CPU_BF16_SDPA_MIN_KEYS)  # and faster above it
