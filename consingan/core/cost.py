"""What a training run and its outputs cost: time per iteration of every stage, peak memory (no I/O).

The one cost model that the memory checks (training, samples, compose's objects), the preparation of
a run (consingan.plan: its estimate and --dry_run), the web app's estimate, the batch runner's time
left and the progress bars' time left all read.

Time. One iteration of stage k runs the generator's stages 0..k forward on a batch of two (a fresh
noise and the fixed noise), Dsteps discriminator updates (forward and backward on the real and the
fake, and the gradient penalty's input gradient with its own backward), and one generator update
(the discriminator's input gradient, the backward through the train_depth trained stages, the head
while it trains, the tail). Each of those is a number of convolutions of known size: their FLOPs
(2 per multiply-add) over the machine's rate, plus a fixed time per convolution call (dispatch and
the small kernels around it: activations, optimizer steps), which dominates tiny models. The
machine (:class:`Machine`) is measured once with a convolution of the run's width
(:func:`measure_machine`), or given: the structure of the estimate does not depend on it.

Memory. The process's own memory (torch and its libraries), the weights of G and D with their
gradients and two Adam moments, and the feature maps autograd keeps for the backward pass at the
top stage: two per convolution of the trained stages and of the discriminator, on the batch each
runs, plus the gradient penalty's chain. benchmarks/cost.py compares both with measured runs.
"""
from __future__ import annotations

import functools
import math
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from ..config import Config
from .image import scaled_size, stage_sizes

FLOAT_BYTES = 4
# bfloat16 convolutions: a fast run took 0.58 of its float32 time on a 2-core CPU with AVX512-BF16
# (benchmarks/README.md); the weights, optimizer and losses stay float32.
BF16_FACTOR = 0.58
# What the process holds besides the run's own tensors: Python, torch, the package and oneDNN's
# kernels and scratch (about 330 MB for the smallest runs of benchmarks/cost.py on a CPU); a GPU's CUDA
# context and cuDNN workspace take about 500 MB of the GPU.
BASE_BYTES = {"cpu": 3.3e8, "cuda": 5e8}
# Copies of every weight at the peak: the weight, its gradient, Adam's two moments, the optimizer's
# temporaries, the checkpoint's and the model snapshot's copies (a very wide network, --nfc in the
# thousands, is all weights: the check must not let it through to be killed for memory).
WEIGHT_COPIES = 8
# Feature maps autograd keeps per convolution (its input, and its activation's output or mask).
MAPS_PER_CONV = 2.0
# Allocator slack: freed blocks kept for reuse (consingan/process.py's tuning keeps the peak), temporaries.
MEMORY_SLACK = 1.5
# The fixed cost of each convolution call of an iteration, in measured latencies of one convolution
# (the calls around it, activations and the optimizer's share, less what overlaps; fitted to
# benchmarks/cost.py's runs on a quiet 2-core CPU).
CALL_FACTOR = 0.9
# The work around the convolutions (activations, upsampling, the additions, layout copies) grows with
# channels x pixels where a convolution's grows with channels^2 x pixels: an iteration takes about
# (1 + ELEMENTWISE_CHANNELS / nfc) times its convolutions' time at the measured rate (about 1.7 at nfc
# 16, fitted to benchmarks/cost.py's runs on a quiet 2-core CPU; 1.17 at nfc 64, which puts a paper
# run's 250-px top stage at about 1.5 s per iteration at 300 GFLOP/s, against the 1.1-1.3 s that
# bench_train.py measured: not re-fitted at that size).
ELEMENTWISE_CHANNELS = 11.0
# A stage's start and end (its first iterations' kernel set-up, the noise amplitude, the stage-end
# samples and images) cost about this many of its iterations.
STAGE_EXTRA_ITERATIONS = 6


