"""The library API. The command line only parses flags and calls these.

    import consingan
    model = consingan.train("Images/Generation/rocket.png", niter=500, out_dir="runs/rocket")
    images = model.sample(8, scale_w=2.0, seed=0)      # 8x3xHx2W tensor in [-1, 1]
    consingan.save_image(images[0], "wide.png")
    model = consingan.load("runs/rocket")
"""
from __future__ import annotations

import json
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Sequence

from .callbacks import CallbackList, Callbacks, StagePreviews, StopFlag, StopOnSignals
from .config import Config, make_config
from .core.engine import CHECKPOINT_EVERY, Engine, EngineOptions, TrainingStopped
from .device import resolve_device  # noqa: F401 (the command line uses it from here)
from .errors import UserError
from .model import ConSinGAN
from .process import choose_threads, torch_threads
from .plan import Plan, prepare, tune_process
from .progress import check_progress, count_progress, make_progress
from .storage.image_files import as_image, read_image, save_image
from .storage.model_file import MODEL_FILE, load_model
from .storage.outputs import OutputExists, claim_dir, claim_free_dir, write_bytes
from .storage.rundir import FINE_TUNED_KEY, INPUT_KEY, METRICS_FILE, THREADS_KEY, RunDir, samples_dir_name
from .tasks import harmonize as _harmonize
from .tasks.animate import Walk, animate, reference_walks, write_animations  # noqa: F401 (part of the API)
from .tasks.harmonize import fine_tune_dir, harmonize, write_results as write_harmonized  # noqa: F401 (part of the API)


def default_out_dir(input_name: str, config: Config, root: str | Path = "TrainedModels") -> Path:
    """TrainedModels/<image stem>/<timestamp>_<mode>_<key settings>/ (a fresh name, never reused)."""
    from .storage.paths import inside, safe_name

    stem = safe_name(Path(input_name).stem)  # a stem of only dots would name the root's parent
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S")
    c = config
    name = (f"{stamp}_{c.train_mode}_stages_{c.train_stages}_depth_{c.train_depth}_lr_scale_{c.lr_scale:g}"
            f"_niter_{c.niter}_max_{c.max_size}_seed_{c.manualSeed}")
    base = Path(root) / stem / name
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}_{i}"), i + 1
    return inside(root, path, "output folder")  # <root>/<stem> may be a link out of the root


def train(image: Any, config: Config | None = None, *, out_dir: str | Path | None = None,
          device: str = "auto", progress: str | Callbacks = "none", input_name: str | None = None,
          checkpoint_every: int = CHECKPOINT_EVERY, naive: Any = None, run_info: dict | None = None,
          callbacks: Sequence[Callbacks] = (), stop: threading.Event | None = None,
          threads: int | None = None, **settings: Any) -> ConSinGAN:
    """Train a model on one image. ``settings`` are Config fields (e.g. ``niter=500``) when no
    ``config`` is given; ``train_mode`` picks the mode and its defaults, ``preset`` ("paper" or
    "fast") a set of settings over them. ``run_info``: extra keys for config.json. ``naive`` (harmonization,
    editing): an image whose result is written into every stage folder (not used for training).
    ``image`` may also be a :class:`~consingan.plan.Plan` from :func:`prepare` (then no settings):
    every door (this function, the command line, the batch runner, the web app) prepares its run
    with ``prepare``, so the same settings give the same run and config.json.

    With ``out_dir``, the full model directory is written there (model.pt, config.json, log.jsonl,
    one folder per stage); the directory must not exist or be empty. ``callbacks``: objects with the
    methods of ``consingan.callbacks.Callbacks``, told of every stage, log point and image. ``stop``:
    set it (from any thread) to stop at the next iteration with a checkpoint (TrainingStopped).
    ``threads``: torch's CPU threads for the run; None or 0: the thread rule (consingan/process.py:
    the cores free at the start, on the CPU). Recorded in config.json; set for the run and put back after.
    Randomness comes from the run's own generators seeded by ``manualSeed``: the same settings give
    the same model, also for several runs in one process.
    """
    check_progress(progress)
    if isinstance(image, Plan):
        if (config is not None or settings or naive is not None or run_info or input_name is not None
                or device != "auto" or threads is not None):
            raise TypeError("train(plan) runs the plan as prepared: give settings, device, naive, run_info and "
                            "input_name to prepare() instead")
        plan = image
    else:
        plan = prepare(image, config, device=device, input_name=input_name, naive=naive, run_info=run_info,
                       threads=threads, **settings)
    return _run_plan(plan, out_dir=out_dir, progress=progress, checkpoint_every=checkpoint_every,
                    callbacks=callbacks, stop=stop)


