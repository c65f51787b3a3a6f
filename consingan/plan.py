"""One preparation of a training run, whichever door it comes through.

``prepare(image, **settings)`` turns a person's settings into the run that will happen: the preset,
the mode's defaults and the values given (config.make_config), the super-resolution pyramid, every
validity rule (a Config cannot be built invalid; the image must fit the pyramid; a naive image must
match), the device and the arithmetic it will use, the stage sizes, the peak memory (refused when it
cannot fit) and the time estimate (core/cost.py), and the warnings. It returns an immutable
:class:`Plan`, which ``consingan.train`` runs. The command line (train, --dry_run, batch), the batch
runner's jobs and the web app all build their runs with it, so one set of settings gives one
config.json whichever door it came through.

    plan = consingan.prepare("rocket.png", preset="fast", max_size=128)
    print(plan.describe())                 # what --dry_run prints
    model = consingan.train(plan, out_dir="runs/rocket")
"""
from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import torch

from .config import Config, make_config
from .core import cost
from .core.image import stage_sizes, training_image
from .core.runtime import resolve_precision
from .device import check_memory, describe, resolve_device
from .errors import ConSinGANWarning, UserError
from .storage.image_files import as_image, image_size
from .process import choose_threads
from .storage.rundir import PRESET_KEY, THREADS_KEY, run_info


@dataclass(frozen=True, eq=False)  # holds a tensor: compared by identity
class Plan:
    """A training run, prepared and checked: what ``consingan.train`` runs and config.json records."""

    config: Config  # every setting, the preset, mode defaults and the pyramid applied; precision concrete
    image: torch.Tensor = field(repr=False)  # the input image (1x3xHxW in [-1, 1]) as given, before max_size
    input_name: str  # where the image came from, as config.json records it ("array" for one in memory)
    sizes: tuple[tuple[int, int], ...]  # (height, width) of every stage, lowest first
    device: torch.device
    peak_bytes: float  # the estimated peak memory of the run (core/cost.py)
    warnings: tuple[str, ...] = ()  # what the user should know (also issued as ConSinGANWarning)
    run_info: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # extra config.json keys
    naive: Any = field(default=None, repr=False)  # harmonization/editing: the image whose result is previewed
    threads: int = 1  # torch's CPU threads for the run (consingan/process.py: the thread rule; in config.json)

    @property
    def precision(self) -> str:
        return self.config.precision

    @functools.cached_property
    def estimate(self) -> cost.Estimate:
        """The time per stage and in all, on this machine (measured once per process, a fraction of a
        second) and the peak memory."""
        # measured with torch's current thread count: inside a run (progress) that is the run's own; the
        # count is not changed here, since it is process-wide and a training may be running in another
        # thread (the web app estimates while it trains)
        machine = cost.measure_machine(self.device, self.config.nfc)
        return cost.estimate(self.config, self.sizes, machine)

    def info(self) -> dict[str, Any]:
        """config.json's contents, as the run will write them."""
        return run_info(self.config, self.input_name, self.device, self.naive, **self.run_info)

    def describe(self) -> str:
        """The resolved settings as config.json will hold them, the stage sizes and the estimate
        (what ``train --dry_run`` prints)."""
        import json

        e = self.estimate
        sizes = ", ".join(f"{h}x{w}" for h, w in self.sizes)
        niters = "/".join(str(n) for n in e.stage_niter)
        return "\n".join([
            "config.json:", json.dumps(self.info(), indent=2),
            f"stages: {len(self.sizes)} ({sizes}; height x width, lowest first)",
            f"iterations: {niters}",
            f"estimate on {describe(self.device)}: about {cost.describe_seconds(e.seconds)} "
            f"({', '.join(cost.describe_seconds(s) for s in e.stage_totals)} "
            f"per stage), peak memory about {cost.describe_bytes(self.peak_bytes)}",
        ])


