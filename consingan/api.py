"""The library API. The command line only parses flags and calls these.

    import consingan
    model = consingan.train("Images/Generation/rocket.png", niter=500, out_dir="runs/rocket")
    images = model.sample(8, scale_w=2.0, seed=0)      # 8x3xHx2W tensor in [-1, 1]
    consingan.save_image(images[0], "wide.png")
    model = consingan.load("runs/rocket")
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .tasks.animate import Walk, animate, reference_walks, write_animations  # noqa: F401 (part of the API)
from .config import Config, make_config
from .device import resolve_device  # noqa: F401 (the command line uses it from here)
from .errors import UserError
from .tasks import harmonize as _harmonize
from .tasks.harmonize import fine_tune_dir, harmonize, write_results as write_harmonized  # noqa: F401 (part of the API)
from .core.image import check_pixels, from_numpy, stage_sizes, training_image
from .storage.image_files import read_image, save_image
from .core.model import Model
from .model import ConSinGAN
from .storage.model_file import MODEL_FILE, load_model, save_model
from .progress import count_progress, make_progress
from .core.runtime import resolve_precision
from .storage.outputs import NoSpace, OutputExists, claim_dir, clean_temp_files, write_bytes
from .core.engine import CHECKPOINT_EVERY, CHECKPOINT_FILE, CHECKPOINT_FORMAT, RunOptions, Trainer, no_space_stop
from .core.engine import train as _train_loop

def as_image(image: Any, what: str = "input image") -> torch.Tensor:
    """A path, an HxWx3 array (uint8 or [0, 1]) or a 1x3xHxW tensor in [-1, 1] -> 1x3xHxW tensor."""
    if isinstance(image, (str, os.PathLike)):
        t = read_image(image, what)
    elif isinstance(image, np.ndarray):
        t = from_numpy(image)
    elif isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        t = t.unsqueeze(0) if t.dim() == 3 else t
    else:
        raise TypeError(f"{what}: expected a path, numpy array or tensor, got {type(image).__name__}")
    return check_pixels(t, what)  # NaN pixels would only surface as a NaN loss, with the wrong advice


def default_out_dir(input_name: str, config: Config, root: str | Path = "TrainedModels") -> Path:
    """TrainedModels/<image stem>/<timestamp>_<mode>_<key settings>/ (a fresh name, never reused)."""
    stem = Path(input_name).stem or "image"
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S")
    c = config
    name = (f"{stamp}_{c.train_mode}_stages_{c.train_stages}_depth_{c.train_depth}_lr_scale_{c.lr_scale:g}"
            f"_niter_{c.niter}_max_{c.max_size}_seed_{c.manualSeed}")
    base = Path(root) / stem / name
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}_{i}"), i + 1
    return path


def check_new_dir(path: Path, what: str = "--out_dir") -> None:
    """Refuse a directory that already holds files: nothing written before is ever overwritten."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{what} {path} already exists and is not empty; choose another directory "
                        "(nothing was overwritten)")


