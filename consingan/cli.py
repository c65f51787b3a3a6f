"""The command line: parse flags (the reference's spellings, dashed ones too), call the library, print.

    consingan train --train_mode generation --input_name Images/Generation/rocket.png
    consingan generate --model_dir TrainedModels/rocket/<run> --num_samples 20 --scale_w 2
    consingan evaluate --model_dir TrainedModels/rocket/<run> --num_samples 50 --seed 0
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import api
from .config import MAX_SEED, preset_help
from .errors import UserError, one_line
from .core.engine import TrainingStopped
from .plan import check_object, check_samples
from .storage.rundir import RunDir, check_new_run_dir, resume_command

# Click's own help layout (rich_markup_mode=None): it wraps help text at word boundaries and gives a long
# flag name a line of its own, where rich's table cut names such as --input_name mid-word at 80 columns.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="ConSinGAN: train on one image, then generate, retarget, harmonize, edit, animate.")


def opt(*names: str, help: str = "", **kw):
    """An option under its reference spelling (--train_mode) and its dashed twin (--train-mode)."""
    spellings = []
    for n in names:
        spellings.append(n)
        dashed = "--" + n[2:].replace("_", "-")
        if n.startswith("--") and dashed != n:
            spellings.append(dashed)
    return typer.Option(*spellings, help=help, **kw)


# The device options every command takes.
DeviceOpt = Annotated[str, opt("--device", help="auto|cpu|cuda (auto: CUDA when available)")]
GpuOpt = Annotated[Optional[int], opt("--gpu", help="GPU index")]
NotCudaOpt = Annotated[bool, opt("--not_cuda", help="run on the CPU")]
# The model that generate and evaluate read.
ModelDirOpt = Annotated[Optional[str], opt("--model_dir", help="a trained model's directory")]


def load_model_arg(model_dir: Optional[str], device: str, gpu: Optional[int], not_cuda: bool):
    """The model named by --model_dir, on the device the device flags pick."""
    if not model_dir:
        raise UserError("no model given; pass --model_dir DIR (a directory written by train)")
    return api.load(model_dir, device=str(api.resolve_device(device, gpu, not_cuda)))


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def fail_on(exc: Exception, memory_fix: str) -> None:
    """One ``error:`` line for what the user can fix (errors.one_line); anything else is a bug and keeps
    its traceback."""
    line = None if isinstance(exc, (typer.Exit, typer.Abort)) else one_line(exc, memory_fix)
    if line is None:
        raise exc
    fail(line)


# Errors the commands turn into one line (see fail_on); typer.Exit is a RuntimeError and passes through.
HANDLED = (UserError, OSError, MemoryError, RuntimeError)


def output_folder(path: str | Path, fix: str) -> Path:
    """``path``, a folder the command will write into, after checking that it can be created and
    written: an unwritable place (read-only, under a regular file, under /proc) is refused before any
    work, with ``fix``. Folders made for the check are removed again; nothing is left behind."""
    path = Path(path)
    anchor = path
    while not os.path.lexists(anchor) and anchor != anchor.parent:
        anchor = anchor.parent
    if not anchor.is_dir():
        raise UserError(f"cannot write into {path}: {anchor} is a file, not a folder; {fix}")
    made: list[Path] = []
    try:
        for folder in reversed([path, *path.parents][: len(path.relative_to(anchor).parts)]):
            try:
                folder.mkdir()
            except OSError as exc:
                raise UserError(f"cannot create the folder {folder} ({exc.strerror or exc}); {fix}") from None
            made.append(folder)
        try:
            fd, probe = tempfile.mkstemp(prefix=".consingan-write-check.", dir=path)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise UserError(f"cannot write files into {path} ({exc.strerror or exc}); {fix}") from None
    finally:
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                pass
    return path


def check_seed(seed: Optional[int], flag: str = "--seed") -> None:
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise UserError(f"{flag} {seed} is out of range; use 0 to {MAX_SEED}")


def check_real(value: Optional[float], flag: str, positive: bool = False) -> None:
    """A float flag that must be a finite number (and > 0 with ``positive``)."""
    if value is not None and not (math.isfinite(value) and (value > 0 or not positive)):
        raise UserError(f"{flag} must be a finite {'positive ' if positive else ''}number, not {value}")


@contextmanager
def stopped_message(out: Path):
    """Training that stopped early: say why and how to go on, exit non-zero."""
    try:
        yield
    except TrainingStopped as stop:
        typer.echo(f"error: {stop}", err=True)
        if stop.resume_hint and stop.checkpoint is not None and stop.checkpoint.exists():
            typer.echo(f"Checkpoint saved in {out}. Resume with: {resume_command(out)}", err=True)
        raise typer.Exit(stop.exit_code)  # 130 Ctrl-C, 143 SIGTERM, 1 otherwise


@app.command()
def train(
    ctx: typer.Context,
    input_name: Annotated[Optional[str], opt("--input_name", help="training image")] = None,
    train_mode: Annotated[str, opt("--train_mode", help="generation, retarget, harmonization, editing, "
                                   "animation, superres or paint")] = "generation",
    preset: Annotated[str, opt("--preset", help=preset_help())] = "paper",
    train_stages: Annotated[Optional[int], opt("--train_stages", help="number of stages [6; harmonization 3]")] = None,
    train_depth: Annotated[Optional[int], opt("--train_depth", help="stages trained at a time [3]")] = None,
    lr_scale: Annotated[Optional[float], opt("--lr_scale", help="lr factor per lower stage [0.1]")] = None,
    niter: Annotated[Optional[int], opt("--niter", help="iterations per stage [2000; harmonization/editing 1000; --fine_tune 2000]")] = None,
    niter_low: Annotated[Optional[int], opt("--niter_low", help="iterations of each of the first train_stages - "
                                            "train_depth stages [0: --niter; fast preset 2000]")] = None,
    niter_stages: Annotated[Optional[str], opt("--niter_stages", help="iterations of every stage, lowest first, "
                                               "e.g. 2000,2000,2000,2000,800,350 (overrides --niter and --niter_low)")] = None,
    min_size: Annotated[Optional[int], opt("--min_size", help="stage-0 short side [25; animation 20; harmonization 120]")] = None,
    max_size: Annotated[Optional[int], opt("--max_size", help="top-stage long side [250]")] = None,
    nfc: Annotated[Optional[int], opt("--nfc", help="channels per conv [64]")] = None,
    num_layer: Annotated[Optional[int], opt("--num_layer", help="conv blocks per stage [3]")] = None,
    ker_size: Annotated[Optional[int], opt("--ker_size", help="conv kernel size [3]")] = None,
    noise_amp: Annotated[Optional[float], opt("--noise_amp", help="noise amplitude factor [0.1]")] = None,
    lr_g: Annotated[Optional[float], opt("--lr_g", help="generator learning rate [5e-4]")] = None,
    lr_d: Annotated[Optional[float], opt("--lr_d", help="discriminator learning rate [5e-4]")] = None,
    beta1: Annotated[Optional[float], opt("--beta1", help="Adam beta1 [0.5]")] = None,
    gamma: Annotated[Optional[float], opt("--gamma", help="lr decay at 0.8*niter [0.1]")] = None,
    Gsteps: Annotated[Optional[int], opt("--Gsteps", help="generator steps per iteration [3]")] = None,
    Dsteps: Annotated[Optional[int], opt("--Dsteps", help="discriminator steps per iteration [3]")] = None,
    Dsteps_stages: Annotated[Optional[str], opt("--Dsteps_stages", help="discriminator steps per iteration of every "
                                                "stage, lowest first, e.g. 3,3,3,2,2,2 (overrides --Dsteps)")] = None,
    lambda_grad: Annotated[Optional[float], opt("--lambda_grad", help="gradient penalty weight [0.1]")] = None,
    gp_every: Annotated[Optional[int], opt("--gp_every", help="lazy gradient penalty: in one D update of N, "
                                           "weighted xN (changes the numbers) [1: every update]")] = None,
    precision: Annotated[Optional[str], opt("--precision", help="fp32, bf16 (bfloat16 convolutions, autocast; "
                                             "changes the numbers; faster on GPUs and on CPUs with AVX512-BF16 or AMX) or auto (bf16 "
                                             "where the device has it) [fp32; fast preset auto]")] = None,
    alpha: Annotated[Optional[float], opt("--alpha", help="reconstruction loss weight [10]")] = None,
    activation: Annotated[Optional[str], opt("--activation", help="lrelu|elu|prelu|selu [lrelu]")] = None,
    lrelu_alpha: Annotated[Optional[float], opt("--lrelu_alpha", help="leaky relu slope [0.05; harmonization 0.3]")] = None,
    batch_norm: Annotated[Optional[bool], typer.Option("--batch_norm/--no_batch_norm", "--batch-norm/--no-batch-norm",
                                                       help="batch norm in G [off; harmonization/editing on]")] = None,
    manualSeed: Annotated[Optional[int], opt("--manualSeed", help="random seed [random, recorded]")] = None,
    sr_factor: Annotated[Optional[float], opt("--sr_factor", help="superres: the enlargement to train for; sets the "
                                              "pyramid step (unless --min_size is given) [4]")] = None,
    paint_colors: Annotated[Optional[int], opt("--paint_colors", help="paint: colours of the palette [5]")] = None,
    device: DeviceOpt = "auto",
    gpu: GpuOpt = None,
    not_cuda: NotCudaOpt = False,
    out_dir: Annotated[Optional[str], opt("--out_dir", help="write the model exactly here")] = None,
    progress: Annotated[str, opt("--progress", help="auto|plain|none")] = "auto",
    resume: Annotated[Optional[str], opt("--resume", help="go on with the interrupted run in this directory")] = None,
    checkpoint_every: Annotated[int, opt("--checkpoint_every", help="iterations between checkpoints [250]", min=1)] = 250,
    naive_img: Annotated[Optional[str], opt("--naive_img", help="harmonization/editing: a naive image; its result "
                                            "is written per stage (with --fine_tune: trained on)")] = None,
    fine_tune: Annotated[bool, opt("--fine_tune", help="train only the top stage of --model_dir on --naive_img "
                                   "(writes a new model)")] = False,
    model_dir: Annotated[Optional[str], opt("--model_dir", help="the model to fine-tune")] = None,
    dry_run: Annotated[bool, opt("--dry_run", help="print the resolved settings (as config.json would hold them), "
                                 "the stage sizes and the estimated time and peak memory; write nothing")] = False,
    threads: Annotated[int, opt("--threads", help="CPU threads of torch; 0: the cores free at the start "
                                "(recorded in config.json; a run's numbers depend on it) [0]", min=0)] = 0,
) -> None:
    """Train a model on one image, or fine-tune a harmonization/editing model on a naive image.

    \b
        python main_train.py --input_name Images/Generation/rocket.png
        python main_train.py --input_name rocket.png --preset fast --out_dir r1
        python main_train.py --train_mode harmonization --input_name bg.png
        python main_train.py --train_mode superres --input_name LR.png \\
            --sr_factor 4
        python main_train.py --train_mode harmonization --fine_tune \\
            --model_dir M --naive_img naive.png
    """
    try:
        if dry_run and (resume or fine_tune or model_dir):
            raise UserError("--dry_run prepares a new training run; leave out --resume, --fine_tune and --model_dir")
        if resume:
            out = Path(resume)
            fixed = [p.opts[0] for p in given_flags(ctx) if p.name not in RESUME_FLAGS]
            if fixed:
                raise UserError(f"--resume goes on with the settings recorded in {RunDir(out).config_file}, so "
                                f"{', '.join(fixed)} would be ignored; drop them (only --device, --progress and "
                                "--checkpoint_every can change)")
            dev = api.resolve_device(device, gpu, not_cuda)
            if out.is_dir():
                output_folder(out, f"make {out} writable, or copy the run to a writable place and resume there")
            echo_device(dev, resumed_config(out))
            with stopped_message(out):
                api.resume(out, device=str(dev), progress=progress, checkpoint_every=checkpoint_every, threads=threads)
            typer.echo(f"Model saved to: {out}")
            return
        if fine_tune or model_dir:
            out = fine_tune_command(ctx, model_dir, naive_img, fine_tune, train_mode, niter, manualSeed, out_dir,
                                    str(api.resolve_device(device, gpu, not_cuda)), progress, checkpoint_every,
                                    threads)
            typer.echo(f"Model saved to: {out}")
            return
        if not input_name:
            raise UserError("no training image given; pass --input_name PATH")
        plan = api.prepare(
            input_name, device=api.resolve_device(device, gpu, not_cuda), naive=naive_img,
            train_mode=train_mode, preset=preset, train_stages=train_stages, train_depth=train_depth, lr_scale=lr_scale, niter=niter, niter_low=niter_low,
            niter_stages=parse_counts(niter_stages, "--niter_stages"),
            Dsteps_stages=parse_counts(Dsteps_stages, "--Dsteps_stages"),
            min_size=min_size, max_size=max_size, nfc=nfc, num_layer=num_layer, ker_size=ker_size,
            noise_amp=noise_amp, lr_g=lr_g, lr_d=lr_d, beta1=beta1, gamma=gamma, Gsteps=Gsteps, Dsteps=Dsteps,
            lambda_grad=lambda_grad, gp_every=gp_every, precision=precision, alpha=alpha, activation=activation, lrelu_alpha=lrelu_alpha,
            batch_norm=batch_norm, manualSeed=manualSeed, sr_factor=sr_factor, paint_colors=paint_colors,
            threads=threads)
        if dry_run:  # what would run, and nothing written
            typer.echo(plan.describe())
            return
        out = Path(out_dir) if out_dir else api.default_out_dir(input_name, plan.config)
        check_new_run_dir(out)  # a named --out_dir that holds files: say which flag to pass, before any work
        output_folder(out, "choose another --out_dir" if out_dir else "pass --out_dir DIR to write the model elsewhere")
        echo_device(plan.device, plan.config, plan.threads)
        with stopped_message(out):
            api.train(plan, out_dir=out, progress=progress, checkpoint_every=checkpoint_every)
    except HANDLED as e:
        fail_on(e, "train at a smaller size (--max_size) or with fewer channels (--nfc)")
    typer.echo(f"Model saved to: {out}")


def parse_counts(text: str | None, flag: str) -> tuple[int, ...] | None:
    """'2000,800,350' -> (2000, 800, 350)."""
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"{flag} {text!r} is not a comma-separated list of whole numbers, e.g. 2000,2000,800") from None


def given_flags(ctx: typer.Context) -> list:
    """The command's options that were typed on the command line (not left at their defaults)."""
    return [p for p in ctx.command.params if getattr(ctx.get_parameter_source(p.name), "name", None) == "COMMANDLINE"]


