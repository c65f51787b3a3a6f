"""Quality metrics of a trained model, in torch: swd, diversity, rec_rmse, nn_patch.

    from consingan.metrics import evaluate
    metrics = evaluate(consingan.load("runs/rocket"), num_samples=50, seed=0)

Images are Nx3xHxW tensors in [-1, 1]; a patch is a 7x7x3 window (147 values). Every random
choice comes from a ``torch.Generator`` seeded from ``seed``, so a result depends only on the
inputs and the seed.

``swd`` -- multi-scale sliced Wasserstein distance between patch distributions, the form of
Karras et al. 2018 (progressive growing of GANs), with these choices:
  * Laplacian pyramid: 5x5 binomial blur [1 4 6 4 1]/16 (reflect padding), keep every 2nd pixel;
    a band is a level minus the zero-inserted, blurred (x4) next level. Levels are halved while
    the next one keeps a short side of at least 16 px; the last level is the remaining low-pass.
  * Per level and per image set: up to 4096 patches at random positions (without replacement,
    over all images of the set); both sets get the same count (the smaller one's) so that the
    sorted projections pair up. The two sets draw positions from identically seeded generators,
    so an image against itself scores exactly 0.
  * Each set's descriptors are normalised per colour channel (minus its mean, over its std),
    as in the paper; a global colour or contrast shift therefore does not count.
  * 512 random unit directions per level; the distance is the mean over directions of the mean
    absolute difference of the sorted projections (the 1-D Wasserstein-1 distance).
  * Reported x 1e3, like the paper's tables: ``swd`` is the mean over levels and ``swd_levels``
    lists the levels finest first.

``diversity`` -- SinGAN's measure: the standard deviation over the samples of each pixel and
channel (population std, unbiased=False), averaged over pixels and channels, divided by the
population std of all the training image's values. Unit-free; 0 means all samples are the same.

``rec_rmse`` -- root mean square difference between the reconstruction and the training image,
in [-1, 1] pixel units (0.01 is about 1.3 of 255 grey levels).

``nn_patch`` -- for up to 2048 generated patches (random positions, stride-1 grid of all
samples), the distance to the nearest patch of the training image (all of them, stride 1),
averaged. The distance is the RMS over the 147 values, in [-1, 1] units. A crop or copy of the
training image scores exactly 0: low values flag memorisation. Flat regions match flat training
patches closely too, so blurry samples also score low: read it together with ``swd``.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
import torch.nn.functional as F

from .errors import UserError

PATCH = 7
MIN_LEVEL_SIDE = 16
SWD_PATCHES = 4096
SWD_DIRECTIONS = 512
SWD_SCALE = 1e3
NN_PATCHES = 2048
NN_CHUNK = 256  # generated patches per distance block: 256 x 40k training patches is ~40 MB
NN_CANDIDATES = 4  # nearest candidates re-measured exactly (the matmul form loses precision)


def _generator(seed: int, *salt: Any) -> torch.Generator:
    # A stable digest (not hash(), which changes per process) gives each draw its own stream.
    digest = hashlib.sha256(repr((int(seed), *salt)).encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def _as_batch(images: torch.Tensor) -> torch.Tensor:
    images = images.unsqueeze(0) if images.dim() == 3 else images
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected Nx3xHxW images, got shape {tuple(images.shape)}")
    if min(images.shape[-2:]) < PATCH:
        raise UserError(f"images of {images.shape[-2]}x{images.shape[-1]} px are too small for "
                        f"{PATCH}x{PATCH} patches; evaluate a model trained at a larger --max_size")
    return images.float()


def _blur(x: torch.Tensor) -> torch.Tensor:
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=x.device) / 16.0
    kernel = torch.outer(k1, k1).expand(x.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=x.shape[1])


def laplacian_pyramid(images: torch.Tensor, min_side: int = MIN_LEVEL_SIDE) -> list[torch.Tensor]:
    """Band-pass levels finest first, then the low-pass rest (a single level for small images)."""
    levels, current = [], images
    while math.ceil(min(current.shape[-2:]) / 2) >= min_side:
        down = _blur(current)[..., ::2, ::2]
        up = torch.zeros_like(current)
        up[..., ::2, ::2] = down
        levels.append(current - 4.0 * _blur(up))  # x4: three of four zero-inserted pixels are 0
        current = down
    levels.append(current)
    return levels


def _grid_size(images: torch.Tensor) -> int:
    n, _, h, w = images.shape
    return n * (h - PATCH + 1) * (w - PATCH + 1)


def patches_at(images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The patches at flat positions of the stride-1 patch grid of all images, as rows of 7*7*3."""
    _, _, h, w = images.shape
    gh, gw = h - PATCH + 1, w - PATCH + 1
    b, rest = index // (gh * gw), index % (gh * gw)
    y, x = rest // gw, rest % gw
    off = torch.arange(PATCH, device=images.device)
    hwc = images.permute(0, 2, 3, 1)
    p = hwc[b[:, None, None], y[:, None, None] + off[None, :, None], x[:, None, None] + off[None, None, :]]
    return p.reshape(len(index), -1)


