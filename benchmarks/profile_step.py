"""Where the time of consingan's training step (b) goes: each aten call timed, summed per operator.

    python benchmarks/profile_step.py                 # top stage of a 250x167 image, paper defaults
    python benchmarks/profile_step.py --stage 3 --by_shape
    python benchmarks/profile_step.py --set precision=bf16

Each call is timed around its own execution (a TorchDispatchMode), which is closer to the truth on the
CPU than torch.profiler's table: the profiler's own bookkeeping inflates the many small element-wise
calls several times over. The sum of the calls is printed beside the wall time of the iterations,
so what the timing itself costs is visible. CPU only (GPU calls are asynchronous).
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_train import _setting, build_state, make_inputs  # noqa: E402
from consingan.config import make_config  # noqa: E402
from consingan.core.step import train_step  # noqa: E402


class CallTimer(TorchDispatchMode):
    """Seconds and counts of the aten calls run inside it, keyed by operator (and, for convolutions,
    by the shapes of their first three tensor arguments when ``by_shape``)."""

    def __init__(self, by_shape: bool):
        super().__init__()
        self.by_shape = by_shape
        self.seconds: dict = collections.defaultdict(float)
        self.calls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        dt = time.perf_counter() - t
        key = str(func)
        if self.by_shape and "convolution" in key:
            key += " " + " ".join(str(tuple(a.shape)) for a in args[:3] if isinstance(a, torch.Tensor))
        self.seconds[key] += dt
        self.calls[key] += 1
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", default="top", help="stage index or 'top' (default)")
    ap.add_argument("--iters", type=int, default=3, help="timed iterations (after one untimed)")
    ap.add_argument("--max_size", type=int, default=250)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config setting over the preset, repeatable")
    ap.add_argument("--by_shape", action="store_true", help="one line per convolution shape")
    ap.add_argument("--top", type=int, default=25, help="lines to print")
    args = ap.parse_args()
    settings = {k: _setting(v) for k, v in (item.split("=", 1) for item in args.set)}
    config = make_config("generation", preset=args.preset, **{"max_size": args.max_size, "manualSeed": 0, **settings})
    stage = config.train_stages - 1 if args.stage == "top" else int(args.stage)
    device = torch.device("cpu")
    state, trainer = build_state(config, stage, device, channels_last=True)
    inputs = make_inputs(state.config, state.shapes, args.iters + 1, device, trainer.fmt)
    train_step(state, *inputs[0], 0)  # warm-up: oneDNN builds its kernels on first use
    timer = CallTimer(args.by_shape)
    t = time.perf_counter()
    with timer:
        for i, (noise, alphas) in enumerate(inputs[1:], 1):
            train_step(state, noise, alphas, i)
    wall = (time.perf_counter() - t) / args.iters
    total = sum(timer.seconds.values()) / args.iters
    print(f"stage {stage} {tuple(state.shapes[-1])}, threads {torch.get_num_threads()}: {wall * 1e3:.0f} ms per "
          f"iteration, of which {total * 1e3:.0f} ms in aten calls ({args.iters} iterations)")
    for key, sec in sorted(timer.seconds.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{sec / args.iters * 1e3:9.1f} ms {100 * sec / args.iters / wall:5.1f}% "
              f"{timer.calls[key] // args.iters:5d} calls  {key}")


if __name__ == "__main__":
    main()
