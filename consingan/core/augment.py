"""Stage-0 augmentations of harmonization and editing (docs/method.md section 4), in torch.

During training these modes feed stage 0 an altered copy of the stage-0 training image instead of
noise, so that at inference the generator turns a naive image (an object pasted into the image)
into one that looks like the training image.

The draws follow the reference: harmonization makes one outer choice (p=0.25) of one colour or
texture transform, then, independently, cuts holes (p=0.9); editing copies 1-5 tiles of the image
to nearby positions. Harmonization works on the image as float 8-bit levels (0..255, not rounded)
and the result is clamped back into [-1, 1], as the reference's conversions do.

Difference from the reference, on purpose: the library version the reference pins clips the outputs
of the multiplicative noise, per-channel Gaussian noise, sepia and HSV transforms to 1.0 because the
image is float, so those iterations see a near-black image. That is an accident of the library, not
the method: here every transform clips to 0..255 as it would on an 8-bit image.

Randomness comes only from the run's generators (``rng``, core/rng.py; never Python's or numpy's,
and torch's global ones only when a function is called without ``rng``): the run stays reproducible
from --manualSeed and resumable, since a checkpoint stores the generators' states. Choices that
steer control flow (which operation, sizes, positions) are drawn on ``rng.cpu``, so that a CUDA run
does not wait on the GPU for them; per-pixel noise is drawn on the image's device from ``rng.device``.
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import torch

from ..config import Config
from .rng import Rngs, cpu_of, device_of

T = TypeVar("T")

# --- random draws (the run's CPU generator) ---------------------------------------------------


def _uniform(lo: float, hi: float, rng: Rngs | None = None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=cpu_of(rng)))


def _randint(lo: int, hi: int, rng: Rngs | None = None) -> int:
    """An integer in [lo, hi], both ends included (as Python's random.randint, which the reference uses)."""
    return int(torch.randint(lo, hi + 1, (), generator=cpu_of(rng)))


def _chance(p: float, rng: Rngs | None = None) -> bool:
    return float(torch.rand((), generator=cpu_of(rng))) < p


def _pick(weighted: Sequence[tuple[float, T]], rng: Rngs | None = None) -> T:
    """One item of ``(weight, item)`` pairs, with probability proportional to its weight."""
    r = float(torch.rand((), generator=cpu_of(rng))) * sum(w for w, _ in weighted)
    for w, item in weighted:
        if r < w:
            return item
        r -= w
    return weighted[-1][1]  # r can reach the total only by float rounding


# --- harmonization: colour and texture changes on the 8-bit levels ---------------------------
# Every transform below takes and returns a 1x3xHxW float tensor of 8-bit levels (0..255).

def _levels(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> float 8-bit levels, not rounded (the reference hands the library denorm(x) * 255)."""
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0


def _from_levels(x: torch.Tensor) -> torch.Tensor:
    """Levels -> [-1, 1], clamped: a hole's colour can be level 256 (see holes), which ends at 1."""
    return ((x / 255.0 - 0.5) * 2.0).clamp(-1.0, 1.0)


def _clipped(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0.0, 255.0)


def multiplicative_noise(x: torch.Tensor, rng: Rngs | None = None) -> torch.Tensor:
    """Every pixel and channel times its own factor in [0.5, 1.5]."""
    factor = 0.5 + torch.rand(x.shape, device=x.device, generator=device_of(rng))
    return _clipped(x * factor)


def shared_gaussian_noise(x: torch.Tensor, rng: Rngs | None = None) -> torch.Tensor:
    """One map of Gaussian noise added to all three channels, sigma drawn in [2.55, 12.75] levels.

    The reference's imgaug transform adds integers: the image and the noise are both truncated
    toward zero before the sum, so the result is whole levels.
    """
    sigma = _uniform(0.01 * 255, 0.05 * 255, rng)
    noise = sigma * torch.randn((x.shape[0], 1, *x.shape[-2:]), device=x.device, generator=device_of(rng))
    return _clipped(x.trunc() + noise.trunc())


def gaussian_noise(x: torch.Tensor, rng: Rngs | None = None) -> torch.Tensor:
    """Additive Gaussian noise per pixel and channel, variance drawn in [10, 50] (8-bit levels)."""
    sigma = _uniform(10.0, 50.0, rng) ** 0.5
    return _clipped(x + sigma * torch.randn(x.shape, device=x.device, generator=device_of(rng)))


def invert(x: torch.Tensor, rng: Rngs | None = None) -> torch.Tensor:
    return 255.0 - x


_SEPIA = torch.tensor([[0.393, 0.769, 0.189],
                       [0.349, 0.686, 0.168],
                       [0.272, 0.534, 0.131]])


def sepia(x: torch.Tensor, rng: Rngs | None = None) -> torch.Tensor:
    return _clipped(torch.einsum("oc,nchw->nohw", _SEPIA.to(x.device, x.dtype), x))


def drop_channel(x: torch.Tensor, rng: Rngs | None = None) -> torch.Tensor:
    """One random channel set to 0."""
    out = x.clone()
    out[:, _randint(0, 2, rng)] = 0.0
    return out


def shuffle_channels(x: torch.Tensor, rng: Rngs | None = None) -> torch.Tensor:
    """The channels in a random order; like the reference's shuffle, this may be the same order."""
    return x[:, torch.randperm(3, generator=cpu_of(rng)).tolist()].clone()


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


def shift_hsv(x: torch.Tensor, rng: Rngs | None = None, hue: float | None = None,
              saturation: float | None = None, value: float | None = None) -> torch.Tensor:
    """Hue +-20, saturation +-30, value +-20 (each drawn uniformly when not given).

    Units are those of 8-bit HSV images as image libraries store them: hue in 0..179 (two degrees a
    level, so 20 is 40 degrees), saturation and value in 0..255.
    """
    hue = _uniform(-20, 20, rng) if hue is None else hue
    saturation = _uniform(-30, 30, rng) if saturation is None else saturation
    value = _uniform(-20, 20, rng) if value is None else value
    hsv = _rgb_to_hsv(x / 255.0)
    h = (hsv[:, 0] + hue / 180.0) % 1.0
    s = (hsv[:, 1] + saturation / 255.0).clamp(0.0, 1.0)
    v = (hsv[:, 2] + value / 255.0).clamp(0.0, 1.0)
    return _clipped(_hsv_to_rgb(torch.stack([h, s, v], 1)) * 255.0)


# Hole sides in pixels of the stage-0 image, by the number of holes.
HOLE_SIDES = {1: (30, 60), 2: (15, 30)}


def hole_boxes(height: int, width: int, count: int | None = None,
               rng: Rngs | None = None) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of 1 or 2 holes, bottom and right excluded.

    One height and one width per call, shared by the holes, each drawn in HOLE_SIDES; a hole spans
    side // 2 on both sides of its centre (so its full extent is even) and is clipped at the image
    border. Centres are whole pixels in [0, height] and [0, width], ends included, as the
    reference's Cutout draws them.
    """
    count = _randint(1, 2, rng) if count is None else count
    lo, hi = HOLE_SIDES[count]
    half_h, half_w = _randint(lo, hi, rng) // 2, _randint(lo, hi, rng) // 2
    boxes = []
    for _ in range(count):
        cy, cx = _randint(0, height, rng), _randint(0, width, rng)
        boxes.append((max(cy - half_h, 0), min(cy + half_h, height), max(cx - half_w, 0), min(cx + half_w, width)))
    return boxes


def holes(x: torch.Tensor, count: int | None = None, rng: Rngs | None = None) -> torch.Tensor:
    """1 or 2 holes (hole_boxes), all filled with one random colour.

    Each channel of the colour is a whole level in 0..256, ends included, as the reference draws it;
    level 256 becomes 1.0 when the image goes back to [-1, 1], which clamps.
    """
    boxes = hole_boxes(*x.shape[-2:], count=count, rng=rng)
    colour = torch.randint(0, 257, (3,), generator=cpu_of(rng)).to(x.device, x.dtype).view(1, 3, 1, 1)
    out = x.clone()
    for top, bottom, left, right in boxes:
        out[:, :, top:bottom, left:right] = colour
    return out


# The outer choice: with probability GROUP_P one group, then one of its members, by weight. The
# weights are the reference's transform probabilities normalised, as its nested one-of choices use
# them (groups 0.5, 0.5, 0.5 and HSV 0.1; noise members 0.2, 0.5, 0.5).
Transform = Callable[..., torch.Tensor]  # transform(levels, rng) -> levels
HARMONIZATION_GROUPS: tuple[tuple[float, tuple[tuple[float, Transform], ...]], ...] = (
    (5 / 16, ((1 / 6, multiplicative_noise), (5 / 12, shared_gaussian_noise), (5 / 12, gaussian_noise))),
    (5 / 16, ((1 / 2, invert), (1 / 2, sepia))),
    (5 / 16, ((1 / 2, drop_channel), (1 / 2, shuffle_channels))),
    (1 / 16, ((1.0, shift_hsv),)),
)
GROUP_P = 0.25
HOLES_P = 0.9


def colour_transform(rng: Rngs | None = None) -> Transform | None:
    """The outer choice of one harmonization iteration: one transform, or None (p = 1 - GROUP_P)."""
    if not _chance(GROUP_P, rng):
        return None
    return _pick(_pick(HARMONIZATION_GROUPS, rng), rng)


def harmonization_augment(real0: torch.Tensor, rng: Rngs | None = None) -> torch.Tensor:
    """The harmonization augmentation (docs/method.md section 4) on a 1x3xHxW image in [-1, 1]."""
    x = _levels(real0.contiguous())
    transform = colour_transform(rng)
    if transform is not None:
        x = transform(x, rng)
    if _chance(HOLES_P, rng):
        x = holes(x, rng=rng)
    return _from_levels(x)


# --- editing: grid shuffle --------------------------------------------------------------------
# tiles -> (tile side, move), each as a range of fractions of the image side. Whole pixels: the
# range's ends are int(side * fraction) and the pixel count is drawn uniformly between them.
TILE_TABLE = {1: ((0.20, 0.50), (0.05, 0.15)),
              2: ((0.15, 0.30), (0.05, 0.10)),
              3: ((0.10, 0.20), (0.05, 0.10))}
MANY_TILES = ((0.10, 0.15), (0.05, 0.10))
MAX_TILES = 5


def _pixels(side: int, fractions: tuple[float, float], rng: Rngs | None = None) -> int:
    return _randint(int(side * fractions[0]), int(side * fractions[1]), rng)


def tile_layout(height: int, width: int, tiles: int | None = None,
                rng: Rngs | None = None) -> list[tuple[int, int, int, int, int, int]]:
    """(source top, source left, tile height, tile width, destination top, destination left) per tile.

    The tile's origin is a whole pixel in [0, side], ends included, and the tile is cut off at the
    far border (it can be empty). One random sign moves the tile on both axes (down-right or
    up-left); a destination past the border is clamped so that the tile still fits there, so a move
    can be zero.
    """
    tiles = _randint(1, MAX_TILES, rng) if tiles is None else tiles
    size_range, move_range = TILE_TABLE.get(tiles, MANY_TILES)
    layout = []
    for _ in range(tiles):
        top, left = _randint(0, height, rng), _randint(0, width, rng)
        tile_h = min(_pixels(height, size_range, rng), height - top)
        tile_w = min(_pixels(width, size_range, rng), width - left)
        move_y, move_x = _pixels(height, move_range, rng), _pixels(width, move_range, rng)
        if _chance(0.5, rng):
            dst_top, dst_left = max(top - move_y, 0), max(left - move_x, 0)
        else:
            dst_top, dst_left = min(top + move_y, height - tile_h), min(left + move_x, width - tile_w)
        layout.append((top, left, tile_h, tile_w, dst_top, dst_left))
    return layout


def grid_shuffle(real0: torch.Tensor, rng: Rngs | None = None, tiles: int | None = None) -> torch.Tensor:
    """Copy 1-5 random rectangles of the image to a nearby position (more tiles: smaller tiles)."""
    source = real0.contiguous()
    out = source.clone()
    for top, left, tile_h, tile_w, dst_top, dst_left in tile_layout(*source.shape[-2:], tiles=tiles, rng=rng):
        # Tiles come from the unaltered image, so one tile never carries another along.
        out[:, :, dst_top:dst_top + tile_h, dst_left:dst_left + tile_w] = \
            source[:, :, top:top + tile_h, left:left + tile_w]
    return out


# --- what the trainer calls ------------------------------------------------------------------
_AUGMENTATIONS = {"harmonization": harmonization_augment, "editing": grid_shuffle}


def stage0_augmentation(config: Config) -> Callable[[torch.Tensor, Rngs | None], torch.Tensor]:
    """``f(real0, rng)``: the stage-0 input of one training iteration for the mode's stage0_input.

    Editing adds ``0.1 * N(0, 1)`` (the mode's stage0_noise) on top, so its values may leave [-1, 1]
    slightly, as its stage-0 fixed noise does.
    """
    mode = config.mode
    if mode.stage0_input not in _AUGMENTATIONS:
        raise ValueError(f"mode {mode.name} trains stage 0 on noise, not on an augmented image")
    augment = _AUGMENTATIONS[mode.stage0_input]
    noise_std = mode.stage0_noise

    def stage0_input(real0: torch.Tensor, rng: Rngs | None = None) -> torch.Tensor:
        x = augment(real0, rng)
        if noise_std:
            # torch.randn(shape), not randn_like: the values must not depend on the memory layout.
            x = x + noise_std * torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=device_of(rng))
        return x

    return stage0_input
