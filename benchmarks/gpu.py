"""The GPU figures of the speed issue in one script: where a paper run's process wall goes, the fast
preset's time beside it, and several trainings packed on one GPU.

    python benchmarks/gpu.py                         # on a CUDA machine: writes benchmarks/results/gpu.json
    python benchmarks/gpu.py --tiny --device cpu     # a dry run on tiny settings: prints, writes no gpu.json

(a) **The paper run**: ``consingan train`` with the paper preset (rocket.png, 250 px, 6 stages x 2000
iterations, fp32, --manualSeed 1) in a process of its own, timed from the spawn to its exit. Inside
it, the command runs in-process with timers wrapped around the library (nothing in the library
changes): interpreter start, ``import torch``, ``import consingan``, CUDA initialisation, then per
stage its setup (growing G, the new D, the noise amplitude), the eager warm-up iterations and the
CUDA-graph recordings (at the start and at the learning-rate decay; each waited for with a
synchronize, which costs a few ms), the other iterations, the rest of the stage (samples grid,
previews), and over the run the writing of images, checkpoints, config.json and model.pt; then the
command's own work around training, and the process's exit. The fast preset (bf16 where the GPU has it) runs the same way.
(b) **Packing**: 1, 4 and 8 ``consingan train`` processes at once on the one GPU (no Ray: each is
the library's own training in a process of its own), 200 iterations per stage, the paper's other
settings; models per hour = trainings / wall of the slowest. ``pack8_throughput_ratio`` = models per
hour at 8 against 1.

gpu.json keys: ``gpu`` (the device's name), ``paper_run_s``, ``fast_run_s``, ``pack8_throughput_ratio``,
``breakdown`` (paper and fast), ``packing`` (per count: wall, models per hour) and the machine. It is
written only when the device is a CUDA GPU; --tiny or --device cpu prints the same record instead
(a check that the script runs, not figures).
"""
from __future__ import annotations

import time

T_MAIN = time.time()  # first: the interpreter's start-up ends here (before any import of note)

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "Images" / "Generation" / "rocket.png"
RESULT = ROOT / "benchmarks" / "results" / "gpu.json"
TINY = ["--max_size", "40", "--min_size", "12", "--nfc", "8", "--train_stages", "3"]


# --- inside the timed process -------------------------------------------------------------------------