# Flags --resume takes: the run's own settings come from its directory.
RESUME_FLAGS = {"resume", "device", "gpu", "not_cuda", "progress", "checkpoint_every", "threads"}
# Flags a fine-tuning run takes; the model's other settings cannot change.
FINE_TUNE_FLAGS = {"input_name", "train_mode", "niter", "manualSeed", "device", "gpu", "not_cuda", "out_dir",
                   "progress", "checkpoint_every", "naive_img", "fine_tune", "model_dir", "threads"}


def fine_tune_command(ctx: typer.Context, model_dir, naive_img, fine_tune, train_mode, niter, manualSeed, out_dir,
                      device, progress, checkpoint_every, threads=0) -> Path:
    """train --fine_tune: check the flags, then api.fine_tune. Returns the new model directory."""
    if not fine_tune:
        raise UserError("--model_dir is for fine-tuning; add --fine_tune --naive_img NAIVE (or leave --model_dir out)")
    if not model_dir or not naive_img:
        raise UserError("--fine_tune needs --model_dir M (a harmonization or editing model) and --naive_img NAIVE")
    given = given_flags(ctx)
    fixed = [p.opts[0] for p in given if p.name not in FINE_TUNE_FLAGS]
    if fixed:
        raise UserError(f"{', '.join(fixed)} cannot change when fine-tuning (the model's settings are kept); "
                        "only --niter and --manualSeed can")
    mode_given = any(p.name == "train_mode" for p in given)
    out = Path(out_dir) if out_dir else api.fine_tune_dir(model_dir)
    check_new_run_dir(out)
    output_folder(out, "choose another --out_dir" if out_dir else "pass --out_dir DIR to write the model elsewhere")
    echo_device(torch_device(device))
    with stopped_message(out):
        api.fine_tune(model_dir, naive_img, niter=niter, manualSeed=manualSeed, out_dir=out, device=device,
                      progress=progress, train_mode=train_mode if mode_given else None,
                      checkpoint_every=checkpoint_every, threads=threads)
    return out


