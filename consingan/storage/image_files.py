"""Reading and writing image files: a file as a viewer shows it -> 1x3xHxW in [-1, 1], and back
(written atomically).

Every image that comes from outside (training image, naive image, mask, painting, compose inputs, the
web app's uploads and canvases) is read here, and its pixel count is read from the file's header and
checked against MAX_IMAGE_PIXELS before anything is decoded: a small file that claims a huge size (a
"decompression bomb") is refused in milliseconds, never inflated into gigabytes.
"""
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


MAX_IMAGE_PIXELS = 100_000_000  # the largest image read (width x height); CONSINGAN_MAX_PIXELS overrides it
MAX_PIXELS_ENV = "CONSINGAN_MAX_PIXELS"


def max_image_pixels() -> int:
    """MAX_IMAGE_PIXELS, or the whole number in the environment variable CONSINGAN_MAX_PIXELS."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return MAX_IMAGE_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{MAX_PIXELS_ENV}={text!r} is not a positive whole number of pixels; set it to e.g. "
                        f"{MAX_IMAGE_PIXELS} or unset it")
    return value


def check_image_size(width: int, height: int, what: str = "image") -> None:
    """Refuse an image of more than max_image_pixels() pixels (before it is decoded)."""
    limit = max_image_pixels()
    if int(width) * int(height) > limit:
        raise UserError(f"{what} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels), more than "
                        f"consingan reads (MAX_IMAGE_PIXELS: {limit / 1e6:g} megapixels; set {MAX_PIXELS_ENV} "
                        "to change it); shrink the image first")


def _open_checked(path: str, what: str):
    """Pillow's lazy open (the header only) with the size checked; None when Pillow does not know the format."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is ours, checked below
            im = Image.open(path)
    except UnidentifiedImageError:
        return None
    except Image.DecompressionBombError:  # over twice Pillow's own limit: far over any sensible one
        raise UserError(f"{what} {path} has more pixels than consingan reads (MAX_IMAGE_PIXELS: "
                        f"{max_image_pixels() / 1e6:g} megapixels; set {MAX_PIXELS_ENV} to change it); "
                        "shrink the image first") from None
    try:
        check_image_size(*im.size, what=f"{what} {path}")
    except UserError:
        im.close()
        raise
    return im


def image_size(path: str | os.PathLike, what: str = "image") -> tuple[int, int]:
    """(width, height) from the file's header, checked against MAX_IMAGE_PIXELS, without decoding the
    pixels. A file that is not an image is a UserError naming it."""
    path = str(path)
    _exists(path, what)
    try:
        im = _open_checked(path, what)
        if im is not None:
            with im:
                return im.size
        import imageio.v3 as iio

        shape = iio.improps(path, index=0).shape  # formats Pillow does not know: imageio's header reader
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the readers raise many types for unreadable files
        raise _unreadable(path, what, exc) from None
    height, width = int(shape[0]), int(shape[1])
    check_image_size(width, height, f"{what} {path}")
    return width, height


def check_array_size(arr: np.ndarray, what: str = "image") -> None:
    """An image given as an array (the web app's canvas) is held to the same limit as a file."""
    if arr.ndim >= 2:
        check_image_size(arr.shape[1], arr.shape[0], what)


def _exists(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise UserError(f"{what} not found: {path}; check the path")
    if os.path.isdir(path):
        raise UserError(f"{what} {path} is a folder; give an image file")


def _unreadable(path: str, what: str, exc: BaseException) -> UserError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return UserError(f"cannot read {what} {path} ({reason}); give a valid PNG or JPEG file")


# Pillow modes that hold another colour space or a palette, and the mode a viewer would show.
_PIL_CONVERT = {"CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "RGBX": "RGB", "PA": "RGBA",
                "La": "LA", "RGBa": "RGBA"}


def _read_with_pillow(path: str, what: str = "image") -> np.ndarray | None:
    """The image as a viewer shows it, by Pillow: EXIF orientation applied (phones store photos
    sideways plus a tag) and CMYK etc. converted to RGB. None when Pillow does not know the format,
    or for TIFF files that need no conversion: imageio's TIFF reader keeps 16-bit colour, which
    Pillow would cut to 8 bits. The size is checked (from the header) before anything is decoded."""
    from PIL import ImageOps

    im = _open_checked(path, what)
    if im is None:
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
    _exists(path, what)
    try:
        arr = _read_with_pillow(path, what)
        if arr is None:
            image_size(path, what)  # imageio's formats: the header's size first, too
            arr = np.asarray(iio.imread(path, index=0))
    except UserError:
        raise
    except Exception as exc:  # Pillow and imageio raise many types for unreadable files
        raise _unreadable(path, what, exc) from None
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
        check_array_size(image, what)
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
