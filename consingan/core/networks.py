"""The growing generator and the patch discriminator (docs/method.md section 2)."""
from __future__ import annotations

import copy
import functools
import math
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config


def activation(config: Config) -> nn.Module:
    if config.activation == "lrelu":
        # In place: it follows a convolution or batch norm, whose backward does not read their output;
        # autograd then derives the gradient from the result (same numbers) and one activation-sized
        # tensor per layer is neither allocated nor kept. A negative slope cannot run in place.
        return nn.LeakyReLU(config.lrelu_alpha, inplace=config.lrelu_alpha >= 0)
    if config.activation == "elu":
        return nn.ELU(alpha=1.0)
    if config.activation == "prelu":
        return nn.PReLU(num_parameters=1, init=0.25)  # torch's default, as the reference (not lrelu_alpha)
    if config.activation == "selu":
        return nn.SELU()
    raise ValueError(config.activation)


class _ConvSummedBias(torch.autograd.Function):
    """conv2d whose backward takes the bias gradient as a sum of the output gradient.

    oneDNN's convolution backward computes the bias gradient inside its weight-gradient kernel
    and spends ~4 ms on it for a 2x64x163x246 output on the 2-core CPU, against ~0.3 ms for the
    same sum done separately. The backward is made of differentiable operations, so a double
    backward (the generic gradient penalty) works through it.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x or need_w:
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad, x, weight, None, list(stride), list(padding), list(dilation), False, [0, 0], groups,
                [need_x, need_w, False])
        if need_b:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state dict) with a faster backward (:class:`_ConvSummedBias`).

    ``summed_bias = False`` gives torch's own convolution backward (the benchmark's plain computation).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.summed_bias = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.summed_bias and self.bias is not None and self.padding_mode == "zeros" and torch.is_grad_enabled():
            w, b = self.weight, self.bias
            if torch.is_autocast_enabled(x.device.type):
                # Cast as autocast would, but outside the Function: its backward then runs on the low
                # precision tensors, and the casts' own backward returns float32 weight gradients.
                dt = torch.get_autocast_dtype(x.device.type)
                x, w, b = x.to(dt), w.to(dt), b.to(dt)
            return _ConvSummedBias.apply(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        return super().forward(x)


def set_fast_kernels(*nets: nn.Module, on: bool) -> None:
    """Switch the faster kernels of ``nets`` (same numbers up to rounding) on, or off for torch's own:
    the bicubic upsampling of generators, the convolutions' backward and in-place leaky ReLUs."""
    for m in (m for net in nets for m in net.modules()):
        if isinstance(m, Generator):
            m.fast_upsample = on
        elif isinstance(m, Conv2d):
            m.summed_bias = on
        elif isinstance(m, nn.LeakyReLU) and m.negative_slope >= 0:
            m.inplace = on


def autocast(config: Config, x: torch.Tensor):
    """The context a network's forward pass runs in: bfloat16 autocast for --precision bf16, else
    nothing. Networks enter it themselves, so backward passes run outside it, and they hand their outputs
    back in their inputs' dtype (:func:`full_precision`)."""
    # no cast cache: a CUDA graph (graphs.py) must not record casts that a cache keeps between calls
    return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16",
                          cache_enabled=False)