def echo_device(device, config=None, threads: int | None = None) -> None:
    """The one line that says where a run computes (a GPU flag that could not be honoured was warned about),
    in what precision when ``config`` is given (--precision auto made concrete, as config.json records it)
    and with how many CPU threads when ``threads`` is (the numbers depend on it; config.json records it)."""
    from .device import describe

    precision = ""
    if config is not None:
        from .core.runtime import resolve_precision

        precision = f", computing in {resolve_precision(config, device).precision}"
    if threads and str(device).startswith("cpu"):
        precision += f" with {threads} thread{'s' if threads > 1 else ''}"
    typer.echo(f"Device: {describe(device)}{precision}")


def resumed_config(out: Path):
    """The settings of the interrupted run in ``out``, for the device line (None where they cannot be
    read: api.resume then says what is wrong)."""
    from .storage.rundir import RunDir

    try:
        return RunDir(out).checkpoint_config()
    except (UserError, OSError, KeyError, TypeError, ValueError):
        return None


def torch_device(name: str):
    import torch

    return torch.device(name)


@contextmanager
def warning_lines():
    """Library warnings (ConSinGANWarning) as one ``warning: ...`` line each on stderr while a command
    runs: Python's warning state (filters, printer) is saved with ``warnings.catch_warnings`` and
    restored when the command ends, so a program that calls the commands in-process keeps its own."""
    import warnings

    from .errors import ConSinGANWarning

    with warnings.catch_warnings():
        previous = warnings.showwarning
        warnings.simplefilter("always", ConSinGANWarning)

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, ConSinGANWarning):
                typer.echo(f"warning: {message}", err=True)
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def with_warning_lines(command):
    """``command`` run inside warning_lines (typer reads the signature through functools.wraps)."""
    import functools

    @functools.wraps(command)
    def run(*args, **kwargs):
        with warning_lines():
            return command(*args, **kwargs)

    return run


