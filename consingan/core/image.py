"""Image tensors: conversions, the reference's resize and the multi-stage pyramid (docs/method.md section 1).

Images are float tensors of shape 1x3xHxW with values in [-1, 1].
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..config import Config
from ..errors import UserError

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


# --- resizing as the reference does (docs/method.md section 1) -----------------------------------------------
# A MATLAB-style imresize with its quirks, since they decide the training data: the image is
# truncated to 8-bit levels first, the sampling grid follows the nominal scale factor, the cubic
# kernel is widened when shrinking, and the two borders are treated differently (below).

def to_levels(image: torch.Tensor) -> torch.Tensor:
    """Nx3xHxW in [-1, 1] -> uint8 levels, computed in float32 and truncated, not rounded (quirk):
    the reference converts every image this way before it resizes it, even at scale 1. An 8-bit
    image read as v/255*2-1 loses one level at 1..63, whose float32 value lands just below v."""
    x = image.detach().to("cpu", torch.float32)
    return (255 * ((x + 1) / 2).clamp(0, 1)).to(torch.uint8)


def from_levels(levels: np.ndarray) -> torch.Tensor:
    """Levels 0..255 (any float or uint8 array, not rounded) -> float32 in [-1, 1], as the reference maps
    its resize's output back: float64 / 255, cast to float32, then (y - 0.5) * 2, clamped."""
    y = torch.from_numpy(np.asarray(levels) / 255).to(torch.float32)
    return ((y - 0.5) * 2).clamp(-1.0, 1.0)


def _cubic(t: np.ndarray) -> np.ndarray:
    """The cubic convolution kernel with a = -0.5 (the weights of MATLAB's and torch's bicubic)."""
    a = np.abs(t)
    a2, a3 = a ** 2, a ** 3
    return ((1.5 * a3 - 2.5 * a2 + 1) * (a <= 1)
            + (-0.5 * a3 + 2.5 * a2 - 4 * a + 2) * ((1 < a) & (a <= 2)))


@functools.lru_cache(maxsize=128)
def resize_weights(in_len: int, out_len: int, scale: float, antialias: bool) -> np.ndarray:
    """The out_len x in_len float64 matrix of the reference's resize along one axis (read-only).

    Output pixel i (1-based) is centred on input position i/s + (1 - 1/s)/2 (1-based), with ``s`` the
    scale the caller gives (the nominal factor, not out/in, for the pyramid: quirk). With
    ``antialias`` the kernel is stretched by 1/s. Taps before the first pixel get weight 0 and each
    row is renormalised (quirk: the reference casts their negative index to unsigned, which puts
    them far outside the kernel); taps past the last pixel are mirrored onto the image (the edge
    pixel repeated). So the top/left border renormalises while the bottom/right border mirrors.
    """
    if antialias:
        width = 4.0 * (1.0 / scale)
        kernel = lambda t: scale * _cubic(scale * t)  # noqa: E731
    else:
        width, kernel = 4.0, _cubic
    centre = np.arange(1, out_len + 1) / scale + 0.5 * (1 - 1.0 / scale)
    left = np.floor(centre - width / 2)
    taps = left[:, None] + np.arange(math.ceil(width) + 2) - 1  # 0-based input index of each tap
    # The operations and their order as in the reference, so that the float64 weights are the same.
    weights = kernel(centre[:, None] - taps - 1)
    weights[taps < 0] = 0.0
    sums = weights.sum(axis=1)
    sums[sums == 0] = 1.0
    weights = weights / sums[:, None]
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    index = mirror[np.mod(taps.astype(np.int64), 2 * in_len)]
    matrix = np.zeros((out_len, in_len))
    rows = np.broadcast_to(np.arange(out_len)[:, None], taps.shape)
    np.add.at(matrix, (rows, index), weights)  # mirrored taps landing on one pixel add up
    matrix.flags.writeable = False
    return matrix


