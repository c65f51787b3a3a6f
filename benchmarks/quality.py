"""Sample quality of the presets: train each preset on the example images with several seeds, score
every model with `consingan evaluate`, and write the table to benchmarks/RESULTS.md.

    python benchmarks/quality.py                                  # paper and fast, 3 images x seeds 1 2, 250 px
    python benchmarks/quality.py --max_size 80 --jobs 2           # the same protocol on smaller images
    python benchmarks/quality.py --presets fast --seeds 1         # only the fast preset's runs

Each run is `consingan train --preset P --manualSeed S` in a process of its own, timed by the wall
clock (start-up included), then `consingan evaluate --num_samples N --seed 0` on the model. A run's
record (settings, time, metrics) goes to benchmarks/results/<max_size>/<image>_<preset>_s<seed>.json
and the first seed's final sample grid next to it; models stay in --runs (not in git). A run whose
record exists is not repeated, so an interrupted benchmark goes on where it stopped.

RESULTS.md is rebuilt from every record under benchmarks/results (--results), one section per image size: the
mean over seeds per image and preset, and the fast preset against the paper preset averaged over
images and seeds, with the issue's targets (time <= 15 min at 250 px with the whole machine,
swd <= 1.1x, diversity within 10%). With --jobs N, N runs share the machine (cores/N threads each):
their times do not show what one run takes alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from consingan.config import Config

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "Images" / "Generation"
RESULTS_DIR = ROOT / "benchmarks" / "results"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
TIME_LIMIT_MIN = 15.0
SWD_RATIO_MAX = 1.1
DIVERSITY_TOLERANCE = 0.10
METRICS = ("swd", "diversity", "nn_patch", "rec_rmse")
PAPER = Config()  # METHOD's defaults


def run_name(image: str, preset: str, seed: int) -> str:
    return f"{image}_{preset}_s{seed}"


def label_of(record: dict) -> str:
    """What a run's settings are called in the tables: its --label, else its preset."""
    return record.get("label") or record["preset"]


def one_run(image: Path, preset: str, seed: int, args, threads: int) -> dict:
    """Train and evaluate one model; returns its record (also written as JSON)."""
    label = args.label or preset
    name = run_name(image.stem, label, seed)
    out_dir = Path(args.results) / str(args.max_size)
    model_dir = Path(args.runs) / str(args.max_size) / name
    if model_dir.exists():  # an interrupted run of this benchmark: its scratch model is redone
        print(f"{name}: removing the incomplete run in {model_dir}", flush=True)
        shutil.rmtree(model_dir)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "consingan", "train", "--input_name", str(image), "--preset", preset,
           "--manualSeed", str(seed), "--max_size", str(args.max_size), "--out_dir", str(model_dir),
           "--progress", "none", "--device", args.device, *args.train_args.split()]
    print(f"{name}: training ({threads} threads)", flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    config = json.loads((model_dir / "config.json").read_text())
    # config.json also holds the run's facts (input_name, device, preset): keep the Config fields
    settings = Config.from_dict({f.name: config[f.name] for f in dataclasses.fields(Config) if f.name in config})
    record = {"image": image.stem, "preset": preset, "label": label, "seed": seed, "max_size": args.max_size,
              "threads": threads, "jobs": args.jobs, "train_minutes": seconds / 60,
              "niter": config["niter"], "niter_low": config.get("niter_low", 0),
              "iterations": [settings.stage_niter(k) for k in range(settings.train_stages)],
              "precision": config.get("precision", "fp32"),
              "gp_every": config["gp_every"],
              "Dsteps": [settings.stage_Dsteps(k) for k in range(settings.train_stages)], "metrics": None, "failed": None,
              "machine": machine(args.device), "device": args.device, "command": args.command}
    if args.device != "cpu":
        record["note"] = (f"trained on {record['machine']} (--device {args.device}), evaluated on its CPU: "
                          "the metrics count, the time is not comparable with CPU runs")
    out_dir.mkdir(parents=True, exist_ok=True)
    if proc.returncode != 0:
        # A run that training itself stops (e.g. a saturated generator) is a result: recorded, not averaged.
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        if not errors:
            raise RuntimeError(f"{name}: training crashed:\n{proc.stdout}\n{proc.stderr}")
        record["failed"] = errors[-1][len("error:"):].strip()
        (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"{name}: stopped after {seconds / 60:.1f} min: {record['failed']}", flush=True)
        return record
    ev = subprocess.run([sys.executable, "-m", "consingan", "evaluate", "--model_dir", str(model_dir),
                         "--num_samples", str(args.num_samples), "--seed", "0", "--device", "cpu"],
                        env=env, capture_output=True, text=True)
    if ev.returncode != 0:
        raise RuntimeError(f"{name}: evaluation failed:\n{ev.stdout}\n{ev.stderr}")
    metrics = json.loads((model_dir / "Evaluation" / "metrics.json").read_text())
    record["metrics"] = {k: metrics[k] for k in (*METRICS, "swd_levels", "num_samples", "image_size")}
    top = max(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    recorded = [json.loads(p.read_text())["seed"] for p in out_dir.glob(f"{image.stem}_{label}_s*.json")]
    if seed <= min(recorded, default=seed):  # the grid shows the first seed, also across invocations
        shutil.copyfile(model_dir / str(top) / "samples_grid.png", out_dir / f"{image.stem}_{label}.png")
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{name}: {seconds / 60:.1f} min, swd {metrics['swd']:.4g}, diversity {metrics['diversity']:.4g}, "
          f"nn_patch {metrics['nn_patch']:.4g}", flush=True)
    return record


def machine(device: str = "cpu") -> str:
    import torch

    text = f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}"
    return text + (f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else "")