def timed_train(args) -> None:
    """Run `consingan train` in this process with timers around the library; print the timings as JSON."""
    marks = {"main": T_MAIN}
    import torch
    marks["torch"] = time.time()
    sys.path.insert(0, str(ROOT))
    import consingan  # noqa: F401
    from consingan import cli
    from consingan.core import engine as engine_mod
    from consingan.storage import rundir
    marks["consingan"] = time.time()
    if args.device.startswith("cuda"):
        torch.cuda.init()
        torch.zeros(1, device=args.device).add_(1)
        torch.cuda.synchronize()
    marks["device"] = time.time()

    from consingan.core import graphs

    writes: dict[str, float] = {"images": 0.0, "checkpoints": 0.0, "config_json": 0.0, "model": 0.0}
    stages: list[dict] = []
    cuda = args.device.startswith("cuda")

    def timing(cls, name, key, sync=False):
        """Wrap cls.name: its seconds add to writes[key] and to the running stage's key."""
        inner = getattr(cls, name)

        def wrapper(*a, **k):
            if sync:
                torch.cuda.synchronize()
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                if sync:
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t
                if key in writes:
                    writes[key] += dt
                if stages:
                    stages[-1][key] = stages[-1].get(key, 0.0) + dt
        setattr(cls, name, wrapper)

    timing(rundir.RunDirWriter, "on_image", "images")
    timing(rundir.RunDirWriter, "write_checkpoint", "checkpoints")
    timing(rundir.RunDir, "write_info", "config_json")
    timing(rundir.RunDir, "finish", "model")
    if cuda:  # the eager warm-up iterations and the CUDA-graph recordings, each waited for
        timing(graphs.GraphedSteps, "_eager", "eager_warmup", sync=True)
        timing(graphs.GraphedSteps, "_record", "graph_record", sync=True)

    begin, run_stage, make_step = engine_mod.Engine.begin_stage, engine_mod.Engine._run_stage, engine_mod.make_step

    def begin_stage(self, k):
        t = time.perf_counter()
        begin(self, k)
        stages.append({"stage": k, "setup": time.perf_counter() - t, "ends": []})

    def timed_make_step(*a, **k):
        step = make_step(*a, **k)
        ends = stages[-1]["ends"]
        ends.append(time.perf_counter())

        def timed_step(*sa, **sk):
            out = step(*sa, **sk)
            ends.append(time.perf_counter())
            return out
        return timed_step

    def timed_run_stage(self):
        t = time.perf_counter()
        try:
            run_stage(self)
        finally:
            if cuda:
                torch.cuda.synchronize()
            if stages:
                stages[-1]["wall"] = time.perf_counter() - t

    engine_mod.Engine.begin_stage = begin_stage
    engine_mod.Engine._run_stage = timed_run_stage
    engine_mod.make_step = timed_make_step
    flags = ["train", "--input_name", str(args.image), "--preset", args.preset, "--device", args.device,
             "--manualSeed", "1", "--progress", "none", "--out_dir", args.out_dir, *args.extra]
    t = time.time()
    try:
        cli.main(flags)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    marks["trained"] = time.time()
    marks["train_call"] = marks["trained"] - t
    per_stage = []
    for s in stages:
        steps = [b - a for a, b in zip(s["ends"], s["ends"][1:])]
        loop = s["ends"][-1] - s["ends"][0] if s["ends"] else 0.0  # from make_step to the last step's return
        special = s.get("eager_warmup", 0.0) + s.get("graph_record", 0.0)
        # the loop's writes: images and checkpoints between the first and the last step (stage-end
        # images come after the loop); a GPU's queue drains at log points and at the stage's end
        per_stage.append({
            "stage": s["stage"], "iterations": len(steps), "setup_s": round(s["setup"], 3),
            "median_step_ms": round(statistics.median(steps) * 1e3, 3) if steps else None,  # GPU: launch time
            "eager_warmup_s": round(s.get("eager_warmup", 0.0), 3), "graph_record_s": round(s.get("graph_record", 0.0), 3),
            "loop_s": round(loop, 3), "iterations_s": round(loop - special, 3),
            "images_s": round(s.get("images", 0.0), 3), "checkpoints_s": round(s.get("checkpoints", 0.0), 3),
            "stage_wall_s": round(s.get("wall", 0.0), 3),
            "stage_rest_s": round(s.get("wall", 0.0) - loop, 3)})  # before the loop and the stage's end
    info = json.loads((Path(args.out_dir) / "config.json").read_text())
    print(json.dumps({"marks": marks, "stages": per_stage, "writes": {k: round(v, 3) for k, v in writes.items()},
                      "threads": info.get("threads"), "precision": info.get("precision")}))


# --- the driver -------------------------------------------------------------------------------------

