"""Callbacks for the training engine: the interface (``Callbacks``, from core/callbacks.py) and the
ready-made ones the API attaches: stage previews and Ctrl-C/SIGTERM handling. Progress bars are in
progress.py, the run directory's writer in storage/rundir.py.

A callbacks object of your own::

    class Watch(consingan.callbacks.Callbacks):
        def on_iteration(self, stage, iteration, logged):
            if logged:
                print(stage, iteration, logged["loss_g"])

    consingan.train("rocket.png", niter=100, callbacks=[Watch()], stop=threading.Event())
"""
from __future__ import annotations

import signal
import threading
from typing import Callable

import torch

from . import signals
from .core.callbacks import CallbackList, Callbacks
from .core.image import grid
from .core.model import Model
from .tasks.sampling import generate, reconstruct

__all__ = ["Callbacks", "CallbackList", "StagePreviews", "StopFlag", "StopOnSignals"]

GRID_SAMPLES = 10  # samples in each stage's samples_grid.png

# preview(model so far) -> {file name: image}, made at each stage's end (harmonization/editing: the
# result on the naive image given with --naive_img)
Preview = Callable[[Model], dict[str, torch.Tensor]]


class StagePreviews(Callbacks):
    """At each stage's end, the stage's reconstruction, a grid of samples and the previews, handed to
    ``target.on_image`` (the run directory's writer). Sampling uses local generators: training's
    draws are untouched."""

    def __init__(self, target: Callbacks, preview: Preview | None = None):
        self.target, self.preview = target, preview

    def on_stage_end(self, stage: int, model: Model) -> None:
        images = {"reconstruction.png": reconstruct(model),
                  "samples_grid.png": grid(generate(model, GRID_SAMPLES, seed=stage), columns=5)}
        images.update(self.preview(model) if self.preview else {})
        for name, image in images.items():
            self.target.on_image(stage, name, image)


class StopFlag(Callbacks):
    """Stops the run when ``event`` (a threading.Event) is set, from any thread."""

    def __init__(self, event: threading.Event):
        self.event = event

    def should_stop(self) -> bool:
        return self.event.is_set()


class StopOnSignals(Callbacks):
    """Ctrl-C (SIGINT) and SIGTERM (what batch schedulers, containers and cluster managers send) stop
    the run at a checkpoint; a second signal stops at once (KeyboardInterrupt, or exit status 143).
    Only on the main thread, between ``install()`` and ``restore()``; ``signum`` is the signal seen."""

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict[int, object] = {}

    def install(self) -> "StopOnSignals":
        self.previous = signals.install(self._handler, signals.STOP_SIGNALS)
        return self

    def restore(self) -> None:
        signals.restore(self.previous)
        self.previous = {}

    def _handler(self, signum, frame) -> None:
        if self.signum is not None:
            self.restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.signum = signum

    def should_stop(self) -> bool:
        return self.signum is not None

    def exit_code(self) -> int:
        return 128 + self.signum if self.signum else 130

    def __enter__(self) -> "StopOnSignals":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()
