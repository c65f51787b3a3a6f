"""Train one model per image for many images, on Ray: a local Ray on this machine by default, an
existing cluster with ``address``.

    import consingan.batch
    results = consingan.batch.run("photos/", "runs/photos", niter=500, samples=10, cpus_per_job=1)

Every image trains into ``<out_root>/<stem>/`` (a normal model directory), then optionally writes
samples (``Evaluation/random_samples``) and ``Evaluation/metrics.json``. ``<out_root>/.batch/``
holds one small record per image (its status, tries, seconds, error), from which a rerun decides
what is left to do: finished images are skipped, interrupted ones go on from their checkpoint, failed
ones are retried only with ``retry_failed``; ``force`` trains everything again from nothing.

Ray is an optional dependency (``pip install -e ".[ray]"``): this module imports it only inside
``run`` and the helpers that need it, so ``import consingan.batch`` works without it.

Fault tolerance comes from three things working together: the engine's checkpoints (every
``checkpoint_every`` iterations, bit-identical resume on the CPU), Ray's task retries (a worker that
dies, SIGKILL or a lost node, has its task run again, up to ``retries`` times) and the per-image
decision at the start of every try (a checkpoint on disk means: resume).
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import shutil
import socket
import signal
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .config import Config, make_config
from .errors import UserError
from .signals import sigterm_as_interrupt
from .storage.image_files import is_image_name
from .storage.paths import inside, is_inside, safe_name
from .storage.rundir import RunDir

RAY_MISSING = 'the batch runner needs Ray: pip install -e ".[ray]"'
STATE_DIR = ".batch"  # per-image records, under out_root
SUMMARY_CSV, SUMMARY_JSON = "summary.csv", "summary.json"
# What a manifest may name besides the Config fields: the image, its output folder's name, the mode and preset.
MANIFEST_IMAGE_COLUMNS = ("image", "input_name", "path")
SETTING_NAMES = {f.name for f in dataclasses.fields(Config)} | {"preset"}
PROGRESS_KINDS = ("auto", "plain", "none")
REPORT_EVERY = 0.3  # seconds between two reports of a worker to the monitor (and two looks at the stop flag)

# Statuses of a JobResult.
DONE, SKIPPED, FAILED, INTERRUPTED = "done", "skipped", "failed", "interrupted"


@dataclass
class Job:
    """One image to train: its path, its folder name under out_root and its own settings."""

    image: str
    name: str
    settings: dict[str, Any] = field(default_factory=dict)  # shared settings with the manifest's over them


@dataclass
class JobResult:
    """What became of one image (one row of summary.csv)."""

    image: str
    name: str
    status: str  # done | skipped (finished before) | failed | interrupted
    error: str | None = None
    seconds: float = 0.0  # wall time of its work, all tries of all runs together
    device: str | None = None
    node: str | None = None
    seed: int | None = None
    metrics: dict[str, Any] | None = None
    model_dir: str | None = None
    attempts: int = 0  # tries over all runs of the batch (a Ray retry after a worker died counts)
    resumed: bool = False  # this run went on from a checkpoint

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------
# The images and their settings


def collect_jobs(images: Any, settings: Mapping[str, Any] | None = None) -> list[Job]:
    """The jobs of ``images``: a folder (its image files), a glob pattern, a ``.txt`` list (one path a
    line, ``#`` comments), a ``.csv`` manifest (an ``image`` column, optionally ``name``, and setting
    columns named like the train flags), a single image, or a Python list of paths or of dicts (rows
    of a manifest). Relative paths in a list or manifest are relative to its folder. Output names are
    the image stems, made unique (``rock``, ``rock_2``, ...) in the order of the images."""
    settings = dict(settings or {})
    rows = _rows(images)
    if not rows:
        raise UserError(f"no images found in {images}; give a folder of images, a glob pattern, a .txt list "
                        "or a .csv manifest")
    jobs, taken = [], set()
    for row in rows:
        row = dict(row)
        image = str(row.pop("image"))
        name = safe_name(row.pop("name", None) or Path(image).stem)  # never hidden, empty or a path
        unique, i = name, 2
        while unique.lower() in taken or unique.lower() in (SUMMARY_CSV, SUMMARY_JSON):
            unique, i = f"{name}_{i}", i + 1
        taken.add(unique.lower())  # case-insensitive: folders on macOS and Windows
        jobs.append(Job(image, unique, {**settings, **row}))
    return jobs


def _rows(images: Any) -> list[dict[str, Any]]:
    if isinstance(images, (list, tuple)):
        rows = []
        for item in images:
            if isinstance(item, Mapping):
                rows.append(_manifest_row(dict(item), Path.cwd(), "the list"))
            else:
                rows.append({"image": os.path.abspath(item)})
        return rows
    text = str(images)
    path = Path(text)
    if path.is_dir():
        return [{"image": str(_resolve(p, text))} for p in sorted(path.iterdir())
                if p.is_file() and is_image_name(p)]
    if path.suffix.lower() == ".csv" and path.is_file():
        return _read_manifest(path)
    if path.suffix.lower() == ".txt" and path.is_file():
        rows = []
        for number, line in enumerate(_text_of(path).splitlines(), start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                rows.append({"image": str(_resolve(path.parent / line, f"list {path} line {number}"))})
        return rows
    if path.is_file():
        return [{"image": str(_resolve(path, "--images"))}]
    if glob.has_magic(text):
        return [{"image": os.path.abspath(p)} for p in sorted(glob.glob(text, recursive=True)) if os.path.isfile(p)]
    raise UserError(f"--images {text}: no such folder, file or pattern; give a folder of images, a glob pattern "
                    "(quoted), a .txt list or a .csv manifest")


def _text_of(path: Path, encoding: str = "utf-8") -> str:
    """A list or manifest's text; one that is not UTF-8 is a UserError naming the file."""
    try:
        return path.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start} cannot be read); save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or exc}); check the path and its permissions") from None


