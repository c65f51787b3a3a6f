"""The reference's own training loop against the project's, at the top stage of the paper's settings, on the CPU.

    git clone https://github.com/tohinz/ConSinGAN /tmp/ConSinGAN
    python benchmarks/reference_loop.py --reference /tmp/ConSinGAN
    python benchmarks/reference_loop.py --reference /tmp/ConSinGAN --iters 5 --threads 2 --json out.json

Both sides train the reference's Images/Generation/angkorwat.jpg with the paper's settings (250 px,
6 stages, nfc 64, 3 D and 3 G steps, train_depth 3), each in a process of its own, one after the
other, with the same torch thread count (--threads; 0: the project's thread rule, decided once here,
before either side starts). What is timed: --iters iterations of the top stage (167x250), after
the first --warmup iterations of that stage; iterations that write images are never among them.

- The reference: its own ``main_train.py``, run unchanged from the checkout (runpy, ``--not_cuda``),
  in a temporary working folder. Its --niter applies to every stage, so each stage runs
  1 + warmup + iters + 1 iterations (its first and last iterations write samples: not timed).
  Stubbed in ``sys.modules``, and only these: its progress bar ``tqdm`` (replaced by a timer that
  records when each iteration starts: that is how the iterations are timed), and packages it uses
  only for logging, which are not installed here: ``torch.utils.tensorboard`` (SummaryWriter: does
  nothing), ``torchvision.utils.make_grid`` (builds the grid for TensorBoard: returns its input),
  ``matplotlib.pyplot.imsave`` (writes the sample images: written with Pillow instead) and
  ``matplotlib.patches`` (imported, unused). ``albumentations`` (augmentations of the harmonization
  and editing modes, which generation never calls) is stubbed for the import alone.
- The project: ``consingan.train`` with the paper preset, 1 iteration on each lower stage, and the
  top stage's usual 2000 (so its learning-rate schedule and log interval are a paper run's), stopped
  after warmup + iters + 1 iterations; glibc allocator tuned as ``consingan train`` does. Iterations
  are timed between the engine's on_iteration calls (noise, step, schedulers: the whole loop body).

Prints the medians and as the last line ``ratio <reference / project>`` (the goal: 2.5).
"""
from __future__ import annotations

import argparse
import importlib.machinery
import json
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = Path("Images") / "Generation" / "angkorwat.jpg"  # inside the reference's checkout
PAPER = dict(max_size=250, train_stages=6, nfc=64)


# --- the reference ----------------------------------------------------------------------------------

class IterationTimer:
    """Stands in for ``tqdm(iterable)``: yields the same items and records when each one is handed out."""

    runs: list[list[float]] = []  # one list of start times per loop (per stage), the end time appended

    def __init__(self, iterable=None, *args, **kwargs):
        self.iterable = iterable
        self.times: list[float] = []
        IterationTimer.runs.append(self.times)

    def __iter__(self):
        for item in self.iterable:
            self.times.append(time.perf_counter())
            yield item
        self.times.append(time.perf_counter())

    def set_description(self, *args, **kwargs):
        pass

    def __getattr__(self, name):  # close(), update(), ...: nothing to show
        return lambda *a, **k: None


def install_stubs() -> None:
    """Stand-ins for the reference's progress bar and logging packages (see the module's docstring)."""
    import numpy as np
    from PIL import Image

    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)  # torch._dynamo looks up every loaded module's spec
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    module("tqdm", tqdm=IterationTimer)

    class SummaryWriter:
        def __init__(self, *args, **kwargs):
            pass

        def __getattr__(self, name):  # add_scalar, add_image, close
            return lambda *a, **k: None

    module("torch.utils.tensorboard", SummaryWriter=SummaryWriter)
    if "torchvision" not in sys.modules:
        try:
            import torchvision.utils  # noqa: F401 (installed: used as it is)
        except ImportError:
            utils = module("torchvision.utils", make_grid=lambda tensor, *a, **k: tensor)
            module("torchvision", utils=utils)

    def imsave(name, arr, vmin=0, vmax=1, **kwargs):
        arr = np.clip((np.asarray(arr, dtype=np.float64) - vmin) / (vmax - vmin), 0, 1)
        Image.fromarray((arr * 255).round().astype(np.uint8)).save(name)

    try:
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        pyplot = module("matplotlib.pyplot", imsave=imsave)
        patches = module("matplotlib.patches")
        module("matplotlib", pyplot=pyplot, patches=patches)
    try:
        import albumentations  # noqa: F401
    except ImportError:
        names = ("HueSaturationValue IAAAdditiveGaussianNoise GaussNoise OneOf Compose MultiplicativeNoise ToSepia "
                 "ChannelDropout ChannelShuffle Cutout InvertImg").split()
        module("albumentations", **{n: None for n in names})


