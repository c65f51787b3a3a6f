"""A busy CPU costs its fair share: a small training with the default thread rule against the same
training forced to one thread, on a machine kept busy by other processes and on a quiet one.

    python benchmarks/threads.py                      # 2 busy processes, then quiet; 2 rounds each
    python benchmarks/threads.py --busy 4 --rounds 3 --json benchmarks/results/threads.json

Each training runs in a fresh process of its own (``consingan.train`` on a 48-px picture, nfc 8,
4 stages, --niter iterations per stage), timed from the call to its return (imports not included,
the rule's own look at the load included), with the rule, with 1 thread, and with torch's own count
(what every training used before the rule; --no_before skips it). The order alternates (rule,
1 thread, torch's count, rule, ...) so that a slow spell of the machine hits all alike. The busy
processes are Python loops that end on their own after --busy_seconds (this script ends them sooner).
On a shared machine the "quiet" phase is only as quiet as the others leave it: the load averages at
the start and the end are printed and recorded.

Prints one line per training, then per phase the medians, the thread count the rule picked and the
ratio rule / 1 thread (the goal under load: at most 1.5). CONSINGAN_THREADS is removed from the
children's environment, so that they get the rule as a user does.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUSY_LOOP = "import time, sys\nend = time.time() + float(sys.argv[1])\nwhile time.time() < end:\n    pass\n"


def child(args) -> None:
    """One timed training; prints {"seconds", "threads"} as JSON."""
    sys.path.insert(0, str(ROOT))
    import torch

    import consingan

    y, x = torch.meshgrid(torch.linspace(-1, 1, args.size), torch.linspace(-1, 1, args.size), indexing="ij")
    image = torch.stack([torch.sin(3 * x), torch.cos(4 * y), x * y]).unsqueeze(0)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        t = time.perf_counter()
        consingan.train(image, device="cpu", out_dir=out, threads=args.threads, nfc=args.nfc, max_size=args.size,
                        min_size=12, train_stages=4, niter=args.niter, manualSeed=1)
        seconds = time.perf_counter() - t
        threads = json.loads((out / "config.json").read_text())["threads"]
    print(json.dumps({"seconds": seconds, "threads": threads}))


def train_once(args, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CONSINGAN_THREADS"}
    cmd = [sys.executable, __file__, "--child", "--threads", str(threads), "--niter", str(args.niter),
           "--nfc", str(args.nfc), "--size", str(args.size)]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=args.timeout)
    except subprocess.TimeoutExpired:  # subprocess.run has killed it: the time is a lower bound
        return {"seconds": time.perf_counter() - t, "threads": threads, "timed_out": True}
    if proc.returncode != 0:
        raise SystemExit(f"a training failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def phase(args, label: str) -> dict:
    import torch

    variants = [("rule", 0, "rule"), ("one", 1, "1 thread")]
    if not args.no_before:  # what every training ran with before the rule: torch's own count
        variants.append(("before", torch.get_num_threads(), f"torch's {torch.get_num_threads()} threads"))
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    picked, timed_out = [], []
    for r in range(args.rounds):
        for name, threads, text in variants:
            res = train_once(args, threads)
            times[name].append(round(res["seconds"], 3))
            if name == "rule":
                picked.append(res["threads"])
            if res.get("timed_out"):
                timed_out.append(name)
            print(f"{label} round {r + 1}: {text}: {'more than ' if res.get('timed_out') else ''}{res['seconds']:.2f} s "
                  f"({res['threads']} thread{'s' if res['threads'] != 1 else ''})", flush=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    out = {"rule_s": round(med["rule"], 3), "one_thread_s": round(med["one"], 3),
           "ratio": round(med["rule"] / med["one"], 3), "rule_threads": picked, "times": times,
           "timed_out": timed_out}  # variants with a training stopped at --timeout: their time is a lower bound
    if "before" in med:
        out["before_s"] = round(med["before"], 3)
        out["before_ratio"] = round(med["before"] / med["one"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--busy", type=int, default=2, help="busy processes during the loaded phase [2]")
    ap.add_argument("--busy_seconds", type=float, default=3600, help="the busy loops end on their own after this "
                    "(a safety net: the script ends them when the loaded phase is over)")
    ap.add_argument("--timeout", type=float, default=240, help="a training still running after this many seconds "
                    "is stopped and its time counts as this lower bound [240]")
    ap.add_argument("--rounds", type=int, default=2, help="trainings per variant and phase [2]")
    ap.add_argument("--niter", type=int, default=50, help="iterations per stage [50]")
    ap.add_argument("--nfc", type=int, default=8)
    ap.add_argument("--size", type=int, default=48, help="picture size in px [48]")
    ap.add_argument("--no_quiet", action="store_true", help="skip the quiet phase")
    ap.add_argument("--no_before", action="store_true", help="skip the trainings with torch's own thread count")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpus": cpus, "torch": torch.__version__, "torch_threads_default": torch.get_num_threads(),
            "busy_processes": args.busy, "rounds": args.rounds,
            "training": f"{args.size} px, nfc {args.nfc}, 4 stages x {args.niter} iterations",
            "command": "python benchmarks/threads.py " + " ".join(sys.argv[1:]),
            "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None}
    print(f"{cpus} CPUs, torch {torch.__version__} (default {torch.get_num_threads()} threads); "
          f"training: {info['training']}; load average {info['load_average_at_start']}", flush=True)
    busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(args.busy_seconds)]) for _ in range(args.busy)]
    try:
        time.sleep(1.0)  # the loops are spinning
        info["loaded"] = phase(args, f"{args.busy} busy")
    finally:
        for p in busy:
            p.terminate()
        for p in busy:
            p.wait()
    if not args.no_quiet:
        time.sleep(1.0)
        info["quiet"] = phase(args, "quiet")
    info["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"load average at the end {info['load_average_at_end']}")
    for name in ("loaded", "quiet"):
        if name in info:
            r = info[name]
            more = "more than " if "before" in r["timed_out"] else ""
            before = f"; torch's own count {more}{r['before_s']:.2f} s, {more}{r['before_ratio']:.2f}x" if "before_s" in r else ""
            print(f"{name}: rule {r['rule_s']:.2f} s (threads {r['rule_threads']}), 1 thread {r['one_thread_s']:.2f} s, "
                  f"ratio {r['ratio']:.2f}{before}")
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2) + "\n")
    print(f"ratio under load {info['loaded']['ratio']:.2f} (goal <= 1.5)")


if __name__ == "__main__":
    main()
