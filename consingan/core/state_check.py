"""Checks of a checkpoint's training state (its own record: plain values and tensors, never pickles).

A checkpoint that torch can load may still be damaged or crafted. Before a resumed run trains (or
builds anything from the state), every field is checked against what this run would write itself:
types and ranges of the counters, the random generators' state sizes and dtypes, the optimizers'
groups and moments (the shape of every parameter's), the schedulers' fields. A mismatch is a
UserError naming the field, never a traceback from deep inside torch after training started.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import UserError


class _Bad:
    def __init__(self, where: Any):
        self.where = where

    def __call__(self, problem: str) -> UserError:
        return UserError(f"{self.where} is damaged or was not written by consingan: its training state's {problem}; "
                         "resume from another copy or train again")


def _whole(v: Any) -> bool:
    return type(v) is int


def _number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def check_fields(state: dict[str, Any], num_stages: int, train_stages: int, where: Any) -> None:
    """The counters: stage, iteration, flags, elapsed time, and the generators' states."""
    bad = _Bad(where)
    for key in ("stage", "iteration"):
        if not _whole(state[key]) or state[key] < 0:
            raise bad(f"{key} is {state[key]!r}, not a whole number >= 0")
    for key in ("stage_ready", "only_top"):
        if type(state[key]) is not bool:
            raise bad(f"{key} is {state[key]!r}, not true or false")
    if not _number(state["train_seconds"]) or state["train_seconds"] < 0:
        raise bad(f"elapsed time (train_seconds) is {state['train_seconds']!r}, not a finite number >= 0")
    stage, ready = state["stage"], state["stage_ready"]
    # A stage in progress is the model's top one; between stages the next one is still to begin.
    want = num_stages - 1 if ready else num_stages
    if stage != want or stage >= train_stages:
        raise bad(f"stage is {stage}, but its model has {num_stages} of {train_stages} stages (a run "
                  f"{'in' if ready else 'between'} stages is at stage {want})")
    check_rng(state["rng"], bad)


def _reference_rng_size() -> int:
    return torch.Generator().get_state().numel()


def check_rng(rng: Any, bad: _Bad) -> None:
    if not isinstance(rng, dict) or "cpu" not in rng:
        raise bad("random generator state is not a table with a 'cpu' entry")
    unknown = set(rng) - {"cpu", "device"}
    if unknown:
        raise bad(f"random generator state has unknown entries {sorted(map(str, unknown))}")
    for key in ("cpu", "device"):
        t = rng.get(key)
        if key == "device" and (t is None or (isinstance(t, (list, tuple)) and all(  # a list: format 0, per GPU
                isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.dim() == 1 for x in t))):
            continue
        if not (isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1):
            what = f"a {t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise bad(f"{key} random generator state is {what}, not a 1-D uint8 tensor")
    size = _reference_rng_size()
    if rng["cpu"].numel() != size:
        raise bad(f"cpu random generator state has {rng['cpu'].numel()} bytes, not {size}")


