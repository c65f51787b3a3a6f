"""Signal handling in one place: handlers installed for a block and the previous ones put back after it.

Python delivers signals to the main thread only, so elsewhere (a web app's worker thread, a Ray task's
thread) nothing is installed and nothing changes. SIGTERM is what batch schedulers, containers and
cluster managers send; the front-ends treat it as Ctrl-C.
"""
from __future__ import annotations

import signal
import threading
from typing import Callable

# Ctrl-C, and SIGTERM where the platform has it
STOP_SIGNALS = (signal.SIGINT,) + ((signal.SIGTERM,) if hasattr(signal, "SIGTERM") else ())


def install(handler: Callable, signums) -> dict[int, object]:
    """``handler`` for ``signums``; returns the handlers it replaced (for ``restore``), {} off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {s: signal.getsignal(s) for s in signums}
    for s in signums:
        signal.signal(s, handler)
    return previous


def restore(previous: dict[int, object]) -> None:
    for s, h in previous.items():
        signal.signal(s, h)


def sigterm_as_interrupt(seen: list | None = None) -> Callable[[], None]:
    """From now on SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so one ``except KeyboardInterrupt``
    stops the work either way; ``seen``, when given, gets the signal's number appended first (to tell
    SIGTERM from Ctrl-C afterwards). Returns the function that puts the previous handler back (call it
    in a ``finally``)."""
    def interrupt(signum, frame) -> None:
        if seen is not None:
            seen.append(signum)
        raise KeyboardInterrupt

    previous = install(interrupt, STOP_SIGNALS[1:])
    return lambda: restore(previous)
