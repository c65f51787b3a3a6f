"""Choosing the torch device from --device / --gpu / --not_cuda."""
from __future__ import annotations

import torch

from .errors import UserError


def resolve_device(device: str = "auto", gpu: int | None = None, not_cuda: bool = False) -> torch.device:
    device = (device or "auto").lower()
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"unknown --device {device!r}; use auto, cpu or cuda")
    if not_cuda or device == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if device == "auto" and not available:
        return torch.device("cpu")
    if not available:
        raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    index = gpu if gpu is not None else (int(device.split(":")[1]) if ":" in device else 0)
    if not 0 <= index < torch.cuda.device_count():
        raise UserError(f"--gpu {index}: this machine has {torch.cuda.device_count()} GPU(s); "
                        f"use --gpu 0..{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)