def _same_kind(saved: Any, template: Any, name: str, bad: _Bad) -> None:
    """``saved`` has the type (and for lists, the length and element types) of ``template``."""
    if template is None or isinstance(template, bool):
        if not (saved is None or isinstance(saved, bool)):
            raise bad(f"{name} is {saved!r}, not true, false or empty")
    elif isinstance(template, (int, float)):
        if not _number(saved) or isinstance(saved, bool) or (isinstance(template, int) and not _whole(saved)):
            raise bad(f"{name} is {saved!r}, not a finite {'whole ' if isinstance(template, int) else ''}number")
    elif isinstance(template, str):
        if not isinstance(saved, str):
            raise bad(f"{name} is {saved!r}, not text")
    elif isinstance(template, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(template):
            raise bad(f"{name} is {saved!r}, not a list of {len(template)}")
        for i, (s, t) in enumerate(zip(saved, template)):
            _same_kind(s, t, f"{name}[{i}]", bad)
    elif isinstance(template, torch.Tensor):
        if not (isinstance(saved, torch.Tensor) and saved.dtype == template.dtype and saved.shape == template.shape):
            raise bad(f"{name} is not a {template.dtype} tensor of shape {tuple(template.shape)}")
    elif isinstance(template, dict):
        _same_keys(saved, template, name, bad)
        for k in template:
            _same_kind(saved[k], template[k], f"{name}.{k}", bad)


def _same_keys(saved: Any, template: dict, name: str, bad: _Bad) -> None:
    if not isinstance(saved, dict):
        raise bad(f"{name} is not a table")
    missing, unknown = set(template) - set(saved), set(saved) - set(template)
    if missing or unknown:
        parts = ([f"no {', '.join(sorted(map(str, missing)))}"] if missing else []) + \
                ([f"unknown {', '.join(sorted(map(str, unknown)))}"] if unknown else [])
        raise bad(f"{name} has {' and '.join(parts)}")


def check_scheduler(saved: Any, scheduler: Any, name: str, where: Any) -> None:
    """A learning-rate scheduler's saved fields (milestones excepted: the settings give them) against this run's."""
    bad = _Bad(where)
    template = {k: v for k, v in scheduler.state_dict().items() if k != "milestones"}
    if not isinstance(saved, dict):
        raise bad(f"{name} is not a table")
    missing = [k for k in ("last_epoch", "base_lrs") if k not in saved]
    if missing:
        raise bad(f"{name} has no {', '.join(missing)}")
    for key, value in saved.items():
        attr = getattr(type(scheduler), key, None) if isinstance(key, str) else None
        if not isinstance(key, str) or callable(attr) or isinstance(attr, property):  # would replace a method
            raise bad(f"{name} has the field {key!r}, which is not a saved value")
        if key in template:
            _same_kind(value, template[key], f"{name}.{key}", bad)
        elif not (value is None or isinstance(value, (bool, int, float, str))):  # another torch's private field
            raise bad(f"{name}.{key} is {type(value).__name__}, not a plain value")


def check_optimizer(saved: Any, optimizer: torch.optim.Optimizer, name: str, where: Any) -> None:
    """An optimizer's saved state against this run's optimizer: the same groups and settings' types, and
    per parameter the moments of that parameter's shape and dtype (finite), the step a finite number."""
    bad = _Bad(where)
    template = optimizer.state_dict()
    _same_keys(saved, {"state": None, "param_groups": None}, name, bad)
    groups, want_groups = saved["param_groups"], template["param_groups"]
    if not isinstance(groups, (list, tuple)) or len(groups) != len(want_groups):
        raise bad(f"{name} has {len(groups) if isinstance(groups, (list, tuple)) else 'no list of'} parameter "
                  f"groups, not {len(want_groups)}")
    params: dict[Any, torch.Tensor] = {}
    for g, (group, want, live) in enumerate(zip(groups, want_groups, optimizer.param_groups)):
        _same_keys(group, want, f"{name} group {g}", bad)
        if not isinstance(group["params"], list) or group["params"] != list(want["params"]):
            raise bad(f"{name} group {g} lists parameters {group['params']!r}, not {want['params']!r}")
        for k, v in want.items():
            if k != "params":
                _same_kind(group[k], v, f"{name} group {g} {k}", bad)
        params.update(zip(want["params"], live["params"]))
    state = saved["state"]
    if not isinstance(state, dict):
        raise bad(f"{name} state is not a table")
    for index, entry in state.items():
        if index not in params:
            raise bad(f"{name} holds the state of parameter {index!r}, which this model does not have")
        p = params[index]
        if not isinstance(entry, dict):
            raise bad(f"{name} state of parameter {index} is not a table")
        for key, t in entry.items():
            if not isinstance(t, torch.Tensor):
                raise bad(f"{name} {key} of parameter {index} is {type(t).__name__}, not a tensor")
            if key == "step":
                if t.numel() != 1 or t.dtype != torch.float32 or not bool(torch.isfinite(t).all()) or float(t) < 0:
                    raise bad(f"{name} step of parameter {index} is not one finite number >= 0")
            elif t.shape != p.shape or t.dtype != p.dtype:
                raise bad(f"{name} {key} of parameter {index} is a {t.dtype} tensor of shape {tuple(t.shape)}, "
                          f"not {p.dtype} of the parameter's shape {tuple(p.shape)}")
            elif not bool(torch.isfinite(t).all()):
                raise bad(f"{name} {key} of parameter {index} is not finite")
        expected = {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if optimizer.defaults.get("amsgrad") else set())
        if isinstance(optimizer, torch.optim.Adam) and set(entry) != expected:
            raise bad(f"{name} state of parameter {index} has {sorted(map(str, entry))}, not {sorted(expected)}")
