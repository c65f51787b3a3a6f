"""Super-resolution with a ``superres`` model (docs/method.md 5).

A ``superres`` model is trained on the low-resolution image with a reconstruction weight of 100 and a
geometric pyramid whose step is the upsampling step ``r`` of its ``sr_factor``. To enlarge its
training image by a factor F, the model runs to its top stage's features on the fixed noise (the
reconstruction path), then ``n`` times enlarges the features bicubically by ``r``, adds noise times
the top stage's amplitude and applies the top stage's blocks with their residual; the tail turns the
last features into the image. The last step lands exactly on F times the training size.

    model = consingan.load("runs/lr")
    sr = model.super_resolve(4, seed=0)              # 1x3x4Hx4W in [-1, 1]
    bicubic = superres.bicubic(model.real, 4)         # the same size, for comparison
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import Config
from ..core.image import min_stage_side, resize, resize_weights, stage_scales
from ..core.networks import autocast, evaluating, upsample_interpolate, upsample_matmul
from ..errors import UserError
from .sampling import make_generator

# SinGAN's super-resolution step (docs/method.md 5): the pyramid and the upsampling use 2^(1/3).
BASE_STEP = 2.0 ** (1.0 / 3.0)
# Enlargements of the top stage's features at inference. SinGAN's round(ln F / ln r) (6 for x4) drifts
# here: each pass of the top stage over its own output adds its residual again (docs/method.md 5).
DEFAULT_STEPS = 1
# Iterations of back-projection onto the training image after the enlargement (docs/method.md 5).
BACK_PROJECTION = 3


def sr_steps(factor: float, step: float = BASE_STEP) -> tuple[int, float]:
    """(n, r): ``n = round(ln F / ln step)`` enlargements (at least one) of ``r = F^(1/n)`` each,
    so that r^n = F exactly and r is the closest such factor to ``step``."""
    n = max(1, round(math.log(factor) / math.log(step)))
    return n, factor ** (1.0 / n)


def check_factor(factor: float, flag: str = "--sr_factor") -> float:
    """``factor`` as a float, or a UserError for a factor that is not finite or not above 1."""
    try:
        value = float(factor)
    except (TypeError, ValueError):
        raise UserError(f"{flag} must be a number above 1 (e.g. 2, 4 or 8), not {factor!r}") from None
    if not math.isfinite(value) or value <= 1.0:
        raise UserError(f"{flag} must be a finite number above 1 (e.g. 2, 4 or 8), not {factor}")
    return value


def require_superres(config: Config, what: str = "--sr_factor") -> None:
    if config.mode.name != "superres":
        raise UserError(f"{what} needs a super-resolution model, and this one was trained with --train_mode "
                        f"{config.train_mode}; train one on the low-resolution image with "
                        "python main_train.py --train_mode superres --input_name LR.png [--sr_factor 4]")


def superres_min_size(height: int, width: int, config: Config) -> int:
    """The stage-0 short side that makes the pyramid step of an image of ``height`` x ``width`` (before
    max_size) equal to the upsampling step of ``config.sr_factor``: the short side of the training image
    over r^(train_stages - 1), rounded, and at least what the networks need (min_stage_side)."""
    h, w = training_image_size(height, width, config)
    _, r = sr_steps(config.sr_factor)
    side = round(min(h, w) / r ** config.stop_stage)
    return max(side, min_stage_side(config))


def training_image_size(height: int, width: int, config: Config) -> tuple[int, int]:
    """The training image's size for an input of ``height`` x ``width`` (max_size applied)."""
    scale = min(config.max_size / max(height, width), 1.0)
    return math.ceil(height * scale), math.ceil(width * scale)


def superres_config(image: torch.Tensor, config: Config, min_size_given: bool = False) -> Config:
    """``config`` for training ``superres`` on ``image``: min_size set so that the pyramid step is the
    upsampling step of sr_factor (unless the user gave --min_size). Other modes: ``config`` unchanged."""
    if config.mode.name != "superres" or min_size_given:
        return config
    h, w = image.shape[-2:]
    size = superres_min_size(h, w, config)
    return config.replace(min_size=min(size, config.max_size))


def model_step(model) -> float:
    """The model's pyramid step between its last two stages (nominal, as the pyramid resizes)."""
    h, w = model.real.shape[-2:]
    return 1.0 / stage_scales(h, w, model.config)[-2]


def output_size(model, factor: float) -> tuple[int, int]:
    h, w = model.real.shape[-2:]
    return round(h * factor), round(w * factor)


def step_sizes(model, factor: float, steps: int) -> list[tuple[int, int]]:
    """(height, width) after each of ``steps`` enlargements: r^k times the training size with
    r = F^(1/steps), the last exactly F times it (rounded)."""
    n, r = steps, factor ** (1.0 / steps)
    h, w = model.real.shape[-2:]
    sizes = [(round(h * r ** k), round(w * r ** k)) for k in range(1, n)]
    return sizes + [output_size(model, factor)]


def _top_features(model) -> torch.Tensor:
    """The top stage's features for the fixed noise: the input of the generator's tail, unpadded."""
    G, p = model.G, model.config.pad
    seen: list[torch.Tensor] = []
    hook = G.tail.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        G(model.fixed, model.shapes, model.amps)
    finally:
        hook.remove()
    x = seen[0]
    return x[..., p:x.shape[-2] - p, p:x.shape[-1] - p] if p else x


