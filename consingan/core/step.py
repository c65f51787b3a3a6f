"""One training iteration (docs/method.md section 3), in two forms that compute the same numbers.

``train_step`` is what training runs. ``plain_step`` is the straightforward computation, kept as the
oracle that tests and ``benchmarks/bench_train.py`` compare against: the fake recomputed in every
discriminator step, D run separately on the real, fake and interpolated images.

Randomness (the noise maps and the gradient-penalty mixing weights) is drawn by the caller, so a
step is a pure function of its inputs and the networks' state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..config import Config


@dataclass
class StageState:
    """Everything one stage's iterations read and update."""

    config: Config
    G: torch.nn.Module
    D: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    real: torch.Tensor  # this stage's training image
    shapes: list[tuple[int, int]]  # stage sizes up to this stage
    amps: list[float]  # noise amplitudes up to this stage
    fixed: list[torch.Tensor]  # reconstruction noise up to this stage


def _penalty(grad: torch.Tensor, lambda_grad: float) -> torch.Tensor:
    # (quirk) the 2-norm is taken per pixel over the channel axis, then averaged over pixels.
    return lambda_grad * ((grad.norm(2, dim=1) - 1) ** 2).mean()


def penalty_weight(config: Config, iteration: int, j: int) -> int:
    """The factor of the gradient penalty in D update ``j`` of ``iteration``: 1 in every update
    (the paper), or with ``gp_every`` k > 1 (lazy penalty, StyleGAN2's lazy regularisation; changes the
    numbers) k in one update of every k, counted over the whole stage, and 0 in the others."""
    k = config.gp_every
    return k if (iteration * config.Dsteps + j) % k == 0 else 0


def _layout(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if t.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def _mix(real: torch.Tensor, fake: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return a * real + (1 - a) * fake


def train_step(s: StageState, noise: Sequence[torch.Tensor], gp_alphas: torch.Tensor,
               iteration: int = 0) -> dict[str, torch.Tensor]:
    """One iteration: Dsteps discriminator updates, then one generator gradient applied Gsteps times.

    ``iteration`` (within the stage) matters only for a lazy gradient penalty (``gp_every`` > 1).

    Returns the loss tensors (not synchronised: read them only when logging).
    """
    c = s.config
    G, D = s.G, s.D

    # The fake depends only on this iteration's noise and G's weights, which the D steps do not
    # change: compute it once, with the graph kept for the generator update. So does the
    # reconstruction: without batch norm, one call on the batch [noise, fixed noise] gives both.
    if c.batch_norm:  # batch statistics would mix the two images
        fake, rec = G(noise, s.shapes, s.amps), None
    else:
        both = G([torch.cat([z, f]) for z, f in zip(noise, s.fixed)], s.shapes, s.amps)
        if both.requires_grad:
            # Slicing gives the gradient in the default layout (its backward fills a fresh buffer);
            # mixed layouts send the tail's backward down slow kernels. Restore the input's layout.
            both.register_hook(lambda g: g.contiguous(memory_format=_layout(s.real)))
        fake, rec = both[:1], both[1:]
    fake_d = fake.detach()
    # D has no normalisation, so one call on the concatenated real/fake batch gives the same scores
    # as two calls; the batch is the same in every D step.
    real_fake = torch.cat([s.real, fake_d]).contiguous(memory_format=_layout(s.real))

    # Dmain + Dreg, Dsteps times.
    gp = torch.zeros((), device=fake_d.device)
    for j in range(c.Dsteps):
        scores = D(real_fake)
        loss_real = -scores[0:1].mean()
        loss_fake = scores[1:2].mean()
        loss_d = loss_real + loss_fake
        weight = penalty_weight(c, iteration, j)
        if weight:
            gp = _penalty(D.input_gradient(_mix(s.real, fake_d, gp_alphas[j])), c.lambda_grad)
            loss_d = loss_d + weight * gp
        s.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        s.opt_d.step()

    # Gmain: adversarial + reconstruction loss. D's weights need no gradient here.
    D.requires_grad_(False)
    try:
        loss_adv = -D(fake).mean()
        if rec is None:
            rec = G(s.fixed, s.shapes, s.amps)
        loss_rec = c.alpha * F.mse_loss(rec, s.real) if c.alpha != 0 else torch.zeros((), device=fake.device)
        loss_g = loss_adv + loss_rec
        s.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
    finally:
        D.requires_grad_(True)
    for _ in range(c.Gsteps):  # (quirk) the optimizer steps Gsteps times on one gradient
        s.opt_g.step()
    return {"loss_d": loss_d.detach(), "loss_real": loss_real.detach(), "loss_fake": loss_fake.detach(),
            "gp": gp.detach(), "loss_g": loss_adv.detach(), "loss_rec": loss_rec.detach()}


def plain_step(s: StageState, noise: Sequence[torch.Tensor], gp_alphas: torch.Tensor,
               iteration: int = 0) -> dict[str, torch.Tensor]:
    """The straightforward computation of docs/method.md section 3 (the correctness oracle; slower)."""
    c = s.config
    G, D = s.G, s.D
    gp = torch.zeros((), device=s.real.device)
    for j in range(c.Dsteps):
        D.zero_grad()
        loss_real = -D(s.real).mean()
        if j == c.Dsteps - 1:
            fake = G(noise, s.shapes, s.amps)
        else:
            with torch.no_grad():
                fake = G(noise, s.shapes, s.amps)
        loss_fake = D(fake.detach()).mean()
        loss_d = loss_real + loss_fake
        weight = penalty_weight(c, iteration, j)
        if weight:
            x_hat = _mix(s.real, fake.detach(), gp_alphas[j]).requires_grad_(True)
            out = D(x_hat)
            (grad,) = torch.autograd.grad(out, x_hat, grad_outputs=torch.ones_like(out), create_graph=True)
            gp = _penalty(grad, c.lambda_grad)
            loss_d = loss_d + weight * gp
        loss_d.backward()
        s.opt_d.step()

    loss_adv = -D(fake).mean()
    rec = G(s.fixed, s.shapes, s.amps)
    loss_rec = c.alpha * F.mse_loss(rec, s.real)
    G.zero_grad()
    (loss_adv + loss_rec).backward()
    for _ in range(c.Gsteps):
        s.opt_g.step()
    return {"loss_d": loss_d.detach(), "loss_real": loss_real.detach(), "loss_fake": loss_fake.detach(),
            "gp": gp.detach(), "loss_g": loss_adv.detach(), "loss_rec": loss_rec.detach()}
