"""The stage loop (METHOD 3): grow, set the noise amplitude, train the top stages, save, repeat.

One loop serves every task mode (what differs comes from ``config.mode``), fine-tuning (only the top
stage trains) and resuming (the loop starts from a checkpoint's stage and iteration).
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config
from ..errors import ConSinGANWarning, UserError
from .graphs import make_step
from .image import grid, pyramid, training_image
from ..storage.image_files import save_image
from .model import Model
from .networks import Discriminator, Generator
from .noise import fixed_noise, random_noise
from ..progress import NoProgress
from .runtime import cpu_has_bf16, resolve_precision, tune_cpu_allocator
from .step import StageState

LOG_EVERY = 250  # loss scalars to log.jsonl (METHOD 3), at the latest
LOGS_PER_STAGE = 20  # ... and at least this often per stage, so that a short run shows recent losses
IMAGES_EVERY = 500  # a sample and a reconstruction into the stage folder (METHOD 3)
CHECKPOINT_EVERY = 250
GRID_SAMPLES = 10
# A reconstruction whose every pixel is this close to -1 or 1 counts as saturated (seen: a run whose
# stage-0 output sat below -0.996 everywhere, its loss unchanged for 1750 iterations, then exactly -1).
SATURATION_MARGIN = 1e-3
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = "consingan-checkpoint"

# stage0_input(real0) -> the stage-0 input of one iteration (harmonization/editing augmentation).
Stage0Input = Callable[[torch.Tensor], torch.Tensor]


def log_interval(niter: int) -> int:
    """Iterations between two log points of a stage of ``niter`` iterations: every LOG_EVERY, or more
    often so that a stage has at least LOGS_PER_STAGE of them (each one is a host sync)."""
    return max(1, min(LOG_EVERY, niter // LOGS_PER_STAGE))


class TrainingStopped(Exception):
    """Training stopped early (Ctrl-C, SIGTERM, a non-finite loss, a saturated generator, a full disk); a
    checkpoint to resume from may exist.

    ``exit_code``: what the command line exits with (130 Ctrl-C, 143 SIGTERM, 1 otherwise).
    ``resume_hint``: False when the message already says how to go on.
    """

    def __init__(self, message: str, checkpoint: Path | None, interrupted: bool = False,
                 exit_code: int | None = None, resume_hint: bool = True):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.interrupted = interrupted
        self.exit_code = exit_code if exit_code is not None else (130 if interrupted else 1)
        self.resume_hint = resume_hint


def resume_command(out_dir: Path) -> str:
    return f"python main_train.py --resume {out_dir}"


def no_space_stop(exc: BaseException, out_dir: Path | None, kept: str | None) -> TrainingStopped:
    """A full disk while training: what was kept and how to go on (``kept``: the checkpoint left, or None)."""
    from ..storage.outputs import NoSpace

    where = exc.where if isinstance(exc, NoSpace) else NoSpace(getattr(exc, "filename", None) or out_dir or ".").where
    if kept is None:
        advice = "no checkpoint was written yet, so there is nothing to resume: free space and train again"
        return TrainingStopped(f"no space left on {where}; {advice}", None, resume_hint=False)
    return TrainingStopped(f"no space left on {where}; kept {kept}, free space and resume with: "
                           f"{resume_command(out_dir)}", out_dir / CHECKPOINT_FILE, resume_hint=False)


@dataclass(frozen=True)
class RunOptions:
    """How to run a training job (not part of the model): device, outputs, speed options."""

    device: str = "cpu"
    out_dir: Path | None = None  # None: write nothing
    channels_last: bool = True  # same numbers, faster convolutions on CPU and GPU
    checkpoint_every: int = CHECKPOINT_EVERY
    tune_allocator: bool = True  # CPU: keep freed memory for reuse (runtime.py); same numbers
    # GPU: replay each iteration from a CUDA graph (graphs.py); same numbers. CONSINGAN_CUDA_GRAPHS=0: off.
    cuda_graphs: bool = field(default_factory=lambda: os.environ.get("CONSINGAN_CUDA_GRAPHS", "1") != "0")
    # preview(partial model) -> {file name: image}, written into each stage's folder at its end
    # (harmonization/editing: the result on the naive image given with --naive_img).
    preview: Callable[[Model], dict[str, torch.Tensor]] | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def g_param_groups(G: Generator, config: Config, stage: int) -> list[dict]:
    """Parameters trained at ``stage`` and their learning rates (METHOD 3); freezes the rest.

    The newest train_depth stages train with lr_g * lr_scale**(distance from the top); the head
    while stage < train_depth with lr_g * lr_scale**stage; the tail always with lr_g. Fine-tuning
    uses the same groups for the top stage (METHOD 4), as the reference does.
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
    """amp[k] = noise_amp * RMSE(reconstruction with amp[k] = 0, real_k) (METHOD 3)."""
    rec = G(fixed, shapes, list(amps[:-1]) + [0.0])
    return config.noise_amp * float(torch.sqrt(F.mse_loss(rec, real)))


