"""The training engine (docs/method.md section 3): grow, set the noise amplitude, train the top stages,
repeat. One loop serves every task mode (what differs comes from ``config.mode``), fine-tuning (only
the top stage trains) and going on from a saved training state.

The engine writes no files and handles no signals. It reports through callbacks (core/callbacks.py):
the run directory, progress, previews and Ctrl-C handling are attached by the API. Its randomness
comes from the run's own generators (core/rng.py), so the library leaves torch's global generators
alone. Stop rules that belong to training (a non-finite loss, a saturated generator) stay here.

    engine = Engine.start(image, config, EngineOptions(device="cpu"), callbacks=[...])
    model = engine.run()            # or from another thread: engine.stop()
"""
from __future__ import annotations

import math
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

from ..config import Config
from ..errors import ConSinGANWarning, UserError
from .callbacks import CallbackList, Callbacks
from .graphs import make_step
from .image import pyramid, training_image
from .model import Model
from .networks import Discriminator, Generator
from .noise import fixed_noise, random_noise
from .numbering import position_text, stage_text
from .rng import Rngs
from .runtime import cpu_has_bf16, resolve_precision
from .step import StageState

LOG_EVERY = 250  # logged losses (log.jsonl, progress), at the latest (docs/method.md section 3) ...
LOGS_PER_STAGE = 20  # ... and at least this often per stage, so that a short run shows recent losses
IMAGES_EVERY = 500  # a sample and a reconstruction of the stage (on_image)
CHECKPOINT_EVERY = 250
# A reconstruction whose every pixel is this close to -1 or 1 counts as saturated (seen: a run whose
# stage-0 output sat below -0.996 everywhere, its loss unchanged for 1750 iterations, then exactly -1).
SATURATION_MARGIN = 1e-3

# The training state record (what a checkpoint adds to the model): its own format and version.
STATE_FORMAT = "consingan-training-state"
STATE_VERSION = 1

# stage0_input(real0, rng) -> the stage-0 input of one iteration (harmonization/editing augmentation,
# fine-tuning's naive image); it draws only from ``rng``.
Stage0Input = Callable[[torch.Tensor, Rngs], torch.Tensor]


