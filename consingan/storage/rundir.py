"""The run directory: the one place that knows its file names, the config.json schema, the
checkpoint and model files, and the never-overwrite rule.

    <run>/config.json       the settings, where the image came from, the device (+ naive image, origin)
    <run>/log.jsonl         one line per log point: t, stage, iter, losses, lr_g; and one line per
                            stage end: t, stage, event "stage_end", stage_s (the stage's wall time)
    <run>/<stage>/*.png     real, fake_iter_N, reconstruction_iter_N, reconstruction, samples_grid, previews
    <run>/checkpoint.pt     while training: the model so far + the training state (its own record)
    <run>/model.pt          when training finished (the checkpoint is then removed)
    <run>/Evaluation/       what generate and evaluate write by default: random_samples*/ (the samples),
                            reconstruction.png, real_image.png, metrics.json, animations; <stem>/ for the
                            results of one naive image or painting
    <run>/Web/<kind>_<time>/  what the web app makes from the model (one folder per request)

``RunDir.writer()`` is the callbacks object the engine writes through; a full disk becomes TrainingStopped with
what was kept and how to go on.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import Config
from ..core.callbacks import Callbacks
from ..core.engine import TrainingStopped
from ..core.model import Model
from ..core.numbering import position_text
from ..errors import UserError
from .image_files import read_image, save_image
from .model_file import MODEL_FILE, atomic_save, from_record, read_record, save_model, to_record
from .outputs import NoSpace, claim_dir, clean_temp_files, is_no_space, write_bytes
from .paths import inside

CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = "consingan-checkpoint"
# config.json keys besides the Config fields
INPUT_KEY = "input_name"  # the training image's path ("array" for one given in memory)
DEVICE_KEY = "device"
NAIVE_KEY = "naive_img"  # the naive image the run was started with (harmonization/editing previews)
FINE_TUNED_KEY = "fine_tuned_from"  # a fine-tuning run: the model it started from
PRESET_KEY = "preset"  # the preset the settings started from (a name of config.PRESETS)
# What is made from a trained model
EVALUATION_DIR = "Evaluation"
METRICS_FILE = "metrics.json"
RESULTS_DIR = "Web"


def samples_dir_name(scale_h: float = 1.0, scale_w: float = 1.0, start_scale: int = 0) -> str:
    """random_samples, random_samples_scale_h_<H>_scale_w_<W>, ..._start_scale_<S>: one folder per setting."""
    name = "random_samples" if (scale_h, scale_w) == (1.0, 1.0) else (
        f"random_samples_scale_h_{scale_h:g}_scale_w_{scale_w:g}")
    return name + (f"_start_scale_{start_scale}" if start_scale else "")
THREADS_KEY = "threads"  # the torch CPU threads the run trained with (consingan/process.py: the thread rule)


def resume_command(run: Path) -> str:
    return f"python main_train.py --resume {run}"


def run_info(config: Config, input_name: str | None, device: torch.device | str, naive: Any = None,
             **extra: Any) -> dict[str, Any]:
    """config.json's contents: the settings, where the image came from, ``extra`` keys, the device,
    and the naive image's path (one given as a file)."""
    info = {**config.to_dict(), INPUT_KEY: input_name, **extra, DEVICE_KEY: str(device)}
    if isinstance(naive, (str, os.PathLike)):
        info[NAIVE_KEY] = Path(naive).as_posix()
    return info