@torch.no_grad()
def super_resolve(model, factor: float | None = None, seed: int | None = None, steps: int | None = None,
                  back_projection: int = BACK_PROJECTION) -> torch.Tensor:
    """The training image enlarged ``factor`` times (default: the model's sr_factor), 1x3x(F*H)x(F*W)
    in [-1, 1], F*H rounded. ``seed`` fixes the noise of the enlargements (None: fresh noise).

    ``steps``: enlargements of the top stage's features, each followed by the top stage (default
    DEFAULT_STEPS; ``sr_steps`` gives SinGAN's count). ``back_projection``: iterations of the
    correction that makes the result, shrunk back, agree with the training image (0: none).
    """
    c = model.config
    require_superres(c, "super-resolution")
    factor = c.sr_factor if factor is None else check_factor(factor, "factor")
    steps = DEFAULT_STEPS if steps is None else steps
    if not (isinstance(steps, int) and steps >= 1) or not (isinstance(back_projection, int) and back_projection >= 0):
        raise UserError(f"steps must be a whole number of at least 1 and back_projection at least 0, not {steps}, "
                        f"{back_projection}")
    G, device = model.G, model.device
    gen = make_generator(device, seed)
    border = c.num_layer * c.pad
    upsample = upsample_matmul if G.fast_upsample else upsample_interpolate
    top, amp = G.body[-1], float(model.amps[-1])
    with evaluating(G):
        y = _top_features(model)
        with autocast(c, y):
            for h, w in step_sizes(model, factor, steps):
                base = upsample(y, (h, w))
                noise = torch.randn(1, c.nfc, h, w, device=device, generator=gen)
                y = top(F.pad(base + amp * noise, (border,) * 4)) + base
            out = G.tail(F.pad(y, (c.pad,) * 4))
    return back_project(out.float(), model.real.float(), back_projection)


def linear_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The resize of docs/method.md 1 (the same weights; antialiased when the height shrinks) as a
    linear map: no truncation to 8-bit levels and no clamping, so it also resizes differences."""
    h, w = image.shape[-2:]
    out_h, out_w = int(size[0]), int(size[1])
    antialias = out_h < h
    mh = torch.from_numpy(resize_weights(h, out_h, out_h / h, antialias).copy())
    mw = torch.from_numpy(resize_weights(w, out_w, out_w / w, antialias).copy())
    x = image.detach().to("cpu", torch.float64)
    return (mh @ x @ mw.T).to(image.device, image.dtype)


def back_project(sr: torch.Tensor, lr: torch.Tensor, iterations: int = BACK_PROJECTION) -> torch.Tensor:
    """Iterative back-projection (Irani and Peleg, 1991): ``sr`` plus the enlarged difference between
    ``lr`` and ``sr`` shrunk to its size, ``iterations`` times, clamped to [-1, 1]. It keeps the
    generated detail and pulls the colours and the coarse layout back to the low-resolution image."""
    size = tuple(lr.shape[-2:])
    for _ in range(iterations):
        sr = (sr + linear_resize(lr.to(sr.device) - linear_resize(sr, size), tuple(sr.shape[-2:]))).clamp(-1.0, 1.0)
    return sr


def bicubic(image: torch.Tensor, factor: float) -> torch.Tensor:
    """``image`` enlarged with the project's bicubic resize (docs/method.md 1) to F times its size."""
    h, w = image.shape[-2:]
    return resize(image, (round(h * factor), round(w * factor)))


def result_files(out: str | os.PathLike, factor: float) -> tuple[Path, Path]:
    name = f"x{factor:g}"
    return Path(out) / f"sr_{name}.png", Path(out) / f"bicubic_{name}.png"


def write_results(model, out: str | os.PathLike, factor: float | None = None, seed: int | None = None) -> tuple[Path, Path]:
    """The generate command's ``--sr_factor``: ``sr_x<F>.png`` and ``bicubic_x<F>.png`` in ``out``.
    Existing files are an error, found before any work; each file is written atomically."""
    from ..storage.image_files import save_image

    require_superres(model.config)
    factor = model.config.sr_factor if factor is None else check_factor(factor)
    files = result_files(out, factor)
    for f in files:
        if f.exists():
            raise UserError(f"{f} already exists; pass --out DIR to write elsewhere (nothing was overwritten)")
    sr = super_resolve(model, factor, seed=seed)
    save_image(sr, files[0], overwrite=False)
    save_image(bicubic(model.real, factor), files[1], overwrite=False)
    return files


def shrunk_warning(image: torch.Tensor, config: Config) -> str | None:
    """A warning when ``max_size`` shrinks the low-resolution image (the result then enlarges the
    shrunk image, not the input), else None."""
    h, w = image.shape[-2:]
    th, tw = training_image_size(h, w, config)
    if (th, tw) == (h, w):
        return None
    return (f"the image is {h}x{w} and --max_size {config.max_size} shrinks it to {th}x{tw}, so the result "
            f"enlarges that; pass --max_size {max(h, w)} to super-resolve the image itself")
