"""Errors and warnings in the page: the one line the command line would print, never a crashed server."""
from __future__ import annotations

import functools
import threading
import traceback
import warnings
from typing import Any, Callable

from ..errors import ConSinGANWarning, one_line

_local = threading.local()


def message_of(exc: BaseException) -> str | None:
    """The command line's one-line message for what a user can fix (errors.one_line), else None (a bug)."""
    return one_line(exc, "use a smaller size or fewer images")


def install_warning_hook() -> None:
    """ConSinGANWarning goes to the request that raised it (shown as a warning in the page); other
    warnings as before. Each handler runs on its own thread, so the messages are kept per thread."""
    previous = warnings.showwarning
    if getattr(previous, "consingan_webapp", False):
        return
    warnings.simplefilter("always", ConSinGANWarning)

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ConSinGANWarning):
            pending = getattr(_local, "warnings", None)
            if pending is not None:
                pending.append(str(message))
                return
        previous(message, category, filename, lineno, file, line)

    show.consingan_webapp = True
    warnings.showwarning = show


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A handler whose UserError (and the errors the command line also reports in one line) shows as
    ``gr.Error`` with the same message, whose library warnings show as ``gr.Warning``, and whose bugs
    show a short line while the traceback goes to the server's log."""
    import gradio as gr

    def run(args, kwargs):
        outermost = getattr(_local, "warnings", None) is None  # a guarded handler may call another
        if outermost:
            _local.warnings = []
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001 - nothing may take the server down
            text = message_of(exc)
            if text is None:
                traceback.print_exc()
                text = f"internal error: {type(exc).__name__}: {exc} (the server's log has the traceback)"
            raise gr.Error(text, print_exception=False) from None
        finally:
            if outermost:
                pending, _local.warnings = _local.warnings, None
                for message in pending:
                    gr.Warning(message)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return run(args, kwargs)
    return wrapper
