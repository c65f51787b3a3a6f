"""Training from the web app: one run at a time on a worker thread, the others wait in a queue.

A job is a training run, a resumed run or a fine-tuning run. While it runs, its callbacks (the
engine's interface, consingan/core/callbacks.py) keep a snapshot that the page polls: stage,
iteration, time left, the latest samples and reconstruction. Stop sets the job's ``threading.Event``;
the engine finishes the iteration, writes a checkpoint and raises ``TrainingStopped``, and the run
can be resumed from the Train tab (or with ``python main_train.py --resume DIR``).
"""
from __future__ import annotations

import itertools
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..callbacks import Callbacks
from ..errors import UserError

QUEUED, RUNNING, DONE, STOPPED, FAILED = "queued", "running", "done", "stopped", "failed"
MAX_KEPT = 20  # finished jobs remembered for the page


@dataclass
class Job:
    id: int
    kind: str  # "train", "resume" or "fine-tune"
    title: str
    out_dir: Path
    run: Callable[["Job"], Any]  # does the work with job.callbacks and job.stop; returns the model
    stop: threading.Event = field(default_factory=threading.Event)
    iterating: threading.Event = field(default_factory=threading.Event)  # set at the first iteration
    state: str = QUEUED
    message: str = ""
    stage: int = 0
    num_stages: int = 0
    iteration: int = 0
    niter: int = 0
    losses: dict[str, float] = field(default_factory=dict)
    seconds_left: float | None = None
    started: float | None = None
    ended: float | None = None
    samples: np.ndarray | None = None  # HxWx3 uint8, the latest stage's samples grid (or a sample)
    reconstruction: np.ndarray | None = None
    result: np.ndarray | None = None  # fine-tuning: the harmonized naive image after the run
    version: int = 0  # counts changes of the images
    timer: Any = None  # core.cost.TimeLeft, when the job's costs are known
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> dict[str, Any]:
        """What the page shows (plain values; the images separately)."""
        with self.lock:
            return {"id": self.id, "kind": self.kind, "title": self.title, "state": self.state,
                    "message": self.message, "out_dir": str(self.out_dir), "stage": self.stage,
                    "num_stages": self.num_stages, "iteration": self.iteration, "niter": self.niter,
                    "losses": dict(self.losses), "seconds_left": self.seconds_left,
                    "elapsed": (self.ended or time.time()) - self.started if self.started else 0.0}


class JobCallbacks(Callbacks):
    """Keeps a job's snapshot up to date and stops the run when asked."""

    def __init__(self, job: Job):
        self.job = job

    def on_run_start(self, num_stages):
        with self.job.lock:
            self.job.num_stages = num_stages

    def on_stage_start(self, stage, num_stages, niter, first_iter):
        with self.job.lock:
            self.job.stage, self.job.num_stages, self.job.niter, self.job.iteration = stage, num_stages, niter, first_iter
        if self.job.timer is not None:
            self.job.timer.update(stage, first_iter)

    def on_iteration(self, stage, iteration, losses):
        job = self.job
        left = None
        if job.timer is not None:
            job.timer.update(stage, iteration)
            left = job.timer.seconds(stage, iteration)
        with job.lock:
            job.stage, job.iteration, job.seconds_left = stage, iteration, left
            if losses:
                job.losses = {k: float(v) for k, v in losses.items()}
        job.iterating.set()

    def on_image(self, stage, name, image):
        from ..core.image import to_uint8

        if name.startswith(("samples_grid", "fake_iter_")):
            with self.job.lock:
                self.job.samples = to_uint8(image[0] if image.dim() == 4 else image)
                self.job.version += 1
        elif name.startswith("reconstruction"):
            with self.job.lock:
                self.job.reconstruction = to_uint8(image[0] if image.dim() == 4 else image)
                self.job.version += 1

    def should_stop(self):
        return self.job.stop.is_set()


