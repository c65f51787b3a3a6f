"""The model file ``model.pt``: tensors plus a JSON-able config, never pickled objects.

It loads with ``torch.load(path, weights_only=True)``, so loading cannot run code from the file.
Layout (format_version 1):
    format: "consingan-model", format_version: 1,
    config: dict (Config fields), generator: state dict, discriminator: state dict of the last D,
    fixed_noise: [tensor per stage], noise_amp: [float per stage], shapes: [[h, w] per stage],
    real: training image 1x3xHxW in [-1, 1], meta: dict of plain values.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..errors import UserError
from ..core.model import Model
from ..core.networks import Generator
from .outputs import writing

FORMAT = "consingan-model"
FORMAT_VERSION = 1
MODEL_FILE = "model.pt"


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename: a reader never sees half a file,
    and a failed write (a full disk: outputs.NoSpace) leaves the previous file and no temporary one."""
    with writing(path, durable=True) as f:
        torch.save(obj, f)


def model_path(path: str | Path) -> Path:
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() or path.suffix != ".pt" else path


def to_record(model: Model) -> dict[str, Any]:
    cpu = lambda t: t.detach().to("cpu").contiguous()  # noqa: E731
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "generator": {k: cpu(v) for k, v in model.G.state_dict().items()},
        "discriminator": None if model.D_state is None else {k: cpu(v) for k, v in model.D_state.items()},
        "fixed_noise": [cpu(z) for z in model.fixed],
        "noise_amp": [float(a) for a in model.amps],
        "shapes": [[int(h), int(w)] for h, w in model.shapes],
        "real": cpu(model.real),
        "meta": dict(model.meta),
    }


def save_model(model: Model, path: str | Path) -> Path:
    path = model_path(path)
    atomic_save(to_record(model), path)
    return path


