"""The command line: parse flags (the reference's spellings, dashed ones too), call the library, print.

    consingan train --train_mode generation --input_name Images/Generation/rocket.png
    consingan generate --model_dir TrainedModels/rocket/<run> --num_samples 20 --scale_w 2
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import api
from .errors import UserError
from .train import TrainingStopped

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
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


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def stopped_message(out: Path):
    """Training that stopped early: say why and how to go on, exit non-zero."""
    try:
        yield
    except TrainingStopped as stop:
        typer.echo(f"error: {stop}", err=True)
        if stop.checkpoint is not None and stop.checkpoint.exists():
            typer.echo(f"Checkpoint saved in {out}. Resume with: python main_train.py --resume {out}", err=True)
        raise typer.Exit(130 if stop.interrupted else 1)


@app.command()
def train(
    input_name: Annotated[Optional[str], opt("--input_name", help="training image")] = None,
    train_mode: Annotated[str, opt("--train_mode", help="generation|retarget|harmonization|editing|animation")] = "generation",
    train_stages: Annotated[Optional[int], opt("--train_stages", help="number of stages [6; harmonization 3]")] = None,
    train_depth: Annotated[Optional[int], opt("--train_depth", help="stages trained at a time [3]")] = None,
    lr_scale: Annotated[Optional[float], opt("--lr_scale", help="lr factor per lower stage [0.1]")] = None,
    niter: Annotated[Optional[int], opt("--niter", help="iterations per stage [2000; harmonization/editing 1000]")] = None,
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
    lambda_grad: Annotated[Optional[float], opt("--lambda_grad", help="gradient penalty weight [0.1]")] = None,
    alpha: Annotated[Optional[float], opt("--alpha", help="reconstruction loss weight [10]")] = None,
    activation: Annotated[Optional[str], opt("--activation", help="lrelu|elu|prelu|selu [lrelu]")] = None,
    lrelu_alpha: Annotated[Optional[float], opt("--lrelu_alpha", help="leaky relu slope [0.05; harmonization 0.3]")] = None,
    batch_norm: Annotated[Optional[bool], typer.Option("--batch_norm/--no_batch_norm", "--batch-norm/--no-batch-norm",
                                                       help="batch norm in G [off; harmonization/editing on]")] = None,
    manualSeed: Annotated[Optional[int], opt("--manualSeed", help="random seed [random, recorded]")] = None,
    device: Annotated[str, opt("--device", help="auto|cpu|cuda (auto: CUDA when available)")] = "auto",
    gpu: Annotated[Optional[int], opt("--gpu", help="GPU index")] = None,
    not_cuda: Annotated[bool, opt("--not_cuda", help="run on the CPU")] = False,
    out_dir: Annotated[Optional[str], opt("--out_dir", help="write the model exactly here")] = None,
    progress: Annotated[str, opt("--progress", help="auto|plain|none")] = "auto",
    resume: Annotated[Optional[str], opt("--resume", help="go on with the interrupted run in this directory")] = None,
) -> None:
    """Train a model on one image."""
    try:
        if resume:
            out = Path(resume)
            with stopped_message(out):
                api.resume(out, device=str(api.resolve_device(device, gpu, not_cuda)), progress=progress)
            typer.echo(f"Model saved to: {out}")
            return
        if not input_name:
            raise UserError("no training image given; pass --input_name PATH")
        config = api.make_config(
            train_mode, train_stages=train_stages, train_depth=train_depth, lr_scale=lr_scale, niter=niter,
            min_size=min_size, max_size=max_size, nfc=nfc, num_layer=num_layer, ker_size=ker_size,
            noise_amp=noise_amp, lr_g=lr_g, lr_d=lr_d, beta1=beta1, gamma=gamma, Gsteps=Gsteps, Dsteps=Dsteps,
            lambda_grad=lambda_grad, alpha=alpha, activation=activation, lrelu_alpha=lrelu_alpha,
            batch_norm=batch_norm, manualSeed=manualSeed)
        dev = api.resolve_device(device, gpu, not_cuda)
        image = api.read_image(input_name)
        out = Path(out_dir) if out_dir else api.default_out_dir(input_name, config)
        with stopped_message(out):
            api.train(image, config, out_dir=out, device=str(dev), progress=progress, input_name=input_name)
    except UserError as e:
        fail(str(e))
    typer.echo(f"Model saved to: {out}")


@app.command()
def generate(
    model_dir: Annotated[Optional[str], opt("--model_dir", help="a trained model's directory")] = None,
    num_samples: Annotated[int, opt("--num_samples", help="random samples to write")] = 50,
    scale_h: Annotated[float, opt("--scale_h", help="output height factor")] = 1.0,
    scale_w: Annotated[float, opt("--scale_w", help="output width factor")] = 1.0,
    seed: Annotated[Optional[int], opt("--seed", help="random seed of the samples")] = None,
    out: Annotated[Optional[str], opt("--out", help="output folder [MODEL_DIR/Evaluation]")] = None,
    device: Annotated[str, opt("--device", help="auto|cpu|cuda")] = "auto",
    gpu: Annotated[Optional[int], opt("--gpu", help="GPU index")] = None,
    not_cuda: Annotated[bool, opt("--not_cuda", help="run on the CPU")] = False,
) -> None:
    """Generate samples (any size) and the reconstruction from a trained model."""
    try:
        if not model_dir:
            raise UserError("no model given; pass --model_dir DIR (a directory written by train)")
        if num_samples < 0 or scale_h <= 0 or scale_w <= 0:
            raise UserError("--num_samples must be >= 0 and --scale_h/--scale_w > 0")
        dev = api.resolve_device(device, gpu, not_cuda)
        model = api.load_model(model_dir, device=dev)
        target = Path(out) if out else Path(model_dir) / "Evaluation"
        folder = api.write_samples(model, target, num_samples=num_samples, scale_h=scale_h,
                                   scale_w=scale_w, seed=seed)
    except UserError as e:
        fail(str(e))
    typer.echo(f"Samples saved to: {folder}")


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="consingan")


def script(command: str) -> None:
    """Entry for main_train.py / main_generate.py: ``python main_train.py FLAGS`` = ``consingan train FLAGS``."""
    app(args=[command, *sys.argv[1:]], prog_name=f"main_{command}.py")
