"""Harmonization and editing with a trained model (docs/method.md section 4): a naive image in, a harmonized one out.

The naive image (an object pasted into the training image, or the training image edited by hand)
replaces stage 0's input; every later stage gets its fixed noise, so the generator redraws the
image in the training image's style. With a mask of the pasted region, the result is blended into
the training image so that only the region around the object changes.

    model = consingan.load("TrainedModels/chelsea/harmonization")
    out, blended = harmonize(model, read_image("naive.png"), read_mask("naive_mask.png"))
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import Config
from ..core.image import resize
from ..core.networks import evaluating
from ..core.rng import Rngs, device_of
from ..errors import ConSinGANWarning, UserError
from ..storage.image_files import read_array, read_image, save_image
from .masks import _mask_tensor, _object, default_mask_path, mask_channel, soft_mask

ASPECT_TOLERANCE = 0.05


def require_naive_mode(config: Config, what: str = "--naive_img") -> None:
    if config.mode.result_name is None:
        raise UserError(f"{what} works with --train_mode harmonization or editing only, not with "
                        f"--train_mode {config.train_mode}; train a harmonization or editing model first")


# --- masks ----------------------------------------------------------------------------------

def check_aspect(naive: torch.Tensor, real: torch.Tensor, what: str = "the naive image") -> None:
    nh, nw = naive.shape[-2:]
    rh, rw = real.shape[-2:]
    if abs((nw / nh) / (rw / rh) - 1.0) > ASPECT_TOLERANCE:
        warnings.warn(f"{what} is {nh}x{nw} but the model was trained on {rh}x{rw}: its aspect ratio differs "
                      "by more than 5% and it is stretched to the model's shape", ConSinGANWarning, stacklevel=3)


def naive_stage0(naive: torch.Tensor, shape0: tuple[int, int], config: Config, device: torch.device | str,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The naive image resized to stage 0, plus the mode's stage-0 noise (editing: 0.1 * N(0, 1))."""
    z = resize(naive.float().to(device), tuple(shape0))
    std = config.mode.stage0_noise
    if std:
        z = z + std * torch.randn(z.shape, device=z.device, generator=generator)
    return z


def fine_tune_input(naive: torch.Tensor, config: Config) -> Callable[[torch.Tensor, Rngs | None], torch.Tensor]:
    """The stage-0 input of fine-tuning: the naive image at the stage-0 size of ``real0`` each
    iteration, plus fresh stage-0 noise for editing."""
    std = config.mode.stage0_noise
    cache: dict[str, torch.Tensor] = {}

    def stage0_input(real0: torch.Tensor, rng: Rngs | None = None) -> torch.Tensor:
        if "base" not in cache:
            cache["base"] = resize(naive.float().to(real0.device), tuple(real0.shape[-2:]))
        base = cache["base"]
        # The run's generator, as training's other draws: reproducible and resumable.
        return base + std * torch.randn(base.shape, device=base.device, generator=device_of(rng)) if std else base

    return stage0_input


# --- inference ------------------------------------------------------------------------------

@torch.no_grad()
def _generate(model, z0: torch.Tensor) -> torch.Tensor:
    with evaluating(model.G):
        return model.G([z0, *model.fixed[1:]], model.shapes, model.amps)


