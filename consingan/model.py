"""The model the library hands out: ``consingan.train`` returns one, ``consingan.load`` reads one.
Its data is ``core.model.Model``; the verbs here call the tasks and the model file."""
from __future__ import annotations

from pathlib import Path

import torch

from .core.model import Model
from .storage.model_file import load_model, save_model
from .tasks.animate import Walk, animate
from .tasks.sampling import generate, reconstruct


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

    def save(self, path: str | Path) -> Path:
        """Write ``model.pt`` (path may be the model directory or the file)."""
        return save_model(self, path)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "ConSinGAN":
        return cls.of(load_model(path, device=device))
