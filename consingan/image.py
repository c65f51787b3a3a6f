"""Image I/O, resizing and the multi-stage pyramid (METHOD 1).

Images are float tensors of shape 1x3xHxW with values in [-1, 1].
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config
from .errors import UserError


def _to_rgb_float(arr: np.ndarray, path: str) -> np.ndarray:
    """Any image array imageio gives (gray, gray+alpha, RGB, RGBA; 8/16-bit, float, bool) -> HxWx3 in [0, 1]."""
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    elif arr.dtype == bool:
        arr = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        if arr.size and arr.max() > 1.0:  # float images stored in 0..255
            arr = arr / 255.0
    elif np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    else:
        raise UserError(f"{path}: unsupported pixel type {arr.dtype}; save the image as an 8-bit PNG")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise UserError(f"{path}: not a single still image (array of shape {arr.shape}); give a PNG or JPEG")
    channels = arr.shape[2]
    if channels in (1, 2):  # gray (+ alpha): the alpha channel is dropped
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    elif channels in (3, 4):
        arr = arr[:, :, :3]
    else:
        raise UserError(f"{path}: {channels} channels is not an image format consingan reads; save it as RGB")
    return np.clip(arr, 0.0, 1.0)


def read_array(path: str | os.PathLike, what: str = "image") -> np.ndarray:
    """Read an image file as it is stored (first frame of an animation). Errors name the file and the fix."""
    import imageio.v3 as iio

    path = str(path)
    if not os.path.exists(path):
        raise UserError(f"{what} not found: {path}; check the path")
    if os.path.isdir(path):
        raise UserError(f"{what} {path} is a folder; give an image file")
    try:
        arr = np.asarray(iio.imread(path, index=0))
    except Exception as exc:  # imageio raises many types for unreadable files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot read {what} {path} ({reason}); give a valid PNG or JPEG file") from None
    if arr.size == 0:
        raise UserError(f"{what} {path} is empty; give a valid PNG or JPEG file")
    return arr


def read_image(path: str | os.PathLike, what: str = "input image") -> torch.Tensor:
    """Read an image file as a 1x3xHxW float tensor in [-1, 1]."""
    rgb = _to_rgb_float(read_array(path, what), str(path))
    return from_numpy(rgb)


def from_numpy(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 (or HxW) array in [0, 1] or uint8 -> 1x3xHxW tensor in [-1, 1]."""
    rgb = _to_rgb_float(np.asarray(rgb), "array")
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0)
    return t * 2.0 - 1.0


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """1x3xHxW (or 3xHxW) tensor in [-1, 1] -> HxWx3 uint8 array."""
    if image.dim() == 4:
        image = image[0]
    x = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return x.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def save_image(image: torch.Tensor, path: str | os.PathLike) -> None:
    import imageio.v3 as iio

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(str(path), to_uint8(image))


def grid(images: torch.Tensor, columns: int = 5, gap: int = 2) -> torch.Tensor:
    """Nx3xHxW -> 1x3xH'xW' grid with white gaps (all images must share one size)."""
    n, c, h, w = images.shape
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    out = images.new_ones(1, c, rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap)
    for i in range(n):
        r, k = divmod(i, columns)
        out[0, :, r * (h + gap): r * (h + gap) + h, k * (w + gap): k * (w + gap) + w] = images[i]
    return out


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize to (height, width), clamped to [-1, 1]."""
    size = (int(size[0]), int(size[1]))
    if tuple(image.shape[-2:]) == size:
        return image.clone()
    out = F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(-1.0, 1.0)


def scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    # ceil, as the reference's resize computes its output shape.
    return math.ceil(h * scale), math.ceil(w * scale)


def training_image(image: torch.Tensor, config: Config) -> torch.Tensor:
    """The input resized so that its longer side is at most max_size (never enlarged)."""
    h, w = image.shape[-2:]
    scale1 = min(config.max_size / max(h, w), 1.0)
    if scale1 == 1.0:
        return image.clone()
    return resize(image, scaled_size(h, w, scale1))


def stage_sizes(height: int, width: int, config: Config) -> list[tuple[int, int]]:
    """(height, width) of each stage for a training image of the given size (METHOD 1)."""
    stop = config.stop_stage
    smallest = min(height, width)
    if smallest < config.min_size:
        raise UserError(
            f"the image is {height}x{width} pixels, smaller than --min_size {config.min_size}; "
            "use a larger image or a smaller --min_size"
        )
    # math.pow and this order of operations as in the reference, so that ceil() sees the same floats.
    f = math.pow(config.min_size / smallest, 1 / stop)
    sizes = []
    for i in range(stop):
        if config.mode.pyramid == "geometric":
            exponent = stop - i
        elif stop == 1:  # ln(stop) = 0: a single lower stage sits at min_size
            exponent = 1
        else:
            exponent = ((stop - 1) / math.log(stop)) * math.log(stop - i) + 1
        sizes.append(scaled_size(height, width, math.pow(f, exponent)))
    sizes.append((height, width))
    return sizes


def pyramid(real: torch.Tensor, config: Config) -> list[torch.Tensor]:
    """The training image at every stage's size, lowest resolution first."""
    sizes = stage_sizes(real.shape[-2], real.shape[-1], config)
    return [resize(real, s) for s in sizes[:-1]] + [real.clone()]