def load_records(results: Path) -> dict[int, list[dict]]:
    by_size: dict[int, list[dict]] = {}
    for path in sorted(results.glob("*/*.json")):
        r = json.loads(path.read_text())
        by_size.setdefault(r["max_size"], []).append(r)
    return by_size


def mean(values) -> float:
    return statistics.fmean(values)


def summary(records: list[dict]) -> list[str]:
    """Fast against paper, over the (image, seed) pairs that both presets have."""
    runs = {(r["image"], r["seed"], label_of(r)): r for r in records if not r.get("failed")}
    pairs = sorted({(i, s) for i, s, p in runs if (i, s, "paper") in runs and (i, s, "fast") in runs})
    if not pairs:
        return ["No (image, seed) has runs of both presets yet: nothing to compare."]
    fast = [runs[i, s, "fast"] for i, s in pairs]
    paper = [runs[i, s, "paper"] for i, s in pairs]
    m = {name: {k: mean(r["metrics"][k] for r in rs) for k in METRICS}
         for name, rs in (("fast", fast), ("paper", paper))}
    # a time measured on a GPU says nothing about the CPU: both sides count their CPU runs only
    cpu_fast, cpu_paper = ([r["train_minutes"] for r in rs if not on_gpu(r)] for rs in (fast, paper))
    t_fast = mean(cpu_fast) if cpu_fast else None
    times = " | ".join([*(f"{mean(t):.1f}" if t else "(GPU runs only)" for t in (cpu_fast, cpu_paper)),
                        f"{t_fast / mean(cpu_paper):.2f}" if cpu_fast and cpu_paper else ""])
    swd_ratio = m["fast"]["swd"] / m["paper"]["swd"]
    div_change = m["fast"]["diversity"] / m["paper"]["diversity"] - 1
    images = sorted({i for i, _ in pairs})
    seeds = sorted({s for _, s in pairs})
    alone = all(r["jobs"] == 1 for r in fast)
    size = fast[0]["max_size"]
    lines = [f"Fast against paper, averaged over {len(pairs)} runs each ({len(images)} images: "
             f"{', '.join(images)}; seeds {', '.join(map(str, seeds))}):", "",
             "| | fast | paper | fast / paper | target |", "|---|---|---|---|---|",
             f"| training time (min, CPU runs) | {times} | "
             f"fast <= {TIME_LIMIT_MIN:.0f} min at 250 px |",
             f"| swd | {m['fast']['swd']:.4g} | {m['paper']['swd']:.4g} | {swd_ratio:.3f} | <= {SWD_RATIO_MAX} |",
             f"| diversity | {m['fast']['diversity']:.4g} | {m['paper']['diversity']:.4g} | "
             f"{1 + div_change:.3f} | within {DIVERSITY_TOLERANCE:.0%} |",
             f"| nn_patch | {m['fast']['nn_patch']:.4g} | {m['paper']['nn_patch']:.4g} | "
             f"{m['fast']['nn_patch'] / m['paper']['nn_patch']:.3f} | |",
             f"| rec_rmse | {m['fast']['rec_rmse']:.4g} | {m['paper']['rec_rmse']:.4g} | "
             f"{m['fast']['rec_rmse'] / m['paper']['rec_rmse']:.3f} | |", ""]
    verdicts = [f"- swd: {'met' if swd_ratio <= SWD_RATIO_MAX else 'NOT met'} ({swd_ratio:.3f}x)",
                f"- diversity: {'met' if abs(div_change) <= DIVERSITY_TOLERANCE else 'NOT met'} "
                f"({div_change:+.1%})"]
    if size == 250 and alone and t_fast is not None:
        verdicts.append(f"- time: {'met' if t_fast <= TIME_LIMIT_MIN else 'NOT met'} ({t_fast:.1f} min)")
    else:
        verdicts.append(f"- time: not judged here ({size} px" + ("" if alone else ", runs sharing the machine")
                        + ("" if t_fast is not None else ", fast runs on a GPU") + "); see the 250-px section")
    if len(images) < 3 or len(seeds) < 2:
        verdicts.append("- fewer images or seeds than the protocol asks (3 images x 2 seeds): indicative only")
    verdicts += spread(fast, paper, swd_ratio, 1 + div_change)
    failed = [r for r in records if r.get("failed")]
    if failed:
        verdicts.append(f"- left out: {len(failed)} run(s) that training stopped, and their other preset's "
                        "run of the same image and seed (see the per-run table)")
    return lines + verdicts