def train(image: Any, config: Config | None = None, *, out_dir: str | Path | None = None,
          device: str = "auto", progress: str = "none", input_name: str | None = None,
          checkpoint_every: int = CHECKPOINT_EVERY, naive: Any = None, run_info: dict | None = None,
          **settings: Any) -> ConSinGAN:
    """Train a model on one image. ``settings`` are Config fields (e.g. ``niter=500``) when no
    ``config`` is given; ``train_mode`` picks the mode and its defaults, ``preset`` ("paper" or
    "fast") a set of settings over them. ``run_info``: extra keys for config.json. ``naive`` (harmonization,
    editing): an image whose result is written into every stage folder (not used for training).

    With ``out_dir``, the full model directory is written there (model.pt, config.json, log.jsonl,
    one folder per stage); the directory must not exist or be empty.
    """
    if config is None:
        run_info = {"preset": settings.get("preset", "paper"), **(run_info or {})}
        config = make_config(**settings)
    elif settings:
        config = config.replace(**settings)
    real = as_image(image)
    # Fail on a too-small image before anything is written.
    trained = training_image(real, config)
    stage_sizes(trained.shape[-2], trained.shape[-1], config)
    preview = None
    if naive is not None:
        _harmonize.require_naive_mode(config)
        naive_img = as_image(naive, "naive image")
        _harmonize.check_aspect(naive_img, trained)
        preview = _harmonize.stage_preview(naive_img)
    dev = resolve_device(device)
    config = resolve_precision(config, dev)  # config.json records what the run uses
    out = Path(out_dir) if out_dir is not None else None
    with _claimed(out, fresh=True):
        if out is not None:
            meta_input = input_name or (str(image) if isinstance(image, (str, os.PathLike)) else "array")
            _write_run_info(out, config, Path(meta_input).as_posix(), dev, naive, **(run_info or {}))
        model = _train_loop(real, config, RunOptions(device=str(dev), out_dir=out, checkpoint_every=checkpoint_every,
                                                     preview=preview),
                            progress=make_progress(progress), stage0_input=stage0_input_for(config))
        return _finish(model, out)


@contextmanager
def _claimed(out: Path | None, fresh: bool, what: str = "--out_dir"):
    """Hold ``out`` for this run (outputs.claim_dir) while the block runs; nothing to do without ``out``."""
    if out is None:
        yield
        return
    claim = claim_dir(out, what, fresh=fresh)
    try:
        yield
    finally:
        claim.release()


def resume(out_dir: str | Path, device: str = "auto", progress: str = "none",
           checkpoint_every: int = CHECKPOINT_EVERY) -> ConSinGAN:
    """Go on with an interrupted training run from ``out_dir/checkpoint.pt``."""
    out = Path(out_dir)
    if not out.is_dir():
        _no_checkpoint(out)
    options = RunOptions(device=str(resolve_device(device)), out_dir=out, checkpoint_every=checkpoint_every)
    from .storage.model_file import read_record

    with _claimed(out, fresh=False):  # not while the run itself (or another resume) still goes on
        if not (out / CHECKPOINT_FILE).exists():
            _no_checkpoint(out)
        clean_temp_files(out)  # left by a write that was killed
        config = Config.from_dict(read_record(out / CHECKPOINT_FILE, kind=CHECKPOINT_FORMAT)["config"])
        options, stage0_input = _harmonize.resume_hooks(out, config, options, stage0_input_for(config))
        trainer = Trainer.resume(out, options, make_progress(progress), stage0_input)
        return _finish(trainer.fit(), out)


def _no_checkpoint(out: Path) -> None:
    if (out / MODEL_FILE).exists():
        raise UserError(f"{out} holds a finished model and no checkpoint: nothing to resume")
    raise UserError(f"{out} holds no checkpoint ({CHECKPOINT_FILE}); give the directory of an "
                    "interrupted training run")


def fine_tune(model_dir: str | Path, naive: Any, *, niter: int | None = None, manualSeed: int | None = None,
              out_dir: str | Path | None = None, device: str = "auto", progress: str = "none",
              train_mode: str | None = None, checkpoint_every: int = CHECKPOINT_EVERY) -> ConSinGAN:
    """Fine-tune a harmonization or editing model on a naive image (METHOD 4): only the top stage
    trains, with its normal optimizer groups, ``niter`` iterations (default 2000, the reference's
    command-line default, whatever the model was trained with), with the naive image as stage-0 input.

    Writes a new model directory, ``out_dir`` or ``<model_dir>_fine_tuned``; ``model_dir`` is not
    touched. ``train_mode``, when given, must be the model's.
    """
    from .core.engine import seed_everything

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
    out = Path(out_dir) if out_dir is not None else _harmonize.fine_tune_dir(model_dir)
    dev = resolve_device(device)
    with _claimed(out, fresh=True):
        _write_run_info(out, model.config, _harmonize.run_info(model_dir).get("input_name"), dev, naive,
                        **{_harmonize.FINE_TUNED_KEY: Path(model_dir).as_posix()})
        seed_everything(model.config.manualSeed)
        options = RunOptions(device=str(dev), out_dir=out, checkpoint_every=checkpoint_every,
                             preview=_harmonize.stage_preview(naive_img))
        trainer = _harmonize.fine_tune_trainer(model, naive_img, options, make_progress(progress))
        return _finish(trainer.fit(), out)


