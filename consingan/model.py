"""A trained ConSinGAN: generator, fixed noise, noise amplitudes, stage shapes and the training image.

This is the object the library API hands out (``consingan.train`` returns one, ``consingan.load``
reads one); sampling and the tasks built on it live in ``sampling.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import Config
from .image import pyramid
from .networks import Generator


@dataclass
class ConSinGAN:
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

    def to(self, device: torch.device | str) -> "ConSinGAN":
        device = torch.device(device)
        self.G.to(device)
        self.fixed = [z.to(device) for z in self.fixed]
        self.real = self.real.to(device)
        return self

    # Convenience wrappers around sampling.py, the library's main verbs.
    def sample(self, n: int = 1, scale_h: float = 1.0, scale_w: float = 1.0, seed: int | None = None,
               start_scale: int = 0) -> torch.Tensor:
        """n random images (Nx3xHxW in [-1, 1]); scale_h/scale_w resize every stage."""
        from .sampling import generate

        return generate(self, n=n, scale_h=scale_h, scale_w=scale_w, seed=seed, start_scale=start_scale)

    def reconstruct(self) -> torch.Tensor:
        from .sampling import reconstruct

        return reconstruct(self)

    def animate(self, walk=None, seed: int | None = None) -> torch.Tensor:
        """The frames of a random walk around the fixed noise (an ``animate.Walk``; default: the
        paper's alpha 0.1, beta 0.9, 100 frames), Fx3xHxW in [-1, 1]."""
        from .animate import animate

        return animate(self, walk, seed=seed)

    def save(self, path: str | Path) -> Path:
        """Write ``model.pt`` (path may be the model directory or the file)."""
        from .model_file import save_model

        return save_model(self, path)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "ConSinGAN":
        from .model_file import load_model

        return load_model(path, device=device)