PAINT_SAMPLES = 4  # generate --paint without --num_samples


@app.command()
def generate(
    model_dir: ModelDirOpt = None,
    num_samples: Annotated[Optional[int], opt("--num_samples", help="random samples to write [50; --paint "
                                              f"{PAINT_SAMPLES}]")] = None,
    scale_h: Annotated[float, opt("--scale_h", help="output height factor")] = 1.0,
    scale_w: Annotated[float, opt("--scale_w", help="output width factor")] = 1.0,
    seed: Annotated[Optional[int], opt("--seed", "--manualSeed", help="random seed of the samples "
                                       "(0 to 2^63-1)")] = None,
    start_scale: Annotated[Optional[int], opt("--start_scale", help="stages below it keep the fixed noise (the "
                                              "layout) [0; animation: 0, 1 and 2]")] = None,
    alpha: Annotated[Optional[float], opt("--alpha", help="animation: pull towards the fixed noise [0.1]")] = None,
    beta: Annotated[Optional[float], opt("--beta", help="animation: momentum of the walk [0.80, 0.85, 0.90 "
                                         "and 0.95]")] = None,
    num_frames: Annotated[Optional[int], opt("--num_frames", help="animation: frames per file [100]")] = None,
    fps: Annotated[Optional[float], opt("--fps", help="animation: frames per second [10]")] = None,
    fmt: Annotated[Optional[str], opt("--format", help="animation: gif|mp4 (mp4 needs imageio-ffmpeg) "
                                      "[gif]")] = None,
    naive_img: Annotated[Optional[str], opt("--naive_img", help="harmonization/editing: harmonize or edit this "
                                            "image (any size)")] = None,
    mask: Annotated[Optional[str], opt("--mask", help="with --naive_img: the pasted region (gray, RGB or alpha) "
                                       "[<naive stem>_mask<ext> beside it]")] = None,
    sr_factor: Annotated[Optional[float], opt("--sr_factor", help="superres models: enlarge the training image "
                                              "this many times; writes sr_x<F>.png and bicubic_x<F>.png [the "
                                              "model's, 4]")] = None,
    paint: Annotated[Optional[str], opt("--paint", help="a painting in flat colours (any size; see the palette "
                                        "command): images with its layout and the training image's textures")] = None,
    out: Annotated[Optional[str], opt("--out", help="output folder [MODEL_DIR/Evaluation; with --naive_img or "
                                      "--paint: MODEL_DIR/Evaluation/<its stem>]")] = None,
    device: DeviceOpt = "auto",
    gpu: GpuOpt = None,
    not_cuda: NotCudaOpt = False,
) -> None:
    """Generate samples (any size) and the reconstruction from a trained model; for an animation
    model, GIFs of a random walk (all 12 of the paper's settings unless --start_scale/--beta pick some).

    \b
        consingan generate --model_dir M --num_samples 20 --start_scale 1
        consingan generate --model_dir M --scale_w 2 --seed 0
        consingan generate --model_dir M_animation --start_scale 1 --beta 0.9
        consingan generate --model_dir M_superres --sr_factor 4 --seed 0
        consingan generate --model_dir M_paint --paint painting.png \\
            --num_samples 4
    """
    try:
        check_real(scale_h, "--scale_h", positive=True)
        check_real(scale_w, "--scale_w", positive=True)
        if num_samples is not None and num_samples < 1:
            raise UserError(f"--num_samples must be at least 1, not {num_samples}")
        check_seed(seed)
        if sr_factor is not None:
            from .tasks.superres import check_factor

            check_factor(sr_factor)
        task = task_flags(sr_factor, paint, naive_img or mask, scale_h, scale_w, start_scale,
                          alpha, beta, num_frames, fps, fmt)
        for flag, value in (("--alpha", alpha), ("--beta", beta)):
            check_real(value, flag)
        check_real(fps, "--fps", positive=True)
        if fps is not None and not MIN_FPS <= fps <= MAX_FPS:  # a frame's time must fit the file's field
            raise UserError(f"--fps must be from {MIN_FPS:g} to {MAX_FPS:g} (a GIF stores frame times in 1/100 s, "
                            f"up to 655 s), not {fps}")
        model = load_model_arg(model_dir, device, gpu, not_cuda)
        if (task is None and model.config.mode.inference == "superres" and not (naive_img or mask)
                and num_samples is None and (scale_h, scale_w) == (1.0, 1.0) and start_scale is None):
            task = "superres"  # what a superres model is for: its training image enlarged by its sr_factor
        if task is not None:
            write_task(model, model_dir, task, sr_factor, paint, num_samples, seed, out)
            return
        num_samples = 50 if num_samples is None else num_samples
        if naive_img or mask:
            if not naive_img:
                raise UserError("--mask needs --naive_img (the image it belongs to)")
            target = output_folder(default_task_folder(Path(out) if out else RunDir(model_dir).evaluation_dir(
                Path(naive_img).stem), out), OUT_FIX)
            for path in api.write_harmonized(model, naive_img, target, mask_path=mask, seed=seed):
                typer.echo(f"Saved: {path}")
            return
        target = output_folder(Path(out) if out else RunDir(model_dir).evaluation_dir(), OUT_FIX)
        check_samples(model, scale_h, scale_w, num_samples)
        animation = dict(alpha=alpha, beta=beta, num_frames=num_frames, fps=fps, format=fmt)
        if model.config.mode.inference == "animation":
            write_animations(model, target, seed, start_scale, animation, scale_h, scale_w)
            return
        given = [f"--{name}" for name, value in animation.items() if value is not None]
        if given:
            raise UserError(f"{', '.join(given)} only apply to animation models; this model was trained "
                            f"with --train_mode {model.config.train_mode}")
        folder = api.write_samples(model, target, num_samples=num_samples, scale_h=scale_h,
                                   scale_w=scale_w, seed=seed, start_scale=start_scale or 0, progress="auto",
                                   numbered=True)
    except HANDLED as e:
        fail_on(e, "use a smaller --sr_factor" if sr_factor is not None else "use smaller --scale_h/--scale_w")
    first = numbered_base(folder)
    if first != folder:
        typer.echo(f"{first} already holds samples, so these went to {folder.name} beside it (nothing was overwritten)")
    typer.echo(f"Samples saved to: {folder}")


