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
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["bf16_cuda"] = bf16_supported(torch.device("cuda"))
    return info