def _resolve(path: Path, where: str) -> Path:
    """``path`` with its links followed; a loop of links (or a path the system refuses) is a UserError."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError, ValueError) as exc:  # ValueError: a NUL character in the name
        reason = ("a loop of symbolic links" if isinstance(exc, RuntimeError) else "a NUL character in it"
                  if isinstance(exc, ValueError) else (getattr(exc, "strerror", None) or exc))
        raise UserError(f"{where}: {path} cannot be resolved ({reason}); give the image's real path") from None


def _read_manifest(path: Path) -> list[dict[str, Any]]:
    import io

    with io.StringIO(_text_of(path, "utf-8-sig"), newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        image_col = next((c for c in MANIFEST_IMAGE_COLUMNS if c in columns), None)
        if image_col is None:
            raise UserError(f"manifest {path} has no image column; name one of its columns 'image'")
        unknown = [c for c in columns if c not in SETTING_NAMES and c not in MANIFEST_IMAGE_COLUMNS and c != "name"]
        if unknown:
            raise UserError(f"manifest {path}: unknown column(s) {', '.join(unknown)}; columns are 'image', 'name' "
                            "and train flags without the dashes (e.g. niter, max_size, manualSeed)")
        rows = []
        for number, raw in enumerate(reader, start=2):
            if None in raw:  # csv puts the cells beyond the header's columns under the key None
                raise UserError(f"manifest {path} line {number} has more cells than the header has columns "
                                f"({len(columns)}); quote cells that hold commas, or add the missing column names")
            raw = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            if not raw.get(image_col):
                continue  # a blank line
            row = {k: v for k, v in raw.items() if k not in MANIFEST_IMAGE_COLUMNS}
            row["image"] = raw[image_col]
            rows.append(_manifest_row(row, path.parent, f"manifest {path} line {number}"))
        return rows


def _manifest_row(row: dict[str, Any], base: Path, where: str) -> dict[str, Any]:
    """A manifest row with its image made absolute and its setting cells typed (empty cells dropped)."""
    if "image" not in row:
        raise UserError(f"{where}: no 'image' given")
    out: dict[str, Any] = {"image": str(_resolve(base / str(row.pop("image")), where))}
    name = row.pop("name", None)
    if name:
        if "/" in str(name) or "\\" in str(name) or str(name) in (".", ".."):
            raise UserError(f"{where}: name {name!r} must be a plain folder name")
        out["name"] = str(name)
    types = {f.name: f.type for f in dataclasses.fields(Config)} | {"preset": "str"}
    for key, value in row.items():
        if key not in types:
            raise UserError(f"{where}: unknown setting {key!r}; use train flag names without the dashes")
        if value is None or value == "":
            continue
        out[key] = _typed(value, types[key], f"{where}, column {key}")
    return out


def _typed(value: Any, kind: str, where: str) -> Any:
    if not isinstance(value, str):
        return tuple(value) if isinstance(value, list) else value
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            lowered = value.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind == "str":
            return value
        return tuple(int(v) for v in value.replace(";", " ").replace(",", " ").split())
    except ValueError:
        what = {"int": "a whole number", "float": "a number", "bool": "true or false"}.get(kind, "whole numbers, "
                                                                                            "e.g. 20,20,50")
        raise UserError(f"{where}: {value!r} is not {what}") from None


def check_settings(jobs: Sequence[Job]) -> None:
    """Every job's settings make a valid Config (checked on the driver, before any work)."""
    for job in jobs:
        unknown = sorted(set(job.settings) - SETTING_NAMES)
        if unknown:
            raise UserError(f"unknown setting(s) {', '.join(unknown)}; use train flags (consingan train --help)")
        try:
            make_config(**job.settings)
        except UserError as exc:
            raise UserError(f"{job.image}: {exc}") from None


# ---------------------------------------------------------------------------------------------------
# State on disk


def job_dir(root: Path, name: str) -> Path:
    return inside(root, root / name, "model folder")  # <out_root>/<name> may be a link out of --out_root


def record_path(root: Path, name: str) -> Path:
    return inside(root, root / STATE_DIR / f"{name}.json", "batch record")


def read_record(root: Path, name: str) -> dict[str, Any]:
    try:
        return json.loads(record_path(root, name).read_text(encoding="utf-8"))
    except (OSError, ValueError, UserError):  # unreadable, damaged, or a link out of --out_root
        return {}


def write_record(root: Path, name: str, record: Mapping[str, Any]) -> None:
    from .storage.outputs import write_bytes

    write_bytes((json.dumps(record, indent=2, default=str) + "\n").encode("utf-8"), record_path(root, name))


def _samples_done(out: Path, n: int) -> bool:
    folder = RunDir(out).samples_dir
    return n <= 0 or (folder.is_dir() and len(list(folder.glob("gen_sample_*.png"))) >= n)


def _metrics_done(out: Path, evaluate: bool) -> bool:
    return not evaluate or RunDir(out).metrics_file.exists()


def _model_done(out: Path) -> bool:
    run = RunDir(out)
    return run.model_file.exists() and not run.checkpoint_file.exists()


def finished(out: Path, samples: int, evaluate: bool) -> bool:
    return _model_done(out) and _samples_done(out, samples) and _metrics_done(out, evaluate)


def _run_info(out: Path) -> dict[str, Any]:
    try:
        return RunDir(out).info()
    except (OSError, UserError):  # unreadable or damaged: not a run this batch can claim
        return {}