def _reference_resize(image: torch.Tensor, size: tuple[int, int], scales: tuple[float, float]) -> torch.Tensor:
    """Nx3xHxW (any channel count) -> NxCx``size``, resampling each axis with its scale factor."""
    n, c, h, w = image.shape
    out_h, out_w = int(size[0]), int(size[1])
    levels = to_levels(image).reshape(n * c, h, w).numpy()
    # Antialiasing for both axes when the height shrinks: the reference decides it from the first axis.
    antialias = scales[0] < 1
    # The axes in ascending order of scale (height first when equal), as the reference resizes them;
    # an axis at exactly scale 1 is not resampled.
    order = [axis for axis in sorted((0, 1), key=lambda a: scales[a]) if scales[axis] != 1.0]
    out = np.empty((n * c, out_h, out_w))
    for k in range(n * c):  # one channel at a time: float64 copies of a large photo stay small
        x = levels[k].astype(np.float64)
        for axis in order:
            if axis == 0:
                x = resize_weights(h, out_h, scales[0], antialias) @ x
            else:
                x = x @ resize_weights(w, out_w, scales[1], antialias).T
        out[k] = x
    dtype = image.dtype if image.is_floating_point() else torch.float32  # float64 stays float64 (tests)
    return from_levels(out).reshape(n, c, out_h, out_w).to(image.device, dtype)


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The reference's resize of an Nx3xHxW image in [-1, 1] to (height, width) (its
    ``imresize_to_shape``): each axis at the scale out/in of its own, float32 in [-1, 1].

    The image is truncated to 8-bit levels even when the size does not change (docs/method.md section 1); the
    result is not rounded back to levels.
    """
    h, w = image.shape[-2:]
    size = (int(size[0]), int(size[1]))
    return _reference_resize(image, size, (size[0] / h, size[1] / w))


def rescale(image: torch.Tensor, scale: float) -> torch.Tensor:
    """The reference's resize by a nominal factor (its ``imresize``): the output is
    ``ceil(H*scale) x ceil(W*scale)``, and both axes are sampled at ``scale`` itself, not at the
    realised ratio out/in (quirk, docs/method.md section 1), so the content shifts by up to a pixel towards the
    top-left. Truncates to 8-bit levels as ``resize`` does, also at scale 1."""
    h, w = image.shape[-2:]
    return _reference_resize(image, scaled_size(h, w, scale), (scale, scale))


def scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    # ceil, as the reference's resize computes its output shape.
    return math.ceil(h * scale), math.ceil(w * scale)


def training_image(image: torch.Tensor, config: Config) -> torch.Tensor:
    """The input resized by ``scale1`` so that its longer side is at most max_size (never enlarged),
    with the reference's ``rescale``: also at scale 1, where only its truncation to levels acts."""
    h, w = image.shape[-2:]
    scale1 = min(config.max_size / max(h, w), 1.0)
    # Also at scale 1: the reference resizes (and so truncates to 8-bit levels) in every case.
    return rescale(image, scale1)


def stage_sizes(height: int, width: int, config: Config) -> list[tuple[int, int]]:
    """(height, width) of each stage for a training image of the given size (docs/method.md section 1)."""
    smallest = min(height, width)
    if smallest < config.min_size:
        raise UserError(
            f"the image is {height}x{width} pixels, smaller than --min_size {config.min_size}; "
            "use a larger image or a smaller --min_size"
        )
    # stage_scales: math.pow and the reference's order of operations, so that ceil() sees the same floats.
    sizes = [scaled_size(height, width, s) for s in stage_scales(height, width, config)[:-1]]
    sizes.append((height, width))
    need = min_stage_side(config)
    low = min(min(s) for s in sizes)
    if low < need:
        # Refused here, before anything is written, rather than by torch in the middle of stage 0.
        k = next(k for k, s in enumerate(sizes) if min(s) == low)
        fix = (f"raise --min_size to {need}" if need <= smallest else
               f"the top stage's short side is only {smallest} px, so lower --num_layer or --ker_size "
               "(or train at a larger size: --max_size)")
        raise UserError(
            f"stage {k} would be {sizes[k][0]}x{sizes[k][1]} pixels, but the discriminator's "
            f"{config.num_layer + 2} unpadded {config.ker_size}x{config.ker_size} convolutions (--num_layer "
            f"{config.num_layer}, --ker_size {config.ker_size}) need at least {need} pixels per side; {fix}"
        )
    return sizes


def check_pixels(image: torch.Tensor, what: str = "input image") -> torch.Tensor:
    """``image`` if it is a 1x3xHxW tensor of finite values, else a UserError that says so."""
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise UserError(f"{what} is a tensor of shape {tuple(image.shape)}, not 1x3xHxW (one RGB image); "
                        "give one RGB image")
    bad = int((~torch.isfinite(image)).sum())
    if bad:
        raise UserError(f"{what} has NaN or infinite pixel values ({bad} of them; a float image with missing "
                        "data?); fill them in (e.g. with numpy.nan_to_num) or give an 8-bit image")
    return image


def min_stage_side(config: Config) -> int:
    """The smallest stage side the networks can take: the discriminator's head, num_layer body blocks and
    tail are unpadded convolutions, each trimming ker_size - 1 pixels (the generator pads its input)."""
    return (config.num_layer + 2) * (config.ker_size - 1) + 1


def stage_scales(height: int, width: int, config: Config) -> list[float]:
    """The nominal scale factor of each stage relative to the training image (the last is 1):
    ``stage_sizes`` are ``ceil(side * scale)`` of these, and the pyramid resizes by them."""
    stop = config.stop_stage
    f = math.pow(config.min_size / min(height, width), 1 / stop)
    scales = []
    for i in range(stop):
        if config.mode.pyramid == "geometric":
            exponent = stop - i
        elif stop == 1:
            exponent = 1
        else:
            exponent = ((stop - 1) / math.log(stop)) * math.log(stop - i) + 1
        scales.append(math.pow(f, exponent))
    return scales + [1.0]


def pyramid(real: torch.Tensor, config: Config) -> list[torch.Tensor]:
    """The training image at every stage's size, lowest resolution first: each lower stage is
    ``rescale`` of the training image by its nominal factor; the top stage is the image itself."""
    h, w = real.shape[-2:]
    sizes = stage_sizes(h, w, config)  # also refuses an image smaller than min_size
    stages = [rescale(real, s) for s in stage_scales(h, w, config)[:-1]] + [real.clone()]
    assert [tuple(r.shape[-2:]) for r in stages] == sizes, "stage_scales and stage_sizes disagree"
    return stages
