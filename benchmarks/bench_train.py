"""Training-speed benchmark: the straightforward loop (a) against the project's training step (b).

    python benchmarks/bench_train.py                    # top stage of a 250x167 image, paper defaults
    python benchmarks/bench_train.py --stage 3 --iters 5
    python benchmarks/bench_train.py --stage all        # estimate a whole paper-default run
    python benchmarks/bench_train.py --device cuda

(a) is METHOD 3 done the plain way (consingan.step.plain_step): the fake recomputed in each
discriminator step (twice without gradients, once with), D run separately on the real, fake and
interpolated images, default memory layout. (b) is what `consingan train` runs (consingan.step.train_step
with the trainer's memory layout). Both start from the same state and see the same noise.

Prints seconds per iteration for each, the achieved GFLOP/s of (b) (FLOPs counted by
torch.utils.flop_counter over one iteration of (b)), the machine's float32 matrix-multiply GFLOP/s
measured in the same run (the practical ceiling), and as its last line `speedup <a/b>`.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consingan.config import make_config  # noqa: E402
from consingan.image import read_image  # noqa: E402
from consingan.noise import random_noise  # noqa: E402
from consingan.step import StageState, plain_step, train_step  # noqa: E402
from consingan.train import RunOptions, Trainer, make_optimizers, seed_everything  # noqa: E402

IMAGE = Path(__file__).resolve().parents[1] / "Images" / "Generation" / "rocket.png"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def build_state(config, stage: int, device: torch.device, channels_last: bool) -> tuple[StageState, Trainer]:
    """Networks, optimizers and noise of ``stage`` for a paper-default run (untrained weights)."""
    seed_everything(0)
    t = Trainer(read_image(IMAGE), config, RunOptions(device=str(device), channels_last=channels_last))
    for k in range(stage + 1):
        t.begin_stage(k)
    opt_d, opt_g, _, _ = t.optim
    return StageState(config, t.G, t.D, opt_g, opt_d, t.reals[stage], list(t.shapes[:stage + 1]),
                      list(t.amps), t.fixed), t


def clone_state(s: StageState, stage: int, fmt) -> StageState:
    G, D = copy.deepcopy(s.G).to(memory_format=fmt), copy.deepcopy(s.D).to(memory_format=fmt)
    opt_d, opt_g, _, _ = make_optimizers(G, D, s.config, stage)
    return StageState(s.config, G, D, opt_g, opt_d, s.real.contiguous(memory_format=fmt), s.shapes, s.amps,
                      [z.contiguous(memory_format=fmt) for z in s.fixed])


def time_steps(step, state: StageState, iters: int, warmup: int, device: torch.device, fmt) -> float:
    gen = torch.Generator(device=device).manual_seed(0)
    inputs = []
    for _ in range(iters + warmup):
        noise = [z.contiguous(memory_format=fmt) for z in random_noise(state.config, state.shapes, device, gen)]
        inputs.append((noise, torch.rand(state.config.Dsteps, device=device, generator=gen)))
    for noise, a in inputs[:warmup]:
        step(state, noise, a)
    sync(device)
    t = time.perf_counter()
    for noise, a in inputs[warmup:]:
        step(state, noise, a)
    sync(device)
    return (time.perf_counter() - t) / iters


def count_flops(step, state: StageState, device: torch.device, fmt) -> float:
    """FLOPs of one iteration, by torch's own per-operator formulas (convolutions and matmuls,
    forward, backward and double backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                Counter.total += formula(*args, **kwargs, out_val=out)
            return out

    s = copy.deepcopy(state)
    noise = [z.contiguous(memory_format=fmt) for z in random_noise(s.config, s.shapes, device)]
    with Counter():
        step(s, noise, torch.rand(s.config.Dsteps, device=device))
    return Counter.total


def bench_stage(config, stage: int, device, iters: int, warmup: int, plain: bool = True) -> dict:
    base, trainer = build_state(config, stage, device, channels_last=False)
    fast_fmt = trainer.fmt if trainer.options.channels_last else torch.contiguous_format
    result = {"stage": stage, "size": base.shapes[-1]}
    if plain:
        a = clone_state(base, stage, torch.contiguous_format)
        result["a"] = time_steps(plain_step, a, iters, warmup, device, torch.contiguous_format)
        del a
    b = clone_state(base, stage, fast_fmt)
    result["b"] = time_steps(train_step, b, iters, warmup, device, fast_fmt)
    result["flops_b"] = count_flops(train_step, clone_state(base, stage, fast_fmt), device, fast_fmt)
    return result


def peak_memory_mib(device: torch.device) -> float:
    """Peak resident memory of this process (CPU) or peak allocated GPU memory (CUDA), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", default="top", help="stage index, 'top' (default) or 'all'")
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per variant")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--max_size", type=int, default=250)
    ap.add_argument("--only_b", action="store_true",
                    help="time only (b) (for its peak memory; the speedup line is then omitted)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = make_config("generation", max_size=args.max_size, manualSeed=0)
    print(f"device {device} threads {torch.get_num_threads()} torch {torch.__version__} "
          f"cpus {os.cpu_count()}")
    ceiling = matmul_gflops(device)
    if args.stage == "all":
        total_a = total_b = 0.0
        for k in range(config.train_stages):
            r = bench_stage(config, k, device, args.iters, args.warmup)
            total_a += r["a"] * config.niter
            total_b += r["b"] * config.niter
            print(f"stage {k} {r['size'][0]}x{r['size'][1]}: (a) {r['a']:.3f} s/iter  (b) {r['b']:.3f} s/iter  "
                  f"(b) {r['flops_b'] / r['b'] / 1e9:.1f} GFLOP/s", flush=True)
        print(f"estimated paper-default run ({config.train_stages} stages x {config.niter} iterations): "
              f"(a) {total_a / 60:.1f} min  (b) {total_b / 60:.1f} min")
        print(f"matmul ceiling {ceiling:.1f} GFLOP/s")
        print(f"speedup {total_a / total_b:.2f}")
        return
    stage = config.train_stages - 1 if args.stage == "top" else int(args.stage)
    r = bench_stage(config, stage, device, args.iters, args.warmup, plain=not args.only_b)
    gflops = r["flops_b"] / r["b"] / 1e9
    print(f"stage {stage} ({r['size'][0]}x{r['size'][1]}), {args.iters} iterations each after {args.warmup} warm-up")
    print(f"peak memory {peak_memory_mib(device):.0f} MiB ({'GPU allocated' if device.type == 'cuda' else 'process RSS'})")
    if args.only_b:
        print(f"(b) consingan: {r['b']:.3f} s/iter, {gflops:.1f} GFLOP/s")
        return
    print(f"(a) straightforward: {r['a']:.3f} s/iter")
    print(f"(b) consingan:       {r['b']:.3f} s/iter")
    print(f"(b) achieved {gflops:.1f} GFLOP/s ({r['flops_b'] / 1e9:.1f} GFLOP per iteration)")
    print(f"matmul ceiling {ceiling:.1f} GFLOP/s; (b) reaches {100 * gflops / ceiling:.0f}% of it")
    print(f"speedup {r['a'] / r['b']:.2f}")


if __name__ == "__main__":
    main()
