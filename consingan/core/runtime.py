"""Process settings that make CPU training faster without changing any number, and what the CPU can do."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

import torch

from ..config import Config

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4
_done = False


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process for reuse (glibc only; elsewhere nothing happens).

    Each training iteration allocates and frees hundreds of activation tensors of a few MB. With
    glibc's defaults, blocks above its mmap threshold go back to the kernel when freed and come
    back as fresh zeroed pages on the next allocation: about half a million page faults per
    top-stage iteration, 5-15% of its time. Raising the thresholds lets those blocks be reused.
    glibc's largest mmap threshold is 32 MiB, and one activation of a 500-px stage is 85 MiB, so
    mmap is switched off altogether (glibc still falls back to it when the heap cannot grow): the
    500-px top stage went from 8.3 to 4.7 s per iteration. The cost is that the process keeps its
    peak memory until it exits.
    """
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20) == 1  # the largest value glibc accepts
              and libc.mallopt(_M_TRIM_THRESHOLD, 2**30) == 1
              and libc.mallopt(_M_TOP_PAD, 256 * 2**20) == 1
              and libc.mallopt(_M_MMAP_MAX, 0) == 1)
    except (OSError, AttributeError):  # not glibc
        ok = False
    _done = ok
    return ok


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
