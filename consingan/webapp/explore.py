"""Explore: move one sample through the noise space with two controls.

A point (x, y) picks the noise ``(z + x*d1 + y*d2) / sqrt(1 + x^2 + y^2)`` in every stage at or
above the start scale, where ``z`` is the sample's own noise and ``d1``, ``d2`` are two fixed random
directions (all drawn from the seed); stages below the start scale keep the fixed noise, so the
layout stays and the finer structure moves. Dividing by the length keeps the noise at unit variance
wherever the point is, so every point gives an image like the model's samples, and nearby points
give nearby images. While the controls move, a preview stops one stage below the top (the top stage
costs more than all the others together) and the full image is made on release.
"""
from __future__ import annotations

import copy
import math
import threading

import torch
import torch.nn as nn

from ..core.networks import evaluating
from ..core.noise import random_noise
from ..errors import UserError
from ..tasks.sampling import make_generator

_cache_lock = threading.Lock()
_cache: dict[tuple, list[list[torch.Tensor]]] = {}


def _noises(model, seed: int) -> list[list[torch.Tensor]]:
    """[z, d1, d2]: three noise lists of the model's stages, drawn from ``seed`` (cached)."""
    key = (id(model), tuple(tuple(s) for s in model.shapes), str(model.device), seed)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    gen = make_generator(model.device, seed)
    draws = [random_noise(model.config, model.shapes, model.device, gen) for _ in range(3)]
    with _cache_lock:
        if len(_cache) > 16:
            _cache.clear()
        _cache[key] = draws
    return draws


def check_start(model, start_scale: int) -> int:
    stages = model.num_stages
    if not 0 <= int(start_scale) < stages:
        raise UserError(f"start scale {start_scale} is out of range for a model with {stages} stages; use 0 to "
                        f"{stages - 1}")
    return int(start_scale)


def point_noise(model, x: float, y: float, seed: int, start_scale: int) -> list[torch.Tensor]:
    """The noise of every stage for the point (x, y)."""
    start_scale = check_start(model, start_scale)
    if not (math.isfinite(x) and math.isfinite(y)):
        raise UserError(f"the point ({x}, {y}) is not a pair of finite numbers")
    z, d1, d2 = _noises(model, seed)
    norm = math.sqrt(1.0 + x * x + y * y)
    out = []
    for k in range(model.num_stages):
        if k < start_scale:
            out.append(model.fixed[k])
        else:
            out.append((z[k] + x * d1[k] + y * d2[k]) / norm)
    return out


def _partial(G: nn.Module, stages: int) -> nn.Module:
    """The generator with only its first ``stages`` stages (the same weights, not copies)."""
    view = copy.copy(G)
    view._modules = dict(G._modules)
    view._modules["body"] = nn.ModuleList(list(G.body)[:stages])
    return view


@torch.no_grad()
def render(model, x: float, y: float, seed: int, start_scale: int, preview: bool = False) -> torch.Tensor:
    """1x3xHxW in [-1, 1]: the image at (x, y); ``preview``: one stage below the top (smaller, faster)."""
    noise = point_noise(model, x, y, seed, start_scale)
    stages = model.num_stages
    if preview and stages > 1 and stages - 1 > start_scale:
        stages -= 1
    G = model.G if stages == model.num_stages else _partial(model.G, stages)
    with evaluating(G):  # the view shares its stages with the model's G: they go back as they were
        return G(noise[:stages], model.shapes[:stages], model.amps[:stages])
