"""Reading and writing image files: a file as a viewer shows it -> 1x3xHxW in [-1, 1], and back
(written atomically)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..core.image import _to_rgb_float, check_pixels, from_numpy, to_uint8
from ..errors import UserError

# The one list of image file names. Read: what the readers below take as one picture (a GIF: its
# first frame), e.g. the images a folder given to the batch runner holds. Written: what an output
# image's name must end with, formats every Pillow build writes without losing the pixels made here
# (8-bit RGB and gray); GIF is left out (a palette of 256 colours).
WRITE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
READ_SUFFIXES = WRITE_SUFFIXES + (".gif",)


def is_image_name(path: str | os.PathLike, suffixes: tuple[str, ...] = READ_SUFFIXES) -> bool:
    return Path(path).suffix.lower() in suffixes


# Pillow modes that hold another colour space or a palette, and the mode a viewer would show.
_PIL_CONVERT = {"CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "RGBX": "RGB", "PA": "RGBA",
                "La": "LA", "RGBa": "RGBA"}


def _read_with_pillow(path: str) -> np.ndarray | None:
    """The image as a viewer shows it, by Pillow: EXIF orientation applied (phones store photos
    sideways plus a tag) and CMYK etc. converted to RGB. None when Pillow does not know the format,
    or for TIFF files that need no conversion: imageio's TIFF reader keeps 16-bit colour, which
    Pillow would cut to 8 bits."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        im = Image.open(path)
    except UnidentifiedImageError:
        return None
    with im:
        if im.format == "TIFF" and im.mode not in _PIL_CONVERT:
            return None
        im = ImageOps.exif_transpose(im)
        if im.mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif im.mode in _PIL_CONVERT:
            im = im.convert(_PIL_CONVERT[im.mode])
        arr = np.asarray(im)
    if im.mode == "I" and arr.size and 0 <= arr.min() and arr.max() <= 65535:
        arr = arr.astype(np.uint16)  # 16-bit gray in Pillow's 32-bit container
    return arr


def read_array(path: str | os.PathLike, what: str = "image") -> np.ndarray:
    """Read an image file as a viewer shows it (first frame of an animation): Pillow's formats with
    their EXIF orientation applied and CMYK converted to RGB, others through imageio. Errors name
    the file and the fix."""
    import imageio.v3 as iio

    path = str(path)
    if not os.path.exists(path):
        raise UserError(f"{what} not found: {path}; check the path")
    if os.path.isdir(path):
        raise UserError(f"{what} {path} is a folder; give an image file")
    try:
        arr = _read_with_pillow(path)
        if arr is None:
            arr = np.asarray(iio.imread(path, index=0))
    except Exception as exc:  # Pillow and imageio raise many types for unreadable files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot read {what} {path} ({reason}); give a valid PNG or JPEG file") from None
    if arr.size == 0:
        raise UserError(f"{what} {path} is empty; give a valid PNG or JPEG file")
    return arr


def read_image(path: str | os.PathLike, what: str = "input image") -> torch.Tensor:
    """Read an image file as a 1x3xHxW float tensor in [-1, 1]."""
    rgb = _to_rgb_float(read_array(path, what), str(path))
    return from_numpy(rgb)


def as_image(image: Any, what: str = "input image",
             check_array: Callable[[np.ndarray, str], None] | None = None) -> torch.Tensor:
    """A path, an HxWx3 array (uint8 or [0, 1]) or a 1x3xHxW tensor in [-1, 1] -> 1x3xHxW tensor of
    finite values. ``check_array(array, what)`` sees the pixels of a file or array as they are (with
    their alpha channel, e.g. to refuse transparency) before they become RGB."""
    if isinstance(image, (str, os.PathLike)):
        arr = read_array(image, what)
        if check_array is not None:
            check_array(arr, f"{what} {image}")
        t = from_numpy(_to_rgb_float(arr, str(image)))
    elif isinstance(image, np.ndarray):
        if check_array is not None:
            check_array(image, what)
        t = from_numpy(image)
    elif isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        t = t.unsqueeze(0) if t.dim() == 3 else t
    else:
        raise TypeError(f"{what}: expected a path, numpy array or tensor, got {type(image).__name__}")
    return check_pixels(t, what)  # NaN pixels would only surface as a NaN loss, with the wrong advice


def save_image(image: torch.Tensor, path: str | os.PathLike, overwrite: bool = True) -> None:
    """Write atomically (outputs.write_bytes): a kill or a full disk never leaves a partial file.
    ``overwrite=False``: an existing file is an error (outputs.OutputExists), left as it is."""
    import imageio.v3 as iio

    from .outputs import write_bytes

    path = Path(path)
    write_bytes(iio.imwrite("<bytes>", to_uint8(image), extension=path.suffix.lower()), path, overwrite=overwrite)
