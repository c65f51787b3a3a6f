"""The model file ``model.pt``: tensors plus a JSON-able config, never pickled objects.

It loads with ``torch.load(path, weights_only=True)``, so loading cannot run code from the file.
Layout (format_version 1):
    format: "consingan-model", format_version: 1,
    config: dict (Config fields), generator: state dict, discriminator: state dict of the last D,
    fixed_noise: [tensor per stage], noise_amp: [float per stage], shapes: [[h, w] per stage],
    real: training image 1x3xHxW in [-1, 1], meta: dict of plain values.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import Config
from .errors import UserError
from .networks import Generator
from .outputs import writing

FORMAT = "consingan-model"
FORMAT_VERSION = 1
MODEL_FILE = "model.pt"


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename: a reader never sees half a file,
    and a failed write (a full disk: outputs.NoSpace) leaves the previous file and no temporary one."""
    with writing(path, durable=True) as f:
        torch.save(obj, f)


def model_path(path: str | Path) -> Path:
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() or path.suffix != ".pt" else path


def to_record(model) -> dict[str, Any]:
    cpu = lambda t: t.detach().to("cpu").contiguous()  # noqa: E731
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "generator": {k: cpu(v) for k, v in model.G.state_dict().items()},
        "discriminator": None if model.D_state is None else {k: cpu(v) for k, v in model.D_state.items()},
        "fixed_noise": [cpu(z) for z in model.fixed],
        "noise_amp": [float(a) for a in model.amps],
        "shapes": [[int(h), int(w)] for h, w in model.shapes],
        "real": cpu(model.real),
        "meta": dict(model.meta),
    }


def save_model(model, path: str | Path) -> Path:
    path = model_path(path)
    atomic_save(to_record(model), path)
    return path


def read_record(path: str | Path, kind: str = FORMAT) -> dict[str, Any]:
    """Load and check a consingan file; every failure is a UserError that says what is wrong."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no model in {path.parent if path.name == MODEL_FILE else path}: "
                        f"{path.name} not found; give the directory a training run wrote (--model_dir)")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise UserError(f"{path} holds pickled Python objects, which consingan does not load "
                            "(they could run code); re-save it with consingan") from None
        raise UserError(f"{path} is not a readable consingan model (truncated or foreign file: "
                        f"{text.splitlines()[0] if text else type(exc).__name__}); train a new model") from None
    if not isinstance(record, dict) or record.get("format") != kind:
        raise UserError(f"{path} is not a consingan model file (foreign file); give a model.pt written by consingan")
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(f"{path} has model format version {version}, this consingan reads version "
                        f"{FORMAT_VERSION}; use the consingan release that wrote it or train again")
    return record


def from_record(record: dict[str, Any], device: torch.device | str = "cpu", path: Any = "model"):
    from .model import ConSinGAN

    try:
        config = Config.from_dict(record["config"]).validated()
        shapes = [tuple(int(v) for v in s) for s in record["shapes"]]
        G = Generator(config)
        for _ in range(len(shapes) - 1):
            G.grow()
        G.load_state_dict(record["generator"])
        model = ConSinGAN(
            config=config, G=G, fixed=list(record["fixed_noise"]),
            amps=[float(a) for a in record["noise_amp"]], shapes=shapes, real=record["real"],
            D_state=record.get("discriminator"), meta=dict(record.get("meta") or {}),
        )
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path} is damaged or incomplete ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); train a new model") from None
    model.G.eval()
    return model.to(device)


def load_model(path: str | Path, device: torch.device | str = "cpu"):
    path = model_path(path)
    return from_record(read_record(path), device=device, path=path)
