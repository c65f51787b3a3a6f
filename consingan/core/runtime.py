"""What the CPU can do (bfloat16 instructions) and the arithmetic a run uses on a device.

No process-wide settings here: the allocator tuning is consingan/process.py, which the library calls
where training starts (plan.tune_process)."""
from __future__ import annotations

import functools

import torch

from ..config import Config


@functools.lru_cache(maxsize=1)  # the CPU does not change; /proc/cpuinfo is read once
def cpu_has_bf16() -> bool | None:
    """Whether the CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16), which --precision bf16
    needs to be faster than float32; None where /proc/cpuinfo cannot tell (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return None
    return None if flags is None else bool({"avx512_bf16", "amx_bf16"} & set(flags))


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (a CUDA GPU that supports it, or a CPU with
    bfloat16 instructions)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(cpu_has_bf16())


def resolve_precision(config: Config, device: torch.device) -> Config:
    """``config`` with --precision auto made concrete for ``device``: bf16 where it is native, else fp32."""
    if config.precision != "auto":
        return config
    return config.replace(precision="bf16" if native_bf16(device) else "fp32")
