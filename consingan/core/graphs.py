"""Training iterations replayed from CUDA graphs: the kernels of ``train_step``, launched as one.

One iteration of the top stage launches some thousand small kernels (three discriminator updates with
their gradient penalties, the generator's forward and backward passes, six Adam updates). Launched one
by one from Python, the GPU waits on the launches more than it computes. A CUDA graph records them once
and replays them with a single launch per iteration.

What a replay computes is what the recorded ``train_step`` computes; what is fixed at recording time:
- the inputs' memory: each iteration's noise and penalty weights are copied into the recorded buffers;
- plain numbers: the learning rates and which D updates carry the gradient penalty. Each different set
  of them (the learning rate decays once per stage; a lazy penalty has ``gp_every`` patterns) gets its
  own recording, so the numbers are those of eager iterations with the same settings;
- the optimizers run with ``capturable=True`` (their step counts live on the GPU): the same Adam update.

The first iterations of each recording's settings run eagerly, on a side stream as PyTorch's CUDA
graph notes ask, so that lazily created state (Adam's moments, cuDNN's algorithm choice) exists before
recording.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch

from .step import StageState, penalty_weight, train_step

# step(noise, gp_alphas, iteration) -> losses: one training iteration of a stage
Step = Callable[[Sequence[torch.Tensor], torch.Tensor, int], dict]

WARMUP = 2  # eager iterations with a recording's settings before it is recorded


def set_capturable(opt: torch.optim.Optimizer, on: bool) -> None:
    """Switch an Adam optimizer between its eager form (step counts on the CPU) and the form a CUDA
    graph can record (step counts on the parameters' device). Its moments are kept either way."""
    for group in opt.param_groups:
        group["capturable"] = on
        for p in group["params"]:
            state = opt.state.get(p)
            if state and "step" in state:
                state["step"] = state["step"].to(p.device if on else "cpu", torch.float32)


def make_step(state: StageState, device: torch.device, cuda_graphs: bool) -> Step:
    """The training iteration of ``state``'s stage: from CUDA graphs on a GPU (unless switched off),
    else ``train_step`` itself."""
    opt_d, opt_g = state.opt_d, state.opt_g
    graphs = cuda_graphs and device.type == "cuda"
    for opt in (opt_d, opt_g):
        set_capturable(opt, graphs)
    return GraphedSteps(state) if graphs else functools.partial(train_step, state)


class GraphedSteps:
    """``train_step`` of one stage, replayed from CUDA graphs (one per set of recorded settings)."""

    def __init__(self, state: StageState, warmup: int = WARMUP):
        self.state = state
        self.warmup = warmup
        self.seen: dict[tuple, int] = {}  # eager iterations run per settings
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list, torch.Tensor, dict]] = {}
        self.replays = 0

    def settings(self, iteration: int) -> tuple:
        """What a recording fixes besides memory: learning rates and penalty weights."""
        s = self.state
        lrs = tuple(float(g["lr"]) for opt in (s.opt_d, s.opt_g) for g in opt.param_groups)
        return lrs, tuple(penalty_weight(s.config, iteration, j) for j in range(s.config.Dsteps))

    def __call__(self, noise: Sequence[torch.Tensor], gp_alphas: torch.Tensor, iteration: int = 0) -> dict:
        # streams and recordings belong to the current device: make it the networks' (--gpu 1)
        with torch.cuda.device(self.state.real.device):
            return self._step(noise, gp_alphas, iteration)

    def _step(self, noise: Sequence[torch.Tensor], gp_alphas: torch.Tensor, iteration: int) -> dict:
        key = self.settings(iteration)
        if key not in self.graphs:
            if self.seen.get(key, 0) < self.warmup:
                self.seen[key] = self.seen.get(key, 0) + 1
                return self._eager(noise, gp_alphas, iteration)
            # a recording for learning rates that are gone (the decay) is never replayed again
            self.graphs = {k: v for k, v in self.graphs.items() if k[0] == key[0]}
            self.graphs[key] = self._record(noise, gp_alphas, iteration)
        graph, noise_in, alphas_in, losses = self.graphs[key]
        for buf, z in zip(noise_in, noise):
            buf.copy_(z)
        alphas_in.copy_(gp_alphas)
        graph.replay()
        self.replays += 1
        return losses

    def _eager(self, noise, gp_alphas, iteration) -> dict:
        side, main = torch.cuda.Stream(), torch.cuda.current_stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            losses = train_step(self.state, noise, gp_alphas, iteration)
        main.wait_stream(side)
        return losses

    def _record(self, noise, gp_alphas, iteration):
        # The recorded buffers keep the inputs' layout; recording runs nothing, so the iteration that
        # triggers it is then replayed like every later one.
        noise_in = [z.clone() for z in noise]
        alphas_in = gp_alphas.clone()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            losses = train_step(self.state, noise_in, alphas_in, iteration)
        return graph, noise_in, alphas_in, losses
