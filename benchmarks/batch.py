"""Batch throughput on this machine: the batch runner on Ray against a plain loop of main_train.py.

    python benchmarks/batch.py                      # 8 images, 48 px, 3 stages x 50 iterations, nfc 32
    python benchmarks/batch.py --niter 100 --max_size 64 --json benchmarks/results/batch.json

Three ways to train the same 8 models, one after the other in one run (so that a busy spell of a shared
machine hits all of them alike, compare the ratios more than the absolute figures):

  (a) ``python -m consingan batch --cpus_per_job 1``: as many jobs at once as there are CPUs, 1 thread each
  (b) ``python -m consingan batch --cpus_per_job 2``: one job at a time with 2 threads (on 2 cores)
  (c) a shell-style loop: ``python main_train.py --input_name IMG --out_dir DIR`` per image (torch's
      default threads: one per core)

Each is a fresh process as a user would run it: (a) and (b) include starting and stopping their local
Ray. Models per hour = models / wall time.

Then Ray's own costs, in this process: starting a local Ray (ray.init) and shutting it down; a first
batch of 8 near-empty jobs (2 stages x 1 iteration on a 30x45 image: a worker starts and imports torch)
and the same batch again on the warm worker, against training the same 8 in this process; all with one
CPU and one thread, so the difference is the overhead per job.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (hubble_deep_field.png is left out: at these sizes its dark stage-1 output saturates and the run stops)
IMAGES = ["Generation/rocket.png", "Generation/coffee.png", "Harmonization/coffee_naive.png",
          "Animation/retina_vessels.png", "Editing/rocket_naive.png", "Harmonization/cat_face.png",
          "Harmonization/coffee.png", "Editing/rocket.png"]  # two stems repeat: names made unique


def timed(cmd: list[str], env: dict | None = None) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return seconds


def throughput(args, work: Path, images: list[Path]) -> dict:
    flags = ["--max_size", str(args.max_size), "--nfc", str(args.nfc), "--train_stages", str(args.train_stages),
             "--niter", str(args.niter), "--manualSeed", "1", "--device", "cpu", "--progress", "none"]
    listing = work / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    runs = {}
    for label, cmd in (
        ("a_batch_2x1", lambda out: [sys.executable, "-m", "consingan", "batch", "--images", str(listing),
                                     "--out_root", str(out), "--cpus_per_job", "1", *flags]),
        ("b_batch_1x2", lambda out: [sys.executable, "-m", "consingan", "batch", "--images", str(listing),
                                     "--out_root", str(out), "--cpus_per_job", "2", *flags]),
    ):
        out = work / label
        try:
            seconds = timed(cmd(out))
        finally:
            if (out / "summary.json").exists():
                for job in json.loads((out / "summary.json").read_text())["jobs"]:
                    if job["status"] != "done":
                        print(f"{label}: {job['name']} {job['status']}: {job['error']}", flush=True)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["total"]["done"] == len(images), summary["total"]
        per_model = [j["seconds"] for j in summary["jobs"]]
        runs[label] = {"seconds": seconds, "models_per_hour": len(images) / seconds * 3600,
                       "job_seconds_mean": sum(per_model) / len(per_model)}
        print(f"{label}: {seconds:.1f} s, {runs[label]['models_per_hour']:.0f} models/h "
              f"(a job: {runs[label]['job_seconds_mean']:.1f} s)", flush=True)
    out = work / "c_loop"
    t = time.perf_counter()
    for i, image in enumerate(images):
        timed([sys.executable, "main_train.py", "--input_name", str(image), "--out_dir", str(out / f"{i}"), *flags])
    seconds = time.perf_counter() - t
    runs["c_loop_main_train"] = {"seconds": seconds, "models_per_hour": len(images) / seconds * 3600}
    print(f"c_loop_main_train: {seconds:.1f} s, {runs['c_loop_main_train']['models_per_hour']:.0f} models/h",
          flush=True)
    base = runs["c_loop_main_train"]["models_per_hour"]
    for r in runs.values():
        r["vs_loop"] = r["models_per_hour"] / base
    return runs


def overheads(work: Path, n: int = 8) -> dict:
    import numpy as np
    import imageio.v3 as iio
    import ray
    import torch

    from consingan import api, batch

    rng = np.random.default_rng(0)
    tiny = work / "tiny"
    tiny.mkdir()
    for i in range(n):
        iio.imwrite(tiny / f"t{i}.png", (rng.random((30, 45, 3)) * 255).astype(np.uint8))
    settings = dict(train_stages=2, niter=1, nfc=4, min_size=12, max_size=45, manualSeed=1)
    result = {}
    t = time.perf_counter()
    batch.start_ray(num_cpus=1)  # one job at a time, one thread, as the in-process loop below
    result["ray_start_s"] = time.perf_counter() - t
    try:
        for label in ("cold", "warm"):
            t = time.perf_counter()
            res = batch.run(tiny, work / f"tiny_{label}", cpus_per_job=1, progress="none", **settings)
            assert all(r.status == "done" for r in res), [r.error for r in res]
            result[f"batch_{label}_s"] = time.perf_counter() - t
        torch.set_num_threads(1)
        t = time.perf_counter()
        for i, p in enumerate(sorted(tiny.glob("*.png"))):
            api.train(p, out_dir=work / "tiny_direct" / str(i), device="cpu", **settings)
        result["direct_s"] = time.perf_counter() - t
    finally:
        t = time.perf_counter()
        ray.shutdown()
        result["ray_shutdown_s"] = time.perf_counter() - t
    result["per_job_overhead_s"] = (result["batch_warm_s"] - result["direct_s"]) / n
    result["first_batch_extra_s"] = result["batch_cold_s"] - result["batch_warm_s"]
    print(f"Ray start {result['ray_start_s']:.1f} s, shutdown {result['ray_shutdown_s']:.1f} s; {n} near-empty jobs: "
          f"first batch {result['batch_cold_s']:.1f} s, again {result['batch_warm_s']:.1f} s, in-process "
          f"{result['direct_s']:.1f} s -> {result['per_job_overhead_s']:.2f} s overhead per job, "
          f"{result['first_batch_extra_s']:.1f} s to start the workers", flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max_size", type=int, default=48)
    p.add_argument("--nfc", type=int, default=32)
    p.add_argument("--train_stages", type=int, default=3)
    p.add_argument("--niter", type=int, default=50)
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--skip_throughput", action="store_true")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="consingan-batch-bench-"))
    images = [ROOT / "Images" / rel for rel in IMAGES]
    try:
        import torch

        info = {"cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                "torch_threads_default": torch.get_num_threads(),
                "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
                "settings": vars(args), "images": IMAGES}
        print(f"{info['cpus']} CPUs, load average {info['load_average_at_start']}", flush=True)
        runs = {} if args.skip_throughput else throughput(args, work, images)
        over = overheads(work)
        info["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        record = {**info, "throughput": runs, "overhead": over}
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        for label, r in runs.items():
            print(f"{label:20s} {r['models_per_hour']:7.0f} models/h  {r['vs_loop']:.2f}x the loop")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
