"""Process-wide settings that make CPU training faster without changing any number.

The library makes them where training starts (consingan.plan.tune_process, called by consingan.train,
resume and fine_tune), so the command line, the batch runner's workers, the web app and programs that
call the library all get them; core/ makes no process-wide change.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

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
