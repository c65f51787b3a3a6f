"""How people read where a run is: one convention for every message (progress bar and lines, errors,
the resume hint, the web app's status, the batch table).

- Stages count from 1: ``stage 3/6`` is the third of six. The run directory's stage folders count
  from 0, as the reference's do, so stage 3 writes into folder ``2/``; messages that point at files
  say so (``stage 3/6 (folder 2)``).
- Iterations count the iterations done: ``iteration 36/250`` means 36 of the stage's 250 have
  finished (0: none yet).

The engine and its callbacks keep 0-based stage indices (``k``); only these functions turn them
into text.
"""
from __future__ import annotations


def stage_text(k: int, num_stages: int | None = None, folder: bool = False) -> str:
    """``stage 3/6`` for the 0-based stage index 2 (``stage 3`` without ``num_stages``);
    ``folder``: with ``(folder 2)``, the stage's folder in the run directory."""
    text = f"stage {k + 1}/{num_stages}" if num_stages else f"stage {k + 1}"
    return f"{text} (folder {k})" if folder else text


def iteration_text(done: int, niter: int | None = None) -> str:
    """``iteration 36/250``: ``done`` iterations of ``niter`` have finished."""
    return f"iteration {done}/{niter}" if niter else f"iteration {done}"


def position_text(k: int, done: int, num_stages: int | None = None, niter: int | None = None,
                  folder: bool = False) -> str:
    """``stage 3/6, iteration 36/250`` (with ``folder``: ``stage 3/6 (folder 2), iteration 36/250``)."""
    return f"{stage_text(k, num_stages, folder)}, {iteration_text(done, niter)}"
