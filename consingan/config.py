"""The training configuration (immutable) and everything that differs between task modes.

The rest of the package never compares ``train_mode`` strings: it asks the :class:`Mode` object
returned by :func:`mode_of`. Defaults are the paper's (docs/method.md); a mode's own defaults apply
unless the user passes a value.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping, get_args

from .errors import UserError


Pyramid = Literal["dense", "geometric"]
Stage0Fixed = Literal["real", "real+noise", "random"]
Stage0Input = Literal["noise", "harmonization", "editing", "paint"]
Inference = Literal["samples", "animation", "superres"]


@dataclass(frozen=True)
class Mode:
    """How one task mode differs from plain generation. Checked when made: a misspelt value is an
    error, not a silent default; ``defaults`` cannot be changed afterwards."""

    name: str
    # "dense": stages denser at low resolution (docs/method.md section 1); "geometric": plain geometric pyramid.
    pyramid: Pyramid = "dense"
    # True for generation/animation: stage features are upsampled onto a border of 2*num_layer
    # pixels before the noise is added (more diversity at the image edges); False: zero padding.
    upsampled_border: bool = True
    # What the reconstruction noise of stage 0 is: "real", "real+noise" or "random".
    stage0_fixed: Stage0Fixed = "real"
    # What stage 0 receives each training iteration: "noise", "harmonization" or "editing"
    # (the last two are augmentations of the stage-0 training image, docs/method.md section 4).
    stage0_input: Stage0Input = "noise"
    # Mask dilation radius for harmonization/editing inference (None: no masked inference).
    mask_dilation: int | None = None
    # File-name prefix of the results on a naive image ("harmonized", "edited"); None: the mode
    # takes no naive image (no --naive_img, no --fine_tune).
    result_name: str | None = None
    # Std of the Gaussian noise added to every image fed to stage 0 (training augmentation, naive
    # image at fine-tuning and inference); editing 0.1, as its stage-0 fixed noise (docs/method.md sections 3-4).
    stage0_noise: float = 0.0
    # What the generate command makes by default: "samples" (random images at any size),
    # "animation" (GIFs of a random walk around the fixed noise, docs/method.md section 4) or "superres" (the
    # training image enlarged by sr_factor, docs/method.md 5).
    inference: Inference = "samples"
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, kind in (("pyramid", Pyramid), ("stage0_fixed", Stage0Fixed), ("stage0_input", Stage0Input),
                           ("inference", Inference)):
            if getattr(self, name) not in get_args(kind):
                raise ValueError(f"Mode {self.name}: {name} {getattr(self, name)!r} is not one of {get_args(kind)}")
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))


def _modes(*modes: Mode) -> Mapping[str, Mode]:
    return MappingProxyType({m.name: m for m in modes})


MODES: Mapping[str, Mode] = _modes(
        Mode("generation"),
        Mode("retarget", upsampled_border=False),
        Mode("animation", stage0_fixed="random", inference="animation", defaults={"min_size": 20}),
        Mode(
            "harmonization",
            pyramid="geometric",
            upsampled_border=False,
            stage0_input="harmonization",
            mask_dilation=7,
            result_name="harmonized",
            defaults={"train_stages": 3, "min_size": 120, "lrelu_alpha": 0.3,
                      "niter": 1000, "batch_norm": True},
        ),
        Mode(
            "editing",
            upsampled_border=False,
            stage0_fixed="real+noise",
            stage0_input="editing",
            mask_dilation=20,
            result_name="edited",
            stage0_noise=0.1,
            defaults={"niter": 1000, "batch_norm": True},
        ),
        # docs/method.md 5: trained on the low-resolution image, reconstruction weight 100, a geometric
        # pyramid whose step the train command sets to the upsampling step (tasks/superres.py).
        Mode("superres", pyramid="geometric", upsampled_border=False, inference="superres",
             defaults={"alpha": 100.0}),
        # docs/method.md 5: stage 0 trained on the stage-0 image quantised to paint_colors colours.
        Mode("paint", upsampled_border=False, stage0_input="paint"),
)

ACTIVATIONS = ("lrelu", "elu", "prelu", "selu")
# Far above any useful pyramid (the paper uses 6; sizes repeat long before 100 stages of one image),
# so that a typo cannot start a run of millions of stages.
MAX_STAGES = 100
STAGES_RANGE = "--train_stages must be 2 to " + str(MAX_STAGES) + " (paper: 6), not {}"
# torch seeds its generators with a signed 64-bit number; seeds are 0..2^63-1.
MAX_SEED = 2**63 - 1
# The real-valued settings and their ranges: (name, low, high, whether low itself is allowed, in words).
# Besides NaN and inf, the upper bounds refuse values that can only overflow to a NaN loss: learning
# rates above 1, decay factors (lr_scale, gamma) above 1, loss weights and the noise factor beyond
# 10^4 times the paper's, slopes steeper than 1 (a slope multiplies through every layer).
REAL_SETTINGS = (
    ("lr_g", 0.0, 1.0, False, "a number above 0 and at most 1 (paper: 5e-4)"),
    ("lr_d", 0.0, 1.0, False, "a number above 0 and at most 1 (paper: 5e-4)"),
    ("lr_scale", 0.0, 1.0, True, "a factor from 0 to 1 (paper: 0.1)"),
    ("gamma", 0.0, 1.0, True, "a factor from 0 to 1 (paper: 0.1)"),
    ("beta1", 0.0, 1.0 - 1e-12, True, "a number from 0 up to, not including, 1 (paper: 0.5)"),
    ("noise_amp", 0.0, 1000.0, True, "a number from 0 to 1000 (paper: 0.1)"),
    ("lambda_grad", 0.0, 1000.0, True, "a number from 0 to 1000 (paper: 0.1)"),
    ("alpha", 0.0, 1e5, True, "a number from 0 to 100000 (paper: 10)"),
    ("lrelu_alpha", -1.0, 1.0, True, "a slope from -1 to 1 (paper: 0.05)"),
)
PRECISIONS = ("fp32", "bf16", "auto")
MAX_SR_FACTOR = 64.0  # superres: an enlargement beyond this is a typo (x64 of 250 px is 16000 px)
MAX_PAINT_COLORS = 64  # paint: a palette of more colours is no longer a painting


def mode_of(name: str) -> Mode:
    try:
        return MODES[name]
    except KeyError:
        raise UserError(
            f"unknown --train_mode {name!r}; use one of: {', '.join(MODES)}"
        ) from None


@dataclass(frozen=True)
class Config:
    """Every setting that shapes the model and its training (reference flag spellings)."""

    train_mode: str = "generation"
    train_stages: int = 6
    train_depth: int = 3
    lr_scale: float = 0.1
    niter: int = 2000
    # Iterations of each of the first train_stages - train_depth stages (the small, cheap ones);
    # 0: niter, as in the paper. The fast preset trains them longer than the top stages.
    niter_low: int = 0
    # Iterations of every stage, lowest first (one per stage; not in the paper): overrides niter and
    # niter_low. Empty: niter / niter_low.
    niter_stages: tuple[int, ...] = ()
    min_size: int = 25
    max_size: int = 250
    nfc: int = 64
    num_layer: int = 3
    ker_size: int = 3
    noise_amp: float = 0.1
    lr_g: float = 5e-4
    lr_d: float = 5e-4
    beta1: float = 0.5
    gamma: float = 0.1
    Gsteps: int = 3
    Dsteps: int = 3
    # Discriminator updates per iteration of every stage, lowest first (one per stage; not in the
    # paper): overrides Dsteps. Empty: Dsteps at every stage.
    Dsteps_stages: tuple[int, ...] = ()
    lambda_grad: float = 0.1
    # Lazy gradient penalty (not in the paper; changes the numbers): the penalty in one D update of
    # every gp_every, weighted by gp_every. 1: in every update, as the paper.
    gp_every: int = 1
    # Arithmetic of the networks' convolutions and products (not in the paper; bf16 changes the numbers):
    # "fp32", or "bf16" (autocast: bfloat16 convolutions with float32 weights, optimizer and losses;
    # faster on GPUs and on CPUs with bfloat16 instructions, AVX512-BF16 or AMX), or "auto": bf16 where
    # the training device has them, else fp32, decided when training starts (runtime.resolve_precision;
    # the model records what was used).
    precision: str = "fp32"
    alpha: float = 10.0
    activation: str = "lrelu"
    lrelu_alpha: float = 0.05
    batch_norm: bool = False
    manualSeed: int = 0
    # superres mode: the enlargement the model is trained for; its pyramid step is sr_step(sr_factor)
    # (docs/method.md 5). Other modes ignore it.
    sr_factor: float = 4.0
    # paint mode: colours of the palette the stage-0 image is quantised to (docs/method.md 5).
    paint_colors: int = 5

    def __post_init__(self) -> None:
        self.validated()  # a Config cannot be built invalid: the same one-line UserError as the flag

    @property
    def mode(self) -> Mode:
        return mode_of(self.train_mode)

    def stage_niter(self, stage: int) -> int:
        """Iterations of ``stage``: niter_stages[stage] if set, else niter_low for the first
        train_stages - train_depth stages if set, else niter."""
        if self.niter_stages:
            return self.niter_stages[stage]
        return self.niter_low if self.niter_low and stage < self.train_stages - self.train_depth else self.niter

    def stage_Dsteps(self, stage: int) -> int:
        """Discriminator updates per iteration at ``stage``: Dsteps_stages[stage] if set, else Dsteps."""
        return self.Dsteps_stages[stage] if self.Dsteps_stages else self.Dsteps

    def for_stage(self, stage: int) -> "Config":
        """This config with ``Dsteps`` made the stage's, as the training step of ``stage`` reads it."""
        n = self.stage_Dsteps(stage)
        return self if n == self.Dsteps else self.replace(Dsteps=n)

    @property
    def stop_stage(self) -> int:
        return self.train_stages - 1

    @property
    def pad(self) -> int:
        """Pixels one unpadded convolution trims from each side."""
        return (self.ker_size - 1) // 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UserError(f"unknown config keys {sorted(unknown)}: the model file is from another version")
        d = dict(d)
        for key in ("niter_stages", "Dsteps_stages"):  # JSON lists
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        return cls(**d)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)  # checked again when made (__post_init__)

    def validated(self) -> "Config":
        """This config, or a UserError naming the first setting that is of the wrong type, out of range
        or not finite (checked before any work, so a bad value never surfaces later as a NaN loss).
        Every Config is checked when it is made; this is the check itself."""
        self._check_types()
        mode_of(self.train_mode)
        checks = [
            (2 <= self.train_stages <= MAX_STAGES, STAGES_RANGE.format(self.train_stages)),
            (self.train_depth >= 1, "--train_depth must be at least 1"),
            (self.train_depth <= self.train_stages,
             f"--train_depth {self.train_depth} is larger than --train_stages {self.train_stages}; "
             "lower --train_depth or raise --train_stages"),
            (self.min_size >= 1, "--min_size must be positive"),
            (self.min_size <= self.max_size,
             f"--min_size {self.min_size} is above --max_size {self.max_size}; "
             "lower --min_size or raise --max_size"),
            (self.niter >= 1, "--niter must be at least 1"),
            (self.niter_low >= 0, "--niter_low must be 0 (the same as --niter) or more"),
            (not self.niter_stages or len(self.niter_stages) == self.train_stages,
             f"--niter_stages has {len(self.niter_stages)} values for {self.train_stages} stages; give one per stage "
             "(--train_stages), lowest first"),
            (all(n >= 1 for n in self.niter_stages), "--niter_stages values must be at least 1"),
            (self.nfc >= 1, "--nfc must be at least 1"),
            (self.num_layer >= 1, "--num_layer must be at least 1"),
            (self.ker_size >= 1 and self.ker_size % 2 == 1, "--ker_size must be an odd number (paper: 3)"),
            (self.Gsteps >= 1 and self.Dsteps >= 1, "--Gsteps and --Dsteps must be at least 1"),
            (not self.Dsteps_stages or len(self.Dsteps_stages) == self.train_stages,
             f"--Dsteps_stages has {len(self.Dsteps_stages)} values for {self.train_stages} stages; give one per "
             "stage (--train_stages), lowest first"),
            (all(n >= 1 for n in self.Dsteps_stages), "--Dsteps_stages values must be at least 1"),
            (self.gp_every >= 1, "--gp_every must be at least 1 (1: the paper's penalty in every D update)"),
            (self.precision in PRECISIONS,
             f"unknown --precision {self.precision!r}; use one of: {', '.join(PRECISIONS)}"),
            (self.activation in ACTIVATIONS,
             f"unknown --activation {self.activation!r}; use one of: {', '.join(ACTIVATIONS)}"),
            (0 <= self.manualSeed <= MAX_SEED, f"--manualSeed {self.manualSeed} is out of range; use 0 to {MAX_SEED}"),
            (math.isfinite(self.sr_factor) and 1 < self.sr_factor <= MAX_SR_FACTOR,
             f"--sr_factor must be a number above 1 and at most {MAX_SR_FACTOR:g} (e.g. 2, 4 or 8), not {self.sr_factor}"),
            (2 <= self.paint_colors <= MAX_PAINT_COLORS,
             f"--paint_colors must be 2 to {MAX_PAINT_COLORS} (default 5), not {self.paint_colors}"),
        ]
        # NaN, inf or an absurd size would only show up later as a NaN loss, with advice that does not fit.
        for name, low, high, low_ok, what in REAL_SETTINGS:
            value = getattr(self, name)
            ok = math.isfinite(value) and (value >= low if low_ok else value > low) and value <= high
            checks.append((ok, f"--{name} must be {what}, not {value}"))
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        return self

    def _check_types(self) -> None:
        """Each setting of the type its field declares (a config from a file or the API can hold anything)."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), f.type
            if kind == "int":
                ok, what = isinstance(value, int) and not isinstance(value, bool), "a whole number"
            elif kind == "float":
                ok, what = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
            elif kind == "bool":
                ok, what = isinstance(value, bool), "true or false"
            elif kind == "str":
                ok, what = isinstance(value, str), "a name"
            else:  # tuple[int, ...]
                ok = isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                what = "a list of whole numbers"
            if not ok:
                raise UserError(f"setting {f.name} is {value!r}, not {what}; give --{f.name} as {what}")


# Named sets of settings applied over a mode's defaults (the user's own flags still win). "paper" is
# the paper's defaults (docs/method.md). "fast" trains a 250-px generation model in about 13 min on a 2-core CPU with
# bfloat16 instructions (paper: about 75 min). The stages below the top three keep all their iterations
# and the paper's 3 D updates: they are cheap, and they set the layout and the diversity (halving their
# iterations cost the most quality of all the schedules tried; 2 D updates there let a rocket run
# saturate at stage 0). The top three stages take 2 D updates per iteration instead of 3 (an iteration
# costs about a quarter less) and 65%, 39% and 25% of the iterations: the cheaper the stage, the larger
# its share (stage 3 of 6 costs a seventh of the top stage per iteration). The arithmetic is bfloat16
# where the device has it. The gradient penalty stays in every D update: the lazy penalty
# (--gp_every 3) cost far more quality than it saved time. Factors are of the mode's own niter.
# benchmarks/quality.py measures what it costs in sample quality (benchmarks/RESULTS.md).
PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "paper": MappingProxyType({}),
    "fast": MappingProxyType({"niter_low_factor": 1.0, "top_niter_factors": (0.65, 0.39, 0.25), "top_Dsteps": 2,
                              "precision": "auto"}),
    # The README's first run: a small image and about 40% of the fast preset's iterations.
    "quick": MappingProxyType({"max_size": 128, "niter_low_factor": 0.4, "top_niter_factors": (0.35, 0.2, 0.125),
                               "top_Dsteps": 2, "precision": "auto"}),
})
PRESET_ABOUT: Mapping[str, str] = MappingProxyType({
    "paper": "the paper's settings",
    "fast": "about 13 instead of 75 min for 250 px on a 2-core CPU with bfloat16 instructions, at a small cost in "
            "quality (README: The fast preset)",
    "quick": "a first look in about 3.5 min on a 2-core CPU: 128 px, about 40% of the fast preset's iterations",
})


def preset_flags(preset: str, train_mode: str = "generation") -> str:
    """The flags ``preset`` stands for in ``train_mode`` with its default number of stages, as a user
    would type them (the help text and the README's table are made from this)."""
    mode = mode_of(train_mode)
    values = preset_values(preset, mode, mode.defaults.get("train_stages", Config.train_stages))
    if not values:
        return ""
    as_flag = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v)  # noqa: E731
    return " ".join(f"--{k} {as_flag(v)}" for k, v in values.items())


