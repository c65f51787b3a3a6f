"""Choosing the torch device from --device / --gpu / --not_cuda, and how much memory it has."""
from __future__ import annotations

import os
import warnings

import torch

from .errors import ConSinGANWarning, UserError


def resolve_device(device: str = "auto", gpu: int | None = None, not_cuda: bool = False) -> torch.device:
    """The device the flags ask for. A GPU flag that cannot be honoured (``--gpu`` without CUDA, or with
    --not_cuda / --device cpu) is a ConSinGANWarning, not a silent fall-back; --device cuda without CUDA
    is an error."""
    device = (device or "auto").lower()
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"unknown --device {device!r}; use auto, cpu or cuda")
    if not_cuda or device == "cpu":
        if gpu is not None:
            why = "--not_cuda" if not_cuda else "--device cpu"
            warnings.warn(f"--gpu {gpu} is ignored: {why} runs on the CPU", ConSinGANWarning, stacklevel=2)
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if device == "auto" and not available:
        if gpu is not None:
            warnings.warn(f"--gpu {gpu} cannot be used: this machine has no CUDA GPU that torch can use, so the "
                          "run uses the CPU (much slower)", ConSinGANWarning, stacklevel=2)
        return torch.device("cpu")
    if not available:
        raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    index = gpu if gpu is not None else (int(device.split(":")[1]) if ":" in device else 0)
    if not 0 <= index < torch.cuda.device_count():
        raise UserError(f"--gpu {index}: this machine has {torch.cuda.device_count()} GPU(s); "
                        f"use --gpu 0..{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)


def describe(device: torch.device | str) -> str:
    """'cpu' or 'cuda:0 (NVIDIA H200)': what a run prints and records as its device (a CUDA device
    on a machine without CUDA stays its bare name)."""
    name = str(device)
    if name.startswith("cuda") and torch.cuda.is_available():
        return f"{name} ({torch.cuda.get_device_name(torch.device(name))})"
    return name


def memory_bytes(device: torch.device) -> int | None:
    """The memory a run on ``device`` can use at most: the GPU's, or the machine's physical memory
    (None where it cannot be told)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return None


def check_memory(needed: float, what: str, fix: str, device: torch.device) -> None:
    """A UserError when ``needed`` bytes (an estimate) are more than ``device`` has."""
    limit = memory_bytes(device)
    if limit is not None and not needed <= limit:
        raise UserError(f"{what} would need about {needed / 1e9:.3g} GB of memory, more than the "
                        f"{limit / 1e9:.3g} GB of this {'GPU' if device.type == 'cuda' else 'machine'}; {fix}")
