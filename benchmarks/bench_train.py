"""Training-speed benchmark: the straightforward loop (a) against the project's training step (b).

    python benchmarks/bench_train.py                    # top stage of a 250x167 image, paper defaults
    python benchmarks/bench_train.py --stage 3 --iters 5
    python benchmarks/bench_train.py --stage all        # estimate a whole paper-default run
    python benchmarks/bench_train.py --device cuda

Each variant runs in a process of its own, (a) (b) (a) (b) ..., so that each gets the process settings
it runs with in practice and a slow spell of the machine hits both alike: (a) as the reference loop
runs (default allocator), (b) as `consingan train` runs (consingan.process.tune_cpu_allocator on CPU).

(a) is METHOD 3 done the plain way (consingan.core.step.plain_step): the fake recomputed in each
discriminator step (twice without gradients, once with), D run separately on the real, fake and
interpolated images, the gradient penalty by autograd's double backward, torch's bicubic
interpolation kernel, default memory layout. (b) is what `consingan train` runs (consingan.core.step.train_step
with the trainer's memory layout; on a GPU, replayed from CUDA graphs, consingan.graphs). Both start from the
same state and see the same noise.

Prints seconds per iteration for each, the achieved GFLOP/s of (b) (FLOPs counted by
torch.utils.flop_counter over one iteration of (b)), the machine's float32 matrix-multiply GFLOP/s
measured in the same run (the practical ceiling), and as its last line `speedup <a/b>`.
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consingan.config import make_config  # noqa: E402
from consingan.core.graphs import WARMUP, make_step  # noqa: E402
from consingan.core.image import resize  # noqa: E402
from consingan.storage.image_files import read_image  # noqa: E402
from consingan.core.networks import set_fast_kernels  # noqa: E402
from consingan.core.noise import random_noise  # noqa: E402
from consingan.core.step import StageState, plain_step, train_step  # noqa: E402
from consingan.core.engine import Engine, EngineOptions, make_optimizers  # noqa: E402
from consingan.process import tune_cpu_allocator  # noqa: E402

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


def build_state(config, stage: int, device: torch.device, channels_last: bool,
                tune_allocator: bool = True) -> tuple[StageState, Engine]:
    """Networks, optimizers and noise of ``stage`` for a paper-default run (untrained weights)."""
    if tune_allocator and device.type == "cpu":
        tune_cpu_allocator()  # what consingan.train does (plan.tune_process)
    options = EngineOptions(device=str(device), channels_last=channels_last)
    image = read_image(IMAGE)
    h, w = image.shape[-2:]
    if max(h, w) < config.max_size:  # --max_size 500: the same photo, enlarged, so that 500 px is reached
        image = resize(image, (round(h * config.max_size / max(h, w)), round(w * config.max_size / max(h, w))))
    t = Engine.start(image, config.replace(manualSeed=0), options)
    for k in range(stage + 1):
        t.begin_stage(k)
    opt_d, opt_g, _, _ = t.optim
    # t.config: the trainer's, with --precision auto made concrete for the device
    return StageState(t.config, t.G, t.D, opt_g, opt_d, t.reals[stage], list(t.shapes[:stage + 1]),
                      list(t.amps), t.fixed), t


def clone_state(s: StageState, stage: int, fmt) -> StageState:
    G, D = copy.deepcopy(s.G).to(memory_format=fmt), copy.deepcopy(s.D).to(memory_format=fmt)
    opt_d, opt_g, _, _ = make_optimizers(G, D, s.config, stage)
    return StageState(s.config, G, D, opt_g, opt_d, s.real.contiguous(memory_format=fmt), s.shapes, s.amps,
                      [z.contiguous(memory_format=fmt) for z in s.fixed])


def make_inputs(config, shapes, n: int, device: torch.device, fmt) -> list:
    gen = torch.Generator(device=device).manual_seed(0)
    inputs = []
    for _ in range(n):
        noise = [z.contiguous(memory_format=fmt) for z in random_noise(config, shapes, device, gen)]
        inputs.append((noise, torch.rand(config.Dsteps, device=device, generator=gen)))
    return inputs


def time_steps(step, state: StageState, iters: int, warmup: int, device: torch.device, fmt) -> list[float]:
    """Seconds of each of ``iters`` iterations after ``warmup`` untimed ones."""
    inputs = make_inputs(state.config, state.shapes, iters + warmup, device, fmt)
    times = []
    for i, (noise, alphas) in enumerate(inputs):
        sync(device)
        t = time.perf_counter()
        step(state, noise, alphas, i)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


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


def peak_memory_mib(device: torch.device) -> float:
    """Peak resident memory of this process (CPU) or peak allocated GPU memory (CUDA), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_variant(variant: str, config, stage: int, device, iters: int, warmup: int, flops: bool,
                tune_allocator: bool = True) -> dict:
    """In this process: time (a) or (b) at ``stage``; returns times, FLOPs of (b), peak memory."""
    plain = variant == "a"
    base, trainer = build_state(config, stage, device, channels_last=not plain,
                                tune_allocator=tune_allocator and not plain)
    if plain:
        set_fast_kernels(base.G, base.D, on=False)  # torch's own kernels, as the plain computation uses
        fmt, step = torch.contiguous_format, plain_step
    else:
        # what the trainer runs: on a GPU, train_step replayed from CUDA graphs, which record after
        # their warm-up iterations (kept out of the timing)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            warmup = max(warmup, WARMUP + 1)
        fmt, runner = trainer.fmt, make_step(base, device, trainer.options.cuda_graphs)
        step = lambda s, noise, alphas, i: runner(noise, alphas, i)  # noqa: E731
    out = {"stage": stage, "size": list(base.shapes[-1])}
    if flops:  # (b)'s operations are train_step's, graphs or not
        out["flops"] = count_flops(plain_step if plain else train_step, base, device, fmt)
    out["times"] = time_steps(step, base, iters, warmup, device, fmt)
    out["peak_mib"] = peak_memory_mib(device)
    return out