@dataclass(frozen=True)
class Machine:
    """How fast a device runs training's convolutions: ``rate`` FLOP/s on large maps, ``latency``
    seconds per convolution call whatever its size, ``base_bytes`` the process's own memory."""

    kind: str = "cpu"
    rate: float = 3e11
    latency: float = 5e-5

    @property
    def base_bytes(self) -> float:
        return BASE_BYTES.get(self.kind, BASE_BYTES["cpu"])


_lock = threading.Lock()
MEASURE_FLOPS = 3e9  # at most per measured call (a 64-channel convolution on the default map)
MEASURE_BUDGET_S = 0.3  # of repeated calls per map, after the warm-up


def measure_machine(device: torch.device | str = "cpu", channels: int = 64,
                    size: tuple[int, int] = (64, 96)) -> Machine:
    """The machine's rate and latency for convolutions of ``channels`` channels on maps of ``size``
    (height, width) on ``device``, with torch's current number of threads: measured once per
    (device kind, channels, size, threads) in a process (a fraction of a second; callers at the same
    time wait for the one measurement). The plan measures on the default size whatever the run's:
    a rate measured at each run's size followed the machine's load more than the run's cost."""
    kind = torch.device(device).type
    kind = kind if kind in ("cpu", "cuda") else "cpu"
    h, w = (max(8, int(v)) for v in size)
    with _lock:
        return _measured(kind, max(1, int(channels)), h, w, torch.get_num_threads())


@functools.lru_cache(maxsize=32)
def _measured(kind: str, channels: int, height: int, width: int, threads: int) -> Machine:
    with torch.random.fork_rng(devices=[]):  # the caller's random numbers stay as they were
        return _measure(torch.device(kind), channels, height, width)


