"""What the engine tells the world while it trains, and how the world stops it.

The engine does no file I/O and handles no signals: the run directory, progress bars, previews and
Ctrl-C/SIGTERM are callbacks that the API and the command line attach (consingan/callbacks.py,
storage/rundir.py). A callbacks object overrides what it needs; every method here does nothing.
All of them run on the training thread, in the order the callbacks were given.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import torch

if TYPE_CHECKING:
    from .model import Model


class Callbacks:
    def on_run_start(self, num_stages: int) -> None:
        """Training starts (or goes on, after a resume) on a model of ``num_stages`` stages."""

    def on_stage_start(self, stage: int, num_stages: int, niter: int, first_iter: int) -> None:
        """Stage ``stage`` (0-based) starts at iteration ``first_iter`` (non-zero after a resume)."""

    def on_iteration(self, stage: int, iteration: int, logged: Mapping[str, float] | None) -> None:
        """After every iteration (``iteration`` counts completed ones, 1..niter). ``logged``: the
        losses and ``lr_g`` at a log point (at least 20 per stage), else None: reading them waits for
        the device, so they are read only there."""

    def on_image(self, stage: int, name: str, image: torch.Tensor) -> None:
        """An image of the stage (1x3xHxW in [-1, 1]): real.png, fake_iter_N.png,
        reconstruction_iter_N.png, and at the stage's end whatever the stage-end callbacks make."""

    def write_checkpoint(self, snapshot: Callable[[], tuple["Model", dict[str, Any]]]) -> None:
        """A checkpoint is due: ``snapshot()`` gives the model so far and the training state (a
        record of plain values and tensors). The engine calls this only when every loss so far was
        finite. The run directory writes it; other callbacks usually ignore it."""

    def on_checkpoint(self, stage: int, iteration: int) -> None:
        """After every callback's write_checkpoint."""

    def on_stage_end(self, stage: int, model: "Model") -> None:
        """Stage ``stage`` finished; ``model`` holds the stages so far (it shares the engine's
        networks: sample from it, do not train it)."""

    def on_run_end(self, model: "Model") -> None:
        """The last stage finished; ``model`` is the result."""

    def should_stop(self) -> bool:
        """Polled after every iteration: True stops the run at a checkpoint (TrainingStopped)."""
        return False


class CallbackList(Callbacks):
    """Several callbacks as one, called in order."""

    def __init__(self, callbacks: Iterable[Callbacks] = ()):
        self.items = [c for c in callbacks if c is not None]

    def on_run_start(self, num_stages):
        for c in self.items:
            c.on_run_start(num_stages)

    def on_stage_start(self, stage, num_stages, niter, first_iter):
        for c in self.items:
            c.on_stage_start(stage, num_stages, niter, first_iter)

    def on_iteration(self, stage, iteration, logged):
        for c in self.items:
            c.on_iteration(stage, iteration, logged)

    def on_image(self, stage, name, image):
        for c in self.items:
            c.on_image(stage, name, image)

    def write_checkpoint(self, snapshot):
        for c in self.items:
            c.write_checkpoint(snapshot)

    def on_checkpoint(self, stage, iteration):
        for c in self.items:
            c.on_checkpoint(stage, iteration)

    def on_stage_end(self, stage, model):
        for c in self.items:
            c.on_stage_end(stage, model)

    def on_run_end(self, model):
        for c in self.items:
            c.on_run_end(model)

    def should_stop(self):
        return any(c.should_stop() for c in self.items)