def reference_side(args) -> dict:
    ref = Path(args.reference).resolve()
    install_stubs()
    sys.path.insert(0, str(ref))
    niter = 1 + args.warmup + args.iters + 1
    argv = ["main_train.py", "--input_name", str(ref / IMAGE), "--not_cuda", "--niter", str(niter),
            "--train_stages", str(PAPER["train_stages"]), "--max_size", str(PAPER["max_size"]),
            "--nfc", str(PAPER["nfc"]), "--manualSeed", "1"]
    with tempfile.TemporaryDirectory() as work:
        cwd = os.getcwd()
        os.chdir(work)  # it writes TrainedModels/ into the working folder
        sys.argv = argv
        try:
            runpy.run_path(str(ref / "main_train.py"), run_name="__main__")
        finally:
            os.chdir(cwd)
    starts = IterationTimer.runs[-1]  # the top stage: the last loop
    durations = [b - a for a, b in zip(starts, starts[1:])]
    timed = durations[1 + args.warmup:1 + args.warmup + args.iters]
    return {"seconds": timed, "stages": len(IterationTimer.runs), "niter": niter}


# --- the project ------------------------------------------------------------------------------------

def project_side(args) -> dict:
    sys.path.insert(0, str(ROOT))
    import consingan
    from consingan.core.callbacks import Callbacks
    from consingan.core.engine import TrainingStopped
    from consingan.core.runtime import tune_cpu_allocator

    tune_cpu_allocator()  # as `consingan train` does on the CPU
    top, stop_after = PAPER["train_stages"] - 1, 1 + args.warmup + args.iters

    class Timer(Callbacks):
        def __init__(self):
            self.ends: list[float] = []

        def on_stage_start(self, stage, num_stages, niter, first_iter):
            if stage == top:
                self.ends.append(time.perf_counter())  # the first iteration's start

        def on_iteration(self, stage, iteration, logged):
            if stage == top:
                self.ends.append(time.perf_counter())

        def should_stop(self):
            return len(self.ends) > stop_after

    timer = Timer()
    niter_stages = (1,) * top + (2000,)
    try:
        consingan.train(Path(args.reference) / IMAGE, device="cpu", threads=args.threads, callbacks=[timer],
                        niter_stages=niter_stages, manualSeed=1, **PAPER)
    except TrainingStopped:
        pass
    durations = [b - a for a, b in zip(timer.ends, timer.ends[1:])]
    return {"seconds": durations[args.warmup + 1:args.warmup + 1 + args.iters]}


# --- the driver -------------------------------------------------------------------------------------

def spawn(args, side: str, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--reference", args.reference, "--iters", str(args.iters),
           "--warmup", str(args.warmup), "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"the {side} side failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", required=True, help="a checkout of github.com/tohinz/ConSinGAN")
    ap.add_argument("--iters", type=int, default=3, help="timed top-stage iterations per side [3]")
    ap.add_argument("--warmup", type=int, default=1, help="untimed top-stage iterations first [1]")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of both sides [0: the thread rule]")
    ap.add_argument("--rounds", type=int, default=1, help="processes per side, alternating [1]")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--side", choices=["reference", "project"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        res = reference_side(args) if args.side == "reference" else project_side(args)
        print(json.dumps({**res, "threads": torch.get_num_threads()}))
        return
    if not (Path(args.reference) / "main_train.py").is_file():
        raise SystemExit(f"error: {args.reference} holds no main_train.py; give a checkout of the reference")
    sys.path.insert(0, str(ROOT))
    import torch

    from consingan.process import auto_threads

    threads = args.threads or auto_threads()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {threads} threads for both sides, load average {load}",
          flush=True)
    times: dict[str, list[float]] = {"reference": [], "project": []}
    for r in range(args.rounds):
        for side in ("reference", "project"):
            res = spawn(args, side, threads)
            times[side] += res["seconds"]
            print(f"round {r + 1} {side}: " + " ".join(f"{s:.3f}" for s in res["seconds"])
                  + f" s per top-stage iteration ({res['threads']} threads)", flush=True)
    ref, proj = statistics.median(times["reference"]), statistics.median(times["project"])
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"reference loop {ref:.3f} s, project {proj:.3f} s per top-stage iteration (median of "
          f"{len(times['project'])}); load average at the end {load_end}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": "python benchmarks/reference_loop.py " + " ".join(sys.argv[1:]), "torch": torch.__version__,
            "cpus": os.cpu_count(), "threads": threads, "load_average_at_start": load, "load_average_at_end": load_end,
            "reference_s": round(ref, 4), "project_s": round(proj, 4), "ratio": round(ref / proj, 3),
            "times": {k: [round(x, 4) for x in v] for k, v in times.items()}}, indent=2) + "\n")
    print(f"ratio {ref / proj:.2f}")


if __name__ == "__main__":
    main()