def _random_patches(images: torch.Tensor, count: int, g: torch.Generator) -> torch.Tensor:
    index = torch.randperm(_grid_size(images), generator=g)[:count]
    return patches_at(images, index.to(images.device))


def _normalised(desc: torch.Tensor) -> torch.Tensor:
    per_channel = desc.reshape(len(desc), PATCH * PATCH, 3)
    mean = per_channel.mean(dim=(0, 1), keepdim=True)
    std = per_channel.std(dim=(0, 1), unbiased=False, keepdim=True)
    return ((per_channel - mean) / (std + 1e-8)).reshape(len(desc), -1)


def _sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: int, g: torch.Generator) -> float:
    dirs = torch.randn(directions, a.shape[1], generator=g).to(a.device)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    # One row per direction: sorting along the contiguous dimension is many times faster.
    pa = (dirs @ a.t()).sort(dim=1).values
    pb = (dirs @ b.t()).sort(dim=1).values
    return (pa - pb).abs().mean().item()


@torch.inference_mode()
def swd_levels(images: torch.Tensor, real: torch.Tensor, seed: int = 0, max_patches: int = SWD_PATCHES,
               directions: int = SWD_DIRECTIONS) -> list[float]:
    """Sliced Wasserstein distance (x 1e3) per Laplacian level, finest first."""
    images, real = _as_batch(images), _as_batch(real)
    levels_a, levels_b = laplacian_pyramid(images), laplacian_pyramid(real)
    out = []
    # zip: when the sizes differ, the larger pyramid's extra coarse levels have no partner.
    for level, (la, lb) in enumerate(zip(levels_a, levels_b)):
        count = min(max_patches, _grid_size(la), _grid_size(lb))
        a = _normalised(_random_patches(la, count, _generator(seed, "positions", level)))
        b = _normalised(_random_patches(lb, count, _generator(seed, "positions", level)))
        out.append(SWD_SCALE * _sliced_wasserstein(a, b, directions, _generator(seed, "directions", level)))
    return out


def swd(images: torch.Tensor, real: torch.Tensor, seed: int = 0) -> float:
    """Multi-scale sliced Wasserstein distance (x 1e3), the mean over the pyramid levels."""
    levels = swd_levels(images, real, seed)
    return sum(levels) / len(levels)


@torch.inference_mode()
def diversity(samples: torch.Tensor, real: torch.Tensor) -> float:
    """Mean per-pixel std across the samples over the std of the training image (SinGAN)."""
    samples, real = _as_batch(samples), _as_batch(real)
    if len(samples) < 2:
        raise UserError("diversity needs at least 2 samples; raise --num_samples")
    spread = samples.std(dim=0, unbiased=False).mean()
    return (spread / real.std(unbiased=False).clamp_min(1e-8)).item()


@torch.inference_mode()
def rec_rmse(reconstruction: torch.Tensor, real: torch.Tensor) -> float:
    """RMSE in [-1, 1] units."""
    return (reconstruction.float() - real.float()).pow(2).mean().sqrt().item()


