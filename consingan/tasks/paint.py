"""Paint-to-image (docs/method.md 5): a rough painting with flat colours, put in at stage 0, becomes an
image with the training image's textures and the painting's layout.

Any model whose stage 0 takes an image works: generation and retarget models reconstruct from the
stage-0 image, harmonization and editing models take one by design (animation models start from
noise and cannot). A ``paint`` model is trained for it: its stage-0 input each iteration is the
stage-0 training image quantised to ``paint_colors`` colours (k-means on its RGB pixels) with holes
of palette colours and moved rectangles, so that it learns to turn flat colour regions into texture;
at inference the painting is mapped to the nearest of those colours.

    model = consingan.load("runs/paint")
    palette = paint.model_palette(model)               # Kx3 in [-1, 1]
    images = model.paint("painting.png", num_samples=4, seed=0)
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import Config
from ..core.image import resize
from ..core.networks import evaluating
from ..core.noise import random_noise
from ..storage.image_files import as_image
from ..errors import UserError
from .sampling import make_generator

PALETTE_KEY = "palette"  # model.meta: the palette as a list of [r, g, b] in [-1, 1] (when stored)
PALETTE_SEED = 0  # k-means++ seeding: the palette of an image is always the same
KMEANS_ITER = 30


# --- the palette ------------------------------------------------------------------------------

def _kmeans(pixels: np.ndarray, k: int) -> np.ndarray:
    from scipy.cluster.vq import kmeans2

    rng = np.random.default_rng(PALETTE_SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an empty cluster keeps its centre; unused ones are dropped below
        try:
            centres, _ = kmeans2(pixels, k, iter=KMEANS_ITER, minit="++", rng=rng)
        except TypeError:  # scipy before 1.15 calls it seed
            centres, _ = kmeans2(pixels, k, iter=KMEANS_ITER, minit="++", seed=rng)
    return centres


def palette_of(image: torch.Tensor, colors: int) -> torch.Tensor:
    """The ``colors`` colours of k-means on the RGB pixels of ``image`` (1x3xHxW in [-1, 1]), as a
    Kx3 float32 CPU tensor, darkest first. Deterministic (a fixed seed). An image with fewer distinct
    colours gives those; a centre no pixel is nearest to is dropped, so K can be smaller."""
    pixels = image.detach().to("cpu", torch.float64)[0].permute(1, 2, 0).reshape(-1, 3).numpy()
    distinct = np.unique(pixels, axis=0)
    centres = distinct if len(distinct) <= colors else _kmeans(pixels, colors)
    centres = torch.from_numpy(np.ascontiguousarray(centres)).to(torch.float32).clamp(-1.0, 1.0)
    used = torch.unique(_nearest(torch.from_numpy(pixels).float(), centres))
    centres = centres[used]
    luma = centres @ torch.tensor([0.299, 0.587, 0.114])
    return centres[torch.argsort(luma, stable=True)]


def _nearest(pixels: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Index of the nearest palette colour (Euclidean in RGB) of each row of ``pixels`` (Nx3)."""
    return torch.cdist(pixels.float(), palette.to(pixels.device).float()).argmin(dim=1)


def quantise(image: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """``image`` (Nx3xHxW) with every pixel replaced by its nearest palette colour."""
    n, c, h, w = image.shape
    pixels = image.permute(0, 2, 3, 1).reshape(-1, 3)
    colours = palette.to(image.device, torch.float32)[_nearest(pixels, palette)]
    return colours.reshape(n, h, w, 3).permute(0, 3, 1, 2).contiguous().to(image.dtype)


def _checked_palette(value: Any) -> torch.Tensor:
    t = torch.tensor(value, dtype=torch.float32) if isinstance(value, (list, tuple)) else None
    if t is None or t.dim() != 2 or t.shape[1] != 3 or not 1 <= len(t) <= 64 or not torch.isfinite(t).all() \
            or t.abs().max() > 1:
        raise UserError("the model's palette (meta 'palette') is damaged; it must be a list of [r, g, b] in "
                        "[-1, 1]: remove it from the model file (it is then recomputed) or train again")
    return t


def model_palette(model) -> torch.Tensor:
    """The model's palette, Kx3 in [-1, 1]: the one stored in ``model.meta["palette"]``, or k-means with
    K = paint_colors on its stage-0 training image (what a ``paint`` model was trained with; the
    result is kept in meta, so a saved model stores it)."""
    stored = model.meta.get(PALETTE_KEY)
    if stored is not None:
        return _checked_palette(stored)
    palette = palette_of(model.reals()[0], model.config.paint_colors)
    model.meta[PALETTE_KEY] = palette.tolist()
    return palette


def swatch(palette: torch.Tensor, side: int = 48) -> torch.Tensor:
    """1x3x``side``x(K*``side``): one square of each palette colour, left to right."""
    k = len(palette)
    out = palette.to(torch.float32).t().reshape(1, 3, 1, k, 1).expand(1, 3, side, k, side)
    return out.reshape(1, 3, side, k * side).contiguous()


def hex_colour(rgb: torch.Tensor) -> str:
    levels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.int64).tolist()
    return "#" + "".join(f"{v:02x}" for v in levels)