def full_precision(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A network's output in its input's dtype (autocast leaves it in bfloat16)."""
    return out.to(like.dtype)


def conv_block(in_ch: int, out_ch: int, config: Config, norm: bool) -> nn.Sequential:
    """Conv (no padding) -> [BatchNorm] -> activation."""
    layers: list[nn.Module] = [Conv2d(in_ch, out_ch, config.ker_size, stride=1, padding=0)]
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


def upsample_interpolate(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bicubic interpolation with align_corners=True (docs/method.md section 2), as torch's F.interpolate."""
    return F.interpolate(x, size=(int(size[0]), int(size[1])), mode="bicubic", align_corners=True)


@functools.lru_cache(maxsize=256)
def _bicubic_matrix(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The n_out x n_in matrix of 1-D bicubic interpolation with align_corners=True, with the same
    coefficients as torch's kernel (cubic convolution, A = -0.75, indices clamped at the borders)."""
    A = -0.75
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = scale * i
        i0 = math.floor(src)
        t = src - i0
        weights = (((A * (t + 1) - 5 * A) * (t + 1) + 8 * A) * (t + 1) - 4 * A,
                   ((A + 2) * t - (A + 3)) * t * t + 1,
                   ((A + 2) * (1 - t) - (A + 3)) * (1 - t) * (1 - t) + 1,
                   ((A * (2 - t) - 5 * A) * (2 - t) + 8 * A) * (2 - t) - 4 * A)
        for k, wk in enumerate(weights):
            m[i, min(max(i0 - 1 + k, 0), n_in - 1)] += wk
    return m.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=256)
def _bands(n_in: int, n_out: int, block: int) -> tuple[tuple[int, int, int, int], ...]:
    """Blocks of output indices (o0, o1) and the input window (i0, i1) their weights touch: the
    interpolation matrix is a band, so each block multiplies only that window."""
    m = _bicubic_matrix(n_in, n_out, torch.device("cpu"), torch.float64)
    out = []
    for o0 in range(0, n_out, block):
        o1 = min(o0 + block, n_out)
        cols = torch.nonzero(m[o0:o1].abs().sum(0)).flatten()
        i0, i1 = (int(cols[0]), int(cols[-1]) + 1) if cols.numel() else (0, 1)
        out.append((o0, o1, i0, i1))
    return tuple(out)


def _interp_rows(m: torch.Tensor, x: torch.Tensor, bands) -> torch.Tensor:
    """m (n_out x n_in) applied along dim -2 of x (..., n_in, k), block by block of the band."""
    if len(bands) == 1:
        return torch.matmul(m, x)
    return torch.cat([torch.matmul(m[o0:o1, i0:i1], x[..., i0:i1, :]) for o0, o1, i0, i1 in bands], dim=-2)


def upsample_matmul(x: torch.Tensor, size: Sequence[int], block: int = 64) -> torch.Tensor:
    """The same interpolation as :func:`upsample_interpolate`, as matrix products (rows, then columns).

    Mathematically identical (the skipped entries of the band matrices are zeros); much faster on
    the CPU, above all in the backward pass, where torch's bicubic kernel runs on one thread.
    """
    h, w = int(size[0]), int(size[1])
    n, c, h_in, w_in = x.shape
    mh = _bicubic_matrix(h_in, h, x.device, x.dtype)
    mw = _bicubic_matrix(w_in, w, x.device, x.dtype)
    bh, bw = _bands(h_in, h, block), _bands(w_in, w, block)
    if x.is_contiguous(memory_format=torch.channels_last) and c > 1:
        # stored as N,H,W,C: interpolate along W per row (W is dim -2 of N,h,w,C), then along H with
        # the rows as one dimension; the result keeps the channels-last layout.
        cols = _interp_rows(mw, x.permute(0, 2, 3, 1), bw)  # N,h,W,C
        rows = _interp_rows(mh, cols.reshape(n, h_in, w * c), bh)  # N,H,W*C
        return rows.view(n, h, w, c).permute(0, 3, 1, 2)
    cols = _interp_rows(mw, x.transpose(-1, -2), bw).transpose(-1, -2)  # N,C,h,W
    return _interp_rows(mh, cols, bh)  # N,C,H,W


class Discriminator(nn.Module):
    """head ConvBlock(3->nfc), num_layer ConvBlocks(nfc->nfc), tail Conv(nfc->1): a patch score map."""

    def __init__(self, config: Config):
        super().__init__()
        n = config.nfc
        self.head = conv_block(3, n, config, norm=False)
        self.body = nn.Sequential(*[conv_block(n, n, config, norm=False) for _ in range(config.num_layer)])
        self.tail = Conv2d(n, 1, config.ker_size, stride=1, padding=0)
        self.config = config
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.config, x):
            return full_precision(self.tail(self.body(self.head(x))), x)

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
        if not all(type(a) is nn.LeakyReLU and a.negative_slope >= 0 for a in acts):  # the generic way
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self(x).sum(), x, create_graph=True)
            return grad
        with autocast(self.config, x):
            return full_precision(self._leaky_input_gradient(x, blocks, acts), x)

    def _leaky_input_gradient(self, x: torch.Tensor, blocks: list[nn.Sequential],
                              acts: list[nn.Module]) -> torch.Tensor:
        outs = []  # each block's activation: its sign is the sign of the pre-activation
        with torch.no_grad():
            h = x
            for block in blocks:
                h = block(h)
                outs.append(h)
        k = self.tail.kernel_size  # the tail's output shape (no padding, stride 1), without running it
        out_shape = (h.shape[0], 1, h.shape[2] - k[0] + 1, h.shape[3] - k[1] + 1)
        g = F.conv_transpose2d(torch.ones(out_shape, device=x.device, dtype=x.dtype), self.tail.weight)
        for block, act, out in zip(reversed(blocks), reversed(acts), reversed(outs)):
            # the op autograd itself uses for leaky_relu's derivative; ``out`` needs no gradient
            g = torch.ops.aten.leaky_relu_backward(g, out, act.negative_slope, True)
            g = F.conv_transpose2d(g, block[0].weight)
        return g


@contextmanager
def evaluating(net: nn.Module) -> Iterator[nn.Module]:
    """``net`` in eval mode inside the block (batch norm uses its running statistics), each of its
    modules back in the mode it was in after it: sampling leaves a model being trained in train mode
    and a loaded one in eval mode."""
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        yield net
    finally:
        for m, training in modes:
            m.training = training


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
        self.tail = nn.Sequential(Conv2d(n, 3, config.ker_size, stride=1, padding=0), nn.Tanh())
        # Bicubic upsampling as matrix products (same numbers, faster); False: torch's kernel.
        self.fast_upsample = True
        init_weights(self)

    @classmethod
    def of_stages(cls, config: Config, n: int) -> "Generator":
        """A generator of ``n`` stages, as training grows it (for a saved model's weights to be loaded
        into). Growing copies weights and draws no random numbers: only the constructor draws."""
        G = cls(config)
        for _ in range(n - 1):
            G.grow()
        return G

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
        with autocast(self.config, noise[0]):
            return full_precision(self._forward(noise, shapes, amps), noise[0])

    def _forward(self, noise: Sequence[torch.Tensor], shapes: Sequence[Sequence[int]],
                 amps: Sequence[float | torch.Tensor]) -> torch.Tensor:
        c = self.config
        p = c.pad
        border = c.num_layer * p  # pixels the num_layer convs of one stage trim from each side
        upsample = upsample_matmul if self.fast_upsample else upsample_interpolate
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
