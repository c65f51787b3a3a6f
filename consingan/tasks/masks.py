"""Masks of the pasted object (harmonization, editing; docs/method.md section 4): read as the reference
reads them, and made soft (dilated, blurred, min-max normalised) for the blend."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config
from ..core.image import resize, to_levels
from ..errors import UserError
from ..storage.image_files import read_array

BLUR_SIGMA = 5.0  # docs/method.md section 4
BLUR_TRUNCATE = 4.0  # kernel radius in sigmas (that of scikit-image's gaussian filter)


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

    As the reference (docs/method.md section 4): the RED channel (gray for a gray image), the alpha channel ignored.
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
    as object: a JPEG's ringing around the shape is object too (quirk, docs/method.md section 4)."""
    return to_levels(levels) > 0


def mask_from_array(arr: np.ndarray, what: str = "mask") -> np.ndarray:
    """A mask image array (gray, RGB or RGBA; any bit depth) -> HxW bool, the object at the array's own size:
    the channel ``mask_channel`` picks (red, else a varying alpha under constant colours) where its
    level truncated to 8 bits is above 0, as the reference (docs/method.md section 4)."""
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
    resize first (docs/method.md section 1), then its level truncated to 8 bits above 0 is the object.
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


def blend_reach(config: Config, sigma: float = BLUR_SIGMA) -> int:
    """Pixels farther than this from the mask (in both axes) keep the training image exactly."""
    return int(config.mode.mask_dilation) + math.ceil(BLUR_TRUNCATE * sigma)