def write_palette(model, path: str | os.PathLike, side: int = 48) -> tuple[Path, torch.Tensor]:
    """The palette command: a swatch image of the model's palette at ``path`` (never over an existing
    file). Returns the path and the palette."""
    from ..storage.image_files import save_image
    from ..storage.outputs import OutputExists

    require_image_stage0(model.config, "a palette")
    path = Path(path)
    if path.exists():
        raise UserError(f"{path} already exists; pass another --out (nothing was overwritten)")
    palette = model_palette(model)
    try:
        save_image(swatch(palette, side), path, overwrite=False)
    except OutputExists:
        raise UserError(f"{path} already exists; pass another --out (nothing was overwritten)") from None
    return path, palette


# --- training: the stage-0 input of paint mode -------------------------------------------------
# Geometric variety in stage-0 pixels, as fractions of the image side (docs/method.md 5).
HOLES_P = 0.9  # one or two rectangles of one palette colour
HOLE_SIDE = (0.10, 0.35)
SHIFT_P = 0.5  # one to three rectangles of the quantised image moved nearby
SHIFT_TILES = 3
SHIFT_SIDE = (0.15, 0.40)
SHIFT_MOVE = (0.05, 0.20)


def _randint(lo: int, hi: int, g: torch.Generator | None) -> int:
    """A whole number in [lo, hi], both included."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def _chance(p: float, g: torch.Generator | None) -> bool:
    return float(torch.rand((), generator=g)) < p


def _pixels(side: int, fractions: tuple[float, float], g: torch.Generator | None) -> int:
    return _randint(max(1, int(side * fractions[0])), max(1, int(side * fractions[1])), g)


def paint_augment(q: torch.Tensor, palette: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
    """One training input from the quantised stage-0 image ``q`` (1x3xHxW): with probability SHIFT_P,
    1-3 rectangles of it copied to a nearby place (each axis its own sign, clamped to the image); then
    with probability HOLES_P, 1-2 rectangles filled with a palette colour. Every draw comes from ``g``
    (a CPU generator; None: torch's default one); the result keeps ``q``'s colours only."""
    h, w = q.shape[-2:]
    out = q.clone()
    if _chance(SHIFT_P, g):
        for _ in range(_randint(1, SHIFT_TILES, g)):
            th, tw = _pixels(h, SHIFT_SIDE, g), _pixels(w, SHIFT_SIDE, g)
            top, left = _randint(0, h - th, g), _randint(0, w - tw, g)
            dy = _pixels(h, SHIFT_MOVE, g) * (1 if _chance(0.5, g) else -1)
            dx = _pixels(w, SHIFT_MOVE, g) * (1 if _chance(0.5, g) else -1)
            ty, tx = min(max(top + dy, 0), h - th), min(max(left + dx, 0), w - tw)
            out[:, :, ty:ty + th, tx:tx + tw] = q[:, :, top:top + th, left:left + tw]
    if _chance(HOLES_P, g):
        for _ in range(_randint(1, 2, g)):
            hh, hw = _pixels(h, HOLE_SIDE, g), _pixels(w, HOLE_SIDE, g)
            top, left = _randint(0, h - hh, g), _randint(0, w - hw, g)
            colour = palette[_randint(0, len(palette) - 1, g)].to(out.device, out.dtype)
            out[:, :, top:top + hh, left:left + hw] = colour.view(1, 3, 1, 1)
    return out


def stage0_paint_input(config: Config) -> Callable[..., torch.Tensor]:
    """The training hook of paint mode: ``f(real0, rng=None)`` -> the stage-0 input of one iteration.

    The palette (k-means on ``real0``, config.paint_colors colours) and the quantised image are
    computed at the first call. Random draws come from ``rng.cpu`` (the run's CPU generator); with
    ``rng`` None, from torch's default CPU generator.
    """
    cache: dict[str, torch.Tensor] = {}

    def stage0_input(real0: torch.Tensor, rng: Any = None) -> torch.Tensor:
        if "q" not in cache:
            palette = palette_of(real0, config.paint_colors)
            cache["palette"] = palette.to(real0.device)
            cache["q"] = quantise(real0.float(), palette).to(real0.dtype)
        g = getattr(rng, "cpu", None) if rng is not None else None
        return paint_augment(cache["q"], cache["palette"], g)

    return stage0_input


# --- inference ---------------------------------------------------------------------------------

def require_image_stage0(config: Config, what: str = "--paint") -> None:
    """Paint needs a model whose stage 0 takes an image (not animation's noise)."""
    if config.mode.stage0_fixed == "random":
        raise UserError(f"{what} needs a model whose stage 0 takes an image, and this one was trained with "
                        f"--train_mode {config.train_mode} (noise at stage 0); train one with --train_mode paint "
                        "(or generation, retarget, harmonization or editing)")


def painting_tensor(painting: Any, what: str = "painting") -> torch.Tensor:
    """A painting (path, HxWx3/4 array or 1x3xHxW tensor in [-1, 1]) -> 1x3xHxW in [-1, 1]. A
    transparent pixel is refused: what it should show is unknown."""
    return as_image(painting, what, check_array=_check_opaque)


def _check_opaque(arr: np.ndarray, what: str) -> None:
    """A UserError when an image array with an alpha channel has a pixel that is not fully opaque."""
    a = np.asarray(arr)
    if a.ndim != 3 or a.shape[2] not in (2, 4):
        return
    alpha = a[:, :, -1]
    if a.dtype == bool:
        opaque = alpha.all()
    elif np.issubdtype(a.dtype, np.integer):
        opaque = (alpha == np.iinfo(a.dtype).max).all()
    else:  # float images: 0..1, or 0..255 as the reader takes them
        opaque = (alpha >= (255.0 if alpha.max() > 1 else 1.0)).all()
    if not opaque:
        raise UserError(f"{what} has transparent pixels (alpha channel), and a painting must give every "
                        "pixel a colour; fill the background with a palette colour and save it without "
                        "transparency")


def painting_stage0(model, painting: torch.Tensor) -> torch.Tensor:
    """The painting at stage 0: resized like a naive image (docs/method.md 1), then for a ``paint``
    model mapped to the nearest palette colour."""
    z = resize(painting.float(), tuple(model.shapes[0])).to(model.device)
    if model.config.mode.stage0_input == "paint":
        z = quantise(z, model_palette(model))
    return z


def _batch_size(model) -> int:
    return 1 if model.config.batch_norm else 8  # batch norm: statistics per image, as sampling does


@torch.no_grad()
def paint(model, painting: Any, num_samples: int = 1, seed: int | None = None) -> torch.Tensor:
    """``num_samples`` images (Nx3xHxW in [-1, 1], the model's size) from ``painting`` (a path, an
    array or a 1x3xhxw tensor of any size): the painting at stage 0, fresh noise in every stage
    above (editing models: also their 0.1 * N(0, 1) at stage 0). Sample i depends only on (seed, i)."""
    from .harmonize import check_aspect

    require_image_stage0(model.config)
    if num_samples < 1:
        raise UserError(f"--num_samples must be at least 1, not {num_samples}")
    painting = painting_tensor(painting)
    check_aspect(painting, model.real, "the painting")
    z0 = painting_stage0(model, painting)
    G, device, c = model.G, model.device, model.config
    gen = make_generator(device, seed)
    std = c.mode.stage0_noise
    out = []
    for first in range(0, num_samples, _batch_size(model)):
        per_sample = []
        for _ in range(min(_batch_size(model), num_samples - first)):
            noise = random_noise(c, model.shapes, device, gen)
            noise[0] = z0 + std * noise[0] if std else z0  # stage 0's own N(0, 1) for editing's noise
            per_sample.append(noise)
        noise = [torch.cat([s[k] for s in per_sample]) for k in range(len(model.shapes))]
        with evaluating(G):
            out.append(G(noise, model.shapes, model.amps))
    return torch.cat(out)


def result_files(out: str | os.PathLike, num_samples: int) -> list[Path]:
    return [Path(out) / f"painted_{i}.png" for i in range(num_samples)]


def write_results(model, painting_path: str | os.PathLike, out: str | os.PathLike, num_samples: int = 1,
                  seed: int | None = None) -> list[Path]:
    """The generate command's ``--paint``: ``painted_<i>.png`` in ``out`` and ``painting_stage0.png``
    (what stage 0 received). Existing files are an error, found before any work."""
    from ..storage.image_files import save_image

    require_image_stage0(model.config)
    painting = painting_tensor(painting_path)
    files = result_files(out, num_samples)
    stage0_file = Path(out) / "painting_stage0.png"
    for f in [*files, stage0_file]:
        if f.exists():
            raise UserError(f"{f} already exists; pass --out DIR to write elsewhere (nothing was overwritten)")
    images = paint(model, painting, num_samples=num_samples, seed=seed)
    for image, f in zip(images, files):
        save_image(image, f, overwrite=False)
    save_image(painting_stage0(model, painting), stage0_file, overwrite=False)
    return [*files, stage0_file]


def colour_error(output: torch.Tensor, painting: torch.Tensor, size: tuple[int, int]) -> float:
    """How closely ``output``'s low-resolution colours follow ``painting``: the RMS difference of both
    resized to ``size`` (e.g. stage 0's), in [-1, 1] units (0: the same colours)."""
    a = resize(output.float().cpu(), size)
    b = resize(painting.float().cpu(), size).expand_as(a)
    return math.sqrt(float((a - b).pow(2).mean()))