def log_interval(niter: int) -> int:
    """Iterations between two log points of a stage of ``niter`` iterations: every LOG_EVERY, or more
    often so that a stage has at least LOGS_PER_STAGE of them (each one is a host sync)."""
    return max(1, min(LOG_EVERY, niter // LOGS_PER_STAGE))


class TrainingStopped(Exception):
    """Training stopped early (a stop request, a non-finite loss, a saturated generator, a full disk).

    ``checkpoint``: the checkpoint to go on from, when the caller that stores them set it.
    ``interrupted``: stopped on request (Ctrl-C, SIGTERM, stop()). ``exit_code``: what the command line
    exits with (130 Ctrl-C, 143 SIGTERM, 1 otherwise). ``resume_hint``: False when the message already
    says how to go on.
    """

    def __init__(self, message: str, checkpoint=None, interrupted: bool = False,
                 exit_code: int | None = None, resume_hint: bool = True):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.interrupted = interrupted
        self.exit_code = exit_code if exit_code is not None else (130 if interrupted else 1)
        self.resume_hint = resume_hint


@dataclass(frozen=True)
class EngineOptions:
    """How to run (not part of the model): the device and speed options that keep the numbers."""

    device: str = "cpu"
    channels_last: bool = True  # same numbers, faster convolutions on CPU and GPU
    checkpoint_every: int = CHECKPOINT_EVERY
    # GPU: replay each iteration from a CUDA graph (graphs.py); same numbers. CONSINGAN_CUDA_GRAPHS=0: off.
    cuda_graphs: bool = field(default_factory=lambda: os.environ.get("CONSINGAN_CUDA_GRAPHS", "1") != "0")


def g_param_groups(G: Generator, config: Config, stage: int) -> list[dict]:
    """Parameters trained at ``stage`` and their learning rates (docs/method.md section 3); freezes the rest.

    The newest train_depth stages train with lr_g * lr_scale**(distance from the top); the head
    while stage < train_depth with lr_g * lr_scale**stage; the tail always with lr_g. Fine-tuning
    uses the same groups for the top stage (docs/method.md section 4), as the reference does.
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


def decay_milestone(niter: int) -> int:
    """The iteration after which the learning rates drop by gamma: 0.8*niter, rounded up.

    The torch the paper used (1.1) compared the float milestone 0.8*niter with the iteration count
    by bisection, so a fractional milestone decayed at the first iteration past it; current torch
    looks the count up in the milestones and would never decay on a fractional one. The ceiling of
    the same float product reproduces the old behaviour exactly.
    """
    return math.ceil(0.8 * niter)


def make_optimizers(G: Generator, D: Discriminator, config: Config, stage: int):
    opt_d = torch.optim.Adam(D.parameters(), lr=config.lr_d, betas=(config.beta1, 0.999))
    opt_g = torch.optim.Adam(g_param_groups(G, config, stage), lr=config.lr_g, betas=(config.beta1, 0.999))
    milestones = [decay_milestone(config.stage_niter(stage))]
    sched_d = torch.optim.lr_scheduler.MultiStepLR(opt_d, milestones=milestones, gamma=config.gamma)
    sched_g = torch.optim.lr_scheduler.MultiStepLR(opt_g, milestones=milestones, gamma=config.gamma)
    return opt_d, opt_g, sched_d, sched_g


@torch.no_grad()
def noise_amplitude(G: Generator, config: Config, fixed: list, shapes: list, amps: list, real: torch.Tensor) -> float:
    """amp[k] = noise_amp * RMSE(reconstruction with amp[k] = 0, real_k) (docs/method.md section 3)."""
    rec = G(fixed, shapes, list(amps[:-1]) + [0.0])
    return config.noise_amp * float(torch.sqrt(F.mse_loss(rec, real)))


class Engine:
    """Trains stages ``stage..top`` of a model, one iteration after another. Make one with
    ``Engine.start`` (a new model), ``Engine.restore`` (a saved training state) or
    ``Engine.fine_tune`` (train a model's top stage again), then ``run()``."""

    def __init__(self, config: Config, real: torch.Tensor, G: Generator, rng: Rngs,
                 options: EngineOptions = EngineOptions(), callbacks: Iterable[Callbacks] = (),
                 stage0_input: Stage0Input | None = None):
        """Use the constructors. ``real``: the training image (after max_size); ``G`` on the CPU."""
        self.device = torch.device(options.device)
        self.config = config = resolve_precision(config, self.device)
        self.options = options
        self.callbacks = CallbackList(callbacks)
        self.stage0_input = stage0_input
        self.rng = rng
        if self.device.type == "cpu" and config.precision == "bf16" and cpu_has_bf16() is False:
            warnings.warn("--precision bf16: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX), so "
                          "bfloat16 is emulated and likely slower than the default --precision fp32",
                          ConSinGANWarning, stacklevel=3)
        self.fmt = torch.channels_last if options.channels_last else torch.contiguous_format
        self.real_full = real.to(self.device)
        self.reals = [self._layout(r) for r in pyramid(self.real_full, config)]
        self.shapes = [tuple(r.shape[-2:]) for r in self.reals]
        self.G = G.to(self.device, memory_format=self.fmt)
        self.D: Discriminator | None = None
        self.fixed: list[torch.Tensor] = []
        self.amps: list[float] = []
        self.stage = 0  # the stage being trained
        self.iteration = 0  # iterations of that stage completed
        self.only_top = False  # fine-tuning: the top stage only
        self.optim = None  # (opt_d, opt_g, sched_d, sched_g) of the current stage
        self.train_seconds = 0.0
        self.stage_ready = False  # True when begin_stage has run for self.stage
        self.finite = None  # device bool: every loss of the running stage so far was finite
        self.finite_at = (0, 0)  # (stage, iteration) that self.finite covers up to
        self._stop = threading.Event()

    # --- constructors ---------------------------------------------------------------------------
    @classmethod
    def start(cls, image: torch.Tensor, config: Config, options: EngineOptions = EngineOptions(),
              callbacks: Iterable[Callbacks] = (), stage0_input: Stage0Input | None = None) -> "Engine":
        """A new model of ``image`` (1x3xHxW in [-1, 1], any size: resized to max_size), seeded by
        ``config.manualSeed``."""
        config = resolve_precision(config, torch.device(options.device))
        rng = Rngs.seeded(config.manualSeed, options.device)
        G = rng.build(lambda: Generator(config))
        return cls(config, training_image(image, config), G, rng, options, callbacks, stage0_input)

    @classmethod
    def _of_model(cls, model: Model, rng: Rngs, options: EngineOptions, callbacks, stage0_input) -> "Engine":
        """An engine holding a (partly) trained model's networks and noise, at its top stage."""
        if model.D_state is None:
            raise UserError("the model holds no discriminator weights, so it cannot be trained further")
        config, n = resolve_precision(model.config, torch.device(options.device)), len(model.amps)
        # The networks are built from the run's generator, as they always were (three builds: the
        # numbers of a fine-tuning run depend on the draws they take).
        rng.build(lambda: Generator(config))
        G = rng.build(lambda: Generator.of_stages(config, n))
        G.load_state_dict(model.G.state_dict())
        # model.real is the training image already: training_image's truncation must not act twice.
        engine = cls(config, model.real, G, rng, options, callbacks, stage0_input)
        engine.D = rng.build(lambda: Discriminator(config)).to(engine.device, memory_format=engine.fmt)
        engine.D.load_state_dict(model.D_state)
        engine.fixed = [engine._layout(z.to(engine.device)) for z in model.fixed]
        engine.amps = list(model.amps)
        engine.stage = n - 1
        return engine

    @classmethod
    def fine_tune(cls, model: Model, stage0_input: Stage0Input, options: EngineOptions = EngineOptions(),
                  callbacks: Iterable[Callbacks] = ()) -> "Engine":
        """Train the top stage of ``model`` again for ``model.config.niter`` iterations with
        ``stage0_input`` at stage 0 (docs/method.md section 4): its normal optimizer groups (the top
        train_depth stages at lr_g, lr_g*lr_scale, ...; the head below train_depth; the tail), D from
        its saved weights, the model's fixed noise and amplitudes; the older stages stay bitwise the
        same. Seeded by ``model.config.manualSeed``."""
        rng = Rngs.seeded(model.config.manualSeed, options.device)
        engine = cls._of_model(model, rng, options, callbacks, stage0_input)
        engine.only_top = True
        engine.optim = make_optimizers(engine.G, engine.D, engine.config, engine.stage)
        engine.stage_ready, engine.iteration = True, 0
        return engine

    @classmethod
    def restore(cls, model: Model, state: dict[str, Any], options: EngineOptions = EngineOptions(),
                callbacks: Iterable[Callbacks] = (), stage0_input: Stage0Input | None = None,
                where: Any = "the checkpoint") -> "Engine":
        """The engine as it was when ``state`` (``training_state()``) was taken of it with ``model``."""
        from .state_check import check_fields, check_optimizer, check_scheduler

        state = read_training_state(state, where)
        check_fields(state, len(model.amps), model.config.train_stages, where)  # before anything is built
        rng = Rngs.seeded(model.config.manualSeed, options.device)
        engine = cls._of_model(model, rng, options, callbacks, stage0_input)
        engine.stage, engine.iteration = int(state["stage"]), int(state["iteration"])
        engine.stage_ready, engine.only_top = bool(state["stage_ready"]), bool(state["only_top"])
        engine.train_seconds = float(state["train_seconds"])
        if engine.stage_ready:
            engine.optim = make_optimizers(engine.G, engine.D, engine.config, engine.stage)
            opt_d, opt_g, sched_d, sched_g = engine.optim
            for key, item in (("opt_d", opt_d), ("opt_g", opt_g)):
                try:
                    check_optimizer(state[key], item, key, where)
                except UserError:
                    if _older_groups(state[key], item):
                        break  # said below, in the older version's words
                    raise
            for key, item in (("sched_d", sched_d), ("sched_g", sched_g)):
                check_scheduler(state[key], item, key, where)
            try:
                opt_d.load_state_dict(state["opt_d"])
                opt_g.load_state_dict(state["opt_g"])
            except ValueError:  # a fine-tune checkpoint of a version that trained body[-1] alone
                raise UserError(f"{where} was written by an older consingan whose optimizer groups differ; "
                                "start this training or fine-tuning again") from None
            sched_d.load_state_dict({**state["sched_d"], "milestones": sched_d.milestones})
            sched_g.load_state_dict({**state["sched_g"], "milestones": sched_g.milestones})
        try:
            engine.rng.restore(state["rng"])
        except (RuntimeError, TypeError, ValueError) as exc:  # right size, contents torch refuses
            raise UserError(f"{where} is damaged: its random generator state cannot be restored "
                            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); train again") from None
        return engine

    def _layout(self, t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=self.fmt)

    # --- control --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the run to stop after the running iteration, at a checkpoint (any thread; a signal handler)."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    # --- stages ---------------------------------------------------------------------------------
    def begin_stage(self, k: int) -> None:
        """Grow G, start D from the previous stage's D, draw the fixed noise, set amp[k] (docs/method.md 3)."""
        c = self.config
        D_new = self.rng.build(lambda: Discriminator(c)).to(self.device, memory_format=self.fmt)
        if self.D is not None:
            D_new.load_state_dict(self.D.state_dict())
            self.G.grow()
        self.D = D_new
        self.fixed.append(self._layout(fixed_noise(c, k, self.reals, self.rng.device)))
        self.amps.append(1.0 if k == 0 else 0.0)
        if k > 0:
            self.amps[k] = noise_amplitude(self.G, c, self.fixed, self.shapes[:k + 1], self.amps, self.reals[k])
        self.optim = make_optimizers(self.G, self.D, c, k)
        self.stage, self.iteration, self.stage_ready = k, 0, True

    def run(self) -> Model:
        """Train (or go on training) up to the top stage and return the model. A stop request
        finishes the running iteration, hands out a checkpoint and raises TrainingStopped."""
        self.callbacks.on_run_start(len(self.reals))
        for k in range(self.stage, len(self.reals)):
            if not (self.stage_ready and self.stage == k):
                self.begin_stage(k)
            self._run_stage()
            self.stage_ready = False
            if k + 1 < len(self.reals):
                self.stage = k + 1
                self._checkpoint()
        model = self.model(final=True)
        self.callbacks.on_run_end(model)
        return model

    def _run_stage(self) -> None:
        k = self.stage
        c = self.config.for_stage(k)  # the step and its inputs follow the stage's Dsteps
        opt_d, opt_g, sched_d, sched_g = self.optim
        state = StageState(c, self.G, self.D, opt_g, opt_d, self.reals[k], list(self.shapes[:k + 1]),
                           list(self.amps), self.fixed)
        self.G.train()
        niter = c.stage_niter(k)
        log_every = log_interval(niter)
        self.callbacks.on_stage_start(k, len(self.reals), niter, self.iteration)
        if self.iteration == 0:
            self.callbacks.on_image(k, "real.png", self.reals[k])
        step = make_step(state, self.device, self.options.cuda_graphs)
        finite = self.finite = torch.ones((), dtype=torch.bool, device=self.device)
        t0 = time.perf_counter()
        try:
            while self.iteration < niter:
                stage0 = self.stage0_input(self.reals[0], self.rng) if self.stage0_input else None
                noise = random_noise(c, state.shapes, self.device, self.rng.device, stage0=stage0)
                gp_alphas = torch.rand(c.Dsteps, device=self.device, generator=self.rng.device)
                losses = step([self._layout(z) for z in noise], gp_alphas, self.iteration)
                sched_d.step()
                sched_g.step()
                self.iteration += 1
                done = self.iteration
                finite &= torch.isfinite(losses["loss_d"] + losses["loss_g"] + losses["loss_rec"])
                self.finite_at = (k, done)
                logged = None
                if done % log_every == 0 or done % IMAGES_EVERY == 0 or done == niter or done == 1:
                    logged = {name: float(v) for name, v in losses.items()}  # a host sync: only here
                    logged["lr_g"] = opt_g.param_groups[0]["lr"]
                if done % self.options.checkpoint_every == 0 or done == niter or logged:
                    self._check_finite()
                # Every image point is a log point: the reconstruction is computed once for both.
                rec = self._reconstruction(state) if logged else None
                if rec is not None and self._saturated(rec, state.real):
                    raise TrainingStopped(
                        f"the generator's output saturated at {position_text(k, done, len(self.reals), niter, folder=True)}: every pixel of the "
                        "reconstruction is at -1 or 1, where tanh passes (almost) no gradient, so training does "
                        "not recover. Very dark or very bright images can do this; train again with lower "
                        "learning rates (e.g. --lr_g 1e-4 --lr_d 1e-4) or another --manualSeed")
                if done % IMAGES_EVERY == 0 or done == niter:
                    self.callbacks.on_image(k, f"fake_iter_{done}.png", self._sample_image(state, done))
                    self.callbacks.on_image(k, f"reconstruction_iter_{done}.png", rec)
                stopping = self.stop_requested or self.callbacks.should_stop()
                if (done % self.options.checkpoint_every == 0 and done < niter) or stopping:
                    self.train_seconds += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self._checkpoint()  # checks the losses first: NaN weights are never handed out
                self.callbacks.on_iteration(k, done, logged)
                if stopping:
                    raise TrainingStopped(f"interrupted at {position_text(k, done, len(self.reals), niter, folder=True)}",
                                          interrupted=True)
        finally:
            self.train_seconds += time.perf_counter() - t0
        self.callbacks.on_stage_end(k, self.model())  # sampling there leaves G in train mode (evaluating)

    @torch.no_grad()
    def _sample_image(self, state: StageState, iteration: int) -> torch.Tensor:
        g = torch.Generator(device=self.device)
        g.manual_seed(iteration)  # a local generator: training's draws are untouched
        return self.G(random_noise(self.config, state.shapes, self.device, g), state.shapes, state.amps)

    @torch.no_grad()
    def _reconstruction(self, state: StageState) -> torch.Tensor:
        return self.G(state.fixed, state.shapes, state.amps)

    @staticmethod
    def _saturated(rec: torch.Tensor, real: torch.Tensor) -> bool:
        """Whether every output pixel is at (or within 1e-3 of) tanh's limits, for a training image
        that is not: then (almost) no gradient reaches the generator, and it does not come back."""
        limit = 1 - SATURATION_MARGIN
        return bool((rec.abs() >= limit).all()) and not bool((real.abs() >= limit).all())

    def model(self, final: bool = False) -> Model:
        n = len(self.amps)
        meta = {"train_seconds": round(self.train_seconds, 3), "device": str(self.device)} if final else {}
        return Model(self.config, self.G, list(self.fixed), list(self.amps), list(self.shapes[:n]),
                     self.real_full, D_state=self.D.state_dict(), meta=meta)

    # --- checkpoints ----------------------------------------------------------------------------
    def _check_finite(self) -> None:
        """Stop when a loss of the running stage was NaN or infinite (the last checkpoint stays)."""
        if self.finite is not None and not bool(self.finite):  # a host sync: only at log and checkpoint points
            k, done = self.finite_at
            raise TrainingStopped(
                f"a loss became NaN or infinite at {stage_text(k, len(self.reals), folder=True)}, by iteration "
                f"{done}/{self.config.stage_niter(k)}; training stopped "
                "(lower --lr_g/--lr_d or change the seed)")

    def _checkpoint(self) -> None:
        self._check_finite()
        self.callbacks.write_checkpoint(lambda: (self.model(), self.training_state()))
        self.callbacks.on_checkpoint(self.stage, self.iteration if self.stage_ready else 0)

    def training_state(self) -> dict[str, Any]:
        """Everything besides the model needed to go on exactly where training is now."""
        state = {"format": STATE_FORMAT, "version": STATE_VERSION, "stage": self.stage,
                 "iteration": self.iteration, "stage_ready": self.stage_ready, "only_top": self.only_top,
                 "train_seconds": self.train_seconds, "rng": self.rng.state()}
        if self.stage_ready:
            opt_d, opt_g, sched_d, sched_g = self.optim
            without_milestones = lambda s: {k: v for k, v in s.state_dict().items() if k != "milestones"}  # noqa: E731
            state.update(opt_d=opt_d.state_dict(), opt_g=opt_g.state_dict(),
                         sched_d=without_milestones(sched_d), sched_g=without_milestones(sched_g))
        return state


def _older_groups(saved: Any, optimizer: torch.optim.Optimizer) -> bool:
    """A saved optimizer state of an older consingan: well formed, with another number of parameter groups."""
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    return isinstance(groups, list) and 0 < len(groups) != len(optimizer.param_groups) and all(
        isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)


def read_training_state(state: Any, where: Any = "the checkpoint") -> dict[str, Any]:
    """A training state record, checked; one of format 0 (before it had a version: the generator
    states were torch's global ones, under other names) is read as version 1."""
    if not isinstance(state, dict):
        raise UserError(f"{where} is damaged: it holds no training state; train again")
    version = state.get("version", 0)
    if version == 0 and "rng_cpu" in state:
        cuda = state.get("rng_cuda")
        state = {**state, "rng": {"cpu": state["rng_cpu"], "device": cuda}}
    elif state.get("format") != STATE_FORMAT or version != STATE_VERSION:
        raise UserError(f"{where} has training state version {version}, this consingan reads version "
                        f"{STATE_VERSION}; finish it with the consingan release that wrote it or train again")
    missing = [k for k in ("stage", "iteration", "stage_ready", "only_top", "train_seconds", "rng") if k not in state]
    if state.get("stage_ready"):
        missing += [k for k in ("opt_d", "opt_g", "sched_d", "sched_g") if k not in state]
    if missing:
        raise UserError(f"{where} is damaged: its training state has no {', '.join(missing)}; train again")
    return state
