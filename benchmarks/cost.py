"""The cost model (consingan/core/cost.py) against measured training runs on this machine.

    python benchmarks/cost.py                                   # three sizes, about 1 min on 1 core
    python benchmarks/cost.py --sizes 48 64 96 --nfc 16 --niter 40 --threads 1 --out benchmarks/results/cost.json

Each size trains in a fresh process (so that its peak resident memory is its own) with the settings
given, on Images/Generation/rocket.png, through consingan.prepare and consingan.train as every door
does. The estimate is the plan's (the machine measured in that process); the measured time is the
sum of the stages' wall times from log.jsonl (``stage_s``), the measured memory the process's peak
resident set (ru_maxrss). Prints one line per size and writes the records as JSON with ``--out``.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "Images" / "Generation" / "rocket.png"


def one(size: int, nfc: int, niter: int, stages: int, threads: int) -> dict:
    """Train one run in this process; its estimate and what was measured."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    import consingan

    plan = consingan.prepare(IMAGE, max_size=size, nfc=nfc, niter=niter, train_stages=stages,
                             min_size=min(25, size), manualSeed=1, device="cpu")
    estimate = plan.estimate  # measures the machine (before training, as the progress lines do)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        consingan.train(plan, out_dir=Path(tmp) / "run")
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "log.jsonl").read_text().splitlines()]
    stage_s = [r["stage_s"] for r in rows if r.get("event") == "stage_end"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {
        "max_size": size, "nfc": nfc, "niter": niter, "train_stages": stages, "threads": threads,
        "sizes": [list(s) for s in plan.sizes],
        "machine": {"rate_flops": estimate.machine.rate, "latency_s": estimate.machine.latency},
        "estimated_s": round(estimate.seconds, 2),
        "measured_s": round(sum(stage_s), 2), "wall_s": round(wall, 2),
        "estimated_stage_s": [round(s, 2) for s in estimate.stage_totals],
        "measured_stage_s": stage_s,
        "estimated_peak_mib": round(plan.peak_bytes / 2**20, 1),
        "measured_peak_mib": round(peak / 2**20, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[48, 64, 96])
    ap.add_argument("--nfc", type=int, default=16)
    ap.add_argument("--niter", type=int, default=40)
    ap.add_argument("--train_stages", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write the records here (JSON)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: one size
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.nfc, args.niter, args.train_stages, args.threads)))
        return
    records = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(size), "--nfc", str(args.nfc), "--niter", str(args.niter),
               "--train_stages", str(args.train_stages), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["time_ratio"] = round(r["estimated_s"] / r["measured_s"], 3)
        r["memory_ratio"] = round(r["estimated_peak_mib"] / r["measured_peak_mib"], 3)
        records.append(r)
        print(f"max_size {size:4d} nfc {r['nfc']} stages {r['train_stages']} niter {r['niter']}: time estimated "
              f"{r['estimated_s']:.1f} s, measured {r['measured_s']:.1f} s (x{r['time_ratio']}); peak memory "
              f"estimated {r['estimated_peak_mib']:.0f} MiB, measured {r['measured_peak_mib']:.0f} MiB "
              f"(x{r['memory_ratio']})", flush=True)
    if args.out:
        meta = {"command": "python benchmarks/cost.py " + " ".join(sys.argv[1:]), "machine": platform.processor()
                or platform.machine(), "python": platform.python_version(), "records": records}
        Path(args.out).write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