OUT_FIX = "pass --out DIR to write elsewhere"


def numbered_base(folder: Path) -> Path:
    """random_samples_2 -> random_samples (the folder a first run writes; api.write_samples(numbered=True))."""
    stem, _, n = folder.name.rpartition("_")
    return folder.with_name(stem) if stem and n.isdigit() and stem.startswith("random_samples") else folder


def default_task_folder(folder: Path, out) -> Path:
    """The folder a task writes when --out is not given: ``folder``, or when it already holds results
    of an earlier run, its first free numbered sibling (said on the way: nothing is overwritten)."""
    if out:
        return folder
    from .storage.outputs import free_folder

    free = free_folder(folder)
    if free != folder:
        typer.echo(f"{folder} already holds results, so this run writes to {free.name} beside it "
                   "(nothing was overwritten)")
    return free


def task_flags(sr_factor, paint, naive, scale_h, scale_w, start_scale, *animation) -> Optional[str]:
    """"superres" or "paint" when --sr_factor or --paint asks for it (None otherwise), after refusing
    flags that do not go with them."""
    task = "superres" if sr_factor is not None else "paint" if paint is not None else None
    if sr_factor is not None and paint is not None:
        raise UserError("--sr_factor and --paint are two different tasks; give one of them")
    if task is None:
        return None
    other = [flag for flag, given in (("--naive_img/--mask", naive), ("--scale_h", scale_h != 1.0),
                                      ("--scale_w", scale_w != 1.0), ("--start_scale", start_scale is not None),
                                      ("animation flags", any(a is not None for a in animation))) if given]
    if other:
        raise UserError(f"{', '.join(other)} cannot go with --{'sr_factor' if task == 'superres' else 'paint'}; "
                        "drop them")
    return task


