"""Harmonization and editing with a trained model (METHOD 4): a naive image in, a harmonized one out.

The naive image (an object pasted into the training image, or the training image edited by hand)
replaces stage 0's input; every later stage gets its fixed noise, so the generator redraws the
image in the training image's style. With a mask of the pasted region, the result is blended into
the training image so that only the region around the object changes.

    model = consingan.load("TrainedModels/chelsea/harmonization")
    out, blended = harmonize(model, read_image("naive.png"), read_mask("naive_mask.png"))
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config
from ..errors import ConSinGANWarning, UserError
from ..core.image import resize, to_levels
from ..storage.image_files import read_array, read_image, save_image

BLUR_SIGMA = 5.0  # METHOD 4
BLUR_TRUNCATE = 4.0  # kernel radius in sigmas (that of scikit-image's gaussian filter)
ASPECT_TOLERANCE = 0.05


def blend_reach(config: Config, sigma: float = BLUR_SIGMA) -> int:
    """Pixels farther than this from the mask (in both axes) keep the training image exactly."""
    return int(config.mode.mask_dilation) + math.ceil(BLUR_TRUNCATE * sigma)


def require_naive_mode(config: Config, what: str = "--naive_img") -> None:
    if config.mode.result_name is None:
        raise UserError(f"{what} works with --train_mode harmonization or editing only, not with "
                        f"--train_mode {config.train_mode}; train a harmonization or editing model first")


# --- masks ----------------------------------------------------------------------------------

def _unit_range(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    arr = arr.astype(np.float32)
    return arr / 255.0 if arr.size and arr.max() > 1.0 else arr


def mask_channel(arr: np.ndarray, what: str = "mask") -> np.ndarray:
    """The channel of a mask image (gray, RGB or RGBA; any bit depth) that marks the object, as an
    HxW float32 array in [0, 1] read like an image's channel.

    As the reference (METHOD 4): the RED channel (gray for a gray image), the alpha channel ignored.
    Exception (this project's): when every colour channel is constant over the whole image and the
    alpha channel is not, the shape can only be in the alpha channel, which is then used (an
    all-white or all-black RGBA image with the shape in alpha). An RGBA mask whose colours mark the
    object keeps the red rule whatever its alpha holds.
    """
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] in (1, 2, 3, 4):
        colours = a[:, :, :3] if a.shape[2] >= 3 else a[:, :, :1]
        if a.shape[2] in (2, 4):
            alpha = a[:, :, -1]
            if (colours == colours[:1, :1]).all() and alpha.min() < alpha.max():
                return np.clip(_unit_range(alpha), 0.0, 1.0)
        a = colours[:, :, 0]
    elif a.ndim != 2:
        raise UserError(f"{what}: an array of shape {a.shape} is not a mask; give a grayscale, RGB or RGBA image")
    return np.clip(_unit_range(a), 0.0, 1.0)


def _object(levels: torch.Tensor) -> torch.Tensor:
    """Where a mask channel (in [-1, 1]) marks the object: its truncated 8-bit level is above 0 (as
    the reference's torch2uint8, then nonzero). Levels 1 and below count as background, 2 and up
    as object: a JPEG's ringing around the shape is object too (quirk, METHOD 4)."""
    return to_levels(levels) > 0


def mask_from_array(arr: np.ndarray, what: str = "mask") -> np.ndarray:
    """A mask image array (gray, RGB or RGBA; any bit depth) -> HxW bool, the object at the array's own size:
    the channel ``mask_channel`` picks (red, else a varying alpha under constant colours) where its
    level truncated to 8 bits is above 0, as the reference (METHOD 4)."""
    channel = torch.from_numpy(mask_channel(arr, what)) * 2.0 - 1.0  # the image read path's float32 values
    return _object(channel).numpy()


def read_mask(path: str | os.PathLike, what: str = "mask") -> np.ndarray:
    """A mask file -> HxW bool at the file's size (``mask_from_array``)."""
    return mask_from_array(read_array(path, what), f"{what} {path}")


def default_mask_path(naive_path: str | os.PathLike) -> Path:
    """``<naive stem>_mask<ext>`` beside the naive image (the compose command writes it there)."""
    p = Path(naive_path)
    return p.with_name(f"{p.stem}_mask{p.suffix}")


def _disk(radius: int, device: torch.device) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius ** 2).float()


def _gaussian_1d(sigma: float, device: torch.device) -> torch.Tensor:
    radius = math.ceil(BLUR_TRUNCATE * sigma)
    t = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    return k / k.sum()


def soft_mask(mask: torch.Tensor, dilation: int, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """1x1xHxW binary mask -> dilated (disk of radius ``dilation``), blurred, normalised min-max to [0, 1].

    Outside the reach of the disk and the kernel the result is exactly 0 (when such pixels exist, 0
    is the minimum), so the blend leaves those pixels of the training image untouched.
    """
    m = mask.float()
    if dilation > 0:
        disk = _disk(dilation, m.device)[None, None]
        m = (F.conv2d(F.pad(m, (dilation,) * 4), disk) > 0).float()
    k = _gaussian_1d(sigma, m.device)
    r = (k.numel() - 1) // 2
    # Edge pixels repeat beyond the border (scikit-image's default), so a mask touching the border stays strong there.
    m = F.conv2d(F.pad(m, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    m = F.conv2d(F.pad(m, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    # Min-max normalised as the reference. A mask with no contrast (empty, or covering everything, where
    # the blur leaves only float rounding) stays as it is rather than have its rounding stretched (or 0/0).
    lo, hi = m.min(), m.max()
    return ((m - lo) / (hi - lo)).clamp(0.0, 1.0) if hi - lo > 1e-4 else m


def _mask_tensor(mask: Any, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """A mask (HxW array or tensor, any size) -> 1x1xhxw float 0/1 at ``size``: the object.

    The mask is a channel read like an image (bool: True is the object; integers: levels of their
    type; floats: in [0, 1]). As the reference, a mask of another size is resized with the images'
    resize first (METHOD 1), then its level truncated to 8 bits above 0 is the object.
    """
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"a mask has one channel, got shape {tuple(np.asarray(mask).shape)}")
    m = torch.from_numpy(np.clip(_unit_range(m), 0.0, 1.0))[None, None] * 2.0 - 1.0
    if tuple(m.shape[-2:]) != tuple(size):
        # The reference resizes when the width differs (and fails on another height alone).
        m = resize(m, size)
    return _object(m).float().to(device)


# --- the naive image at stage 0 -------------------------------------------------------------

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


def fine_tune_input(naive: torch.Tensor, config: Config) -> Callable[[torch.Tensor], torch.Tensor]:
    """The stage-0 input of fine-tuning: the naive image at the stage-0 size of ``real0`` each
    iteration, plus fresh stage-0 noise for editing."""
    std = config.mode.stage0_noise
    cache: dict[str, torch.Tensor] = {}

    def stage0_input(real0: torch.Tensor) -> torch.Tensor:
        if "base" not in cache:
            cache["base"] = resize(naive.float().to(real0.device), tuple(real0.shape[-2:]))
        base = cache["base"]
        # The global generator, as training's other draws: reproducible and resumable.
        return base + std * torch.randn(base.shape, device=base.device) if std else base

    return stage0_input


# --- inference ------------------------------------------------------------------------------

@torch.no_grad()
def _generate(model, z0: torch.Tensor) -> torch.Tensor:
    model.G.eval()
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
        # The channel itself, not a bool: a mask of another size is resized with its grey levels (METHOD 4).
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
    """RunOptions.preview: the result on the naive image at the end of every stage (``<name>.png``)."""

    def preview(model) -> dict[str, torch.Tensor]:
        # A fixed local seed: the preview must not draw from training's generator.
        out, _ = harmonize(model, naive, seed=0, check=False)
        return {f"{model.config.mode.result_name}.png": out}

    return preview


FINE_TUNE_NITER = 2000  # iterations of a fine-tuning run unless --niter says otherwise (the reference's default)
NAIVE_KEY = "naive_img"  # a run's config.json: the naive image it was started with
FINE_TUNED_KEY = "fine_tuned_from"  # a fine-tuning run's config.json: the model it started from


def run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A model directory's config.json ({} when there is none)."""
    path = Path(run_dir)
    path = (path.parent if path.suffix == ".pt" else path) / "config.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # not JSON, or not UTF-8
        info = f"not valid JSON ({str(exc).splitlines()[0]})"
    if not isinstance(info, dict):
        raise UserError(f"{path} is damaged: {info if isinstance(info, str) else 'not a table of settings'}; "
                        "repair or restore it, or train again (a resumed run reads its naive image from it)")
    return info


def resume_hooks(run_dir: str | os.PathLike, config: Config, options, stage0_input):
    """(options, stage0_input) for resuming ``run_dir``: the naive-image preview and, for a
    fine-tuning run, its stage-0 input come back from what config.json recorded."""
    info = run_info(run_dir)
    if info.get(NAIVE_KEY) is None:
        return options, stage0_input
    naive = read_image(info[NAIVE_KEY], "naive image of the run")
    options = dataclasses.replace(options, preview=stage_preview(naive))
    if info.get(FINE_TUNED_KEY):
        stage0_input = fine_tune_input(naive, config)
    return options, stage0_input


def fine_tune_trainer(model, naive: torch.Tensor, options, progress=None):
    """A Trainer that trains the top stage of ``model`` again with ``naive`` at stage 0 (METHOD 4).

    The optimizer groups are the top stage's normal ones (the top train_depth body stages at lr_g,
    lr_g*lr_scale, lr_g*lr_scale^2, the head when the top stage is below train_depth, the tail), as
    in the reference; the older stages stay bitwise the same. D goes on from its saved weights; the
    fixed noise and amplitudes are the model's. ``model.config.niter`` iterations.
    """
    from ..core.engine import Trainer, make_optimizers

    require_naive_mode(model.config, "--fine_tune")
    trainer = Trainer.from_model(model, options, progress, fine_tune_input(naive, model.config))
    trainer.only_top = True  # recorded in checkpoints: this run trains the top stage only
    trainer.optim = make_optimizers(trainer.G, trainer.D, trainer.config, trainer.stage)
    trainer.stage_ready, trainer.iteration = True, 0
    return trainer


def fine_tune_dir(model_dir: str | os.PathLike) -> Path:
    """``<model_dir>_fine_tuned`` (then ``_1``, ``_2``...): beside the model it starts from."""
    src = Path(model_dir)
    src = src.parent if src.suffix == ".pt" else src
    base = src.with_name(src.name + "_fine_tuned")
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}_{i}"), i + 1
    return path