@torch.no_grad()
def harmonize(model, naive: torch.Tensor, mask: Any = None, seed: int | None = None,
              check: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(result, blended result or None): 1x3xHxW in [-1, 1] at the model's top-stage size.

    ``naive``: 1x3xhxw in [-1, 1], any size (resized to stage 0). ``mask``: HxW (any size; the
    naive image's), bool (True where the object is, e.g. ``read_mask``) or the mask image's channel
    as read (``mask_channel``: the object where its 8-bit level is above 0 after the resize to the
    output, as the reference; a bool mask is resized as a black-and-white image). The blend is
    ``m*out + (1-m)*real`` with ``m`` the dilated, blurred, min-max normalised mask. ``seed`` fixes
    the noise editing adds to the naive image.
    """
    require_naive_mode(model.config)
    if check:
        check_aspect(naive, model.real)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=model.device)
        generator.manual_seed(int(seed))
    z0 = naive_stage0(naive, model.shapes[0], model.config, model.device, generator)
    out = _generate(model, z0)
    if mask is None:
        return out, None
    size = tuple(out.shape[-2:])
    real = model.real.to(out.device)
    if tuple(real.shape[-2:]) != size:
        # A partial model blends with exactly its top stage's training image, as the pyramid makes it.
        real = next((r for r in model.reals() if tuple(r.shape[-2:]) == size), None)
        real = resize(model.real, size) if real is None else real
        real = real.to(out.device)
    m = soft_mask(_mask_tensor(mask, size, out.device), int(model.config.mode.mask_dilation))
    return out, m * out + (1 - m) * real


def result_files(config: Config, out: str | os.PathLike, with_mask: bool) -> list[Path]:
    name = config.mode.result_name
    files = [Path(out) / f"{name}_wo_mask.png"]
    return files + [Path(out) / f"{name}_w_mask.png"] if with_mask else files


def write_results(model, naive_path: str | os.PathLike, out: str | os.PathLike,
                  mask_path: str | os.PathLike | None = None, seed: int | None = None) -> list[Path]:
    """The generate command on a naive image: ``<name>_wo_mask.png`` and, with a mask,
    ``<name>_w_mask.png`` in ``out`` (name: harmonized / edited). Without ``mask_path`` the mask is
    ``<naive stem>_mask<ext>`` beside the naive image when it exists. Existing files are an error."""
    require_naive_mode(model.config)
    naive = read_image(naive_path, "naive image")
    mask = None
    if mask_path is None and default_mask_path(naive_path).is_file():
        mask_path = default_mask_path(naive_path)
    if mask_path is not None:
        # The channel itself, not a bool: a mask of another size is resized with its grey levels (docs/method.md section 4).
        mask = mask_channel(read_array(mask_path, "mask"), f"mask {mask_path}")
        if not _object(torch.from_numpy(mask) * 2.0 - 1.0).any():
            raise UserError(f"mask {mask_path} is all zero, so the blend would be the training image; mark the "
                            "pasted object white in the mask, or leave out --mask")
        if mask.shape != tuple(naive.shape[-2:]):
            # Both are resized to the model's stages anyway; a mismatch usually means the wrong file.
            warnings.warn(f"mask {mask_path} is {mask.shape[0]}x{mask.shape[1]} but the naive image {naive_path} "
                          f"is {naive.shape[-2]}x{naive.shape[-1]}: resizing the mask to it", ConSinGANWarning,
                          stacklevel=2)
    else:
        warnings.warn(f"no mask given and {default_mask_path(naive_path)} does not exist: writing only the "
                      "result without mask (pass --mask FILE to blend)", ConSinGANWarning, stacklevel=2)
    files = result_files(model.config, out, mask is not None)
    for f in files:
        if f.exists():
            raise UserError(f"{f} already exists; pass --out DIR to write elsewhere (nothing was overwritten)")
    result, blended = harmonize(model, naive, mask, seed=seed)
    save_image(result, files[0])
    if blended is not None:
        save_image(blended, files[1])
    return files


# --- training hooks -------------------------------------------------------------------------

def stage_preview(naive: torch.Tensor) -> Callable[[Any], dict[str, torch.Tensor]]:
    """A stage preview (callbacks.StagePreviews): the result on the naive image at the end of every
    stage (``<name>.png``)."""

    def preview(model) -> dict[str, torch.Tensor]:
        # A fixed local seed: the preview must not draw from training's generators.
        out, _ = harmonize(model, naive, seed=0, check=False)
        return {f"{model.config.mode.result_name}.png": out}

    return preview


FINE_TUNE_NITER = 2000  # iterations of a fine-tuning run unless --niter says otherwise (the reference's default)


def fine_tune_dir(model_dir: str | os.PathLike) -> Path:
    """``<model_dir>_fine_tuned`` (then ``_1``, ``_2``...): beside the model it starts from."""
    src = Path(model_dir)
    src = src.parent if src.suffix == ".pt" else src
    base = src.with_name(src.name + "_fine_tuned")
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}_{i}"), i + 1
    return path
