"""Progress: of training (callbacks for the engine: a rich bar on a terminal, plain lines otherwise),
and of items written one batch at a time (count_progress)."""
from __future__ import annotations

import sys
import time
from typing import Mapping

from .core.callbacks import Callbacks
from .core.numbering import iteration_text, position_text, stage_text


def _fmt_losses(losses: Mapping[str, float] | None) -> str:
    if not losses:
        return ""
    return " ".join(f"{k}={v:.4g}" for k, v in losses.items() if k != "lr_g")


class StageProgress(Callbacks):
    """The engine's events as start_stage / update / close calls. ``timer``: the run's time left from
    the cost model (core/cost.TimeLeft), when the run's estimate is known."""

    timer = None

    def on_stage_start(self, stage, num_stages, niter, first_iter):
        if self.timer is not None:
            self.timer.update(stage, first_iter)
        self.start_stage(stage, num_stages, niter, first_iter)

    def on_iteration(self, stage, iteration, logged):
        if self.timer is not None:
            self.timer.update(stage, iteration)
        self.update(iteration, logged)

    def on_run_end(self, model):
        self.close()

    def start_stage(self, stage: int, num_stages: int, niter: int, start_iter: int = 0) -> None: ...
    def update(self, iteration: int, losses: Mapping[str, float] | None = None) -> None: ...
    def close(self) -> None: ...


class PlainProgress(StageProgress):
    """A line at the start of a stage, about ten lines during it, and one at its end."""

    def __init__(self, stream=None, lines_per_stage: int = 10):
        self.stream = stream or sys.stdout
        self.lines = lines_per_stage

    def start_stage(self, stage: int, num_stages: int, niter: int, start_iter: int = 0) -> None:
        self.stage, self.num_stages, self.niter = stage, num_stages, niter
        self.t0, self.first = time.perf_counter(), start_iter
        self.every = max(1, niter // self.lines)
        self.losses: Mapping[str, float] | None = None
        self.losses_at = 0
        print(f"{stage_text(stage, num_stages)}: {niter} iterations", file=self.stream, flush=True)

    def update(self, iteration: int, losses: Mapping[str, float] | None = None) -> None:
        """``iteration`` counts completed iterations (1..niter)."""
        if losses:
            self.losses, self.losses_at = losses, iteration
        if iteration % self.every and iteration != self.niter:
            return
        elapsed = time.perf_counter() - self.t0
        done = iteration - self.first
        if self.timer is not None:  # the whole run's time left (the cost model, kept to the pace so far)
            left = self.timer.seconds(self.stage, iteration)
        else:  # this stage's
            left = elapsed / done * (self.niter - iteration) if done else 0.0
        # where and how long first, the losses last; they are read only every few hundred iterations
        # (a read waits for the GPU): say from when
        shown = f"; {_losses_text(self.losses, self.losses_at)}" if self.losses else ""
        print(f"{position_text(self.stage, iteration, self.num_stages, self.niter)}, "
              f"elapsed {elapsed:.0f}s, left {left:.0f}s{shown}", file=self.stream, flush=True)

    def close(self) -> None:
        pass


def _losses_text(losses: Mapping[str, float] | None, at: int) -> str:
    return f"losses at {iteration_text(at)}: {_fmt_losses(losses)}"


# The bar line's widths: "stage 6/6 " + bar + " 2000/2000 0:12:34 left 0:05:00" fits 80 columns.
BAR_WIDTH = 30


class RichProgress(StageProgress):
    """A live bar per stage: stage k/N, the bar, iterations done, time elapsed and left (at most about
    70 columns, so an 80-column terminal shows it whole), and below the bars one line with the latest
    logged losses, cut at the terminal's width."""

    def __init__(self, console=None):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        from rich.text import Text

        owner = self

        class _Progress(Progress):
            def get_renderables(self):
                yield self.make_tasks_table(self.tasks)
                if owner.losses:
                    yield Text(owner.losses, no_wrap=True, overflow="ellipsis", style="dim")

        class _Left(TimeRemainingColumn):
            """The whole run's time left from the cost model (kept to the pace so far) when the run's
            estimate is known; this stage's, from its own pace, otherwise."""

            def render(self, task):
                if owner.timer is None or owner.stage is None:
                    return super().render(task)
                left = int(owner.timer.seconds(owner.stage, int(task.completed)))
                return Text(f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}", style="progress.remaining")

        self.losses = ""
        self.stage = None
        self.progress = _Progress(
            TextColumn("[bold]{task.fields[stage]}"), BarColumn(bar_width=BAR_WIDTH), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("left"), _Left(),
            **({"console": console} if console is not None else {}),
        )
        self.progress.start()
        self.task = None

    def start_stage(self, stage: int, num_stages: int, niter: int, start_iter: int = 0) -> None:
        self.stage = stage
        self.task = self.progress.add_task("train", total=niter, completed=start_iter,
                                           stage=stage_text(stage, num_stages))

    def update(self, iteration: int, losses: Mapping[str, float] | None = None) -> None:
        if losses:
            self.losses = _losses_text(losses, iteration)
        self.progress.update(self.task, completed=iteration)

    def close(self) -> None:
        self.progress.stop()


def check_progress(kind: "str | Callbacks") -> "str | Callbacks":
    """``kind`` if make_progress takes it, else a UserError (checked before a run writes anything)."""
    if not isinstance(kind, Callbacks) and kind not in ("auto", "plain", "rich", "none"):
        from .errors import UserError

        raise UserError(f"unknown progress {kind!r}; use auto, plain, rich or none (or a callbacks object)")
    return kind


def make_progress(kind: "str | Callbacks" = "auto", estimate=None) -> Callbacks | None:
    """"auto": a bar on a terminal, plain lines otherwise; "plain"; "none" (None); a callbacks object
    (e.g. a PlainProgress writing to a stream of your own) is used as it is. ``estimate``: a function
    giving the run's core/cost.Estimate; the time left (bar or lines) is then the whole run's."""
    if isinstance(check_progress(kind), Callbacks):
        return kind
    if kind == "none":
        return None
    bar = RichProgress() if kind == "rich" or (kind == "auto" and sys.stdout.isatty()) else PlainProgress()
    if estimate is not None:
        bar.timer = estimate().time_left()
    return bar


class _CountBar:
    """count_progress's callable: ``bar(done)`` after each batch of items."""

    def __init__(self, kind: str, total: int, label: str, stream=None):
        self.total, self.label, self.bar = total, label, None
        self.stream = stream or sys.stdout
        self.kind = kind
        if kind == "auto":
            self.kind = "rich" if sys.stderr.isatty() else "none"
        self.every = max(1, total // 10)
        self.next_line = self.every
        if self.kind == "rich":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(label, total=total)

    def __call__(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done)
        elif self.kind == "plain" and (done >= self.next_line or done == self.total):
            self.next_line = (done // self.every + 1) * self.every
            print(f"{self.label} {done}/{self.total}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class count_progress:
    """Progress over ``total`` items written one batch at a time (samples, animation frames):

        with count_progress("auto", 100, "samples") as bar:
            for ...: bar(done)

    "auto": a bar on stderr when it is a terminal (nothing otherwise: the command's own lines say what
    was written); "plain": about ten lines on stdout; "none"."""

    def __init__(self, kind: str, total: int, label: str):
        self.args = (kind, total, label)

    def __enter__(self) -> _CountBar:
        self.bar = _CountBar(*self.args)
        return self.bar

    def __exit__(self, *exc) -> None:
        self.bar.close()
