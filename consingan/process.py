"""Process-wide settings of a training: the allocator (faster, no number changes) and the thread rule
(a run's torch thread count, which config.json records: the numbers depend on it).

The library makes them where training starts (consingan.plan.tune_process, called by consingan.train,
resume and fine_tune), so the command line, the batch runner's workers, the web app and programs that
call the library all get them; core/ makes no process-wide change.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import torch

from .errors import UserError

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


# --- CPU threads ------------------------------------------------------------------------------------
# torch's intra-op threads meet at a barrier after every parallel operator. On a machine whose cores are
# busy with other processes, one descheduled thread holds the others there: a small training on a 2-core
# machine with two busy processes ran 10x slower with torch's default 2 threads than with 1. So a CPU
# training picks its thread count once, at its start, from the cores that are free then (a fixed count
# per run: the same settings and the same count give the same model, and config.json records it).
LOAD_WINDOW = 0.2  # seconds of /proc/stat over which the other processes' CPU use is measured


def usable_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity; all of them where that is not known)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def _cpu_times(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) jiffies of ``cpus`` from /proc/stat (Linux), or None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            lines = [line.split() for line in f if line.startswith("cpu") and line[3:4].isdigit()]
    except OSError:
        return None
    busy = total = 0
    for fields in lines:
        if int(fields[0][3:]) not in cpus:
            continue
        values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
        idle = values[3] + values[4]
        total += sum(values)
        busy += sum(values) - idle
    return (busy, total) if total else None


def busy_cpus(cpus: set[int] | None = None, window: float = LOAD_WINDOW) -> float | None:
    """How many of ``cpus`` (default: this process's) are busy with other work now: their share of
    non-idle time over ``window`` seconds, times their number; the 1-minute load average where
    /proc/stat cannot be read; None where neither can."""
    cpus = usable_cpus() if cpus is None else cpus
    before = _cpu_times(cpus)
    if before is not None:
        time.sleep(window)  # this process is idle meanwhile: what is busy is the others
        after = _cpu_times(cpus)
        if after is not None and after[1] > before[1]:
            return len(cpus) * (after[0] - before[0]) / (after[1] - before[1])
    if hasattr(os, "getloadavg"):
        return os.getloadavg()[0]
    return None


def auto_threads(cap: int | None = None) -> int:
    """The thread rule of a CPU training: the cores free at its start (usable CPUs less the busy
    ones, rounded to the nearest), at least 1, at most ``cap`` (default: torch's own count, which
    follows OMP_NUM_THREADS and torch.set_num_threads) and at most the usable CPUs."""
    cap = torch.get_num_threads() if cap is None else cap
    cpus = usable_cpus()
    busy = busy_cpus(cpus)
    free = len(cpus) - (busy or 0.0)
    return max(1, min(cap, len(cpus), int(free + 0.5)))


THREADS_ENV = "CONSINGAN_THREADS"  # a fixed thread count for every training that is not given one (tests, CI)


def choose_threads(requested: int | None, device: torch.device | str) -> int:
    """The torch threads a training runs with: ``requested`` when it is 1 or more; else $CONSINGAN_THREADS
    when set; else, on the CPU, the rule (auto_threads); on a GPU torch's count as it is (the CPU
    only feeds the GPU there)."""
    if requested is not None and requested < 0:
        raise UserError(f"--threads {requested}: give 1 or more CPU threads, or 0 for the automatic choice")
    if requested:
        return int(requested)
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise UserError(f"{THREADS_ENV}={env!r}: give a whole number of threads, 1 or more, or unset it")
        return int(env)
    if torch.device(device).type != "cpu":
        return torch.get_num_threads()
    return auto_threads()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block and put back as they were after it
    (a library call leaves the caller's process as it found it). The setting is process-wide: two
    trainings at once in threads of one process share it."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