def write_task(model, model_dir, task: str, sr_factor, paint, num_samples, seed, out) -> None:
    """generate --sr_factor (or a superres model without flags) and generate --paint: docs/method.md 5."""
    if task == "superres":
        from .tasks import superres

        superres.require_superres(model.config)
        if num_samples is not None:
            raise UserError("--num_samples does not apply to super-resolution (one enlarged image); drop it")
        factor = model.config.sr_factor if sr_factor is None else superres.check_factor(sr_factor)
        target = output_folder(Path(out) if out else RunDir(model_dir).evaluation_dir(), OUT_FIX)
        check_samples(model, factor, factor, 1, flags=(f"--sr_factor {factor:g}", "use a smaller --sr_factor"))
        for path in superres.write_results(model, target, factor, seed=seed):
            typer.echo(f"Saved: {path}")
        return
    from .tasks import paint as painting

    painting.require_image_stage0(model.config)
    n = PAINT_SAMPLES if num_samples is None else num_samples
    target = output_folder(default_task_folder(Path(out) if out else RunDir(model_dir).evaluation_dir(Path(paint).stem),
                                               out), OUT_FIX)
    check_samples(model, 1.0, 1.0, n)
    for path in painting.write_results(model, paint, target, num_samples=n, seed=seed):
        typer.echo(f"Saved: {path}")
# Frame rates for animations: a GIF stores frame times in 1/100 s (so at most 100 fps) in 16 bits (at most
# 655 s, which Pillow can exceed when it merges identical frames into one: 10 s per frame leaves room).
MIN_FPS, MAX_FPS = 0.1, 100.0


def write_animations(model, target: Path, seed: Optional[int], start_scale: Optional[int], animation: dict,
                     scale_h: float, scale_w: float) -> None:
    """The generate command for an animation model: one file per walk, each named as it is written."""
    if (scale_h, scale_w) != (1.0, 1.0):
        raise UserError("animations have the training size; leave out --scale_h/--scale_w")
    fmt = animation.pop("format") or "gif"
    walks = api.reference_walks(start_scale=start_scale, **animation)
    api.write_animations(model, target, walks, seed=seed, fmt=fmt, progress="auto",
                         on_written=lambda path: typer.echo(f"Animation saved to: {path}"))


@app.command()
def evaluate(
    model_dir: ModelDirOpt = None,
    num_samples: Annotated[int, opt("--num_samples", help="random samples to judge (at least 2)")] = 50,
    seed: Annotated[int, opt("--seed", help="seed of the samples, patch positions and projections")] = 0,
    naive_img: Annotated[Optional[str], opt("--naive_img", help="harmonization/editing: judge the result on "
                                            "this naive image (without: on the reconstruction)")] = None,
    out: Annotated[Optional[str], opt("--out", help="folder for metrics.json [MODEL_DIR/Evaluation; with "
                                      "--naive_img: MODEL_DIR/Evaluation/<naive stem>]")] = None,
    device: DeviceOpt = "auto",
    gpu: GpuOpt = None,
    not_cuda: NotCudaOpt = False,
) -> None:
    """Score a trained model (swd, diversity, rec_rmse, nn_patch) and write metrics.json.

    \b
        consingan evaluate --model_dir TrainedModels/rocket/<run> --seed 0
        consingan evaluate --model_dir M_harmonization --naive_img naive.png
    """
    from .metrics import format_table

    try:
        check_seed(seed)
        model = load_model_arg(model_dir, device, gpu, not_cuda)
        target = Path(out) if out else RunDir(model_dir).evaluation_dir(Path(naive_img).stem if naive_img else None)
        output_folder(target, OUT_FIX)
        check_samples(model, 1.0, 1.0, num_samples, kept=num_samples)
        path, metrics = api.write_metrics(model, target, num_samples=num_samples, seed=seed, naive=naive_img)
    except HANDLED as e:
        fail_on(e, "use a smaller --num_samples")
    typer.echo(format_table(metrics))
    typer.echo(f"Metrics saved to: {path}")