def spread(fast: list[dict], paper: list[dict], swd_ratio: float, div_ratio: float) -> list[str]:
    """How far each (image, seed) pair's fast/paper ratio is from the others: the standard error of
    their mean says whether a verdict's margin is larger than what the choice of seeds moves."""
    if len(fast) < 2:
        return []
    out = []
    for key, value, target in (("swd", swd_ratio, SWD_RATIO_MAX), ("diversity", div_ratio, None)):
        ratios = [f["metrics"][key] / p["metrics"][key] for f, p in zip(fast, paper)]
        se = statistics.stdev(ratios) / len(ratios) ** 0.5
        if target is None:  # within +-tolerance: the margin is to the nearer bound
            margin = DIVERSITY_TOLERANCE - abs(value - 1)
        else:
            margin = target - value
        out.append(f"- {key} per (image, seed) pair: fast/paper {min(ratios):.3f} to {max(ratios):.3f}, "
                   f"standard error of their mean {se:.3f}; the verdict's margin ({margin:+.3f}) is "
                   + ("larger than that" if abs(margin) > se else "within it: more seeds are needed to settle it"))
    return out


def write_results(results: Path, report: Path) -> None:
    by_size = load_records(results)
    out = ["# Sample quality of the presets", "",
           "Written by `benchmarks/quality.py` from the records in `benchmarks/results/`; the commands that made",
           "them are listed per section. Metrics: `consingan evaluate --num_samples 50 --seed 0` (see README,",
           "Evaluation): `swd` x1e3 (lower is closer to the training image's patches), `diversity` (pixel std",
           "across samples / image std), `nn_patch` (distance to the nearest training patch; 0 = copied),",
           "`rec_rmse`. Time: wall clock of `consingan train`, start-up included.", ""]
    for size in sorted(by_size, reverse=True):
        records = sorted(by_size[size], key=lambda r: (r["image"], r["preset"] != "paper", label_of(r), r["seed"]))
        jobs = sorted({r["jobs"] for r in records})
        commands = sorted({r["command"] for r in records})
        out += [f"## {size} px", "",
                f"Machine: {'; '.join(sorted({r['machine'] for r in records}))}; runs at a time: "
                f"{', '.join(map(str, jobs))}. Made by:", "",
                *[f"    {c}" for c in commands], "",
                "| image | settings | iterations per stage | gp_every | seeds | time (min) | swd | diversity | nn_patch | rec_rmse |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        groups: dict = {}
        for r in records:
            groups.setdefault((r["image"], label_of(r)), [])
            if not r.get("failed"):
                groups[r["image"], label_of(r)].append(r)
        for (image, preset), rs in groups.items():
            if not rs:
                out.append(f"| {image} | {preset} | | | | | every run stopped | | | |")
                continue
            vals = {k: mean(r["metrics"][k] for r in rs) for k in METRICS}
            out.append(f"| {image} | {preset} | {iterations_text(rs[0])} | {rs[0]['gp_every']} | "
                       f"{', '.join(str(r['seed']) for r in rs)} | {minutes_text(rs)} | "
                       f"{vals['swd']:.4g} | {vals['diversity']:.4g} | {vals['nn_patch']:.4g} | "
                       f"{vals['rec_rmse']:.4g} |")
        out += ["", "Per run:", "", "| run | time (min) | swd | diversity | nn_patch |", "|---|---|---|---|---|"]
        for r in records:
            m = r["metrics"]
            if r.get("failed"):
                out.append(f"| {run_name(r['image'], label_of(r), r['seed'])} | {r['train_minutes']:.1f} | "
                           f"stopped: {r['failed'].split(': every pixel')[0]} | | |")
                continue
            out.append(f"| {run_name(r['image'], label_of(r), r['seed'])} | {r['train_minutes']:.1f} | "
                       f"{m['swd']:.4g} | {m['diversity']:.4g} | {m['nn_patch']:.4g} |")
        by_note: dict[str, list[str]] = {}  # one line per note, naming every run it is about
        for r in records:
            if r.get("note"):
                by_note.setdefault(r["note"], []).append(run_name(r["image"], label_of(r), r["seed"]))
        notes = [f"- {', '.join(names)}: {note}" for note, names in by_note.items()]
        out += ([""] + notes if notes else []) + [""] + summary(records)
        # only the grids kept in the repository (the others were removed to keep it small)
        grids = [(image, preset, results / str(size) / f"{image}_{preset}.png") for image, preset in groups]
        links = [f"- {image}, {preset}: ![{image} {preset}]({Path(os.path.relpath(g, report.parent)).as_posix()})"
                 for image, preset, g in grids if g.exists()]
        out += ["", "Sample grids (first seed, 10 samples each):", "", *links] if links else []
        out.append("")
    report.write_text("\n".join(out))
    print(f"wrote {report}")


def on_gpu(record: dict) -> bool:
    return record.get("device", "cpu") != "cpu"


def minutes_text(records: list[dict]) -> str:
    """The mean training time of the CPU runs; GPU runs' times are not mixed in, only named."""
    cpu = [r["train_minutes"] for r in records if not on_gpu(r)]
    gpu = [r["train_minutes"] for r in records if on_gpu(r)]
    text = f"{mean(cpu):.1f}" if cpu else ""
    return text + (f"{'; ' if cpu else ''}GPU {mean(gpu):.1f}" if gpu else "")


def iterations_text(record: dict) -> str:
    """Per-stage iterations as runs of equal counts, e.g. '2000x3, 250x3' (older records: from niter and
    niter_low, the first three stages being the low ones); ', bf16' when the run used it; ', Dsteps N'
    or ', Dsteps 3,3,3,2,2,2' (per stage) when not the paper's 3 everywhere (older records: a number, or
    nothing for 3)."""
    iters = record.get("iterations")
    if iters is None:
        low = record.get("niter_low") or record["niter"]
        iters = [low] * 3 + [record["niter"]] * 3
    runs: list[list[int]] = []
    for n in iters:
        if runs and runs[-1][0] == n:
            runs[-1][1] += 1
        else:
            runs.append([n, 1])
    text = ", ".join(f"{n}x{count}" for n, count in runs)
    text += f", {record['precision']}" if record.get("precision", "fp32") != "fp32" else ""
    dsteps = record.get("Dsteps", PAPER.Dsteps)
    dsteps = dsteps if isinstance(dsteps, list) else [dsteps] * len(iters)
    if set(dsteps) != {PAPER.Dsteps}:
        text += ", Dsteps " + (str(dsteps[0]) if len(set(dsteps)) == 1 else ",".join(map(str, dsteps)))
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", nargs="+", default=None, help="file stems in Images/Generation [all]")
    ap.add_argument("--presets", nargs="+", default=["paper", "fast"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--max_size", type=int, default=250)
    ap.add_argument("--num_samples", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (each gets cores/jobs threads)")
    ap.add_argument("--device", default="cpu", help="where to train (cpu, cuda); evaluation runs on the CPU [cpu]")
    ap.add_argument("--threads", type=int, default=None, help="threads per run [cores/jobs]")
    ap.add_argument("--runs", default=str(ROOT / "benchmarks" / "quality_runs"), help="scratch folder for models")
    ap.add_argument("--results", default=str(RESULTS_DIR), help="folder of the run records and grids")
    ap.add_argument("--report", default=str(RESULTS_MD), help="the Markdown table to write")
    ap.add_argument("--train_args", default="", help="more `consingan train` flags for every run (e.g. for a "
                    "smoke test: '--niter 2 --nfc 8'); they are part of the record's command")
    ap.add_argument("--label", default=None, help="name these runs' settings in the records and tables "
                    "[the preset]; give one when --train_args change a preset, so that the runs are not "
                    "compared as the preset itself")
    ap.add_argument("--report_only", action="store_true", help="only rebuild RESULTS.md from the records")
    args = ap.parse_args()
    if args.label and len(args.presets) != 1:
        raise SystemExit("error: --label names the runs of one preset; give one --presets value with it")
    args.command = "python benchmarks/quality.py " + " ".join(
        f"'{a}'" if " " in a else a for a in sys.argv[1:])
    if not args.report_only:
        stems = args.images or sorted(p.stem for p in IMAGES.glob("*.png"))
        images = [IMAGES / f"{s}.png" for s in stems]
        missing = [str(p) for p in images if not p.exists()]
        if missing:
            raise SystemExit(f"error: no such example image: {', '.join(missing)}")
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
        done = Path(args.results) / str(args.max_size)
        todo = [(img, p, s) for p in args.presets for s in args.seeds for img in images
                if not (done / f"{run_name(img.stem, args.label or p, s)}.json").exists()]
        # the slow runs first, so that the last jobs to finish are short ones
        todo.sort(key=lambda t: t[1] != "paper")
        print(f"{len(todo)} runs to do at {args.max_size} px, {args.jobs} at a time", flush=True)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for f in [pool.submit(one_run, img, p, s, args, threads) for img, p, s in todo]:
                f.result()
    write_results(Path(args.results), Path(args.report))


if __name__ == "__main__":
    main()
