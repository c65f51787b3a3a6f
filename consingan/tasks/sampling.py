"""Sampling from a trained model and the tasks built on it (docs/method.md section 4, inference)."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from ..errors import UserError
from ..core.networks import evaluating
from ..core.noise import random_noise


def scaled_shapes(shapes: Sequence[Sequence[int]], scale_h: float = 1.0, scale_w: float = 1.0) -> list[tuple[int, int]]:
    """Every stage's shape scaled (arbitrary output sizes: docs/method.md section 4, generation/retarget)."""
    return [(max(1, int(h * scale_h)), max(1, int(w * scale_w))) for h, w in shapes]


def make_generator(device: torch.device, seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def _batch_size(model) -> int:
    # With batch norm the statistics are per batch: generate such models one image at a time.
    return 1 if model.config.batch_norm else 8


def generate(model, n: int = 1, scale_h: float = 1.0, scale_w: float = 1.0, seed: int | None = None,
             start_scale: int = 0) -> torch.Tensor:
    """n random samples, Nx3xHxW in [-1, 1]. Sample i depends only on (seed, i), not on n.

    ``start_scale`` S keeps the fixed (reconstruction) noise in stages below S, so samples keep the
    layout of the training image (only at scale 1, where the fixed noise fits).
    """
    return torch.cat(list(generate_batches(model, n, scale_h, scale_w, seed, start_scale)))


def generate_batches(model, n: int = 1, scale_h: float = 1.0, scale_w: float = 1.0, seed: int | None = None,
                     start_scale: int = 0) -> Iterator[torch.Tensor]:
    """``generate``'s samples a batch at a time (Bx3xHxW, B <= 8): memory does not grow with n."""
    G, device = model.G, model.device
    shapes = scaled_shapes(model.shapes, scale_h, scale_w)
    if not 0 <= start_scale <= len(shapes):
        raise UserError(f"--start_scale {start_scale} is out of range for a model with {len(shapes)} stages; "
                        f"use 0 to {len(shapes)}")
    if start_scale and shapes != [tuple(s) for s in model.shapes]:
        raise UserError("--start_scale needs --scale_h 1 --scale_w 1 (the fixed noise has the training sizes)")
    return _batches(model, G, device, shapes, n, seed, start_scale)


@torch.no_grad()
def _batches(model, G, device, shapes, n, seed, start_scale) -> Iterator[torch.Tensor]:
    gen = make_generator(device, seed)
    chunk = _batch_size(model)
    for first in range(0, n, chunk):
        per_sample = [random_noise(model.config, shapes, device, gen) for _ in range(min(chunk, n - first))]
        noise = [torch.cat([s[k] for s in per_sample]) for k in range(len(shapes))]
        for k in range(min(start_scale, len(shapes))):
            noise[k] = model.fixed[k].expand_as(noise[k])
        with evaluating(G):  # only around the call: the caller may train G between two batches
            out = G(noise, shapes, model.amps)
        yield out


@torch.no_grad()
def reconstruct(model) -> torch.Tensor:
    """The generator's output for the fixed noise: it should look like the training image."""
    with evaluating(model.G):
        return model.G(model.fixed, model.shapes, model.amps)