@app.command()
def compose(
    background: Annotated[Optional[str], opt("--background", help="the image to paste into (the training image)")] = None,
    obj: Annotated[Optional[str], opt("--object", help="the object; its alpha channel, if any, is its shape")] = None,
    object_mask: Annotated[Optional[str], opt("--object_mask", help="the object's shape when it has no alpha "
                                              "(default: its whole rectangle)")] = None,
    x: Annotated[Optional[int], opt("--x", help="column of the object's top-left corner (may be negative)")] = None,
    y: Annotated[Optional[int], opt("--y", help="row of the object's top-left corner (may be negative)")] = None,
    scale: Annotated[float, opt("--scale", help="object size factor")] = 1.0,
    out: Annotated[Optional[str], opt("--out", help="the naive image to write; its mask goes beside it as "
                                      "<stem>_mask<ext>")] = None,
) -> None:
    """Paste an object into a background: writes the naive image and its mask for harmonization/editing.

    \b
        consingan compose --background bg.png --object cup.png \\
            --x 40 --y 60 --scale 0.5 --out naive.png
    """
    from .tasks.compose import write_composite

    try:
        missing = [flag for flag, value in (("--background", background), ("--object", obj), ("--x", x),
                                            ("--y", y), ("--out", out)) if value is None]
        if missing:
            raise UserError(f"compose needs {', '.join(missing)}")
        check_real(scale, "--scale", positive=True)
        check_image_name(out, "--out")
        output_folder(Path(out).parent, "choose another --out")
        check_object(obj, scale)
        naive, mask_file = write_composite(background, obj, out, x, y, scale=scale, object_mask=object_mask)
    except HANDLED as e:
        fail_on(e, "use a smaller --scale")
    typer.echo(f"Naive image saved to: {naive}")
    typer.echo(f"Mask saved to: {mask_file}")


def check_image_name(name: str, flag: str) -> None:
    from .storage.image_files import WRITE_SUFFIXES, is_image_name

    if not is_image_name(name, WRITE_SUFFIXES):
        raise UserError(f"{flag} {name} has no image extension, so the writer cannot tell the format; "
                        f"end it with one of {', '.join(WRITE_SUFFIXES)} (e.g. .png)")


@app.command()
def palette(
    model_dir: ModelDirOpt = None,
    out: Annotated[Optional[str], opt("--out", help="the swatch image to write, e.g. palette.png")] = None,
    device: DeviceOpt = "auto",
    gpu: GpuOpt = None,
    not_cuda: NotCudaOpt = False,
) -> None:
    """Write the colours a painting for --paint should use, as a swatch image (one square per colour),
    and print them: a paint model's palette (k-means on its stage-0 image), or the same for another model.

    \b
        consingan palette --model_dir M_paint --out palette.png
    """
    from .tasks.paint import hex_colour, write_palette

    try:
        if not out:
            raise UserError("palette needs --out FILE (e.g. palette.png)")
        check_image_name(out, "--out")
        output_folder(Path(out).parent, "choose another --out")
        model = load_model_arg(model_dir, device, gpu, not_cuda)
        path, colours = write_palette(model, out)
    except HANDLED as e:
        fail_on(e, "use another machine")
    typer.echo("Palette: " + " ".join(hex_colour(c) for c in colours))
    typer.echo(f"Palette saved to: {path}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def batch(
    ctx: typer.Context,
    images: Annotated[Optional[str], opt("--images", help="a folder of images, a glob pattern (quoted), a .txt "
                                         "list or a .csv manifest (image column, per-image train flags as columns)")] = None,
    out_root: Annotated[Optional[str], opt("--out_root", help="one model folder per image goes here (on a cluster: "
                                           "a shared file system)")] = None,
    samples: Annotated[int, opt("--samples", help="samples to write per model [0]")] = 0,
    evaluate: Annotated[bool, opt("--evaluate", help="write metrics.json per model")] = False,
    cpus_per_job: Annotated[float, opt("--cpus_per_job", help="CPUs (torch threads) per job [1]")] = 1,
    gpus_per_job: Annotated[float, opt("--gpus_per_job", help="GPUs per job; 0.25 packs four jobs on a GPU [0]")] = 0,
    address: Annotated[Optional[str], opt("--address", help="join this Ray cluster (auto or HOST:PORT) [RAY_ADDRESS, "
                                          "else a local Ray on this machine]")] = None,
    retries: Annotated[int, opt("--retries", help="retries of a job whose worker died [3]")] = 3,
    retry_failed: Annotated[bool, opt("--retry_failed", help="train the images that failed before again")] = False,
    force: Annotated[bool, opt("--force", help="train every image again from nothing (removes its old folder)")] = False,
    dry_run: Annotated[bool, opt("--dry_run", help="print each image's resolved settings, stage sizes and estimate; "
                                 "write nothing, start no Ray")] = False,
) -> None:
    """Train a model on each of many images, on Ray (local by default). Any train flag applies to every
    image; a manifest's columns override it per image. Run it again to go on: finished images are
    skipped, interrupted ones resume from their checkpoints.

    \b
        consingan batch --images photos/ --out_root runs/photos --preset fast --samples 10
        consingan batch --images manifest.csv --out_root runs/m --niter 500 --evaluate
        consingan batch --images 'data/*.png' --out_root /shared/runs --address auto --gpus_per_job 0.25
    """
    try:
        if not images or not out_root:
            raise UserError("batch needs --images (folder, pattern, .txt or .csv) and --out_root FOLDER")
        settings = batch_train_flags(ctx.args)
        from . import batch as batch_runner

        if dry_run:
            for key in ("progress", "checkpoint_every"):
                settings.pop(key, None)
            plans = batch_runner.dry_run(images, out_root, gpus_per_job=gpus_per_job, cpus_per_job=cpus_per_job,
                                         **settings)
            for job, plan in plans:
                typer.echo(f"{job.name} ({job.image}) -> {Path(out_root) / job.name}")
                typer.echo(plan.describe())
            from .core.cost import describe_seconds

            total = sum(plan.estimate.seconds for _, plan in plans)
            typer.echo(f"{len(plans)} image(s), about {describe_seconds(total)} of training in all on one worker")
            return
        results = batch_runner.run(images, out_root, samples=samples, evaluate=evaluate, cpus_per_job=cpus_per_job,
                                   gpus_per_job=gpus_per_job, address=address, retries=retries,
                                   retry_failed=retry_failed, force=force, **settings)
    except KeyboardInterrupt as exc:
        code = getattr(exc, "exit_code", 130)  # batch.Stopped: 143 for SIGTERM
        what = "SIGTERM" if code == 143 else "Ctrl-C"
        if str(exc) and str(exc) != "interrupted":
            typer.echo(f"error: {exc} ({what})", err=True)
        else:
            typer.echo(f"error: interrupted ({what}); run the same command again to go on (summary: "
                       f"{Path(out_root) / 'summary.csv'})", err=True)
        raise typer.Exit(code)
    except HANDLED as e:
        fail_on(e, "lower --cpus_per_job's jobs per machine, --max_size or --nfc")
    typer.echo(batch_runner.total_line(results, out_root))
    if any(r.status != "done" and r.status != "skipped" for r in results):
        raise typer.Exit(1)