def _run_plan(plan: Plan, *, out_dir: str | Path | None = None, progress: str | Callbacks = "none",
             checkpoint_every: int = CHECKPOINT_EVERY, callbacks: Sequence[Callbacks] = (),
             stop: threading.Event | None = None) -> ConSinGAN:
    """Train what ``plan`` describes (see train)."""
    config = plan.config
    preview = None
    if plan.naive is not None:
        preview = _harmonize.stage_preview(as_image(plan.naive, "naive image"))
    options = EngineOptions(device=str(plan.device), checkpoint_every=checkpoint_every)
    run = RunDir(out_dir) if out_dir is not None else None
    tune_process(plan.device)
    with _claimed(run, fresh=True), torch_threads(plan.threads):
        if run is not None:
            run.write_info(config, plan.input_name, plan.device, plan.naive, **plan.run_info)
        make = lambda cbs: Engine.start(plan.image, config, options, cbs, stage0_input_for(config))  # noqa: E731
        return _run(make, run, progress, callbacks, stop, preview, estimate=lambda: plan.estimate)


def _run(make: Callable[[list[Callbacks]], Engine], run: RunDir | None, progress: str,
         callbacks: Sequence[Callbacks], stop: threading.Event | None, preview=None, estimate=None) -> ConSinGAN:
    """Build the engine with the callbacks a run gets (the run directory's writer and its stage
    previews, progress, the stop flag, Ctrl-C/SIGTERM on the main thread, the caller's), run it,
    finish the run directory. A stop gives TrainingStopped with the checkpoint to go on from.
    ``estimate``: a function giving the run's cost estimate, for the progress lines' time left."""
    bar = make_progress(progress, estimate)
    signals = StopOnSignals()
    writer = run.writer() if run is not None else None
    told = CallbackList([writer, bar, StopFlag(stop) if stop is not None else None, signals, *callbacks])
    # the stage-end images (reconstruction, samples grid, previews) go to every callback, files included
    cbs: list[Callbacks] = [told, StagePreviews(told, preview)] if run is not None else [told]
    engine = make(cbs)
    try:
        with signals:
            model = engine.run()
        if run is not None:
            run.finish(model)
        return ConSinGAN.of(model)
    except TrainingStopped as stopped:
        if stopped.interrupted and signals.signum is not None:
            by = " by SIGTERM" if signals.signum == getattr(signal, "SIGTERM", None) else ""
            stopped.args = (str(stopped).replace("interrupted", f"interrupted{by}", 1),)
            stopped.exit_code = signals.exit_code()
        if run is not None and stopped.checkpoint is None and run.checkpoint_file.exists():
            stopped.checkpoint = run.checkpoint_file
        raise
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()


@contextmanager
def _claimed(run: RunDir | None, fresh: bool, what: str = "--out_dir"):
    """Hold the run directory while the block runs (RunDir.claimed); nothing to do without one."""
    if run is None:
        yield
        return
    with run.claimed(fresh, what):
        yield


