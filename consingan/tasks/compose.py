"""Paste an object into a background: the naive image and its mask that harmonization and editing need.

Users of SinGAN and ConSinGAN had to make both in an image editor. Here:

    consingan compose --background bg.png --object cup.png --x 40 --y 60 --scale 0.5 --out naive.png

writes ``naive.png`` (the background size) and ``naive_mask.png`` (white where the object is).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import ConSinGANWarning, UserError
from .masks import _unit_range, default_mask_path, mask_from_array, read_mask
from ..core.image import resize
from ..storage.image_files import _to_rgb_float, read_array


def _alpha_of(arr: np.ndarray) -> np.ndarray | None:
    """The alpha channel in [0, 1] when the image has one that is not fully opaque, else None."""
    if arr.ndim != 3 or arr.shape[2] not in (2, 4):
        return None
    alpha = _unit_range(arr[:, :, -1])
    return alpha if alpha.min() < 1.0 else None


def compose(background: np.ndarray, obj: np.ndarray, x: int, y: int, scale: float = 1.0,
            object_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(naive HxWx3 uint8, mask HxW uint8 0/255), both the background's size.

    ``background`` and ``obj``: image arrays as read (gray, RGB or RGBA, any bit depth). The
    object's shape is its alpha channel (soft edges are kept in the naive image), else
    ``object_mask`` (HxW bool, the object's size), else its whole rectangle. ``(x, y)`` is where
    the object's top-left corner lands after scaling by ``scale``; the parts outside are clipped.
    """
    if not scale > 0:
        raise UserError(f"--scale must be positive, got {scale}")
    bg = _to_rgb_float(np.asarray(background), "background")
    rgb = _to_rgb_float(np.asarray(obj), "object")
    alpha = _alpha_of(np.asarray(obj))
    if alpha is None:
        alpha = np.ones(rgb.shape[:2], np.float32) if object_mask is None else object_mask.astype(np.float32)
    if alpha.shape != rgb.shape[:2]:
        raise UserError(f"the object mask is {alpha.shape[0]}x{alpha.shape[1]} but the object is "
                        f"{rgb.shape[0]}x{rgb.shape[1]}; give the mask made for this object")

    oh, ow = max(1, round(rgb.shape[0] * scale)), max(1, round(rgb.shape[1] * scale))
    rgba = torch.from_numpy(np.concatenate([rgb, alpha[:, :, None]], axis=2)).permute(2, 0, 1)[None]
    if (oh, ow) != rgba.shape[-2:]:
        # Colours premultiplied by alpha, so that transparent pixels do not bleed into the edges.
        premul = torch.cat([rgba[:, :3] * rgba[:, 3:], rgba[:, 3:]], 1)
        premul = resize(premul * 2 - 1, (oh, ow)) * 0.5 + 0.5
        a = premul[:, 3:].clamp(0, 1)
        rgba = torch.cat([(premul[:, :3] / a.clamp_min(1e-6)).clamp(0, 1) * (a > 0), a], 1)
    obj_rgb, obj_a = rgba[0, :3].permute(1, 2, 0).numpy(), rgba[0, 3].numpy()

    H, W = bg.shape[:2]
    top, left = int(y), int(x)
    y0, y1 = max(top, 0), min(top + oh, H)
    x0, x1 = max(left, 0), min(left + ow, W)
    if y0 >= y1 or x0 >= x1:
        raise UserError(f"the object ({oh}x{ow} at x={left}, y={top}) lies entirely outside the "
                        f"{H}x{W} background; give --x in 0..{W - 1} and --y in 0..{H - 1}")
    a = obj_a[y0 - top:y1 - top, x0 - left:x1 - left, None]
    naive = bg.copy()
    naive[y0:y1, x0:x1] = a * obj_rgb[y0 - top:y1 - top, x0 - left:x1 - left] + (1 - a) * bg[y0:y1, x0:x1]
    mask = np.zeros((H, W), np.uint8)
    mask[y0:y1, x0:x1] = np.where(a[:, :, 0] >= 0.5, 255, 0)
    return (naive * 255).round().astype(np.uint8), mask


def write_composite(background: str | os.PathLike, obj: str | os.PathLike, out: str | os.PathLike, x: int, y: int,
                    scale: float = 1.0, object_mask: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The compose command: writes ``out`` and ``<out stem>_mask<ext>``; existing files are an error."""
    out = Path(out)
    mask_out = default_mask_path(out)
    for f in (out, mask_out):
        if f.exists():
            raise UserError(f"{f} already exists; choose another --out (nothing was overwritten)")
    bg = read_array(background, "background")
    obj_arr = read_array(obj, "object")
    given_mask = None
    if object_mask is not None:
        if _alpha_of(obj_arr) is not None:
            warnings.warn(f"the object {obj} has an alpha channel, which gives its shape; --object_mask "
                          f"{object_mask} is ignored", ConSinGANWarning, stacklevel=2)
        else:
            given_mask = read_mask(object_mask, "object mask")
    naive, mask = compose(bg, obj_arr, x, y, scale, given_mask)
    if not mask.any():
        warnings.warn("the object covers no pixel with alpha >= 0.5 inside the background: the mask is empty",
                      ConSinGANWarning, stacklevel=2)
    import imageio.v3 as iio

    from ..storage.outputs import write_bytes

    # Both encoded before either is written; each written atomically and never over a file another
    # run wrote meanwhile: a second compose to the same --out fails and leaves the first's pair.
    data = [iio.imwrite("<bytes>", arr, extension=f.suffix.lower()) for arr, f in ((naive, out), (mask, mask_out))]
    write_bytes(data[0], out, overwrite=False)
    try:
        write_bytes(data[1], mask_out, overwrite=False)
    except BaseException:
        out.unlink(missing_ok=True)  # ours, just written: no naive image without its mask
        raise
    return out, mask_out


__all__ = ["compose", "write_composite", "mask_from_array"]
