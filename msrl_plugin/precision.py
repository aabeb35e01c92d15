"""Training precision: ``"auto"`` picks bfloat16 autocast only where the hardware runs it natively.

bf16 autocast halves the arithmetic of the patch encoders on CPUs with AVX512-BF16 or AMX and on CUDA GPUs
with bf16 support (speed-ups in ``benchmarks/README.md``, "Training speed and buffer retrieval"); on a CPU
without them (e.g. AVX2 only) torch emulates bf16 and it is slower than float32, so ``"auto"`` stays float32.
Weights, optimiser state, losses and predictions are float32 in every mode.
"""
from __future__ import annotations

import torch

PRECISIONS = ("auto", "fp32", "bf16")
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags of the first processor in ``path`` (empty where it cannot be read)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 matrix products natively (so bf16 autocast is a speed-up)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    capability = str(torch.backends.cpu.get_cpu_capability()).upper()  # "AVX512", "AVX2", ... ("AMX" too)
    return "AMX" in capability or bool(cpu_flags() & set(_CPU_BF16_FLAGS))


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` where :func:`native_bf16`, else ``"fp32"``; other values unchanged [D]."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision
