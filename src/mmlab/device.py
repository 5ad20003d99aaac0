"""Devices and numeric formats: pick the best device, and say what this machine supports."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


def auto_device() -> torch.device:
    """cuda > mps > cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(name: str | None = "auto") -> torch.device:
    """'auto' or None -> auto_device(); otherwise the named device, checked to exist."""
    from mmlab.errors import MMLabError

    if name in (None, "auto"):
        return auto_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MMLabError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MMLabError(f"device {name!r} requested but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise MMLabError(f"device {name!r} requested but MPS is not available")
    return device


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 runs natively (fast) on this device, not merely emulated."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:  # oneDNN's own check: AVX512-BF16 / AMX or AVX512 with bf16 kernels
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return device.type == "mps"


# bf16 autocast on a CPU pays where the matmuls dominate: with AVX512-BF16 or AMX its GEMMs run ~4x faster
# than fp32's, but each step also casts weights and activations. benchmarks/cpu_step.py's sweep over the
# hidden size (4 layers, block 64, batch 12) measures where it starts to win; below, fp32 stays.
CPU_BF16_MIN_HIDDEN = 128


def training_dtype(device: torch.device, model_cfg: Any = None) -> tuple[str, str]:
    """The training dtype ``TrainConfig(dtype="auto")`` resolves to on ``device`` for a model config, and why:
    bf16 on a GPU that runs it natively; on a CPU, bf16 autocast where it has AVX512-BF16 or AMX and the
    model is at least ``CPU_BF16_MIN_HIDDEN`` wide; fp32 otherwise (and on MPS)."""
    if device.type == "cuda":
        if bf16_supported(device):
            return "bf16", f"{torch.cuda.get_device_name(device)} runs bf16 natively"
        return "fp32", "this GPU has no native bf16 (fp16 needs loss scaling: ask for it with dtype=fp16)"
    if device.type != "cpu":
        return "fp32", f"{device.type}: fp32 (bf16 autocast is not measured here)"
    _, flags = cpu_model()
    fast = [f.upper().replace("_", "-") for f in flags if f in ("avx512_bf16", "amx_bf16")]
    if not fast:
        return "fp32", "this CPU has neither AVX512-BF16 nor AMX: bf16 would be emulated, slower than fp32"
    hidden = getattr(model_cfg, "hidden_size", None)
    if hidden is not None and hidden < CPU_BF16_MIN_HIDDEN:
        return "fp32", (f"hidden size {hidden} < {CPU_BF16_MIN_HIDDEN}: at this width casting costs more than "
                        f"{' / '.join(fast)} saves (benchmarks/cpu_step.py)")
    return "bf16", f"this CPU has {' / '.join(fast)}: bf16 matmuls run several times faster than fp32's"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# the instruction sets that decide how fast low precision runs on a CPU (bf16 is fast with AMX or AVX512-BF16)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")


def cpu_model() -> tuple[str, list[str]]:
    """The CPU's model name and which of ``CPU_FLAGS`` it has (Linux's /proc/cpuinfo; elsewhere the platform's
    processor string and no flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown", []
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                platform.processor() or "unknown")
    flags_line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    have = set(flags_line.split(":", 1)[-1].split())
    return name, [f for f in CPU_FLAGS if f in have]


def cpu_label() -> str:
    """The CPU in words for a table's caption, e.g. "AMD EPYC (AVX2; no AVX512-BF16 or AMX), 2 threads": what
    decides whether bf16 is fast on it."""
    name, flags = cpu_model()
    fast = [f.upper().replace("_", "-") for f in flags if f in ("avx512_bf16", "amx_bf16")]
    widest = next((f.upper() for f in ("avx512f", "avx2") if f in flags), "no AVX2")
    bf16 = ", ".join(fast) if fast else "no AVX512-BF16 or AMX"
    return f"{name} ({widest}; {bf16}), {torch.get_num_threads()} threads"


def environment() -> dict[str, Any]:
    """Versions, device and threads: what ``mmlab info`` prints and what every result JSON records."""
    device = auto_device()
    info: dict[str, Any] = {
        "mmlab": _version("minimind-lab"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "tokenizers": _version("tokenizers"),
        "safetensors": _version("safetensors"),
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model()[0],
        "cpu_flags": cpu_model()[1],
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_cpu": bf16_supported(torch.device("cpu")),
        "train_dtype_auto": "{} ({})".format(*training_dtype(device)),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["bf16_cuda"] = bf16_supported(torch.device("cuda"))
    return info


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 20) -> float:
    """GFLOP/s of the fastest of ``repeats`` n x n x n matmuls on the CPU in this process (torch's GEMM at the
    current threads): the peak that the CPU benchmarks' MFU figures divide by. The fastest, not the median: on a
    shared machine a neighbour can halve a median for a while, and an MFU above 1 is then the peak's error."""
    import time

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9