def _measure(device: torch.device, channels: int, height: int, width: int) -> Machine:
    kind = device.type
    conv = torch.nn.Conv2d(channels, channels, 3).to(device, memory_format=torch.channels_last)

    def best(h: int, w: int, repeats: int) -> float:
        x = torch.randn(2, channels, h, w).to(device, memory_format=torch.channels_last)
        x.requires_grad_(True)
        fastest, start = float("inf"), time.perf_counter()
        for i in range(repeats + 2):
            if kind == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            conv(x).sum().backward()
            if kind == "cuda":
                torch.cuda.synchronize()
            if i >= 2 or (i == 1 and time.perf_counter() - start > MEASURE_BUDGET_S):  # the first calls warm up
                fastest = min(fastest, time.perf_counter() - t)
            if fastest < float("inf") and time.perf_counter() - start > MEASURE_BUDGET_S:
                break  # a very wide network: a few calls tell its rate
        return fastest

    # a batch of two, as training runs its maps; fewer pixels for a very wide network (its rate is
    # reached on small maps already, and the measurement stays short)
    pixels = min(height * width, max(64, int(MEASURE_FLOPS / (3 * 2 * 2 * 9 * channels * channels))))
    width = max(8, min(width, int(math.sqrt(pixels * width / height))))
    height = max(8, min(height, pixels // width))
    big = best(height, width, 12)
    small = best(5, 5, 16)  # a 3x3 output: little but the call itself
    flops = 3 * conv_flops(channels, channels, 3, height - 2, width - 2) * 2  # forward and two gradients
    small_flops = 3 * conv_flops(channels, channels, 3, 3, 3) * 2
    # time = calls x latency + flops / rate, from the two points (a network so wide that even the small
    # call is mostly arithmetic: the rate of the large call alone)
    rate = (flops - small_flops) / (big - small) if big > 1.5 * small else flops / big
    latency = max(small - small_flops / rate, 0.0) / 3  # forward, input gradient, weight gradient
    return Machine(kind, rate, latency)


def conv_flops(c_in: int, c_out: int, k: int, h_out: int, w_out: int) -> float:
    """FLOPs of one convolution (2 per multiply-add) with an output of h_out x w_out."""
    return 2.0 * k * k * c_in * c_out * max(h_out, 0) * max(w_out, 0)


@dataclass(frozen=True)
class Work:
    """The convolutions of one pass: their FLOPs and how many calls."""

    flops: float = 0.0
    calls: float = 0.0

    def __add__(self, other: "Work") -> "Work":
        return Work(self.flops + other.flops, self.calls + other.calls)

    def __mul__(self, factor: float) -> "Work":
        return Work(self.flops * factor, self.calls * factor)

    __rmul__ = __mul__


def _body(config: Config, h: int, w: int) -> Work:
    """A generator stage of num_layer convolutions for a stage of h x w (its input has the border)."""
    c, b = config, config.num_layer * config.pad
    flops = sum(conv_flops(c.nfc, c.nfc, c.ker_size, h + 2 * b - 2 * c.pad * i, w + 2 * b - 2 * c.pad * i)
                for i in range(1, c.num_layer + 1))
    return Work(flops, c.num_layer)


def _head(config: Config, h: int, w: int) -> Work:
    return Work(conv_flops(3, config.nfc, config.ker_size, h, w), 1)


def _tail(config: Config, h: int, w: int) -> Work:
    return Work(conv_flops(config.nfc, 3, config.ker_size, h, w), 1)


def _discriminator(config: Config, h: int, w: int) -> Work:
    c, p = config, config.pad
    flops = conv_flops(3, c.nfc, c.ker_size, h - 2 * p, w - 2 * p)
    flops += sum(conv_flops(c.nfc, c.nfc, c.ker_size, h - 2 * p * (i + 2), w - 2 * p * (i + 2))
                 for i in range(c.num_layer))
    flops += conv_flops(c.nfc, 1, c.ker_size, h - 2 * p * (c.num_layer + 2), w - 2 * p * (c.num_layer + 2))
    return Work(flops, c.num_layer + 2)


def iteration_work(config: Config, sizes: Sequence[tuple[int, int]], stage: int) -> Work:
    """The convolutions of one training iteration of ``stage`` (core/step.py's train_step), in
    forward-pass units: a backward pass counts twice its forward (input and weight gradients)."""
    c = config
    shapes = list(sizes[: stage + 1])
    top = shapes[-1]
    bodies = [_body(c, h, w) for h, w in shapes]
    g_forward = _head(c, *shapes[0]) + sum(bodies, Work()) + _tail(c, *top)
    trained = sum(bodies[-c.train_depth:], Work()) + _tail(c, *top)
    if stage < c.train_depth:
        trained = trained + _head(c, *shapes[0])
    d = _discriminator(c, *top)
    gp_share = 1.0 / c.gp_every  # the penalty's input gradient, its chain and their backward: 4 passes
    d_update = 2 * d + 2 * (2 * d) + gp_share * (4 * d)  # real and fake as one batch of two, backward
    g_update = 2 * g_forward + 2 * (2 * trained) + 2 * d  # noise and fixed noise; D's input gradient
    return g_update + c.stage_Dsteps(stage) * d_update


def training_sizes(config: Config, height: int, width: int) -> list[tuple[int, int]]:
    """The stage sizes of a run on an image of ``height`` x ``width`` (before max_size)."""
    h, w = scaled_size(height, width, min(config.max_size / max(height, width), 1.0))
    return stage_sizes(h, w, config)


def stage_seconds(config: Config, sizes: Sequence[tuple[int, int]], machine: Machine) -> list[float]:
    """Predicted seconds per iteration of each stage."""
    bf16 = BF16_FACTOR if config.precision == "bf16" else 1.0
    around = 1.0 + ELEMENTWISE_CHANNELS / config.nfc
    costs = []
    for k in range(len(sizes)):
        work = iteration_work(config, sizes, k)
        costs.append(work.flops / machine.rate * around * bf16 + work.calls * CALL_FACTOR * machine.latency)
    return costs


def parameters(config: Config) -> int:
    """Weights of G (all its stages) and D."""
    c = config
    conv = lambda i, o: i * o * c.ker_size ** 2 + o  # noqa: E731
    g = conv(3, c.nfc) + c.train_stages * c.num_layer * conv(c.nfc, c.nfc) + conv(c.nfc, 3)
    d = conv(3, c.nfc) + c.num_layer * conv(c.nfc, c.nfc) + conv(c.nfc, 1)
    return g + d


def training_bytes(config: Config, sizes: Sequence[tuple[int, int]], kind: str = "cpu") -> float:
    """Peak memory of training (the process's own included): weights with gradients and Adam moments,
    and the feature maps kept for the backward pass at the stage that keeps the most."""
    c = config
    b = 2 * c.num_layer * c.pad
    weights = FLOAT_BYTES * WEIGHT_COPIES * parameters(c)
    peak = 0.0
    for k in range(len(sizes)):
        shapes = sizes[: k + 1]
        trained = shapes[-c.train_depth:]
        g_maps = sum((h + b) * (w + b) for h, w in trained) * c.num_layer * MAPS_PER_CONV * 2  # batch of two
        top_h, top_w = shapes[-1]
        d_maps = top_h * top_w * (c.num_layer + 1) * (MAPS_PER_CONV * 2 + 3)  # real+fake, the penalty's chain
        peak = max(peak, FLOAT_BYTES * c.nfc * (g_maps + d_maps))
    return BASE_BYTES.get(kind, BASE_BYTES["cpu"]) + weights + MEMORY_SLACK * peak


@dataclass(frozen=True)
class Estimate:
    """A run's predicted cost: seconds per iteration of each stage, iterations of each stage, peak bytes."""

    stage_seconds: tuple[float, ...]
    stage_niter: tuple[int, ...]
    peak_bytes: float
    machine: Machine

    @property
    def stage_totals(self) -> tuple[float, ...]:
        """Predicted seconds of each whole stage (its iterations, its start and its end)."""
        return tuple(s * (n + STAGE_EXTRA_ITERATIONS) for s, n in zip(self.stage_seconds, self.stage_niter))

    @property
    def seconds(self) -> float:
        return sum(self.stage_totals)

    def time_left(self) -> "TimeLeft":
        return TimeLeft(list(self.stage_seconds), list(self.stage_niter))


def estimate(config: Config, sizes: Sequence[tuple[int, int]], machine: Machine) -> Estimate:
    """The cost of training ``config`` with stages of ``sizes`` on ``machine``."""
    return Estimate(tuple(stage_seconds(config, sizes, machine)),
                    tuple(config.stage_niter(k) for k in range(len(sizes))),
                    training_bytes(config, sizes, machine.kind), machine)


def sample_bytes(config: Config, top: tuple[float, float], num_samples: int, kept: int = 0) -> float:
    """Generating samples of ``top`` (height, width) pixels: a batch of them at the top stage holds
    about six feature maps of nfc channels (a rough upper estimate); ``kept`` samples are held at once
    (evaluate), with room for their patches."""
    c = config
    h, w = top
    border = 2 * c.num_layer * c.pad
    batch = max(1, min(num_samples, 1 if c.batch_norm else 8))
    return FLOAT_BYTES * 6 * batch * c.nfc * (h + border) * (w + border) + FLOAT_BYTES * 4 * 3 * kept * h * w


def object_bytes(height: int, width: int, scale: float) -> float:
    """compose: an object of height x width pixels scaled by ``scale`` (RGBA, float, a few copies)."""
    return FLOAT_BYTES * 4 * 4 * height * width * scale * scale


def describe_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def describe_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


class TimeLeft:
    """Time left of a running training: the prediction for the work still to do, scaled by how the run
    has kept to the prediction so far (the first iterations of a stage are not counted: warm-up).
    ``costs``: predicted seconds per iteration of each stage; ``niters``: iterations of each stage."""

    def __init__(self, costs: Sequence[float], niters: Sequence[int], clock=time.perf_counter):
        self.costs, self.niters = list(costs), list(niters)
        self.clock = clock
        self.done_pred = 0.0  # predicted seconds of the iterations timed so far
        self.done_real = 0.0
        self._last: tuple[int, int, float] | None = None

    def update(self, stage: int, iteration: int) -> None:
        now = self.clock()
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