def read_record(path: str | Path, kind: str = FORMAT) -> dict[str, Any]:
    """Load and check a consingan file; every failure is a UserError that says what is wrong."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no model in {path.parent if path.name == MODEL_FILE else path}: "
                        f"{path.name} not found; give the directory a training run wrote (--model_dir)")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise UserError(f"{path} holds pickled Python objects, which consingan does not load "
                            "(they could run code); re-save it with consingan") from None
        raise UserError(f"{path} is not a readable consingan model (truncated or foreign file: "
                        f"{text.splitlines()[0] if text else type(exc).__name__}); train a new model") from None
    if not isinstance(record, dict) or record.get("format") != kind:
        raise UserError(f"{path} is not a consingan model file (foreign file); give a model.pt written by consingan")
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(f"{path} has model format version {version}, this consingan reads version "
                        f"{FORMAT_VERSION}; use the consingan release that wrote it or train again")
    check_record(record, path)
    return record


def check_record(record: dict[str, Any], path: Any = "model") -> Config:
    """The record's validated config, or a UserError naming what in the record is wrong.

    A model file that torch can load may still be damaged or crafted: counts that disagree, shapes
    that the settings cannot produce (or that would allocate gigabytes), tensors of the wrong rank
    or dtype, NaN amplitudes or weights (which give silent NaN samples). Everything the model is
    built from is checked against everything else before it is used.
    """
    from ..core.image import stage_sizes
    from ..core.networks import noise_size

    def bad(problem: str):
        return UserError(f"{path} is damaged or was not written by consingan: {problem}; "
                         "train a new model (or use the file its training wrote)")

    def is_tensor(t, rank: int | None = None) -> bool:
        return isinstance(t, torch.Tensor) and t.dtype == torch.float32 and (rank is None or t.dim() == rank)

    def finite(t: torch.Tensor) -> bool:
        return bool(torch.isfinite(t).all())

    missing = [k for k in ("config", "generator", "fixed_noise", "noise_amp", "shapes", "real") if k not in record]
    if missing:
        raise bad(f"it has no {', '.join(missing)}")
    if not isinstance(record["config"], dict):
        raise bad("its config is not a table of settings")
    try:
        config = Config.from_dict(record["config"]).validated()
    except (UserError, TypeError) as exc:
        raise bad(f"its settings are invalid ({exc})") from None
    shapes = record["shapes"]
    if not (isinstance(shapes, (list, tuple)) and all(
            isinstance(s, (list, tuple)) and len(s) == 2 and all(type(v) is int and v >= 1 for v in s)
            for s in shapes)):
        raise bad("its stage shapes are not pairs of positive whole numbers (height, width)")
    n = len(shapes)
    if not 1 <= n <= config.train_stages:
        raise bad(f"it has {n} stage shapes for {config.train_stages} stages (train_stages)")
    for key, what in (("fixed_noise", "fixed noise maps"), ("noise_amp", "noise amplitudes")):
        if not isinstance(record[key], (list, tuple)) or len(record[key]) != n:
            count = len(record[key]) if isinstance(record[key], (list, tuple)) else "no list of"
            raise bad(f"it has {count} {what} for {n} stages")
    for k, a in enumerate(record["noise_amp"]):
        if not (type(a) in (int, float) and math.isfinite(a) and a >= 0):
            raise bad(f"the noise amplitude of stage {k} is {a!r}, not a finite number >= 0")
    real = record["real"]
    if not (is_tensor(real, 4) and real.shape[:2] == (1, 3)):
        what = f"{real.dtype} tensor of shape {tuple(real.shape)}" if isinstance(real, torch.Tensor) else type(real).__name__
        raise bad(f"its training image is a {what}, not a 1x3xHxW float32 tensor")
    if not finite(real) or real.abs().max() > 1.0 + 1e-4:
        raise bad("its training image has values outside [-1, 1] or that are not finite")
    try:
        expected = stage_sizes(real.shape[-2], real.shape[-1], config)[:n]
    except UserError as exc:
        raise bad(f"its settings do not fit its training image ({exc})") from None
    if [tuple(s) for s in shapes] != expected:
        raise bad(f"its stage shapes {[list(s) for s in shapes]} are not the ones its settings give for its "
                  f"{real.shape[-2]}x{real.shape[-1]} training image {[list(s) for s in expected]}")
    for k, z in enumerate(record["fixed_noise"]):
        want = (1, *noise_size(config, k, shapes[k]))
        if not (is_tensor(z) and tuple(z.shape) == want):
            got = f"a {z.dtype} tensor of shape {tuple(z.shape)}" if isinstance(z, torch.Tensor) else type(z).__name__
            raise bad(f"the fixed noise of stage {k} is {got}, not a float32 tensor of shape {want}")
        if not finite(z):
            raise bad(f"the fixed noise of stage {k} is not finite")
    for key, what in (("generator", "generator"), ("discriminator", "discriminator")):
        state = record.get(key)
        if state is None and key == "discriminator":
            continue
        if not (isinstance(state, dict) and state and all(
                isinstance(name, str) and isinstance(t, torch.Tensor) and t.is_floating_point()
                for name, t in state.items())):
            raise bad(f"its {what} weights are not a table of float tensors")
        for name, t in state.items():
            if not finite(t):
                raise bad(f"its {what} weight {name} is not finite")
    if not isinstance(record.get("meta") or {}, dict):
        raise bad("its meta data is not a table")
    _check_weight_shapes(record, config, n, bad)
    return config


def _check_weight_shapes(record: dict[str, Any], config: Config, n: int, bad) -> None:
    """The weights' names and shapes are the ones the settings give for ``n`` stages, compared with networks
    built on the "meta" device (shapes only, no memory): a file whose settings claim a huge nfc is refused
    before anything that size is allocated."""
    from ..core.networks import Discriminator

    with torch.device("meta"):
        G = Generator(config)
        for _ in range(n - 1):
            G.grow()
        D = Discriminator(config) if record.get("discriminator") is not None else None
    for what, key, net in (("generator", "generator", G), ("discriminator", "discriminator", D)):
        if net is None:
            continue
        want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in record[key].items()}
        if want != got:
            names = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
            raise bad(f"its {what} weights do not fit its settings and {n} stages (first difference: {names[0]}: "
                      f"{got.get(names[0], 'missing')} where the settings give {want.get(names[0], 'none')})")


def from_record(record: dict[str, Any], device: torch.device | str = "cpu", path: Any = "model") -> Model:
    config = check_record(record, path)
    try:
        shapes = [tuple(int(v) for v in s) for s in record["shapes"]]
        G = Generator.of_stages(config, len(shapes))
        try:
            G.load_state_dict(record["generator"])
        except RuntimeError as exc:  # names, counts or shapes of the weights differ from the settings'
            raise UserError(f"{path} is damaged or was not written by consingan: its generator weights do not fit "
                            f"its settings and {len(shapes)} stages ({str(exc).splitlines()[0]}...); "
                            "train a new model") from None
        model = Model(
            config=config, G=G, fixed=list(record["fixed_noise"]),
            amps=[float(a) for a in record["noise_amp"]], shapes=shapes, real=record["real"],
            D_state=record.get("discriminator"), meta=dict(record.get("meta") or {}),
        )
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path} is damaged or incomplete ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); train a new model") from None
    model.G.eval()
    return model.to(device)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> Model:
    path = model_path(path)
    return from_record(read_record(path), device=device, path=path)