def spawn(variant: str, args, stage: int, iters: int, flops: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--stage", str(stage), "--iters", str(iters),
           "--warmup", str(args.warmup), "--device", args.device, "--max_size", str(args.max_size), "--preset", args.preset]
    for item in args.set:
        cmd += ["--set", item]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.no_tune_allocator:
        cmd.append("--no_tune_allocator")
    if flops:
        cmd.append("--flops")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_stage(args, stage: int, rounds: int, plain: bool = True) -> dict:
    """(a) and (b) in alternating processes; median seconds per iteration of each."""
    times: dict = {"a": [], "b": []}
    info: dict = {}
    for r in range(rounds):
        for v in ("a", "b") if plain else ("b",):
            res = spawn(v, args, stage, args.iters, flops=(v == "b" and r == 0))
            times[v] += res["times"]
            info.setdefault(v, res)
            info[v]["peak_mib"] = max(info[v]["peak_mib"], res["peak_mib"])
    out = {"stage": stage, "size": info["b"]["size"], "b": statistics.median(times["b"]),
           "flops_b": info["b"]["flops"], "peak_b": info["b"]["peak_mib"], "n": len(times["b"])}
    if plain:
        out["a"] = statistics.median(times["a"])
        out["peak_a"] = info["a"]["peak_mib"]
    return out


def _setting(text: str) -> int | float | str:
    """A --set value as the number it spells, else as text (e.g. precision=bf16)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", default="top", help="stage index, 'top' (default) or 'all'")
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per process")
    ap.add_argument("--rounds", type=int, default=2, help="processes per variant, alternating (a) and (b)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--max_size", type=int, default=250)
    ap.add_argument("--preset", default="paper", help="paper (default) or fast: the settings of both (a) and (b)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config setting over the preset (e.g. --set Dsteps=1), repeatable")
    ap.add_argument("--only_b", action="store_true", help="time only (b): its speed and peak memory")
    ap.add_argument("--no_tune_allocator", action="store_true",
                    help="run (b) with the default allocator too (to see what consingan.runtime gives)")
    ap.add_argument("--variant", choices=["a", "b"], help=argparse.SUPPRESS)  # a child process
    ap.add_argument("--flops", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    settings = {k: _setting(v) for k, v in (item.split("=", 1) for item in args.set)}
    config = make_config("generation", preset=args.preset, **{"max_size": args.max_size, "manualSeed": 0, **settings})
    if args.variant:
        print(json.dumps(run_variant(args.variant, config, int(args.stage), device, args.iters, args.warmup,
                                     args.flops, tune_allocator=not args.no_tune_allocator)))
        return
    print(f"device {device} threads {torch.get_num_threads()} torch {torch.__version__} cpus {os.cpu_count()} "
          f"max_size {args.max_size}")
    ceiling = matmul_gflops(device)
    mem = "GPU allocated" if device.type == "cuda" else "process RSS"
    if args.stage == "all":
        total_a = total_b = 0.0
        for k in range(config.train_stages):
            r = bench_stage(args, k, args.rounds, plain=not args.only_b)
            total_b += r["b"] * config.stage_niter(k)
            total_a += r.get("a", 0.0) * config.stage_niter(k)
            a_text = f"(a) {r['a']:.3f} s/iter  " if "a" in r else ""
            print(f"stage {k} {r['size'][0]}x{r['size'][1]}: {a_text}(b) {r['b']:.3f} s/iter  "
                  f"(b) {r['flops_b'] / r['b'] / 1e9:.1f} GFLOP/s  (b) peak {r['peak_b']:.0f} MiB", flush=True)
        a_text = f"(a) {total_a / 60:.1f} min  " if total_a else ""
        label = args.preset + "".join(f" {item}" for item in args.set)
        iters = "/".join(str(config.stage_niter(k)) for k in range(config.train_stages))
        print(f"estimated {label} run ({iters} iterations per stage): "
              f"{a_text}(b) {total_b / 60:.1f} min")
        print(f"matmul ceiling {ceiling:.1f} GFLOP/s")
        if total_a:
            print(f"speedup {total_a / total_b:.2f}")
        return
    stage = config.train_stages - 1 if args.stage == "top" else int(args.stage)
    r = bench_stage(args, stage, args.rounds, plain=not args.only_b)
    gflops = r["flops_b"] / r["b"] / 1e9
    warm = max(args.warmup, WARMUP + 1) if device.type == "cuda" else args.warmup  # (b) on a GPU: see run_variant
    print(f"stage {stage} ({r['size'][0]}x{r['size'][1]}): median of {r['n']} iterations per variant "
          f"({args.rounds} processes each, {warm} warm-up each)")
    if "a" in r:
        print(f"(a) straightforward: {r['a']:.3f} s/iter, peak memory {r['peak_a']:.0f} MiB ({mem})")
    print(f"(b) consingan:       {r['b']:.3f} s/iter, peak memory {r['peak_b']:.0f} MiB ({mem})")
    print(f"(b) achieved {gflops:.1f} GFLOP/s ({r['flops_b'] / 1e9:.1f} GFLOP per iteration)")
    print(f"matmul ceiling {ceiling:.1f} GFLOP/s; (b) reaches {100 * gflops / ceiling:.0f}% of it")
    if "a" in r:
        print(f"speedup {r['a'] / r['b']:.2f}")


if __name__ == "__main__":
    main()