# Train flags that name one run's files or a single model; the batch names those itself.
NOT_BATCH_FLAGS = {"input_name", "out_dir", "resume", "fine_tune", "model_dir", "naive_img", "gpu"}


def batch_train_flags(args: list[str]) -> dict:
    """The train flags given to batch, parsed by the train command itself: {setting: value}."""
    train_cmd = typer.main.get_command(app).commands["train"]
    try:
        sub = train_cmd.make_context("batch", list(args), resilient_parsing=False)
    except typer.TyperException as exc:  # an unknown flag or a value of the wrong type
        raise UserError(f"{exc.format_message()} (batch takes the train flags; see consingan train --help)") from None
    given = {p.name: sub.params[p.name] for p in given_flags(sub)}
    refused = sorted(f"--{name}" for name in given if name in NOT_BATCH_FLAGS)
    if refused:
        raise UserError(f"{', '.join(refused)} cannot be given to batch: the images come from --images, the folders "
                        "from --out_root, and Ray picks the GPU (--gpus_per_job)")
    if given.pop("not_cuda", False):
        given["device"] = "cpu"
    for key in ("niter_stages", "Dsteps_stages"):
        if key in given:
            given[key] = parse_counts(given[key], f"--{key}")
    return given


@app.command("app")
def web_app(
    models_root: Annotated[str, opt("--models_root", help="folder of the models the app lists and writes")] = "TrainedModels",
    host: Annotated[str, opt("--host", help="address to listen on (another than 127.0.0.1 is reachable from "
                             "other machines)")] = "127.0.0.1",
    port: Annotated[int, opt("--port", help="port to listen on", min=1, max=65535)] = 7860,
    device: DeviceOpt = "auto",
) -> None:
    """The web app: train, sample, harmonize, paint, enlarge, animate and explore from the browser.

    \b
        consingan app --models_root TrainedModels   # then open http://127.0.0.1:7860
    """
    try:
        import gradio  # noqa: F401
    except ImportError:
        fail('the web app needs Gradio: pip install -e ".[app]"')
    from .webapp import launch

    try:
        dev = api.resolve_device(device)
        output_folder(models_root, "pass --models_root DIR, a folder the app may write into")
        launch(models_root, host=host, port=port, device=str(dev))
    except HANDLED as e:
        fail_on(e, "train at a smaller size")


# Every command prints the library's warnings as lines (commands defined above this point).
for _command in app.registered_commands:
    _command.callback = with_warning_lines(_command.callback)


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="consingan")


def script(command: str, prog_name: str | None = None) -> None:
    """Entry for main_train.py, main_generate.py and evaluate_model.py: ``python main_train.py FLAGS`` =
    ``consingan train FLAGS``. The command runs on its own (not as a subcommand of the group), so its help
    shows ``Usage: main_train.py [OPTIONS]``, which works as printed."""
    cmd = typer.main.get_command(app).commands[command]
    cmd.main(args=sys.argv[1:], prog_name=prog_name or os.path.basename(sys.argv[0]) or f"main_{command}.py")
