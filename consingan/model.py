"""The model the library hands out: ``consingan.train`` returns one, ``consingan.load`` reads one.
Its data is ``core.model.Model``; the verbs here call the tasks and the model file."""
from __future__ import annotations

from pathlib import Path

import torch

from .core.model import Model
from .storage.model_file import load_model, save_model
from .tasks.animate import Walk, animate
from .tasks.paint import paint
from .tasks.sampling import generate, reconstruct
from .tasks.superres import super_resolve


class ConSinGAN(Model):
    """A trained ConSinGAN (the fields of ``core.model.Model``) with the library's main verbs."""

    @classmethod
    def of(cls, model: Model) -> "ConSinGAN":
        """The same model (the same tensors, not copies) with the verbs."""
        if isinstance(model, cls):
            return model
        return cls(model.config, model.G, model.fixed, model.amps, model.shapes, model.real, model.D_state, model.meta)

    def sample(self, n: int = 1, scale_h: float = 1.0, scale_w: float = 1.0, seed: int | None = None,
               start_scale: int = 0) -> torch.Tensor:
        """n random images (Nx3xHxW in [-1, 1]); scale_h/scale_w resize every stage."""
        return generate(self, n=n, scale_h=scale_h, scale_w=scale_w, seed=seed, start_scale=start_scale)

    def reconstruct(self) -> torch.Tensor:
        return reconstruct(self)

    def animate(self, walk: Walk | None = None, seed: int | None = None) -> torch.Tensor:
        """The frames of a random walk around the fixed noise (a ``Walk``; default: the paper's alpha 0.1,
        beta 0.9, 100 frames), Fx3xHxW in [-1, 1]."""
        return animate(self, walk, seed=seed)

    def super_resolve(self, factor: float | None = None, seed: int | None = None) -> torch.Tensor:
        """A ``superres`` model's training image enlarged ``factor`` times (default: the model's
        sr_factor, 4 unless trained otherwise), 1x3x(F*H)x(F*W) in [-1, 1] (docs/method.md 5)."""
        return super_resolve(self, factor, seed=seed)

    def paint(self, painting, num_samples: int = 1, seed: int | None = None) -> torch.Tensor:
        """Images with the training image's textures and the layout of ``painting`` (a path, an HxWx3
        array or a 1x3xhxw tensor in [-1, 1], any size), Nx3xHxW in [-1, 1] (docs/method.md 5)."""
        return paint(self, painting, num_samples=num_samples, seed=seed)

    def save(self, path: str | Path) -> Path:
        """Write ``model.pt`` (path may be the model directory or the file)."""
        return save_model(self, path)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "ConSinGAN":
        return cls.of(load_model(path, device=device))
