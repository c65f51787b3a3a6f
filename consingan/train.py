"""The stage loop (METHOD 3): grow, set the noise amplitude, train the top stages, save, repeat.

One loop serves every task mode; what differs between modes comes from ``config.mode``.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config
from .image import grid, pyramid, save_image, training_image
from .model import ConSinGAN
from .networks import Discriminator, Generator
from .noise import fixed_noise, random_noise
from .progress import NoProgress
from .step import StageState, train_step

LOG_EVERY = 250  # loss scalars to log.jsonl (METHOD 3)
IMAGES_EVERY = 500  # a sample and a reconstruction into the stage folder (METHOD 3)
GRID_SAMPLES = 10


@dataclass(frozen=True)
class RunOptions:
    """How to run a training job (not part of the model): device, outputs, speed options."""

    device: str = "cpu"
    out_dir: Path | None = None  # None: write nothing
    channels_last: bool = True  # same numbers, faster convolutions on CPU and GPU


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def g_param_groups(G: Generator, config: Config, stage: int) -> list[dict]:
    """Parameters trained at ``stage`` and their learning rates (METHOD 3); freezes the rest.

    The newest train_depth stages train with lr_g * lr_scale**(distance from the top); the head
    while stage < train_depth with lr_g * lr_scale**stage; the tail always with lr_g.
    """
    G.requires_grad_(False)
    trained = list(G.body)[-config.train_depth:]
    groups = []
    for idx, block in enumerate(trained):
        block.requires_grad_(True)
        groups.append({"params": list(block.parameters()),
                       "lr": config.lr_g * config.lr_scale ** (len(trained) - 1 - idx)})
    if stage < config.train_depth:
        G.head.requires_grad_(True)
        groups.append({"params": list(G.head.parameters()), "lr": config.lr_g * config.lr_scale ** stage})
    G.tail.requires_grad_(True)
    groups.append({"params": list(G.tail.parameters()), "lr": config.lr_g})
    return groups


def make_optimizers(G: Generator, D: Discriminator, config: Config, stage: int):
    opt_d = torch.optim.Adam(D.parameters(), lr=config.lr_d, betas=(config.beta1, 0.999))
    opt_g = torch.optim.Adam(g_param_groups(G, config, stage), lr=config.lr_g, betas=(config.beta1, 0.999))
    # (quirk) the milestone is the float 0.8*niter, as in the reference: when it is not a whole
    # number the learning rate never decays.
    milestones = [0.8 * config.niter]
    sched_d = torch.optim.lr_scheduler.MultiStepLR(opt_d, milestones=milestones, gamma=config.gamma)
    sched_g = torch.optim.lr_scheduler.MultiStepLR(opt_g, milestones=milestones, gamma=config.gamma)
    return opt_d, opt_g, sched_d, sched_g


@torch.no_grad()
def noise_amplitude(G: Generator, config: Config, fixed: list, shapes: list, amps: list, real: torch.Tensor) -> float:
    """amp[k] = noise_amp * RMSE(reconstruction with amp[k] = 0, real_k) (METHOD 3)."""
    rec = G(fixed, shapes, amps[:-1] + [0.0])
    return config.noise_amp * float(torch.sqrt(F.mse_loss(rec, real)))


class StageWriter:
    """The model directory's stage folders and log.jsonl (does nothing without an out_dir)."""

    def __init__(self, out_dir: Path | None):
        self.out_dir = out_dir
        self.log = None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.log = open(out_dir / "log.jsonl", "a", encoding="utf-8")

    def folder(self, stage: int) -> Path:
        return self.out_dir / str(stage)

    def log_losses(self, stage: int, iteration: int, losses: dict[str, float], lr_g: float) -> None:
        if self.log:
            self.log.write(json.dumps({"stage": stage, "iter": iteration, **losses, "lr_g": lr_g}) + "\n")
            self.log.flush()

    def image(self, stage: int, name: str, image: torch.Tensor) -> None:
        if self.out_dir is not None:
            save_image(image, self.folder(stage) / name)

    def close(self) -> None:
        if self.log:
            self.log.close()


