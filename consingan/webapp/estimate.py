"""How long a training run will take on this machine, before it starts, and how long is left while it runs.

The cost of one iteration grows with the pixels of the stage it trains. benchmarks/README.md measured
the top stage of a 250-px run at 381 GFLOP per iteration (41 750 pixels, 64 channels, 3 discriminator
updates) at 283-310 GFLOP/s on a 2-core CPU, and the lower stages in proportion to their pixels plus a
few milliseconds. The machine's rate is measured once here with a convolution like the ones training
runs (forward and backward, 64 channels, float32); bfloat16 where the device has it made a fast run
1.7 times faster on that CPU (about 22 min would have been 13).
"""
from __future__ import annotations

import functools
import threading
import time

import torch

from ..config import Config
from ..core.image import scaled_size, stage_sizes

FLOP_PER_PIXEL = 381e9 / 41750  # one iteration at 64 channels, Gsteps 3, Dsteps 3, num_layer 3
CPU_OVERHEAD_S = 0.008  # per iteration, whatever the size (small stages, tiny models)
GPU_OVERHEAD_S = 0.004
BF16_FACTOR = 0.58  # measured end to end on the CPU (a fast run: 22 -> 13 min)


_rate_lock = threading.Lock()


def machine_rate(device_type: str = "cpu") -> float:
    """FLOP/s of a 64-channel 3x3 convolution's forward and backward pass on this device, measured once
    (about 0.2 s; callers at the same time wait for the one measurement)."""
    with _rate_lock:
        return _measured_rate(device_type)


@functools.lru_cache(maxsize=4)
def _measured_rate(device_type: str) -> float:
    device = torch.device("cuda" if device_type == "cuda" else "cpu")
    conv = torch.nn.Conv2d(64, 64, 3).to(device, memory_format=torch.channels_last)
    x = torch.randn(1, 64, 96, 144, device=device).to(memory_format=torch.channels_last).requires_grad_(True)
    flops = 3 * 2 * 64 * 64 * 9 * 94 * 142  # forward, input gradient, weight gradient
    best = float("inf")
    for i in range(14):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        conv(x).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            best = min(best, time.perf_counter() - t)
    return flops / best


def stage_costs(config: Config, height: int, width: int, device: torch.device) -> list[float]:
    """Predicted seconds per iteration of each stage for a training image of height x width."""
    from ..core.runtime import resolve_precision

    scale = min(config.max_size / max(height, width), 1.0)
    h, w = scaled_size(height, width, scale)
    sizes = stage_sizes(h, w, config)
    rate = machine_rate(device.type)
    bf16 = resolve_precision(config, device).precision == "bf16"
    channels = (config.nfc / 64) ** 2 * (config.num_layer / 3)
    overhead = GPU_OVERHEAD_S if device.type == "cuda" else CPU_OVERHEAD_S
    costs = []
    for k, (sh, sw) in enumerate(sizes):
        steps = (config.Gsteps / 3 + config.stage_Dsteps(k)) / 4  # 3 G + 3 D updates = 1
        work = FLOP_PER_PIXEL * sh * sw * channels * steps / rate
        costs.append(overhead + work * (BF16_FACTOR if bf16 else 1.0))
    return costs


def estimate_seconds(config: Config, height: int, width: int, device: torch.device) -> float:
    costs = stage_costs(config, height, width, device)
    return sum(c * config.stage_niter(k) for k, c in enumerate(costs))


def describe_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


class TimeLeft:
    """Time left of a running job: the prediction for the work still to do, scaled by how the run has
    kept to the prediction so far (the first iterations of a stage are not counted: warm-up)."""

    def __init__(self, costs: list[float], niters: list[int]):
        self.costs, self.niters = costs, niters
        self.done_pred = 0.0  # predicted seconds of the iterations timed so far
        self.done_real = 0.0
        self._last: tuple[int, int, float] | None = None

    def update(self, stage: int, iteration: int) -> None:
        now = time.perf_counter()
        last = self._last
        if last is not None and last[0] == stage and iteration > last[1] and iteration > 2:
            self.done_pred += (iteration - last[1]) * self.costs[stage]
            self.done_real += now - last[2]
        self._last = (stage, iteration, now)

    def seconds(self, stage: int, iteration: int) -> float:
        left = (self.niters[stage] - iteration) * self.costs[stage]
        left += sum(c * n for c, n in zip(self.costs[stage + 1:], self.niters[stage + 1:]))
        ratio = self.done_real / self.done_pred if self.done_pred > 0 else 1.0
        return left * ratio