def _write_run_info(out: Path, config: Config, input_name: str | None, device: torch.device, naive: Any,
                    **extra: Any) -> None:
    """The run's readable config.json: the settings, where the image came from, the device, and the
    naive image's path (a resumed run reads it back to write its previews and stage-0 input)."""
    info = {**config.to_dict(), "input_name": input_name, **extra, "device": str(device)}
    if isinstance(naive, (str, os.PathLike)):
        info[_harmonize.NAIVE_KEY] = Path(naive).as_posix()
    write_bytes((json.dumps(info, indent=2) + "\n").encode("utf-8"), out / "config.json")


def stage0_input_for(config: Config):
    """The per-iteration stage-0 input of modes that train on an augmented image (else None)."""
    if config.mode.stage0_input == "noise":
        return None
    from .core.augment import stage0_augmentation

    return stage0_augmentation(config)


def _finish(model: Model, out: Path | None) -> ConSinGAN:
    """Write model.pt, then drop the checkpoint it replaces and any temporary file a killed write left.
    A full disk keeps the checkpoint and says how to go on (TrainingStopped)."""
    if out is not None:
        try:
            save_model(model, out)
        except NoSpace as exc:
            checkpoint = out / CHECKPOINT_FILE
            kept = f"the last checkpoint ({checkpoint})" if checkpoint.exists() else None
            raise no_space_stop(exc, out, kept) from None
        (out / CHECKPOINT_FILE).unlink(missing_ok=True)  # the finished model replaces it
        clean_temp_files(out)
    return ConSinGAN.of(model)


def load(path: str | Path, device: str = "cpu") -> ConSinGAN:
    """Load a model from its directory or its model.pt."""
    return ConSinGAN.of(load_model(path, device=resolve_device(device)))


def format_scale(value: float) -> str:
    return f"{value:g}"


def write_samples(model: ConSinGAN, out: str | Path, num_samples: int = 50, scale_h: float = 1.0,
                  scale_w: float = 1.0, seed: int | None = None, start_scale: int = 0,
                  progress: str = "none") -> Path:
    """The generate command's outputs: reconstruction.png, real_image.png and a folder of samples
    (``random_samples/`` or ``random_samples_scale_h_<H>_scale_w_<W>/``). Returns the samples folder.
    An existing samples folder (or one another run is writing) is an error: nothing is overwritten.

    Samples are written as they are made, a batch at a time, each file atomically, so memory does not
    grow with ``num_samples`` and a run killed mid-way leaves only whole files. ``progress``: "auto"
    (a bar on a terminal), "plain" (lines) or "none".
    """
    from .tasks.sampling import generate_batches

    out = Path(out)
    name = "random_samples" if (scale_h, scale_w) == (1.0, 1.0) else (
        f"random_samples_scale_h_{format_scale(scale_h)}_scale_w_{format_scale(scale_w)}")
    if start_scale:
        name += f"_start_scale_{start_scale}"
    folder = out / name
    batches = generate_batches(model, num_samples, scale_h=scale_h, scale_w=scale_w, seed=seed,
                               start_scale=start_scale)  # checks the settings before anything is written
    with _claimed(folder, fresh=True, what="output folder"), count_progress(progress, num_samples, "samples") as bar:
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


METRICS_FILE = "metrics.json"


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


__all__ = ["ConSinGAN", "Config", "make_config", "train", "load", "write_samples", "write_metrics", "save_image",
           "read_image", "MODEL_FILE", "Walk", "animate", "reference_walks", "write_animations"]