def preset_help() -> str:
    parts = [f"{name}: {PRESET_ABOUT[name]}" + (f" ({preset_flags(name)})" if preset_flags(name) else "")
             for name in PRESETS]
    return ". ".join(parts) + ". Flags you pass override the preset"


def preset_values(preset: str, mode: Mode, train_stages: int) -> dict[str, Any]:
    """The settings ``preset`` gives for ``mode`` with ``train_stages`` stages."""
    try:
        spec = dict(PRESETS[preset])
    except KeyError:
        raise UserError(f"unknown --preset {preset!r}; use one of: {', '.join(PRESETS)}") from None
    niter = mode.defaults.get("niter", Config.niter)
    for key in ("niter", "niter_low"):  # a share of the mode's own iteration count (generation 2000)
        factor = spec.pop(f"{key}_factor", None)
        if factor is not None:
            spec[key] = max(1, round(niter * factor))
    top = spec.pop("top_niter_factors", ())[-train_stages:]  # shares for the top stages, the highest last
    if top:
        low = spec.get("niter_low") or spec.get("niter", niter)
        spec["niter_stages"] = (low,) * (train_stages - len(top)) + tuple(max(1, round(niter * f)) for f in top)
    top_dsteps = spec.pop("top_Dsteps", None)  # D updates of the top stages (as many as have shares)
    if top_dsteps is not None:
        n_top = len(top) or train_stages  # top is already cut to train_stages
        spec["Dsteps_stages"] = (Config.Dsteps,) * (train_stages - n_top) + (top_dsteps,) * n_top
    return spec