def train(image: torch.Tensor, config: Config, options: RunOptions = RunOptions(),
          progress=None, stage0_input: Callable | None = None) -> ConSinGAN:
    """Train a ConSinGAN on one image (1x3xHxW in [-1, 1], any size: resized to max_size).

    ``stage0_input(real0, generator)`` gives the stage-0 input of each iteration for modes that
    train on an augmented image (harmonization, editing); None: Gaussian noise.
    """
    progress = progress or NoProgress()
    device = torch.device(options.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(config.manualSeed)
    fmt = torch.channels_last if options.channels_last else torch.contiguous_format
    real_full = training_image(image, config).to(device)
    reals = [r.contiguous(memory_format=fmt) for r in pyramid(real_full, config)]
    shapes = [tuple(r.shape[-2:]) for r in reals]
    writer = StageWriter(options.out_dir)

    G = Generator(config).to(device, memory_format=fmt)
    D: Discriminator | None = None
    fixed: list[torch.Tensor] = []
    amps: list[float] = []
    t_start = time.perf_counter()
    try:
        for k in range(len(reals)):
            real = reals[k]
            # A new D for each stage, starting from the previous stage's weights (METHOD 3).
            D_new = Discriminator(config).to(device, memory_format=fmt)
            if D is not None:
                D_new.load_state_dict(D.state_dict())
                G.grow()
            D = D_new
            fixed.append(fixed_noise(config, k, reals).contiguous(memory_format=fmt))
            amps.append(1.0 if k == 0 else 0.0)
            if k > 0:
                amps[k] = noise_amplitude(G, config, fixed, shapes[:k + 1], amps, real)
            opt_d, opt_g, sched_d, sched_g = make_optimizers(G, D, config, k)
            state = StageState(config, G, D, opt_g, opt_d, real, list(shapes[:k + 1]), list(amps), fixed)
            writer.image(k, "real.png", real)
            G.train()
            progress.start_stage(k, len(reals), config.niter)
            for it in range(config.niter):
                noise = random_noise(config, state.shapes, device,
                                     stage0=stage0_input(reals[0], None) if stage0_input else None)
                noise = [z.contiguous(memory_format=fmt) for z in noise]
                gp_alphas = torch.rand(config.Dsteps, device=device)
                losses = train_step(state, noise, gp_alphas)
                sched_d.step()
                sched_g.step()
                done = it + 1
                logged = None
                if done % LOG_EVERY == 0 or done == config.niter or it == 0:
                    logged = {name: float(v) for name, v in losses.items()}  # the only host sync
                    writer.log_losses(k, done, logged, opt_g.param_groups[0]["lr"])
                if done % IMAGES_EVERY == 0 or done == config.niter:
                    writer.image(k, f"fake_iter_{done}.png", _sample(G, config, state, device))
                    writer.image(k, f"reconstruction_iter_{done}.png", _reconstruct(G, state))
                progress.update(done, logged)
            progress.end_stage()
            model = ConSinGAN(config, G, list(fixed), list(amps), list(shapes[:k + 1]), real_full,
                              D_state=D.state_dict(), meta={})
            if options.out_dir is not None:
                _write_stage_summary(writer, k, model)
    finally:
        writer.close()
        progress.close()
    model = ConSinGAN(config, G, fixed, amps, shapes, real_full, D_state=D.state_dict(),
                      meta={"train_seconds": round(time.perf_counter() - t_start, 3), "device": str(device)})
    G.eval()
    return model


@torch.no_grad()
def _sample(G, config, state, device) -> torch.Tensor:
    return G(random_noise(config, state.shapes, device), state.shapes, state.amps)


@torch.no_grad()
def _reconstruct(G, state) -> torch.Tensor:
    return G(state.fixed, state.shapes, state.amps)


def _write_stage_summary(writer: StageWriter, stage: int, model: ConSinGAN) -> None:
    """The stage's final reconstruction and a grid of samples."""
    samples = model.sample(GRID_SAMPLES, seed=stage)  # a local generator: training's RNG is untouched
    writer.image(stage, "reconstruction.png", model.reconstruct())
    writer.image(stage, "samples_grid.png", grid(samples, columns=5))
    model.G.train()