def _metrics_of(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads(RunDir(out).metrics_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _result_from_disk(root: Path, job: Job, status: str, record: Mapping[str, Any], error: str | None = None) -> JobResult:
    out = job_dir(root, job.name)
    info = _run_info(out)
    return JobResult(image=job.image, name=job.name, status=status, error=error if error is not None else record.get("error"),
                     seconds=float(record.get("seconds", 0.0)), device=record.get("device") or info.get("device"),
                     node=record.get("node"), seed=info.get("manualSeed", record.get("seed")),
                     metrics=_metrics_of(out), model_dir=str(out) if out.exists() else None,
                     attempts=int(record.get("attempts", 0)))


def foreign(root: Path, job: Job) -> str | None:
    """Why ``root/<job.name>`` must not be touched by this job (None: it is absent, empty, or this image's
    own work, as its record in .batch or its config.json says)."""
    from .storage.outputs import LOCK_FILE

    if not is_inside(root, root / job.name):
        return f"{root / job.name} is a symbolic link that leads outside --out_root"
    out = job_dir(root, job.name)
    if not out.exists():
        return None
    if not out.is_dir():
        return f"{out} is a file"
    if not any(p.name != LOCK_FILE for p in out.iterdir()):
        return None
    source = read_record(root, job.name).get("image") or _run_info(out).get("input_name")
    if source is None:
        return f"{out} already holds files that no batch wrote"
    if Path(source) != Path(job.image):
        return f"{out} holds the work of another image ({source})"
    return None


def _refusal(problem: str) -> str:
    return (f"{problem}; give this image another name (a manifest's name column) or use another --out_root "
            "(nothing was removed)")


def _clear(root: Path, job: Job) -> None:
    """Remove a job's folder (its partial or old outputs) unless it is not this image's or another run
    holds it (UserError)."""
    from .storage.outputs import claim_dir

    out = job_dir(root, job.name)
    if not out.exists():
        return
    problem = foreign(root, job)
    if problem:
        raise UserError(_refusal(problem))
    claim_dir(out, "model folder", fresh=False).release()  # in use by another run: UserError
    shutil.rmtree(out)


# ---------------------------------------------------------------------------------------------------
# The worker side: one job, with its progress reported to the driver's monitor


def _make_reporter(monitor, name: str, stop: threading.Event, stop_file: Path, base=None):
    """A Callbacks object that keeps the job's live state, and a thread that sends it to the driver's
    monitor (a Ray actor) every REPORT_EVERY seconds and sets ``stop`` when ``stop_file`` appears (the
    driver's stop request). Reports are sent without waiting for an answer: a task blocked in ray.get
    or ray.wait lends its CPU to another task, which would run more jobs than there are CPUs."""
    from .callbacks import Callbacks

    base = base or Callbacks

    class Reporter(base):  # type: ignore[misc, valid-type]
        def __init__(self):
            self.state: dict[str, Any] = {"phase": "starting", "pid": os.getpid(), "node": socket.gethostname(),
                                          "stage": None, "num_stages": None, "iteration": 0, "niter": None,
                                          "left": None, "checkpoints": 0, "checkpoint_at": None}
            self.timer = None  # core/cost.TimeLeft of the run, once its estimate is known
            self.wake = threading.Event()
            self.done = threading.Event()
            self.thread = threading.Thread(target=self._loop, name=f"consingan-batch-report-{name}", daemon=True)
            self.thread.start()

        # --- callbacks (training thread) ---
        def on_stage_start(self, stage, num_stages, niter, first_iter):
            self.state.update(stage=stage, num_stages=num_stages, niter=niter, iteration=first_iter)
            if self.timer is not None:
                self.timer.update(stage, first_iter)
            self.wake.set()

        def on_iteration(self, stage, iteration, logged=None):
            self.state["iteration"] = iteration
            if self.timer is not None:
                self.timer.update(stage, iteration)
                self.state["left"] = self.timer.seconds(stage, iteration)

        def on_checkpoint(self, stage, iteration):
            self.state["checkpoints"] += 1
            self.state["checkpoint_at"] = (stage, iteration)
            self.wake.set()

        def should_stop(self):
            return stop.is_set()

        # --- the job ---
        def phase(self, phase: str, **extra) -> None:
            self.state.update(phase=phase, **extra)
            self.wake.set()

        def plan(self, estimate) -> None:
            """The run's cost estimate (core/cost.Estimate), for the time left."""
            self.timer = estimate.time_left()

        def _loop(self) -> None:
            import ray

            while not self.done.is_set():
                if stop_file.exists():
                    stop.set()
                try:
                    monitor.report.remote(name, dict(self.state))
                except Exception:  # noqa: BLE001 - the monitor gone (driver ended): the job goes on
                    pass
                self.wake.wait(REPORT_EVERY)
                self.wake.clear()

        def close(self) -> None:
            self.done.set()
            self.wake.set()
            self.thread.join(timeout=5)
            try:
                monitor.report.remote(name, dict(self.state))
            except Exception:  # noqa: BLE001
                pass

    return Reporter()


def job_threads(cpus_per_job: float) -> int:
    """A job's torch threads: its CPUs (Ray's reservation), at least 1; recorded in its config.json."""
    return max(1, int(cpus_per_job))


def check_threads(threads: int, cpus_per_job: float) -> None:
    """--threads given to batch may only repeat what --cpus_per_job gives each job."""
    if threads and threads != job_threads(cpus_per_job):
        raise UserError(f"--threads {threads}: a batch job's torch threads are its --cpus_per_job (what Ray reserves "
                        f"for it); pass --cpus_per_job {threads} instead")


def run_job(spec: Mapping[str, Any], monitor=None) -> dict[str, Any]:
    """Run one job on this process (a Ray worker): decide from the disk what is left (train, resume,
    samples, metrics), do it, record it. Never raises for the job's own failures: they come back as a
    failed result, so one bad image does not stop the others."""
    import torch

    from . import api
    from .core.engine import TrainingStopped
    from .device import describe
    from .storage.outputs import InUse, NoSpace

    root, name, image = Path(spec["root"]), spec["name"], spec["image"]
    out = job_dir(root, name)
    job = Job(image, name, dict(spec["settings"]))
    stop = threading.Event()
    stop_file = stop_path(root, spec["batch"])
    reporter = _make_reporter(monitor, name, stop, stop_file) if monitor is not None else None
    record = read_record(root, name)
    retry = record.get("batch") == spec["batch"] and record.get("status") == "running"  # a Ray retry of this batch
    t0 = time.perf_counter()
    seconds_before = float(record.get("seconds", 0.0)) if not (spec["force"] and not retry) else 0.0
    attempts = int(record.get("attempts", 0)) + 1 if not (spec["force"] and not retry) else 1
    device = spec["device"]
    if device == "auto":  # Ray gave this task a GPU or not: use what it was given, nothing more
        device = "cuda" if spec["gpus_per_job"] > 0 and torch.cuda.is_available() else "cpu"
    threads = job_threads(spec["cpus_per_job"])
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    state = {"batch": spec["batch"], "image": image, "status": "running", "attempts": attempts,
             "seconds": seconds_before, "pid": os.getpid(), "node": socket.gethostname(),
             "device": describe(device)}
    resumed = False

    def finish(status: str, error: str | None = None, trace: str | None = None) -> dict[str, Any]:
        seconds = seconds_before + time.perf_counter() - t0
        write_record(root, name, {**state, "status": status, "error": error, "traceback": trace,
                                  "seconds": round(seconds, 3)})
        if reporter is not None:
            reporter.phase(status, error=error)
            reporter.close()
        result = _result_from_disk(root, job, status, {**state, "seconds": round(seconds, 3)}, error)
        result.resumed = resumed
        return result.to_dict()

    try:
        if stop_file.exists():
            if reporter is not None:
                reporter.close()
            return JobResult(image, name, INTERRUPTED, "stopped before it started", seconds_before,
                             attempts=attempts - 1).to_dict()
        if spec["force"] and not retry:
            _clear(root, job)
        write_record(root, name, state)
        extra = dict(checkpoint_every=spec["checkpoint_every"])
        if not _model_done(out):
            if RunDir(out).checkpoint_file.exists():
                resumed = True
                if reporter is not None:
                    reporter.phase("resume")
                    _resume_estimate(reporter, RunDir(out).checkpoint_config(), image, device)
                api.resume(out, device=device, progress="none", callbacks=[reporter] if reporter else [], stop=stop,
                           threads=threads, **extra)
            else:
                _clear(root, job)  # a try that died before its first checkpoint, or a failure being retried
                plan = job_plan(job, device, root, threads)
                if reporter is not None:
                    reporter.phase("train")
                    reporter.plan(plan.estimate)
                api.train(plan, out_dir=out, progress="none", callbacks=[reporter] if reporter else [], stop=stop,
                          **extra)
        if not (_samples_done(out, spec["samples"]) and _metrics_done(out, spec["evaluate"])):
            model = api.load(out, device=device)
            if not _samples_done(out, spec["samples"]):
                if reporter is not None:
                    reporter.phase("samples")
                folder = RunDir(out).samples_dir
                if folder.exists():
                    shutil.rmtree(folder)  # fewer samples than asked: a write that was killed
                api.write_samples(model, RunDir(out).evaluation_dir(), num_samples=spec["samples"],
                                  seed=model.config.manualSeed)
            if not _metrics_done(out, spec["evaluate"]):
                if reporter is not None:
                    reporter.phase("evaluate")
                api.write_metrics(model, RunDir(out).evaluation_dir(), num_samples=spec["eval_samples"], seed=0)
        return finish(DONE)
    except TrainingStopped as exc:  # a full disk too: a plain rerun resumes it once there is space
        return finish(INTERRUPTED if exc.interrupted or getattr(exc, "no_space", False) else FAILED, str(exc))
    except NoSpace as exc:  # writing samples or metrics: the same
        return finish(INTERRUPTED, str(exc))
    except InUse as exc:  # another batch works on this folder: its record stays as that batch writes it
        if reporter is not None:
            reporter.phase(FAILED, error=str(exc))
            reporter.close()
        return on_disk(root, job, _result_from_disk(root, job, FAILED, read_record(root, name), str(exc)),
                       spec["samples"], spec["evaluate"]).to_dict()
    except UserError as exc:
        return finish(FAILED, str(exc))
    except KeyboardInterrupt:
        return finish(INTERRUPTED, "interrupted")
    except Exception as exc:  # noqa: BLE001 - a bug or an odd file: this image fails, the others go on
        return finish(FAILED, f"{type(exc).__name__}: {exc}", traceback.format_exc())


def job_plan(job: Job, device: str = "auto", root: Path | None = None, threads: int | None = None):
    """The job's prepared run (consingan.plan.prepare, as the train command prepares it: the preset,
    the mode's defaults, the superres pyramid, the checks and the estimate). ``root``: the batch's
    out_root, recorded in config.json. ``threads``: the job's torch threads (job_threads)."""
    from .plan import prepare

    return prepare(job.image, device=device, input_name=job.image, threads=threads,
                   run_info={"batch": str(root)} if root is not None else None, **job.settings)


def _resume_estimate(reporter, config: Config, image: str, device: str) -> None:
    """The reporter's time-left estimate of a resumed job (best effort: a bad image fails later, in resume)."""
    try:
        from .plan import estimate_for
        from .storage.image_files import image_size

        w, h = image_size(image)
        reporter.plan(estimate_for(config, h, w, device))
    except Exception:  # noqa: BLE001
        pass


def stop_path(root: Path, batch_id: str) -> Path:
    """The file whose existence asks the jobs of batch ``batch_id`` to stop at a checkpoint (Ctrl-C)."""
    return root / STATE_DIR / f"stop-{batch_id}"


def probe_shared(folder: str, token: str, node: str) -> str | None:
    """On a worker: read the driver's probe file in ``folder`` and write this node's; None when both work,
    else what went wrong."""
    try:
        seen = (Path(folder) / "driver").read_text(encoding="utf-8")
    except OSError as exc:
        return f"cannot read the driver's probe file there ({exc.strerror or exc})"
    if seen != token:
        return "it holds another probe file than the driver wrote (a different folder under the same path)"
    try:
        (Path(folder) / f"node-{node}").write_text(token, encoding="utf-8")
    except OSError as exc:
        return f"cannot write there ({exc.strerror or exc})"
    return None


# ---------------------------------------------------------------------------------------------------
# The driver side


def import_ray(local: bool = False):
    """Ray, or a UserError saying how to install it. ``local``: this process will start a Ray of its own,
    which then listens on 127.0.0.1 only (not on every network interface)."""
    if local and "ray" not in sys.modules:
        # Ray's switch for a loopback-only node (its default off Linux); read when ray is imported
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports sent from a training tool
    try:
        import ray
    except ImportError:
        raise UserError(RAY_MISSING) from None
    if local:
        try:
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False  # imported before: the same switch, set on the module
        except (ImportError, AttributeError):
            pass
    return ray


def start_ray(num_cpus: int | None = None, num_gpus: int | None = None, address: str | None = None):
    """Connect to the cluster at ``address`` (or RAY_ADDRESS), or start a local Ray sized to this machine
    (``num_cpus``: its CPUs, default all) bound to 127.0.0.1, without the dashboard. Returns ray."""
    import logging

    address = address or os.environ.get("RAY_ADDRESS") or None
    ray = import_ray(local=address is None)
    if address is not None:
        _check_reachable(address)
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"cannot join the Ray cluster at {address} ({exc}); check the address "
                            "(ray status on the head node shows it) or leave out --address to run locally") from None
        return ray
    if num_cpus is None:
        num_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False, object_store_memory=128 * 2**20)  # models never pass through it: small
    return ray