def check_new_run_dir(path: Path, flag: str = "--out_dir") -> None:
    """Refuse, before any work, a model directory named by ``flag`` that already holds files, saying
    exactly what to pass instead: another ``flag`` (naming a free one), ``--resume`` for an interrupted
    run, or the generate command for a finished model. A named folder is never swapped for another in
    silence: the commands that follow (generate, evaluate) read the folder the user named."""
    from .outputs import _holds_files, free_folder

    if not _holds_files(path):
        return
    fresh = free_folder(path)
    if not path.is_dir():
        raise UserError(f"{flag} {path} already exists and is not a folder; pass another {flag} "
                        f"({fresh} is free; nothing was overwritten)")
    other = f"to train again, pass another {flag} ({fresh} is free)"
    if (path / MODEL_FILE).exists():
        raise UserError(f"{flag} {path} already exists and holds a trained model; {other}, or use this one: "
                        f"python main_generate.py --model_dir {path} (nothing was overwritten)")
    if (path / CHECKPOINT_FILE).exists():
        raise UserError(f"{flag} {path} already exists and holds an interrupted run; go on with it: {resume_command(path)}, or "
                        f"{other} (nothing was overwritten)")
    raise UserError(f"{flag} {path} already exists and is not empty; {other} (nothing was overwritten)")


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.written: tuple[int, int] | None = None  # (stage, iteration) of the checkpoint this run wrote last

    # --- files ----------------------------------------------------------------------------------
    @property
    def checkpoint_file(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    def evaluation_dir(self, stem: str | None = None) -> Path:
        """Where generate and evaluate write (``stem``: the folder of one naive image's or painting's results)."""
        return self.path / EVALUATION_DIR / (stem or "")

    @property
    def samples_dir(self) -> Path:
        """The samples generate (and the batch runner) write at the training size."""
        return self.evaluation_dir() / samples_dir_name()

    @property
    def metrics_file(self) -> Path:
        return self.evaluation_dir() / METRICS_FILE

    @property
    def results_dir(self) -> Path:
        """The web app's results: one folder per request below it."""
        return self.path / RESULTS_DIR

    @contextmanager
    def claimed(self, fresh: bool, what: str = "--out_dir") -> Iterator["RunDir"]:
        """Hold the directory for this run (an exclusive lock; ``fresh``: it must be new or empty)."""
        with claim_dir(self.path, what, fresh=fresh):
            yield self

    # --- config.json ----------------------------------------------------------------------------
    def write_info(self, config: Config, input_name: str | None, device: torch.device | str,
                   naive: Any = None, **extra: Any) -> None:
        """The run's readable config.json: the settings, where the image came from, the device, and
        the naive image's path (a resumed run reads it back for its previews and stage-0 input)."""
        info = run_info(config, input_name, device, naive, **extra)
        write_bytes((json.dumps(info, indent=2) + "\n").encode("utf-8"), self.config_file)

    def info(self) -> dict[str, Any]:
        """config.json ({} when there is none); a damaged one is a UserError."""
        path = self.config_file
        if not path.is_file():
            return {}
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:  # not JSON, or not UTF-8
            info = f"not valid JSON ({str(exc).splitlines()[0]})"
        if not isinstance(info, dict):
            raise UserError(f"{path} is damaged: {info if isinstance(info, str) else 'not a table of settings'}; "
                            "repair or restore it, or train again (a resumed run reads its naive image from it)")
        return info

    def naive_image(self) -> torch.Tensor | None:
        path = self.info().get(NAIVE_KEY)
        return None if path is None else read_image(path, "naive image of the run")

    # --- checkpoint and model -------------------------------------------------------------------
    def write_checkpoint(self, model: Model, state: dict[str, Any]) -> Path:
        record = to_record(model)
        record["format"] = CHECKPOINT_FORMAT
        record["train"] = state
        with self.no_space():
            atomic_save(record, self.checkpoint_file)
        self.written = (int(state["stage"]), int(state["iteration"]) if state["stage_ready"] else 0)
        return self.checkpoint_file

    def read_checkpoint(self) -> tuple[Model, dict[str, Any]]:
        """(model so far, training state) of an interrupted run."""
        if not self.path.is_dir() or not self.checkpoint_file.exists():
            if self.model_file.exists():
                raise UserError(f"{self.path} holds a finished model and no checkpoint: nothing to resume")
            raise UserError(f"{self.path} holds no checkpoint ({CHECKPOINT_FILE}); give the directory of an "
                            "interrupted training run")
        record = read_record(self.checkpoint_file, kind=CHECKPOINT_FORMAT)
        return from_record(record, device="cpu", path=self.checkpoint_file), record.get("train")

    def checkpoint_config(self) -> Config:
        if not self.checkpoint_file.exists():
            self.read_checkpoint()  # says what is wrong
        return Config.from_dict(read_record(self.checkpoint_file, kind=CHECKPOINT_FORMAT)["config"])

    def finish(self, model: Model) -> None:
        """Write model.pt, then drop the checkpoint it replaces and any temporary file a killed write
        left. A full disk keeps the checkpoint and says how to go on."""
        with self.no_space(finishing=True):
            save_model(model, self.path)
        self.checkpoint_file.unlink(missing_ok=True)
        clean_temp_files(self.path)

    def clean(self) -> None:
        clean_temp_files(self.path)

    @contextmanager
    def no_space(self, finishing: bool = False) -> Iterator[None]:
        """A full disk inside the block: TrainingStopped saying what was kept and how to go on."""
        try:
            yield
        except (OSError, UserError, RuntimeError) as exc:
            if not is_no_space(exc):
                raise
            where = exc.where if isinstance(exc, NoSpace) else NoSpace(getattr(exc, "filename", None) or self.path).where
            if not self.checkpoint_file.exists():
                stop = TrainingStopped(f"no space left on {where}; no checkpoint was written yet, so there is "
                                       "nothing to resume: free space and train again", None, resume_hint=False)
            else:
                kept = "the last checkpoint" if self.written is None or finishing else \
                    f"the checkpoint of {position_text(*self.written, folder=True)}"
                stop = TrainingStopped(f"no space left on {where}; kept {kept} ({self.checkpoint_file}), "
                                       f"free space and resume with: {resume_command(self.path)}", self.checkpoint_file,
                                       resume_hint=False)
            stop.no_space = True  # a batch records it as interrupted: a plain rerun goes on once there is space
            raise stop from None

    def writer(self) -> "RunDirWriter":
        return RunDirWriter(self)


def last_time(path: Path) -> float:
    """The ``t`` of the last line of a log.jsonl (0.0 without one): where a resumed run's clock goes on."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError):
        return 0.0
    for line in reversed(lines):
        try:
            t = json.loads(line).get("t")
        except (ValueError, AttributeError):
            continue
        if isinstance(t, (int, float)):
            return float(t)
    return 0.0


def _open_log(path: Path):
    """log.jsonl for appending, never through a link (a crafted run folder's log.jsonl pointing elsewhere)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    return os.fdopen(fd, "a", encoding="utf-8")


class RunDirWriter(Callbacks):
    """The engine's outputs into a run directory: log.jsonl, the stage images, checkpoints.

    Every log.jsonl line has ``t``, the seconds of training since the run started (a resumed run goes
    on from the last line's ``t``; the time it was stopped does not count), and each stage's end is a
    line ``{"t", "stage", "event": "stage_end", "stage_s"}`` with the stage's wall time."""

    def __init__(self, run: RunDir, clock=time.perf_counter):
        self.run = run
        self.log = None
        self.clock = clock
        self.t0 = clock()
        self.stage_t0 = self.t0

    def on_run_start(self, num_stages: int) -> None:
        self.run.path.mkdir(parents=True, exist_ok=True)
        offset = last_time(self.run.path / LOG_FILE)
        with self.run.no_space():
            self.log = _open_log(self.run.path / LOG_FILE)
        self.t0 = self.stage_t0 = self.clock() - offset

    def _write(self, row: dict) -> None:
        if self.log is not None:
            with self.run.no_space():
                self.log.write(json.dumps({"t": round(self.clock() - self.t0, 3), **row}) + "\n")
                self.log.flush()

    def on_stage_start(self, stage, num_stages, niter, first_iter) -> None:
        self.stage_t0 = self.clock()

    def on_iteration(self, stage, iteration, logged) -> None:
        if logged:
            self._write({"stage": stage, "iter": iteration, **logged})

    def on_stage_end(self, stage, model) -> None:
        self._write({"stage": stage, "event": "stage_end", "stage_s": round(self.clock() - self.stage_t0, 3)})

    def on_image(self, stage, name, image) -> None:
        with self.run.no_space():  # a stage folder that is a link out of the run is refused, not written through
            save_image(image, inside(self.run.path, self.run.path / str(stage) / name, "stage image"))

    def write_checkpoint(self, snapshot) -> None:
        self.run.write_checkpoint(*snapshot())

    def on_run_end(self, model) -> None:
        self.close()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