def resume(out_dir: str | Path, device: str = "auto", progress: str = "none",
           checkpoint_every: int = CHECKPOINT_EVERY, callbacks: Sequence[Callbacks] = (),
           stop: threading.Event | None = None, threads: int | None = None) -> ConSinGAN:
    """Go on with an interrupted training run from ``out_dir/checkpoint.pt``: the same numbers as a
    run that was never interrupted. ``threads``: None or 0 resumes with the thread count config.json
    recorded (another count changes the numbers from there on), else that many."""
    check_progress(progress)
    run = RunDir(out_dir)
    if not run.path.is_dir():
        run.read_checkpoint()  # raises: says that there is nothing to resume, before a directory is made
    dev = resolve_device(device)
    options = EngineOptions(device=str(dev), checkpoint_every=checkpoint_every)
    tune_process(dev)
    with _claimed(run, fresh=False), torch_threads(choose_threads(threads or recorded_threads(run), dev)):
        # (not while the run itself, or another resume, still goes on)
        model, state = run.read_checkpoint()
        run.clean()  # temporary files a killed write left
        naive = run.naive_image()
        stage0_input = stage0_input_for(model.config)
        if naive is not None and run.info().get(FINE_TUNED_KEY):
            stage0_input = _harmonize.fine_tune_input(naive, model.config)
        preview = _harmonize.stage_preview(naive) if naive is not None else None
        make = lambda cbs: Engine.restore(model, state, options, cbs, stage0_input, where=run.checkpoint_file)  # noqa: E731
        return _run(make, run, progress, callbacks, stop, preview)


def fine_tune(model_dir: str | Path, naive: Any, *, niter: int | None = None, manualSeed: int | None = None,
              out_dir: str | Path | None = None, device: str = "auto", progress: str = "none",
              train_mode: str | None = None, checkpoint_every: int = CHECKPOINT_EVERY,
              callbacks: Sequence[Callbacks] = (), stop: threading.Event | None = None,
              threads: int | None = None) -> ConSinGAN:
    """Fine-tune a harmonization or editing model on a naive image (docs/method.md section 4): only
    the top stage trains, with its normal optimizer groups, ``niter`` iterations (default 2000, the
    reference's command-line default, whatever the model was trained with), with the naive image as
    stage-0 input.

    Writes a new model directory, ``out_dir`` or ``<model_dir>_fine_tuned``; ``model_dir`` is not
    touched. ``threads``: as in ``train``. ``train_mode``, when given, must be the model's.
    """
    check_progress(progress)
    model = load_model(model_dir)
    _harmonize.require_naive_mode(model.config, "--fine_tune")
    if train_mode is not None and train_mode != model.config.train_mode:
        raise UserError(f"--train_mode {train_mode} does not match the model, which was trained with "
                        f"--train_mode {model.config.train_mode}; leave --train_mode out or pass that mode")
    # niter is the top stage's, whatever per-stage counts the model was trained with
    niter = _harmonize.FINE_TUNE_NITER if niter is None else niter
    given = {"niter": niter, "niter_stages": (), "manualSeed": manualSeed}
    model.config = model.config.replace(**{k: v for k, v in given.items() if v is not None})
    naive_img = as_image(naive, "naive image")
    _harmonize.check_aspect(naive_img, model.real)
    run = RunDir(out_dir if out_dir is not None else _harmonize.fine_tune_dir(model_dir))
    dev = resolve_device(device)
    options = EngineOptions(device=str(dev), checkpoint_every=checkpoint_every)
    tune_process(dev)
    n_threads = choose_threads(threads, dev)
    with _claimed(run, fresh=True), torch_threads(n_threads):
        run.write_info(model.config, RunDir(Path(model_dir)).info().get(INPUT_KEY), dev, naive,
                       **{FINE_TUNED_KEY: Path(model_dir).as_posix(), THREADS_KEY: n_threads})
        stage0_input = _harmonize.fine_tune_input(naive_img, model.config)
        make = lambda cbs: Engine.fine_tune(model, stage0_input, options, cbs)  # noqa: E731
        return _run(make, run, progress, callbacks, stop, _harmonize.stage_preview(naive_img))


