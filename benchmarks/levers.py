"""What each speed lever gives on its own: training-step variants at one stage, in one process, in turn.

    python benchmarks/levers.py                 # top stage of a 250x167 image, paper defaults
    python benchmarks/levers.py --stage 3 --iters 4

Variants, each adding one lever to the one before (all compute the same numbers, see
tests/test_training.py):
  plain         the straightforward step (benchmarks/bench_train.py's (a)), default layout
  plain_cl      the same in channels-last layout (the layout alone)
  once          consingan's step structure: fake (and reconstruction) computed once, one D call on
                the real/fake batch, no D weight gradients in the G update; generic double backward
                for the penalty, torch's bicubic kernel, default layout
  once_cl       + channels-last layout
  chain         + the penalty's input gradient as an explicit transposed-convolution chain
  matmul_up     + bicubic upsampling as matrix products
  conv_kernels  + convolution backward with the bias gradient as a separate sum, leaky ReLUs in
                place  (= consingan's step)
The allocator setting (consingan.runtime) is process-wide, so it is measured by bench_train.py,
where (a) and (b) run in separate processes; here no variant has it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_train as bt  # noqa: E402
from consingan.core.networks import set_fast_kernels  # noqa: E402
from consingan.core.step import plain_step, train_step  # noqa: E402


def generic_input_gradient(self, x):
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(self(x).sum(), x, create_graph=True)
    return grad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", default="top")
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    config = bt.make_config("generation", manualSeed=0)
    stage = config.train_stages - 1 if args.stage == "top" else int(args.stage)
    device = torch.device("cpu")
    base, _ = bt.build_state(config, stage, device, channels_last=False, tune_allocator=False)
    nchw, cl = torch.contiguous_format, torch.channels_last
    # name: (step, layout, fast upsample, chain penalty, fast convolution kernels)
    spec = {"plain": (plain_step, nchw, False, False, False), "plain_cl": (plain_step, cl, False, False, False),
            "once": (train_step, nchw, False, False, False), "once_cl": (train_step, cl, False, False, False),
            "chain": (train_step, cl, False, True, False), "matmul_up": (train_step, cl, True, True, False),
            "conv_kernels": (train_step, cl, True, True, True)}
    runs = {}
    for name, (step, fmt, fast_up, chain, fast_conv) in spec.items():
        s = bt.clone_state(base, stage, fmt)
        set_fast_kernels(s.G, s.D, on=fast_conv)
        s.G.fast_upsample = fast_up
        if not chain:
            s.D.input_gradient = types.MethodType(generic_input_gradient, s.D)
        runs[name] = (step, s, fmt, bt.make_inputs(config, s.shapes, args.iters + args.warmup, device, fmt))
    times = {k: [] for k in runs}
    for i in range(args.iters + args.warmup):
        for name, (step, s, fmt, inputs) in runs.items():
            t = time.perf_counter()
            step(s, *inputs[i])
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t)
    print(f"stage {stage} {tuple(base.shapes[-1])}, median of {args.iters} iterations, variants in turn")
    first = None
    for name, ts in times.items():
        med = statistics.median(ts)
        first = first or med
        print(f"{name:12s} {med:.3f} s/iter  x{first / med:.2f} vs plain")


if __name__ == "__main__":
    main()