def prepare(image: Any, config: Config | None = None, *, device: str | torch.device = "auto",
            input_name: str | None = None, naive: Any = None, run_info: Mapping[str, Any] | None = None,
            threads: int | None = None, **settings: Any) -> Plan:
    """The run that training ``image`` (a path, an array or a tensor) with ``settings`` will be, checked
    before anything is written; a UserError names the first thing wrong.

    ``settings``: Config fields (``niter=500``), ``train_mode`` (the mode and its defaults) and
    ``preset`` ("paper", "fast", "quick"); None means not given. In ``superres`` mode the pyramid's
    step is the upsampling step of ``sr_factor`` unless ``min_size`` is given (docs/method.md 5).
    ``config``: a Config to run as it is (``settings`` then change single fields). ``run_info``: extra
    keys for config.json. ``naive`` (harmonization, editing): an image whose result is written into
    every stage folder. ``threads``: torch's CPU threads for the run (None or 0: the thread rule of
    consingan/process.py, decided here, once); config.json records the count."""
    given = {k: v for k, v in settings.items() if v is not None}
    if config is None:
        mode = given.get("train_mode", "generation")
        for key, only in (("sr_factor", "superres"), ("paint_colors", "paint")):
            if key in given and mode != only:
                raise UserError(f"--{key} only applies to --train_mode {only}; add --train_mode {only} or drop --{key}")
        preset = given.pop("preset", "paper")
        config = make_config(preset=preset, **given)
        info = {PRESET_KEY: preset, **(run_info or {})}
        pyramid_given = "min_size" in given
    else:
        config = config.replace(**given) if given else config
        info = dict(run_info or {})
        pyramid_given = True
    real = as_image(image)
    notes = []
    if config.mode.name == "superres":  # docs/method.md 5: the pyramid step is the upsampling step
        from .tasks import superres

        if not pyramid_given:
            config = superres.superres_config(real, config)
        shrunk = superres.shrunk_warning(real, config)
        if shrunk:
            notes.append(shrunk)
    trained = training_image(real, config)  # a too-small image fails here, before anything is written
    sizes = tuple(tuple(int(v) for v in s) for s in stage_sizes(trained.shape[-2], trained.shape[-1], config))
    if naive is not None:
        from .tasks import harmonize

        harmonize.require_naive_mode(config)
        harmonize.check_aspect(as_image(naive, "naive image"), trained)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    config = resolve_precision(config, dev)  # config.json records what the run uses
    peak = cost.training_bytes(config, sizes, dev.type)
    top = sizes[-1]
    check_memory(peak, f"training with --nfc {config.nfc} on {top[0]}x{top[1]} pixels", "lower --nfc or --max_size",
                 dev)
    for note in notes:
        warnings.warn(note, ConSinGANWarning, stacklevel=2)
    if input_name is None:
        input_name = str(image) if isinstance(image, (str, os.PathLike)) else "array"
    n_threads = choose_threads(threads, dev)
    info[THREADS_KEY] = n_threads
    return Plan(config, real, Path(input_name).as_posix(), sizes, dev, peak, tuple(notes),
                MappingProxyType(info), naive, n_threads)


def estimate_for(config: Config, height: int, width: int, device: torch.device | str = "cpu") -> cost.Estimate:
    """The cost of training ``config`` on an image of ``height`` x ``width`` (before max_size) on
    ``device``, without the image (the web app's estimate before an upload, a resumed run)."""
    sizes = cost.training_sizes(config, height, width)
    return cost.estimate(config, sizes, cost.measure_machine(device, config.nfc))


def check_samples(model, scale_h: float, scale_w: float, num_samples: int, kept: int = 0,
                  flags: tuple[str, str] | None = None) -> None:
    """Refuse, before any work, samples too large to generate (core/cost.sample_bytes). ``flags``: (the
    flags that set the size, the fix), as the user gave them (default: --scale_h/--scale_w)."""
    import math

    given, fix = flags or (f"--scale_h {scale_h:g} --scale_w {scale_w:g}", "use smaller --scale_h/--scale_w")
    h, w = (v * s for v, s in zip(model.shapes[-1], (scale_h, scale_w)))
    if not (math.isfinite(h * w) and h * w < 1e15):  # past any memory, and past what a float prints sensibly
        raise UserError(f"{given} asks for an image of more than 10^15 pixels, more than any machine holds; {fix}")
    check_memory(cost.sample_bytes(model.config, (h, w), num_samples, kept),
                 f"samples of {h:.0f}x{w:.0f} pixels ({given})", fix, model.device)


def check_object(obj: str | os.PathLike, scale: float) -> None:
    """compose: refuse a --scale that would blow the object up beyond memory (read from its header)."""
    try:
        w, h = image_size(obj, "object")
    except Exception:  # noqa: BLE001 - unreadable, missing or too large: the compose task says so in its own words
        return
    check_memory(cost.object_bytes(h, w, scale), f"an object scaled to {h * scale:.0f}x{w * scale:.0f} pixels "
                 f"(--scale {scale:g})", "use a smaller --scale", torch.device("cpu"))


def tune_process(device: torch.device) -> None:
    """Process-wide settings that keep the numbers and make training faster, made where training
    starts (consingan.train, resume, fine_tune), so every caller gets them: glibc keeps freed memory
    for reuse on the CPU (consingan/process.py), cuDNN picks its fastest convolution algorithms on a GPU."""
    from .process import tune_cpu_allocator

    if device.type == "cpu":
        tune_cpu_allocator()
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


__all__ = ["Plan", "prepare", "estimate_for", "check_samples", "check_object", "tune_process"]