def timed_run(args, preset: str, extra: list[str]) -> dict:
    """A training process with timers; its wall from spawn to exit and the breakdown."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--child", "--preset", preset, "--device", args.device, "--image",
               str(args.image), "--out_dir", str(Path(tmp) / "run"), "--", *extra]
        spawn = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        end = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"the {preset} run failed:\n{proc.stderr[-4000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    m = res["marks"]
    stages = res["stages"]
    sum_of = lambda key: round(sum(s[key] for s in stages), 3)  # noqa: E731
    inside = sum_of("setup_s") + sum(s["stage_wall_s"] for s in stages)
    breakdown = {
        "process_wall_s": round(end - spawn, 3),
        "interpreter_start_s": round(m["main"] - spawn, 3),
        "import_torch_s": round(m["torch"] - m["main"], 3),
        "import_consingan_s": round(m["consingan"] - m["torch"], 3),
        "device_init_s": round(m["device"] - m["consingan"], 3),
        "stage_setup_s": sum_of("setup_s"),
        "eager_warmup_s": sum_of("eager_warmup_s"),
        "graph_record_s": sum_of("graph_record_s"),
        "iterations_s": sum_of("iterations_s"),  # includes the log points and the loop's image/checkpoint writes
        "stage_rest_s": sum_of("stage_rest_s"),  # stage-end samples grid and previews, real.png
        "writes_s": res["writes"],  # inside the figures above (images, checkpoints) or below (config, model)
        "command_rest_s": round(m["train_call"] - inside, 3),  # checks, reading the image, the rule, model.pt
        "exit_s": round(end - m["trained"], 3),
        "stages": stages, "threads": res["threads"], "precision": res["precision"],
    }
    return breakdown


def pack(args, count: int) -> dict:
    """``count`` trainings at once, each in its own process; wall until the last one ends."""
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        t = time.time()
        for i in range(count):
            cmd = [sys.executable, "-m", "consingan", "train", "--input_name", str(args.image), "--device", args.device,
                   "--niter", str(args.pack_niter), "--manualSeed", str(i + 1), "--progress", "none",
                   "--out_dir", str(Path(tmp) / f"run{i}"), *args.extra]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          text=True))
        errors = [p.communicate()[1] for p in procs]
        wall = time.time() - t
    failed = [e for p, e in zip(procs, errors) if p.returncode != 0]
    if failed:
        raise SystemExit(f"{len(failed)} of {count} packed trainings failed:\n{failed[0][-3000:]}")
    return {"trainings": count, "wall_s": round(wall, 3), "models_per_hour": round(count * 3600 / wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--image", default=str(IMAGE))
    ap.add_argument("--tiny", action="store_true", help="tiny settings (40 px, nfc 8, 3 stages, few iterations): "
                    "a check that the script runs; writes no gpu.json")
    ap.add_argument("--packs", default="1,4,8", help="trainings at once to time [1,4,8]")
    ap.add_argument("--pack_niter", type=int, default=200, help="iterations per stage of a packed training [200]")
    ap.add_argument("--skip_fast", action="store_true", help="leave out the fast preset's run")
    ap.add_argument("--out", help="write the record here instead (any device; default on a GPU: "
                    "benchmarks/results/gpu.json)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="paper", help=argparse.SUPPRESS)
    ap.add_argument("--out_dir", help=argparse.SUPPRESS)
    ap.add_argument("extra", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        timed_train(args)
        return
    args.extra = list(TINY) if args.tiny else []
    if args.tiny:
        args.pack_niter = min(args.pack_niter, 5)
        paper_extra, fast_extra = ["--niter", "10"], ["--niter", "10", "--niter_low", "10"]
    else:
        paper_extra, fast_extra = [], []
    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU here; pass --device cpu --tiny for a dry run")
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if cuda else None
    record = {"gpu": gpu, "device": args.device, "torch": torch.__version__, "tiny": args.tiny,
              "image": Path(args.image).name, "command": "python benchmarks/gpu.py " + " ".join(sys.argv[1:])}
    print(f"device {args.device} ({gpu or 'CPU'}), torch {torch.__version__}", flush=True)
    paper = timed_run(args, "paper", args.extra + paper_extra)
    record["paper_run_s"] = paper["process_wall_s"]
    record["breakdown"] = {"paper": paper}
    print(f"paper run: {paper['process_wall_s']:.1f} s process wall; {json.dumps({k: v for k, v in paper.items() if k != 'stages'})}",
          flush=True)
    if not args.skip_fast:
        fast = timed_run(args, "fast", args.extra + fast_extra)
        record["fast_run_s"] = fast["process_wall_s"]
        record["breakdown"]["fast"] = fast
        print(f"fast preset ({fast['precision']}): {fast['process_wall_s']:.1f} s process wall", flush=True)
    packing = []
    for count in (int(c) for c in args.packs.split(",")):
        packing.append(pack(args, count))
        print(f"{count} at once: {packing[-1]['wall_s']:.1f} s, {packing[-1]['models_per_hour']:.1f} models per hour",
              flush=True)
    record["packing"] = {"niter": args.pack_niter, "runs": packing}
    by = {p["trainings"]: p["models_per_hour"] for p in packing}
    if 1 in by:
        record["pack_throughput_ratios"] = {str(n): round(v / by[1], 3) for n, v in by.items()}
        if 8 in by:
            record["pack8_throughput_ratio"] = round(by[8] / by[1], 3)
    text = json.dumps(record, indent=2) + "\n"
    out = Path(args.out) if args.out else (RESULT if cuda and not args.tiny else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"written to {out}")
    else:
        print(text)


if __name__ == "__main__":
    main()
