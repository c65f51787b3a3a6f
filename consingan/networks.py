"""The growing generator and the patch discriminator (METHOD 2)."""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Config


def activation(config: Config) -> nn.Module:
    if config.activation == "lrelu":
        return nn.LeakyReLU(config.lrelu_alpha)
    if config.activation == "elu":
        return nn.ELU(alpha=1.0)
    if config.activation == "prelu":
        return nn.PReLU(num_parameters=1, init=config.lrelu_alpha)
    if config.activation == "selu":
        return nn.SELU()
    raise ValueError(config.activation)


def conv_block(in_ch: int, out_ch: int, config: Config, norm: bool) -> nn.Sequential:
    """Conv (no padding) -> [BatchNorm] -> activation."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, config.ker_size, stride=1, padding=0)]
    if norm:
        # Batch statistics always, also when sampling: the reference never switches G to eval mode,
        # so its outputs use the statistics of the image being generated. Without running
        # statistics there is nothing that a no-grad forward could change.
        layers.append(nn.BatchNorm2d(out_ch, track_running_stats=False))
    layers.append(activation(config))
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """Conv weights ~ N(0, 0.02) (biases keep PyTorch's default); norm weights ~ N(1, 0.02), bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data.normal_(0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.normal_(1.0, 0.02)
            m.bias.data.fill_(0)


def upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=(int(size[0]), int(size[1])), mode="bicubic", align_corners=True)


class Discriminator(nn.Module):
    """head ConvBlock(3->nfc), num_layer ConvBlocks(nfc->nfc), tail Conv(nfc->1): a patch score map."""

    def __init__(self, config: Config):
        super().__init__()
        n = config.nfc
        self.head = conv_block(3, n, config, norm=False)
        self.body = nn.Sequential(*[conv_block(n, n, config, norm=False) for _ in range(config.num_layer)])
        self.tail = nn.Conv2d(n, 1, config.ker_size, stride=1, padding=0)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(self.head(x)))

    def input_gradient(self, x: torch.Tensor) -> torch.Tensor:
        """d sum(D(x)) / dx, as a graph that is differentiable with respect to D's weights.

        The same numbers as ``autograd.grad(D(x).sum(), x, create_graph=True)``, computed the way the
        gradient penalty needs them: the leaky-ReLU slopes (1 or lrelu_alpha) are constant masks, so
        the forward pass runs without a graph, and the backward pass is a chain of transposed
        convolutions. Differentiating that chain uses PyTorch's efficient weight-gradient kernels;
        the generic double backward of a convolution instead runs convolutions with image-sized
        kernels on the CPU, and back-propagates zeros through the forward pass.
        """
        blocks = [self.head, *self.body]
        acts = [b[-1] for b in blocks]
        if not all(type(a) is nn.LeakyReLU for a in acts):  # other activations: the generic way
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self(x).sum(), x, create_graph=True)
            return grad
        masks = []
        with torch.no_grad():
            h = x
            for block in blocks:
                z = block[0](h)
                masks.append(z > 0)
                h = block[-1](z)
            out_shape = self.tail(h).shape
        g = F.conv_transpose2d(torch.ones(out_shape, device=x.device, dtype=x.dtype), self.tail.weight)
        for block, act, mask in zip(reversed(blocks), reversed(acts), reversed(masks)):
            g = torch.where(mask, g, g * act.negative_slope)  # leaky_relu's derivative, as torch computes it
            g = F.conv_transpose2d(g, block[0].weight)
        return g


class Generator(nn.Module):
    """One network that grows by a stage of num_layer ConvBlocks at a time and passes features upward.

    forward(noise, shapes, amps): noise[0] is a 3-channel image-space input at stage-0 size; noise[k>0]
    are nfc-channel feature-space noise maps (size: see :func:`noise_size`); shapes[k] = (h, w) of stage k.
    """

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        n = config.nfc
        bn = config.batch_norm
        self.head = conv_block(3, n, config, norm=bn)
        self.body = nn.ModuleList([self._new_stage()])
        self.tail = nn.Sequential(nn.Conv2d(n, 3, config.ker_size, stride=1, padding=0), nn.Tanh())
        init_weights(self)

    def _new_stage(self) -> nn.Sequential:
        c = self.config
        return nn.Sequential(*[conv_block(c.nfc, c.nfc, c, norm=c.batch_norm) for _ in range(c.num_layer)])

    def grow(self) -> None:
        """Add a stage that starts as a copy of the previous stage's weights."""
        self.body.append(copy.deepcopy(self.body[-1]))

    @property
    def num_stages(self) -> int:
        return len(self.body)

    def forward(self, noise: Sequence[torch.Tensor], shapes: Sequence[Sequence[int]],
                amps: Sequence[float | torch.Tensor]) -> torch.Tensor:
        c = self.config
        p = c.pad
        border = c.num_layer * p  # pixels the num_layer convs of one stage trim from each side
        x = self.head(F.pad(noise[0], (p,) * 4))
        if c.mode.upsampled_border:
            x = upsample(x, (x.shape[2] + 2 * p, x.shape[3] + 2 * p))
            x = F.pad(x, (border - p,) * 4)
        else:
            x = F.pad(x, (border,) * 4)
        y = self.body[0](x)
        for k in range(1, len(self.body)):
            h, w = shapes[k][-2:]
            base = upsample(y, (h, w))
            if c.mode.upsampled_border:
                x = upsample(y, (h + 2 * border, w + 2 * border)) + noise[k] * amps[k]
            else:
                x = F.pad(base + noise[k] * amps[k], (border,) * 4)
            y = self.body[k](x) + base
        return self.tail(F.pad(y, (p,) * 4))


def noise_size(config: Config, stage: int, shape: Sequence[int]) -> tuple[int, int, int]:
    """(channels, height, width) of a stage's noise map for a stage of shape (..., h, w)."""
    h, w = int(shape[-2]), int(shape[-1])
    if stage == 0:
        return 3, h, w
    if config.mode.upsampled_border:
        b = 2 * config.num_layer * config.pad
        return config.nfc, h + b, w + b
    return config.nfc, h, w