class StageWriter:
    """The model directory's stage folders and log.jsonl (does nothing without an out_dir)."""

    def __init__(self, out_dir: Path | None):
        self.out_dir = out_dir
        self.log = None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.log = open(out_dir / "log.jsonl", "a", encoding="utf-8")

    def log_losses(self, stage: int, iteration: int, losses: dict[str, float], lr_g: float) -> None:
        if self.log:
            self.log.write(json.dumps({"stage": stage, "iter": iteration, **losses, "lr_g": lr_g}) + "\n")
            self.log.flush()

    def image(self, stage: int, name: str, image: torch.Tensor) -> None:
        if self.out_dir is not None:
            save_image(image, self.out_dir / str(stage) / name)

    def close(self) -> None:
        if self.log:
            self.log.close()


def _on_stop_signals(callback: Callable[[int], None]) -> Callable[[], None]:
    """Route Ctrl-C (SIGINT) and SIGTERM (what batch schedulers, containers and cluster managers send)
    to ``callback(signum)`` (main thread only); returns the function that undoes it. A second signal
    stops at once: KeyboardInterrupt for Ctrl-C, exit status 143 for SIGTERM."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    signums = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
    previous = {s: signal.getsignal(s) for s in signums}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    def handler(signum, frame):
        if getattr(handler, "fired", False):
            restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        handler.fired = True
        callback(signum)

    for s in signums:
        signal.signal(s, handler)
    return restore


class Trainer:
    """Runs stages ``first_stage..top`` of a model, one iteration after another.

    Usage: ``Trainer(image, config, options).fit()``; ``Trainer.resume(dir, options).fit()``; fine-tuning:
    ``harmonize.fine_tune_trainer``.
    """

    def __init__(self, image: torch.Tensor, config: Config, options: RunOptions = RunOptions(),
                 progress=None, stage0_input: Stage0Input | None = None):
        self.device = torch.device(options.device)
        self.config = config = resolve_precision(config, self.device)
        self.options = options
        self.progress = progress or NoProgress()
        self.stage0_input = stage0_input
        if self.device.type == "cpu" and options.tune_allocator:
            tune_cpu_allocator()
        if self.device.type == "cpu" and config.precision == "bf16" and cpu_has_bf16() is False:
            warnings.warn("--precision bf16: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX), so "
                          "bfloat16 is emulated and likely slower than the default --precision fp32",
                          ConSinGANWarning, stacklevel=2)
        self.fmt = torch.channels_last if options.channels_last else torch.contiguous_format
        self.real_full = training_image(image, config).to(self.device)
        self.reals = [self._layout(r) for r in pyramid(self.real_full, config)]
        self.shapes = [tuple(r.shape[-2:]) for r in self.reals]
        self.G = Generator(config).to(self.device, memory_format=self.fmt)
        self.D: Discriminator | None = None
        self.fixed: list[torch.Tensor] = []
        self.amps: list[float] = []
        self.stage = 0  # the stage being trained
        self.iteration = 0  # iterations of that stage completed
        self.only_top = False
        self.optim = None  # (opt_d, opt_g, sched_d, sched_g) of the current stage
        self.train_seconds = 0.0
        self.stage_ready = False  # True when begin_stage has run for self.stage
        self.finite = None  # device bool: every loss of the running stage so far was finite
        self.finite_at = (0, 0)  # (stage, iteration) that self.finite covers up to
        self.last_checkpoint: tuple[int, int] | None = None  # (stage, iteration) of the checkpoint on disk
        self.stop_requested = False
        self.stop_signal: int | None = None

    def _layout(self, t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=self.fmt)

    # --- stages -------------------------------------------------------------------------------
    def begin_stage(self, k: int) -> None:
        """Grow G, start D from the previous stage's D, draw the fixed noise, set amp[k] (METHOD 3)."""
        c = self.config
        D_new = Discriminator(c).to(self.device, memory_format=self.fmt)
        if self.D is not None:
            D_new.load_state_dict(self.D.state_dict())
            self.G.grow()
        self.D = D_new
        self.fixed.append(self._layout(fixed_noise(c, k, self.reals)))
        self.amps.append(1.0 if k == 0 else 0.0)
        if k > 0:
            self.amps[k] = noise_amplitude(self.G, c, self.fixed, self.shapes[:k + 1], self.amps, self.reals[k])
        self.optim = make_optimizers(self.G, self.D, c, k)
        self.stage, self.iteration, self.stage_ready = k, 0, True

    def fit(self) -> Model:
        """Train (or go on training) up to the top stage and return the model.

        Ctrl-C or SIGTERM finishes the running iteration, writes a checkpoint and raises TrainingStopped;
        so does a full disk (keeping the last checkpoint written).
        """
        from ..storage.outputs import is_no_space

        self.stop_requested, self.stop_signal = False, None
        restore_signals = _on_stop_signals(self._request_stop)
        writer = None
        try:
            writer = StageWriter(self.options.out_dir)
            for k in range(self.stage, len(self.reals)):
                if not (self.stage_ready and self.stage == k):
                    self.begin_stage(k)
                self._run_stage(writer)
                self.stage_ready = False
                if k + 1 < len(self.reals):
                    self.stage = k + 1
                    self.save_checkpoint()
        except (OSError, UserError) as exc:
            if not is_no_space(exc):
                raise
            raise no_space_stop(exc, self.options.out_dir, self.checkpoint_kept()) from None
        finally:
            restore_signals()
            if writer is not None:
                writer.close()
            self.progress.close()
        return self.model(final=True)

    def checkpoint_kept(self) -> str | None:
        """The checkpoint on disk, in words (None: none written yet)."""
        path = self.checkpoint_path()
        if self.last_checkpoint is None or path is None or not path.exists():
            return None
        stage, iteration = self.last_checkpoint
        return f"the checkpoint of stage {stage}, iteration {iteration} ({path})"

    def _request_stop(self, signum: int | None = None) -> None:
        self.stop_requested = True
        self.stop_signal = signum

    def _run_stage(self, writer: StageWriter) -> None:
        k = self.stage
        c = self.config.for_stage(k)  # the step and its inputs follow the stage's Dsteps
        opt_d, opt_g, sched_d, sched_g = self.optim
        state = StageState(c, self.G, self.D, opt_g, opt_d, self.reals[k], list(self.shapes[:k + 1]),
                           list(self.amps), self.fixed)
        if self.iteration == 0:
            writer.image(k, "real.png", self.reals[k])
        self.G.train()
        niter = c.stage_niter(k)
        log_every = log_interval(niter)
        self.progress.start_stage(k, len(self.reals), niter, self.iteration)
        step = make_step(state, self.device, self.options.cuda_graphs)
        finite = self.finite = torch.ones((), dtype=torch.bool, device=self.device)
        t0 = time.perf_counter()
        try:
            while self.iteration < niter:
                noise = random_noise(c, state.shapes, self.device,
                                     stage0=self.stage0_input(self.reals[0]) if self.stage0_input else None)
                gp_alphas = torch.rand(c.Dsteps, device=self.device)
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
                    writer.log_losses(k, done, logged, opt_g.param_groups[0]["lr"])
                if done % self.options.checkpoint_every == 0 or done == niter or logged:
                    self._check_finite()
                # Every image point is a log point: the reconstruction is computed once for both.
                rec = self._reconstruction(state) if logged else None
                if rec is not None and self._saturated(rec, state.real):
                    raise TrainingStopped(
                        f"the generator's output saturated at stage {k}, iteration {done}: every pixel of the "
                        "reconstruction is at -1 or 1, where tanh passes (almost) no gradient, so training does "
                        "not recover. Very dark or very bright images can do this; train again with lower "
                        "learning rates (e.g. --lr_g 1e-4 --lr_d 1e-4) or another --manualSeed", None)
                if done % IMAGES_EVERY == 0 or done == niter:
                    writer.image(k, f"fake_iter_{done}.png", self._sample_image(state, done))
                    writer.image(k, f"reconstruction_iter_{done}.png", rec)
                if done % self.options.checkpoint_every == 0 and done < niter:
                    self.train_seconds += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self.save_checkpoint()
                self.progress.update(done, logged)
                if self.stop_requested:
                    self.train_seconds += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    path = self.save_checkpoint()  # checks the losses first: NaN weights never replace good ones
                    by = " by SIGTERM" if self.stop_signal == getattr(signal, "SIGTERM", None) else ""
                    raise TrainingStopped(f"interrupted{by} at stage {k}, iteration {done}", path, interrupted=True,
                                          exit_code=128 + self.stop_signal if self.stop_signal else 130)
        finally:
            self.train_seconds += time.perf_counter() - t0
        self.progress.end_stage()
        if self.options.out_dir is not None:
            from ..tasks.sampling import generate, reconstruct

            model = self.model()
            samples = generate(model, GRID_SAMPLES, seed=k)  # a local generator: training's RNG is untouched
            writer.image(k, "reconstruction.png", reconstruct(model))
            writer.image(k, "samples_grid.png", grid(samples, columns=5))
            for name, image in (self.options.preview(model) if self.options.preview else {}).items():
                writer.image(k, name, image)
            self.G.train()

    @torch.no_grad()
    def _sample_image(self, state: StageState, iteration: int) -> torch.Tensor:
        g = torch.Generator(device=self.device)
        g.manual_seed(iteration)  # a local generator: training's RNG is untouched
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

    # --- checkpoints --------------------------------------------------------------------------
    def checkpoint_path(self) -> Path | None:
        return None if self.options.out_dir is None else self.options.out_dir / CHECKPOINT_FILE

    def _check_finite(self) -> None:
        """Stop (keeping the checkpoint on disk) when a loss of the running stage was NaN or infinite."""
        if self.finite is not None and not bool(self.finite):  # a host sync: only at log and checkpoint points
            k, done = self.finite_at
            raise TrainingStopped(
                f"a loss became NaN or infinite at stage {k}, iteration <= {done}; training stopped "
                "(lower --lr_g/--lr_d or change the seed)", self.checkpoint_path())

    def save_checkpoint(self) -> Path | None:
        """Everything needed to go on exactly where training is now, written atomically. Never written
        when a loss since the last check was not finite (TrainingStopped, the previous checkpoint kept)."""
        from ..storage.model_file import atomic_save, to_record

        path = self.checkpoint_path()
        if path is None:
            return None
        self._check_finite()
        record = to_record(self.model())
        record["format"] = CHECKPOINT_FORMAT
        opt_d, opt_g, sched_d, sched_g = self.optim
        without_milestones = lambda s: {k: v for k, v in s.state_dict().items() if k != "milestones"}  # noqa: E731
        record["train"] = {
            "stage": self.stage, "iteration": self.iteration, "stage_ready": self.stage_ready,
            "only_top": self.only_top, "train_seconds": self.train_seconds,
            "opt_d": opt_d.state_dict(), "opt_g": opt_g.state_dict(),
            "sched_d": without_milestones(sched_d), "sched_g": without_milestones(sched_g),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }
        atomic_save(record, path)
        self.last_checkpoint = (self.stage, self.iteration if self.stage_ready else 0)
        return path

    @classmethod
    def resume(cls, out_dir: Path, options: RunOptions, progress=None,
               stage0_input: Stage0Input | None = None) -> "Trainer":
        """A trainer in the state of ``out_dir/checkpoint.pt``."""
        from ..storage.model_file import from_record, read_record

        record = read_record(Path(out_dir) / CHECKPOINT_FILE, kind=CHECKPOINT_FORMAT)
        model = from_record(record, device="cpu", path=Path(out_dir) / CHECKPOINT_FILE)
        t = record["train"]
        trainer = cls.from_model(model, options, progress, stage0_input)
        trainer.stage, trainer.iteration = int(t["stage"]), int(t["iteration"])
        trainer.stage_ready, trainer.only_top = bool(t["stage_ready"]), bool(t["only_top"])
        trainer.train_seconds = float(t["train_seconds"])
        trainer.last_checkpoint = (trainer.stage, trainer.iteration if trainer.stage_ready else 0)
        if trainer.stage_ready:
            trainer.optim = make_optimizers(trainer.G, trainer.D, trainer.config, trainer.stage)
            opt_d, opt_g, sched_d, sched_g = trainer.optim
            try:
                opt_d.load_state_dict(t["opt_d"])
                opt_g.load_state_dict(t["opt_g"])
            except ValueError:  # a fine-tune checkpoint of a version that trained body[-1] alone
                raise UserError(f"{out_dir} was written by an older consingan whose optimizer groups differ; "
                                "start this training or fine-tuning again") from None
            sched_d.load_state_dict({**t["sched_d"], "milestones": sched_d.milestones})
            sched_g.load_state_dict({**t["sched_g"], "milestones": sched_g.milestones})
        torch.set_rng_state(t["rng_cpu"])
        if trainer.device.type == "cuda" and t.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(t["rng_cuda"], trainer.device)
        return trainer

    @classmethod
    def from_model(cls, model: Model, options: RunOptions, progress=None,
                   stage0_input: Stage0Input | None = None) -> "Trainer":
        """A trainer holding a (partly) trained model's networks and noise."""
        trainer = cls(model.real, model.config, options, progress, stage0_input)
        # model.real is the training image already: training_image's truncation to levels must not act twice.
        trainer.real_full = model.real.to(trainer.device)
        trainer.reals = [trainer._layout(r) for r in pyramid(trainer.real_full, model.config)]
        n = len(model.amps)
        G = Generator(model.config)
        for _ in range(n - 1):
            G.grow()
        G.load_state_dict(model.G.state_dict())
        trainer.G = G.to(trainer.device, memory_format=trainer.fmt)
        trainer.D = Discriminator(model.config).to(trainer.device, memory_format=trainer.fmt)
        if model.D_state is None:
            raise UserError("the model holds no discriminator weights, so it cannot be trained further")
        trainer.D.load_state_dict(model.D_state)
        trainer.fixed = [trainer._layout(z.to(trainer.device)) for z in model.fixed]
        trainer.amps = list(model.amps)
        trainer.stage = n - 1
        return trainer


def train(image: torch.Tensor, config: Config, options: RunOptions = RunOptions(), progress=None,
          stage0_input: Stage0Input | None = None) -> Model:
    """Train a ConSinGAN on one image (1x3xHxW in [-1, 1], any size: resized to max_size)."""
    if torch.device(options.device).type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(config.manualSeed)
    return Trainer(image, config, options, progress, stage0_input).fit()