def _check_reachable(address: str) -> None:
    """A HOST:PORT that nothing answers on is an error now (Ray itself would retry for minutes)."""
    if address == "local":
        return
    if address == "auto":  # the cluster Ray would pick: the last `ray start` on this machine, or a running one
        try:
            from ray._private.services import canonicalize_bootstrap_address

            address = canonicalize_bootstrap_address("auto") or "local"
        except ConnectionError:
            raise UserError("--address auto found no running Ray cluster on this machine; start one (ray start "
                            "--head), give its HOST:PORT, or leave out --address to run locally") from None
        except Exception:  # noqa: BLE001 - Ray's internals moved: let ray.init decide
            return
        if address == "local":
            return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address}: give auto or HOST:PORT (the head node's, e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as conn:
            speaks = _speaks_grpc(conn)
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); check the address (ray "
                        "status on the head node shows it) or leave out --address to run locally") from None
    if not speaks:  # something else listens there: Ray would print connection warnings for minutes
        raise UserError(f"{address} answers but is not a Ray cluster (no gRPC server there); give the head node's "
                        "GCS address (ray status on the head node shows it) or leave out --address to run locally")


def _speaks_grpc(conn: socket.socket, timeout: float = 5.0) -> bool:
    """Whether the server on ``conn`` talks HTTP/2, as Ray's GCS (gRPC) does: it answers the client's
    connection preface with a SETTINGS frame. With TLS (RAY_USE_TLS) the check is left to Ray."""
    if os.environ.get("RAY_USE_TLS", "0").lower() not in ("0", "", "false"):
        return True
    conn.settimeout(timeout)
    try:
        conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        head = b""
        while len(head) < 9:
            chunk = conn.recv(9 - len(head))
            if not chunk:
                return False
            head += chunk
    except OSError:  # silence (timeout) or a reset: not a gRPC server
        return False
    return head[3] == 0x04  # frame type SETTINGS


