"""Stage-0 augmentations of harmonization and editing (METHOD 4), in torch.

During training these modes feed stage 0 an altered copy of the stage-0 training image instead of
noise, so that at inference the generator turns a naive image (an object pasted into the image)
into one that looks like the training image.

Randomness comes only from torch's global generators (never Python's or numpy's): the run stays
reproducible from --manualSeed and resumable, since a checkpoint stores torch's generator states.
Choices that steer control flow (which operation, sizes, positions) are drawn on the CPU generator,
so that a CUDA run does not wait on the GPU for them; per-pixel noise is drawn on the image's device.
"""
from __future__ import annotations

from typing import Callable

import torch

from .config import Config

# --- random draws (global torch generators) ---------------------------------------------------


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


def _randint(lo: int, hi: int) -> int:
    """An integer in [lo, hi], both ends included."""
    return int(torch.randint(lo, hi + 1, ()))


def _chance(p: float) -> bool:
    return float(torch.rand(())) < p


# --- harmonization: colour and texture changes on the 8-bit image ----------------------------
# Every function below takes and returns a 1x3xHxW float tensor of 8-bit levels (0..255).

def _levels(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> whole 8-bit levels, so the augmentations see the image as an 8-bit picture."""
    return ((x.float() + 1.0) * 127.5).round().clamp(0, 255)


def _from_levels(x: torch.Tensor) -> torch.Tensor:
    return x / 255.0 * 2.0 - 1.0  # METHOD 1: x/255*2-1


def _quantised(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 255).round()


def multiplicative_noise(x: torch.Tensor) -> torch.Tensor:
    """Every pixel and channel times a factor in [0.5, 1.5]."""
    factor = 0.5 + torch.rand(x.shape, device=x.device)
    return _quantised(x * factor)


def gaussian_noise(x: torch.Tensor) -> torch.Tensor:
    """Additive Gaussian noise per pixel and channel, variance drawn in [10, 50] (8-bit levels)."""
    sigma = _uniform(10.0, 50.0) ** 0.5
    return _quantised(x + sigma * torch.randn(x.shape, device=x.device))


def invert(x: torch.Tensor) -> torch.Tensor:
    return 255.0 - x


_SEPIA = torch.tensor([[0.393, 0.769, 0.189],
                       [0.349, 0.686, 0.168],
                       [0.272, 0.534, 0.131]])


def sepia(x: torch.Tensor) -> torch.Tensor:
    return _quantised(torch.einsum("oc,nchw->nohw", _SEPIA.to(x.device, x.dtype), x))


def drop_channel(x: torch.Tensor) -> torch.Tensor:
    """One random channel set to 0."""
    out = x.clone()
    out[:, _randint(0, 2)] = 0.0
    return out


# A shuffle that returns the channels in their order would spend the augmentation's chance on nothing.
_CHANNEL_ORDERS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def shuffle_channels(x: torch.Tensor) -> torch.Tensor:
    order = _CHANNEL_ORDERS[_randint(0, len(_CHANNEL_ORDERS) - 1)]
    return x[:, list(order)].clone()


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> hue in turns [0, 1), saturation and value in [0, 1]."""
    r, g, b = rgb.unbind(1)
    v, _ = rgb.max(1)
    c = v - rgb.min(1).values
    safe_c = torch.where(c > 0, c, torch.ones_like(c))
    h = torch.where(v == r, ((g - b) / safe_c) % 6.0,
                    torch.where(v == g, (b - r) / safe_c + 2.0, (r - g) / safe_c + 4.0))
    h = torch.where(c > 0, h / 6.0, torch.zeros_like(h))
    s = torch.where(v > 0, c / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    return torch.stack([h, s, v], 1)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(1)
    k = lambda n: (n + h * 6.0) % 6.0  # noqa: E731
    f = lambda n: v - v * s * (torch.minimum(k(n), 4.0 - k(n)).clamp(0.0, 1.0))  # noqa: E731
    return torch.stack([f(5.0), f(3.0), f(1.0)], 1)


def shift_hsv(x: torch.Tensor, hue: float | None = None, saturation: float | None = None,
              value: float | None = None) -> torch.Tensor:
    """Hue +-20, saturation +-30, value +-20 (each drawn uniformly when not given).

    Units are those of 8-bit HSV images as image libraries store them: hue in 0..179 (two degrees a
    level, so 20 is 40 degrees), saturation and value in 0..255.
    """
    hue = _uniform(-20, 20) if hue is None else hue
    saturation = _uniform(-30, 30) if saturation is None else saturation
    value = _uniform(-20, 20) if value is None else value
    hsv = _rgb_to_hsv(x / 255.0)
    h = (hsv[:, 0] + hue / 180.0) % 1.0
    s = (hsv[:, 1] + saturation / 255.0).clamp(0.0, 1.0)
    v = (hsv[:, 2] + value / 255.0).clamp(0.0, 1.0)
    return _quantised(_hsv_to_rgb(torch.stack([h, s, v], 1)) * 255.0)


def holes(x: torch.Tensor, count: int | None = None) -> torch.Tensor:
    """1 hole with sides of 30-60 px or 2 with sides of 15-30 px, all filled with one random colour.

    Sides are in pixels of the stage-0 image (METHOD 4); a hole larger than the image covers that
    whole side.
    """
    count = _randint(1, 2) if count is None else count
    lo, hi = (30, 60) if count == 1 else (15, 30)
    colour = torch.randint(0, 256, (3,)).to(x.device, x.dtype).view(1, 3, 1, 1)
    out = x.clone()
    height, width = x.shape[-2:]
    for _ in range(count):
        hh, ww = min(_randint(lo, hi), height), min(_randint(lo, hi), width)
        top, left = _randint(0, height - hh), _randint(0, width - ww)
        out[:, :, top:top + hh, left:left + ww] = colour
    return out


# Each group fires with probability 0.25 and then applies one of its members (chosen evenly).
HARMONIZATION_GROUPS: tuple[tuple[Callable[[torch.Tensor], torch.Tensor], ...], ...] = (
    (multiplicative_noise, gaussian_noise),
    (invert, sepia),
    (drop_channel, shuffle_channels),
    (shift_hsv,),
)
GROUP_P = 0.25
HOLES_P = 0.9


def harmonization_augment(real0: torch.Tensor) -> torch.Tensor:
    """The harmonization augmentation of METHOD 4 on a 1x3xHxW image in [-1, 1]."""
    x = _levels(real0.contiguous())
    for group in HARMONIZATION_GROUPS:
        if _chance(GROUP_P):
            x = group[_randint(0, len(group) - 1)](x)
    if _chance(HOLES_P):
        x = holes(x)
    return _from_levels(x)


# --- editing: grid shuffle --------------------------------------------------------------------
# tiles -> (tile side as a fraction of the image side, move as a fraction of the image side).
# METHOD 4 gives the move for one and two tiles; three and more move as two do.
TILE_TABLE = {1: ((0.20, 0.50), (0.05, 0.15)),
              2: ((0.15, 0.30), (0.05, 0.10)),
              3: ((0.10, 0.20), (0.05, 0.10))}
MANY_TILES = ((0.10, 0.15), (0.05, 0.10))
MAX_TILES = 5


def _tile_axis(side: int, size_range: tuple[float, float], move_range: tuple[float, float]) -> tuple[int, int, int]:
    """(tile length, source start, destination start) along one image axis."""
    length = min(side, max(1, round(_uniform(*size_range) * side)))
    src = _randint(0, side - length)
    move = max(1, round(_uniform(*move_range) * side))  # at least a pixel: a tile that stays put edits nothing
    dst = src + move if _chance(0.5) else src - move
    if not 0 <= dst <= side - length:  # the other direction always fits for tiles up to half the side
        dst = 2 * src - dst
    return length, src, min(max(dst, 0), side - length)


def grid_shuffle(real0: torch.Tensor, tiles: int | None = None) -> torch.Tensor:
    """Copy 1-5 random rectangles of the image to a nearby position (more tiles: smaller tiles)."""
    tiles = _randint(1, MAX_TILES) if tiles is None else tiles
    size_range, move_range = TILE_TABLE.get(tiles, MANY_TILES)
    source = real0.contiguous()
    out = source.clone()
    height, width = source.shape[-2:]
    for _ in range(tiles):
        th, sy, dy = _tile_axis(height, size_range, move_range)
        tw, sx, dx = _tile_axis(width, size_range, move_range)
        # Tiles come from the unaltered image, so one tile never carries another along.
        out[:, :, dy:dy + th, dx:dx + tw] = source[:, :, sy:sy + th, sx:sx + tw]
    return out


# --- what the trainer calls ------------------------------------------------------------------
_AUGMENTATIONS = {"harmonization": harmonization_augment, "editing": grid_shuffle}


def stage0_augmentation(config: Config) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(real0)``: the stage-0 input of one training iteration for the mode's stage0_input.

    Editing adds ``0.1 * N(0, 1)`` (the mode's stage0_noise) on top, so its values may leave [-1, 1]
    slightly, as its stage-0 fixed noise does.
    """
    mode = config.mode
    if mode.stage0_input not in _AUGMENTATIONS:
        raise ValueError(f"mode {mode.name} trains stage 0 on noise, not on an augmented image")
    augment = _AUGMENTATIONS[mode.stage0_input]
    noise_std = mode.stage0_noise

    def stage0_input(real0: torch.Tensor) -> torch.Tensor:
        x = augment(real0)
        if noise_std:
            # torch.randn(shape), not randn_like: the values must not depend on the memory layout.
            x = x + noise_std * torch.randn(x.shape, device=x.device, dtype=x.dtype)
        return x

    return stage0_input