def recorded_threads(run: RunDir) -> int | None:
    """The thread count a run's config.json recorded (None for a run from before it was recorded)."""
    n = run.info().get(THREADS_KEY)
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def stage0_input_for(config: Config):
    """The per-iteration stage-0 input of modes that train on an augmented image (else None)."""
    if config.mode.stage0_input == "noise":
        return None
    if config.mode.stage0_input == "paint":  # docs/method.md 5
        from .tasks.paint import stage0_paint_input
        return stage0_paint_input(config)
    from .core.augment import stage0_augmentation

    return stage0_augmentation(config)


def load(path: str | Path, device: str = "cpu") -> ConSinGAN:
    """Load a model from its directory or its model.pt."""
    return ConSinGAN.of(load_model(path, device=resolve_device(device)))


def write_samples(model: ConSinGAN, out: str | Path, num_samples: int = 50, scale_h: float = 1.0,
                  scale_w: float = 1.0, seed: int | None = None, start_scale: int = 0,
                  progress: str = "none", numbered: bool = False) -> Path:
    """The generate command's outputs: reconstruction.png, real_image.png and a folder of samples
    (``random_samples/`` or ``random_samples_scale_h_<H>_scale_w_<W>/``). Returns the samples folder.
    An existing samples folder (or one another run is writing) is an error: nothing is overwritten;
    with ``numbered``, the samples go to its first free sibling instead (``random_samples_1``, ...).

    Samples are written as they are made, a batch at a time, each file atomically, so memory does not
    grow with ``num_samples`` and a run killed mid-way leaves only whole files. ``progress``: "auto"
    (a bar on a terminal), "plain" (lines) or "none".
    """
    from .tasks.sampling import generate_batches

    out = Path(out)
    folder = out / samples_dir_name(scale_h, scale_w, start_scale)
    batches = generate_batches(model, num_samples, scale_h=scale_h, scale_w=scale_w, seed=seed,
                               start_scale=start_scale)  # checks the settings before anything is written
    claim = claim_free_dir(folder) if numbered else claim_dir(folder, "output folder", fresh=True)
    folder = claim.folder
    with claim, count_progress(progress, num_samples, "samples") as bar:
        i = 0
        for batch in batches:
            for s in batch:
                save_image(s, folder / f"gen_sample_{i}.png")
                i += 1
            bar(i)
    # Deterministic for a model: an existing copy is the same picture, so it is kept as it is.
    for fname, img in (("reconstruction.png", lambda: model.reconstruct()), ("real_image.png", lambda: model.real)):
        if not (out / fname).exists():
            try:
                save_image(img(), out / fname, overwrite=False)
            except OutputExists:
                pass  # another run wrote the same picture meanwhile
    return folder


def write_metrics(model: ConSinGAN, out: str | Path, num_samples: int = 50, seed: int = 0,
                  naive: Any = None) -> tuple[Path, dict[str, Any]]:
    """The evaluate command's output: ``out/metrics.json`` (see consingan.metrics). ``naive`` (a path,
    array or tensor; harmonization/editing models) is judged through its harmonized result. Returns
    the file's path and the metrics. An existing metrics.json is an error, found before any work."""
    from .metrics import evaluate

    path = Path(out) / METRICS_FILE
    if path.exists():
        raise UserError(f"{path} already exists; pass --out DIR to write the metrics elsewhere "
                        "(nothing was overwritten)")
    naive_img = None if naive is None else as_image(naive, "naive image")
    metrics = evaluate(model, num_samples=num_samples, seed=seed, naive=naive_img)
    # allow_nan=False: a non-finite metric is a bug to see, not a file other tools cannot parse.
    # Written atomically and never over a metrics.json another run wrote meanwhile (outputs.OutputExists).
    write_bytes((json.dumps(metrics, indent=2, allow_nan=False) + "\n").encode("utf-8"), path, overwrite=False)
    return path, metrics


__all__ = ["ConSinGAN", "Config", "make_config", "prepare", "Plan", "train", "load", "write_samples", "write_metrics", "save_image",
           "read_image", "MODEL_FILE", "Walk", "animate", "reference_walks", "write_animations"]
