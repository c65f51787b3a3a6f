"""A training run's random generators: every draw of a run comes from these, never from torch's
global generators, so two runs in one process (or threads) give what each would give alone.

``cpu`` draws what is made on the CPU (network weights, the augmentations' choices); ``device``
draws tensors on the run's device. On the CPU they are one generator, so the draws interleave in
one stream, exactly as they did when they came from torch's global CPU generator seeded with the
same number (the stored digests in tests/ hold the numbers of that time).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch

T = TypeVar("T")
_BORROW = threading.Lock()


@dataclass(frozen=True)
class Rngs:
    cpu: torch.Generator
    device: torch.Generator

    @classmethod
    def seeded(cls, seed: int, device: torch.device | str = "cpu") -> "Rngs":
        device = torch.device(device)
        cpu = torch.Generator().manual_seed(seed)
        if device.type == "cpu":
            return cls(cpu, cpu)
        # torch.manual_seed seeds every device's generator with the same number: so does this.
        return cls(cpu, torch.Generator(device=device).manual_seed(seed))

    def state(self) -> dict[str, Any]:
        return {"cpu": self.cpu.get_state(),
                "device": None if self.device is self.cpu else self.device.get_state()}

    def restore(self, state: dict[str, Any]) -> None:
        self.cpu.set_state(state["cpu"])
        if self.device is not self.cpu and state.get("device") is not None:
            self.device.set_state(state["device"])

    def build(self, make: Callable[[], T]) -> T:
        """``make()`` (e.g. a network's constructor, whose layers initialise their weights from
        torch's global CPU generator) with its draws taken from ``self.cpu``: the global generator
        is set to this run's state for the call and restored after it (under a lock, so that two
        runs building networks at once take turns)."""
        with _BORROW, torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.cpu.get_state())
            made = make()
            self.cpu.set_state(torch.get_rng_state())
        return made


def cpu_of(rng: Rngs | None) -> torch.Generator | None:
    """The generator for CPU draws (None: torch's global one, for calls outside a run)."""
    return rng.cpu if rng is not None else None


def device_of(rng: Rngs | None) -> torch.Generator | None:
    return rng.device if rng is not None else None