def _make_monitor_class(ray):
    @ray.remote(num_cpus=0)
    class Monitor:
        """Where the workers report their jobs' live state (the driver's view reads it)."""

        def __init__(self):
            self.states: dict[str, dict[str, Any]] = {}

        def report(self, name: str, state: dict[str, Any]) -> None:
            self.states[name] = state

        def snapshot(self) -> dict[str, dict[str, Any]]:
            return self.states

    return Monitor


def check_shared(ray, root: Path) -> None:
    """Every node's worker writes and reads a probe file in ``root``: the output root must be one folder
    that all of them see (a shared file system on a cluster), or a clear error before any work."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    folder = root / STATE_DIR / f"probe-{token}"
    folder.mkdir(parents=True)
    try:
        (folder / "driver").write_text(token, encoding="utf-8")
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
        probe = ray.remote(num_cpus=0, max_retries=0)(probe_shared)
        refs = {n["NodeManagerHostname"] or n["NodeManagerAddress"]: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                str(folder), token, n["NodeID"]) for n in nodes}
        try:
            answers = dict(zip(refs, ray.get(list(refs.values()), timeout=120)))
        except Exception as exc:  # noqa: BLE001 - a worker that cannot start, or cannot import consingan
            raise UserError(f"the Ray workers could not check --out_root {root} ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); install consingan on every node "
                            "(pip install -e .) and put --out_root on a file system that all nodes mount") from None
        for node, n in zip(answers, nodes):
            problem = answers[node] or (None if (folder / f"node-{n['NodeID']}").exists() else
                                        "its probe file did not reach the driver")
            if problem:
                raise UserError(f"--out_root {root} is not shared with the Ray worker on {node}: {problem}; every "
                                "node must see the same folder at the same path (a shared file system such as "
                                "NFS), so put --out_root there")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _format_seconds(s: float | None) -> str:
    if s is None:
        return ""
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class _View:
    """The live view: a rich table on a terminal ("auto"), a line per state change ("plain"), or nothing."""

    SHOWN = 12  # rows of finished jobs kept on screen; running ones are always shown

    def __init__(self, kind: str, jobs: Sequence[Job], stream=None):
        self.stream = stream or sys.stdout
        if kind == "auto":
            kind = "rich" if self.stream.isatty() else "plain"
        self.kind = kind
        self.jobs = jobs
        self.rows: dict[str, dict[str, Any]] = {j.name: {"phase": "queued"} for j in jobs}
        self.t0 = time.perf_counter()
        self.live = None
        self.said: dict[str, str] = {}
        if kind == "rich":
            from rich.console import Console
            from rich.live import Live

            self.live = Live(self._table(), console=Console(file=self.stream), refresh_per_second=4, transient=False)
            self.live.start()

    def say(self, text: str) -> None:
        """A line above the table (or among the plain lines): what the batch waits for."""
        if self.kind == "rich":
            self.live.console.print(text, highlight=False, markup=False)
        elif self.kind == "plain":
            print(text, file=self.stream, flush=True)

    def update(self, name: str, state: Mapping[str, Any]) -> None:
        self.rows[name] = {**self.rows.get(name, {}), **state}

    def result(self, r: JobResult) -> None:
        row = {**self.rows.get(r.name, {}), "phase": r.status, "error": r.error, "left": None, "seconds": r.seconds}
        if r.status == DONE and row.get("num_stages"):  # its last report may predate the end
            row.update(stage=row["num_stages"] - 1, niter=None)
        self.rows[r.name] = row

    def refresh(self) -> None:
        if self.kind == "rich":
            self.live.update(self._table())
        elif self.kind == "plain":
            for name, row in self.rows.items():
                phase = row.get("phase", "queued")
                if phase != self.said.get(name) and phase not in ("queued", "starting"):
                    self.said[name] = phase
                    extra = f": {row['error']}" if row.get("error") else ""
                    print(f"[{_format_seconds(time.perf_counter() - self.t0)}] {name}: {phase}{extra}",
                          file=self.stream, flush=True)

    def _table(self):
        from rich.table import Table

        counts: dict[str, int] = {}
        for row in self.rows.values():
            counts[row.get("phase", "queued")] = counts.get(row.get("phase", "queued"), 0) + 1
        title = ", ".join(f"{n} {p}" for p, n in sorted(counts.items()))
        table = Table(title=f"consingan batch: {title} ({_format_seconds(time.perf_counter() - self.t0)})",
                      title_justify="left")
        for col in ("image", "state", "stage", "iteration", "left", "node / error"):
            table.add_column(col, overflow="fold" if col == "node / error" else "ellipsis")
        active = [n for n, r in self.rows.items() if r.get("phase") not in (DONE, SKIPPED, FAILED, INTERRUPTED, "queued")]
        ended = [n for n, r in self.rows.items() if r.get("phase") in (DONE, SKIPPED, FAILED, INTERRUPTED)]
        queued = [n for n, r in self.rows.items() if r.get("phase") == "queued"]
        for name in active + ended[-self.SHOWN:] + queued[: max(0, self.SHOWN - len(active))]:
            r = self.rows[name]
            stage = f"{r['stage'] + 1}/{r['num_stages']}" if r.get("stage") is not None and r.get("num_stages") else ""
            it = f"{r.get('iteration', 0)}/{r['niter']}" if r.get("niter") else ""
            left = _format_seconds(r.get("left")) if r.get("phase") in ("train", "resume") else ""
            table.add_row(name, r.get("phase", ""), stage, it, left, r.get("error") or r.get("node") or "")
        return table

    def close(self) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.stop()


def run(images: Any, out_root: str | os.PathLike, *, samples: int = 0, evaluate: bool = False,
        eval_samples: int = 50, cpus_per_job: float = 1, gpus_per_job: float = 0, address: str | None = None,
        retries: int = 3, retry_failed: bool = False, force: bool = False, device: str = "auto",
        checkpoint_every: int = 250, num_cpus: int | None = None, progress: str = "auto",
        on_update: Callable[[dict[str, dict[str, Any]]], None] | None = None, threads: int = 0,
        **settings: Any) -> list[JobResult]:
    """Train a model on each of ``images`` (see collect_jobs) into ``out_root/<stem>/`` on Ray, and write
    ``out_root/summary.csv`` and ``summary.json``. ``settings``: train settings (Config fields,
    ``train_mode``, ``preset``) shared by every image; a manifest's columns override them per image.

    ``samples``: samples to write per model; ``evaluate``: write metrics.json (``eval_samples`` samples).
    ``cpus_per_job``/``gpus_per_job``: what Ray reserves for a job (torch gets that many threads; 0.25 GPU
    packs four jobs on a GPU). ``address``: a Ray cluster to join (``"auto"``, ``HOST:PORT``; also
    RAY_ADDRESS); without it a local Ray of ``num_cpus`` CPUs (default: this machine's) is started
    and shut down again; a Ray already started in this process is used as it is. ``retries``: Ray's
    retries of a job whose worker died. ``progress``: "auto" (a live table on a terminal, lines
    otherwise), "plain", "none". ``on_update(states)``: called on the driver with the jobs' live states
    (name -> dict with phase, stage, iteration, pid, ...) each time the driver looks at them.
    ``threads`` (the train flag --threads) may only repeat the thread count of ``cpus_per_job``.

    Returns one JobResult per image, in the order of the images. Ctrl-C (or SIGTERM) asks every running
    job to stop at a checkpoint, waits for them, writes the summary and raises KeyboardInterrupt; a
    second Ctrl-C kills the workers at once.
    """
    _signal_seen.clear()
    if progress not in PROGRESS_KINDS:
        raise UserError(f"--progress {progress!r} is not one of {', '.join(PROGRESS_KINDS)}; pick one of them")
    if samples < 0 or eval_samples < 2 or retries < 0 or checkpoint_every < 1:
        raise UserError("--samples and --retries must be 0 or more, --checkpoint_every at least 1 and the "
                        "evaluation's samples at least 2")
    if not cpus_per_job > 0 or gpus_per_job < 0:
        raise UserError(f"--cpus_per_job must be above 0 and --gpus_per_job 0 or more, not {cpus_per_job} and "
                        f"{gpus_per_job}")
    check_threads(threads, cpus_per_job)
    if gpus_per_job > 1 and gpus_per_job != int(gpus_per_job):
        raise UserError(f"--gpus_per_job {gpus_per_job}: above 1, give a whole number of GPUs")
    if gpus_per_job == 0 and str(device).startswith("cuda"):
        raise UserError("--device cuda needs --gpus_per_job (e.g. 1, or 0.25 to pack four jobs on a GPU): Ray "
                        "gives a job a GPU only when it asks for one")
    address = address or os.environ.get("RAY_ADDRESS") or None
    ray = import_ray(local=address is None)  # missing: one line saying how to install it, before anything else
    jobs = collect_jobs(images, settings)
    check_settings(jobs)
    root = Path(out_root).resolve()
    try:
        (root / STATE_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out_root {root} ({exc.strerror or exc}); choose another folder") from None
    t0 = time.perf_counter()
    common = dict(samples=samples, evaluate=evaluate, eval_samples=eval_samples, cpus_per_job=cpus_per_job,
                  gpus_per_job=gpus_per_job, device=device, checkpoint_every=checkpoint_every, force=force)
    results, todo = plan(jobs, root, samples, evaluate, retry_failed, force)
    view = _View(progress, jobs)
    for r in results.values():
        view.result(r)
    stopped = False
    try:
        if todo:  # Ray only when there is work: a rerun of a finished batch starts nothing
            own_ray = not ray.is_initialized()
            if own_ray:
                view.say(f"joining the Ray cluster at {address}..." if address else
                         "starting Ray (it takes a few seconds; the jobs wait for it)...")
                restore = sigterm_as_interrupt(_signal_seen)
                try:
                    start_ray(num_cpus=num_cpus, address=address)
                except KeyboardInterrupt:  # Ctrl-C or SIGTERM while Ray starts: nothing was trained yet
                    ray.shutdown()
                    raise Stopped("stopped while Ray was starting; nothing was trained: run the same command again "
                                  "to start", _signal_seen.pop()) from None
                finally:
                    restore()
            try:
                check_resources(ray, cpus_per_job, gpus_per_job, address)
                check_shared(ray, root)
                stopped = _drive(ray, todo, root, common, retries, view, on_update, results)
            finally:
                if own_ray:
                    ray.shutdown()
    finally:
        view.close()
    ordered = [on_disk(root, j, results[j.name], samples, evaluate) for j in jobs if j.name in results]
    if len(ordered) == len(jobs):
        write_summary(root, ordered, time.perf_counter() - t0)
    if stopped:
        raise Stopped("interrupted", _signal_seen.pop())
    return ordered


def dry_run(images: Any, out_root: str | os.PathLike, *, device: str = "auto", gpus_per_job: float = 0,
            cpus_per_job: float = 1, threads: int = 0, **settings: Any) -> list[tuple[Job, Any]]:
    """(job, prepared run) of every image, as ``run`` would train it (consingan.plan.Plan: the settings
    config.json would hold, the stage sizes, the estimate; each job's torch threads are its
    ``cpus_per_job``, as in ``run``). Nothing is written and Ray is not started."""
    import torch

    check_threads(threads, cpus_per_job)
    jobs = collect_jobs(images, settings)
    check_settings(jobs)
    if device == "auto":  # as a job decides: a GPU only when it asks for one
        device = "cuda" if gpus_per_job > 0 and torch.cuda.is_available() else "cpu"
    root = Path(out_root).resolve()
    return [(job, job_plan(job, device, root, job_threads(cpus_per_job))) for job in jobs]


def on_disk(root: Path, job: Job, result: JobResult, samples: int, evaluate: bool) -> JobResult:
    """``result`` as the disk says now: a job that failed here (say, its folder was in use by another
    batch) but whose model, samples and metrics are all there, finished by that run, is done."""
    if result.status != FAILED or foreign(root, job) or not finished(job_dir(root, job.name), samples, evaluate):
        return result
    done = _result_from_disk(root, job, DONE, read_record(root, job.name))
    done.error = None
    return done


def plan(jobs: Sequence[Job], root: Path, samples: int, evaluate: bool, retry_failed: bool,
         force: bool) -> tuple[dict[str, JobResult], list[Job]]:
    """What is left to do, from the disk: ({name: result} of the jobs with nothing to do, jobs to run).
    Finished ones are skipped, failed ones kept unless ``retry_failed``; ``force`` runs everything."""
    results: dict[str, JobResult] = {}
    todo: list[Job] = []
    for job in jobs:
        record = read_record(root, job.name)
        out = job_dir(root, job.name)
        problem = foreign(root, job)
        if problem:  # never touched, --force or not
            results[job.name] = JobResult(job.image, job.name, FAILED, _refusal(problem))
        elif not force and finished(out, samples, evaluate):
            results[job.name] = _result_from_disk(root, job, SKIPPED, record)
        elif not force and not retry_failed and record.get("status") == FAILED:
            results[job.name] = _result_from_disk(root, job, FAILED, record, (
                f"{record.get('error')} (failed before; pass --retry_failed to try again)"))
        else:
            todo.append(job)
    return results, todo


def _drive(ray, todo: Sequence[Job], root: Path, common: dict[str, Any], retries: int, view: "_View",
           on_update, results: dict[str, JobResult]) -> bool:
    """Run ``todo`` on Ray, showing their states, until all ended; their results go into ``results``.
    Returns whether the batch was stopped (Ctrl-C or SIGTERM)."""
    batch_id = uuid.uuid4().hex
    monitor = _make_monitor_class(ray).remote()
    task = ray.remote(run_job).options(num_cpus=common["cpus_per_job"], num_gpus=common["gpus_per_job"],
                                       max_retries=retries, retry_exceptions=False)
    pending = {task.remote({**common, "root": str(root), "name": j.name, "image": j.image, "settings": j.settings,
                            "batch": batch_id}, monitor): j for j in todo}
    stopping = killed = False
    restore = sigterm_as_interrupt(_signal_seen)  # SIGTERM on the driver stops the batch as Ctrl-C does
    try:
        while pending:
            try:
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.25, fetch_local=True)
                for ref in ready:
                    job = pending.pop(ref)
                    results[job.name] = _collect(ray, ref, job, root, killed)
                    view.result(results[job.name])
                states = ray.get(monitor.snapshot.remote(), timeout=30)
                for name, state in states.items():
                    if name not in results:
                        view.update(name, state)
                if on_update is not None:
                    on_update(states)
                view.refresh()
            except KeyboardInterrupt:
                if stopping:  # the second Ctrl-C: kill the workers now
                    killed = True
                    for ref in pending:
                        ray.cancel(ref, force=True)
                    continue
                stopping = True
                print("stopping: every running job writes a checkpoint and ends (Ctrl-C again to kill them at once)",
                      file=sys.stderr, flush=True)
                stop_path(root, batch_id).touch()
    finally:
        restore()
        stop_path(root, batch_id).unlink(missing_ok=True)
    ray.kill(monitor)
    return stopping


def _collect(ray, ref, job: Job, root: Path, killed: bool) -> JobResult:
    try:
        return JobResult(**ray.get(ref))
    except Exception as exc:  # noqa: BLE001 - the task itself could not run: its worker died every try
        record = read_record(root, job.name)
        status = INTERRUPTED if killed else FAILED
        why = "killed by a second Ctrl-C" if killed else (
            f"its worker died {int(record.get('attempts', 1))} time(s) ({type(exc).__name__}); the checkpoint "
            "is kept, run the batch again to resume")
        if record.get("status") == "running":
            write_record(root, job.name, {**record, "status": status, "error": why})
        return _result_from_disk(root, job, status, record, why)


class Stopped(KeyboardInterrupt):
    """The batch stopped on Ctrl-C or SIGTERM (``signal``: signal.SIGINT or signal.SIGTERM); ``exit_code`` is
    the shell's 128 + signal number. The message says what happened."""

    def __init__(self, message: str, sig: int = signal.SIGINT):
        super().__init__(message)
        self.signal = sig
        self.exit_code = 128 + int(sig)


class _Signals(list):
    def pop(self) -> int:  # the last signal that stopped the batch (SIGTERM handler), else Ctrl-C's SIGINT
        return super().pop() if self else signal.SIGINT


_signal_seen = _Signals()


def check_resources(ray, cpus_per_job: float, gpus_per_job: float, address: str | None = None) -> None:
    """Refuse a job size that no node of the cluster can give (Ray would queue the jobs forever, silently)."""
    try:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    except Exception:  # noqa: BLE001 - Ray's internals moved: let the jobs wait as Ray decides
        return
    if not nodes or any(r.get("CPU", 0) >= cpus_per_job and r.get("GPU", 0) >= gpus_per_job for r in nodes):
        return
    cpus = max(r.get("CPU", 0) for r in nodes)
    gpus = max(r.get("GPU", 0) for r in nodes)
    where = "this machine's Ray" if address is None else f"the Ray cluster at {address}"
    raise UserError(f"--cpus_per_job {cpus_per_job:g} and --gpus_per_job {gpus_per_job:g} ask for more than any node of "
                    f"{where} has (at most {cpus:g} CPUs and {gpus:g} GPUs); lower them (no job was started)")


SUMMARY_COLUMNS = ("image", "name", "status", "error", "seconds", "device", "node", "seed", "attempts", "model_dir")


def write_summary(root: Path, results: Sequence[JobResult], seconds: float) -> None:
    """out_root/summary.json (every result, metrics as written) and summary.csv (one row per image, the
    scalar metrics as columns)."""
    from .storage.outputs import write_bytes

    data = {"total": total_counts(results), "seconds": round(seconds, 3), "jobs": [r.to_dict() for r in results]}
    write_bytes((json.dumps(data, indent=2, default=str) + "\n").encode("utf-8"), root / SUMMARY_JSON)
    metric_keys: list[str] = []  # the scalar metrics, as columns (metrics.json's own seed is not the model's)
    for r in results:
        for k, v in (r.metrics or {}).items():
            if isinstance(v, (int, float, str, type(None))) and k not in metric_keys and k not in SUMMARY_COLUMNS:
                metric_keys.append(k)
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*SUMMARY_COLUMNS, *metric_keys])
    for r in results:
        d = r.to_dict()
        d["seconds"] = round(r.seconds, 1)
        writer.writerow([("" if d[c] is None else d[c]) for c in SUMMARY_COLUMNS]
                        + [("" if (r.metrics or {}).get(k) is None else r.metrics[k]) for k in metric_keys])
    write_bytes(buf.getvalue().encode("utf-8"), root / SUMMARY_CSV)


def total_counts(results: Iterable[JobResult]) -> dict[str, int]:
    counts = {DONE: 0, SKIPPED: 0, FAILED: 0, INTERRUPTED: 0}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts


def total_line(results: Sequence[JobResult], out_root: str | os.PathLike) -> str:
    """``8 images: 6 done, 1 skipped (finished before), 1 failed, 0 interrupted; summary: ROOT/summary.csv``"""
    c = total_counts(results)
    return (f"{len(results)} images: {c[DONE]} done, {c[SKIPPED]} skipped (finished before), {c[FAILED]} failed, "
            f"{c[INTERRUPTED]} interrupted; summary: {Path(out_root) / SUMMARY_CSV}")