def draw_seed() -> int:
    """A fresh random seed, for a run or a sample the user gave none: 1 to 10000, as the reference draws
    its manualSeed (it is recorded, so the result can be made again)."""
    return random.randint(1, 10000)


def make_config(train_mode: str = "generation", preset: str = "paper", **given: Any) -> Config:
    """Paper defaults, then the mode's defaults, then the preset's, then the values the user gave
    (None = not given)."""
    mode = mode_of(train_mode)
    given = {k: v for k, v in given.items() if v is not None}
    stages = given.get("train_stages", mode.defaults.get("train_stages", Config.train_stages))
    if not (isinstance(stages, int) and 2 <= stages <= MAX_STAGES):  # before the preset sizes its tuples by it
        raise UserError(STAGES_RANGE.format(stages))
    values = {**mode.defaults, **preset_values(preset, mode, stages), **given}
    if "train_depth" not in given:  # --train_stages 2 alone trains both stages together, as the reference
        values["train_depth"] = min(values.get("train_depth", Config.train_depth), stages)
    if "niter_stages" not in given and ("niter" in given or "niter_low" in given):
        values.pop("niter_stages", None)  # the user's --niter / --niter_low win over a preset's per-stage counts
    if "Dsteps_stages" not in given and "Dsteps" in given:
        values.pop("Dsteps_stages", None)  # and the user's --Dsteps over a preset's per-stage D updates
    # As in the reference, a run without --manualSeed gets a random seed, recorded in the config.
    values.setdefault("manualSeed", draw_seed())
    names = {f.name for f in dataclasses.fields(Config)}
    unknown = set(values) - names
    if unknown:
        raise TypeError(f"unknown settings: {sorted(unknown)}")
    return Config(train_mode=train_mode, **values)