class TrainingQueue:
    """Runs jobs one at a time, in the order they came, on one worker thread."""

    def __init__(self):
        self._jobs: dict[int, Job] = {}
        self._waiting: deque[Job] = deque()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._changed = threading.Condition(self._lock)
        self._worker = threading.Thread(target=self._work, name="consingan-training", daemon=True)
        self._worker.start()
        self.finished_count = 0  # how many jobs ended (the page refreshes its model lists when it grows)

    def submit(self, kind: str, title: str, out_dir: Path, run: Callable[[Job], Any], timer=None) -> Job:
        with self._lock:
            busy = [j for j in self._jobs.values() if j.state in (QUEUED, RUNNING)]
            if any(Path(j.out_dir) == Path(out_dir) for j in busy):
                raise UserError(f"{out_dir} is already being trained by job {next(j.id for j in busy if Path(j.out_dir) == Path(out_dir))}; "
                                "wait for it to end")
            job = Job(next(self._ids), kind, title, Path(out_dir), run, timer=timer)
            job.message = "waiting for the running job to end" if busy else "starting"
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._forget_old()
            self._wake.notify_all()
            return job

    def _forget_old(self) -> None:
        ended = [j for j in self._jobs.values() if j.state in (DONE, STOPPED, FAILED)]
        for j in ended[:-MAX_KEPT]:
            del self._jobs[j.id]

    def get(self, job_id: int | str | None) -> Job:
        try:
            key = int(job_id)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise UserError(f"no training job {job_id!r}; start one in the Train tab") from None
        with self._lock:
            job = self._jobs.get(key)
        if job is None:
            raise UserError(f"no training job {job_id}; start one in the Train tab")
        return job

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def latest(self) -> Job | None:
        """The running job, else the last one submitted."""
        with self._lock:
            running = [j for j in self._jobs.values() if j.state == RUNNING]
            return running[0] if running else (list(self._jobs.values())[-1] if self._jobs else None)

    def position(self, job: Job) -> int:
        """1 for the next job to run, 0 when the job is not waiting."""
        with self._lock:
            return next((i + 1 for i, j in enumerate(self._waiting) if j is job), 0)

    def stop(self, job_id: int | str | None) -> Job:
        job = self.get(job_id)
        with self._lock:
            if job.state == QUEUED:
                self._waiting.remove(job)
                job.state, job.message, job.ended = STOPPED, "cancelled before it started", time.time()
                self.finished_count += 1
                self._changed.notify_all()
                return job
        job.stop.set()
        with job.lock:
            if job.state == RUNNING:
                job.message = "stopping after this iteration (a checkpoint is written)"
        return job

    def wait(self, job_id: int | str | None, timeout: float, until: str = "end") -> Job:
        """Block until the job ended (``until`` "end") or ran an iteration ("iterating"), or ``timeout``
        seconds passed; returns the job either way."""
        job = self.get(job_id)
        deadline = time.monotonic() + timeout
        if until == "iterating":
            while not job.iterating.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
                if job.state not in (QUEUED, RUNNING) or time.monotonic() >= deadline:
                    break
            return job
        with self._lock:
            while job.state in (QUEUED, RUNNING):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
        return job

    def wait_for_change(self, timeout: float) -> None:
        with self._lock:
            self._changed.wait(timeout)

    def shutdown(self, timeout: float) -> list[str]:
        """The app ends: waiting jobs are dropped, the running one stops at a checkpoint (waiting up to
        ``timeout`` seconds for it). Returns a line per job that can be resumed or did not stop."""
        with self._lock:
            dropped = list(self._waiting)
            self._waiting.clear()
            running = [j for j in self._jobs.values() if j.state == RUNNING]
        for job in running:
            job.stop.set()
        lines = [f"job {j.id} ({j.title}) was waiting and did not start" for j in dropped]
        for job in running:
            self.wait(job.id, timeout)
            if job.state == RUNNING:
                lines.append(f"job {job.id} ({job.title}) did not stop within {timeout:g} s; its last checkpoint "
                             f"in {job.out_dir} can be resumed")
            elif job.state == STOPPED:
                lines.append(f"job {job.id} stopped: {job.message}")
        return lines

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting:
                    self._wake.wait()
                job = self._waiting.popleft()
                job.state, job.started, job.message = RUNNING, time.time(), "training"
                for j in self._waiting:
                    j.message = "waiting for the running job to end"
                self._changed.notify_all()
            self._run(job)
            with self._lock:
                job.ended = time.time()
                job.iterating.set()
                self.finished_count += 1
                self._changed.notify_all()

    @staticmethod
    def _run(job: Job) -> None:
        from ..core.engine import TrainingStopped
        from .errors import message_of

        try:
            job.run(job)
            state, message = DONE, f"finished: {job.out_dir}"
        except TrainingStopped as stop:
            where = f"; resume it from the Train tab ({job.out_dir})" if stop.checkpoint is not None and \
                Path(stop.checkpoint).exists() else ""
            state, message = STOPPED, f"{stop}{where}"
        except BaseException as exc:  # noqa: BLE001 - a failed job must not take the worker down
            text = message_of(exc)
            if text is None:
                traceback.print_exc()
                text = f"internal error: {type(exc).__name__}: {exc} (the server's log has the traceback)"
            state, message = FAILED, text
        with job.lock:
            job.state, job.message, job.seconds_left = state, message, None if state != DONE else 0.0
