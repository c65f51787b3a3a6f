"""Noise maps: the random input of each stage and the fixed reconstruction noise (docs/method.md sections 2-3)."""
from __future__ import annotations

from typing import Sequence

import torch

from ..config import Config
from .networks import noise_size


def gaussian(config: Config, stage: int, shape: Sequence[int], device: torch.device | str,
             generator: torch.Generator | None = None, n: int = 1) -> torch.Tensor:
    c, h, w = noise_size(config, stage, shape)
    return torch.randn(n, c, h, w, device=device, generator=generator)


def random_noise(config: Config, shapes: Sequence[Sequence[int]], device: torch.device | str,
                 generator: torch.Generator | None = None, stage0: torch.Tensor | None = None,
                 n: int = 1) -> list[torch.Tensor]:
    """One noise map per stage. ``stage0`` replaces the Gaussian input of stage 0 (harmonization and
    editing feed an augmented or naive image there)."""
    noise = [gaussian(config, k, s, device, generator, n) for k, s in enumerate(shapes)]
    if stage0 is not None:
        noise[0] = stage0.expand(n, -1, -1, -1) if stage0.shape[0] == 1 else stage0
    return noise


def fixed_noise(config: Config, stage: int, reals: Sequence[torch.Tensor],
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The reconstruction noise of a stage, drawn once and kept for the whole run (docs/method.md section 3)."""
    real = reals[stage]
    if stage == 0:
        kind = config.mode.stage0_fixed
        if kind == "real":
            return real.clone()
        if kind == "real+noise":
            return real + config.mode.stage0_noise * gaussian(config, 0, real.shape, real.device, generator)
        return gaussian(config, 0, real.shape, real.device, generator)
    return gaussian(config, stage, real.shape, real.device, generator)