@torch.inference_mode()
def nn_patch(images: torch.Tensor, real: torch.Tensor, seed: int = 0, max_patches: int = NN_PATCHES) -> float:
    """Mean RMS distance from generated patches to their nearest training-image patch."""
    images, real = _as_batch(images), _as_batch(real)
    train = patches_at(real, torch.arange(_grid_size(real), device=real.device))
    gen = _random_patches(images, min(max_patches, _grid_size(images)), _generator(seed, "nn_patch"))
    # Centring shrinks the norms, and with them the rounding error of |a|^2 + |b|^2 - 2ab.
    centre = train.mean(dim=0, keepdim=True)
    train, gen = train - centre, gen - centre
    train_sq = train.pow(2).sum(dim=1)
    k = min(NN_CANDIDATES, len(train))
    nearest = []
    for first in range(0, len(gen), NN_CHUNK):
        g = gen[first:first + NN_CHUNK]
        # |g|^2 is the same for every candidate of a row, so the ranking leaves it out.
        rank = torch.addmm(train_sq[None, :], g, train.t(), alpha=-2.0)
        candidates = rank.topk(k, dim=1, largest=False).indices
        # Exact distances to the few best candidates: a patch that is in the training image gives 0.
        exact = (g[:, None, :] - train[candidates]).pow(2).mean(dim=2)
        nearest.append(exact.min(dim=1).values.sqrt())
    return torch.cat(nearest).mean().item()


@torch.inference_mode()
def evaluate(model, num_samples: int = 50, seed: int = 0, naive: torch.Tensor | None = None) -> dict[str, Any]:
    """All metrics of a model, as a JSON-able dict.

    Generation-like models (random noise at stage 0) are judged on ``num_samples`` samples at the
    training size. Harmonization/editing models have no random samples: the patch metrics are
    taken on their result for ``naive`` (1x3xHxW in [-1, 1]; the generator's output, before any
    mask blend, which would mostly be the training image), else on the reconstruction, and
    ``diversity`` is None. ``seed`` also fixes the noise that editing adds to the naive image.
    """
    real = model.real
    reconstruction = model.reconstruct()
    if naive is not None:
        from .tasks.harmonize import harmonize

        outputs, _ = harmonize(model, naive, seed=seed)
        evaluated_on = model.config.mode.result_name
    elif model.config.mode.stage0_input == "noise":
        if num_samples < 2:
            raise UserError("--num_samples must be at least 2 (diversity compares samples)")
        outputs, evaluated_on = model.sample(num_samples, seed=seed), "samples"
    else:
        outputs, evaluated_on = reconstruction, "reconstruction"
    outputs = _as_batch(outputs)
    levels = swd_levels(outputs, real, seed)
    return {
        "swd": sum(levels) / len(levels),
        "diversity": diversity(outputs, real) if evaluated_on == "samples" else None,
        "rec_rmse": rec_rmse(reconstruction, real),
        "nn_patch": nn_patch(outputs, real, seed),
        "swd_levels": levels,
        "num_samples": len(outputs),
        "seed": int(seed),
        "evaluated_on": evaluated_on,
        "image_size": [int(real.shape[-2]), int(real.shape[-1])],
    }


DESCRIPTIONS = {
    "swd": "patch-distribution distance to the training image, x1e3 (lower: closer)",
    "diversity": "pixel std across samples / training image std (0: all alike)",
    "rec_rmse": "reconstruction RMSE, [-1, 1] units",
    "nn_patch": "RMS distance to the nearest training patch, [-1, 1] units (0: copied)",
}


def format_table(metrics: dict[str, Any]) -> str:
    """The four metrics as an aligned plain-text table (readable on a terminal and in logs)."""
    rows = [("metric", "value", "meaning")]
    for key, meaning in DESCRIPTIONS.items():
        value = metrics.get(key)
        rows.append((key, "n/a" if value is None else f"{value:.4g}", meaning))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]}" for r in rows]
    levels = ", ".join(f"{v:.4g}" for v in metrics.get("swd_levels", []))
    lines.append(f"({metrics.get('num_samples')} {metrics.get('evaluated_on')}, seed {metrics.get('seed')}; "
                 f"swd per level, finest first: {levels})")
    return "\n".join(lines)
