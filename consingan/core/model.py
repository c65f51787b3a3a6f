"""A trained model as data: generator, fixed noise, noise amplitudes, stage shapes and the training
image. The engine makes one, the model file stores one; ``consingan.model.ConSinGAN`` adds the verbs
(sample, reconstruct, animate, save, load) that the library hands out."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import Config
from .image import pyramid
from .networks import Generator


@dataclass
class Model:
    config: Config
    G: Generator
    fixed: list[torch.Tensor]  # reconstruction noise per stage
    amps: list[float]  # noise amplitude per stage
    shapes: list[tuple[int, int]]  # (height, width) per stage
    real: torch.Tensor  # the training image (after max_size), 1x3xHxW in [-1, 1]
    D_state: dict[str, torch.Tensor] | None = None  # last discriminator, to go on training later
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.real.device

    @property
    def num_stages(self) -> int:
        return len(self.shapes)

    def reals(self) -> list[torch.Tensor]:
        return pyramid(self.real, self.config)

    def to(self, device: torch.device | str):
        device = torch.device(device)
        self.G.to(device)
        self.fixed = [z.to(device) for z in self.fixed]
        self.real = self.real.to(device)
        return self
