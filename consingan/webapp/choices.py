"""Which models each tab lists, in what order, and which one it selects: the lists follow the models
that exist now (read again on page load, on tab select and when a training ends), a tab puts the
modes it suits first, and a model just trained in the page is selected where it fits.

No Gradio here: the page turns ``Choice`` into a dropdown update.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Modes a tab can use at all (None: every mode) and the modes it suits, best first.
TABS: dict[str, tuple[tuple[str, ...] | None, tuple[str, ...]]] = {
    "samples": (None, ("generation", "retarget", "animation")),
    "harmonize": (("harmonization", "editing"), ("harmonization", "editing")),
    "paint": (("generation", "retarget", "harmonization", "editing", "paint", "superres"), ("paint",)),
    "superres": (("superres",), ("superres",)),
    "animation": (None, ("animation", "generation", "retarget")),
    "explore": (None, ("generation", "retarget", "animation")),
}


@dataclass(frozen=True)
class Choice:
    names: list[str]  # the tab's list: suited modes first, then the others; newest first within each
    value: str | None  # the one selected


def rank(names: list[str], mode_of, suits: tuple[str, ...]) -> list[str]:
    """``names`` (newest first) with the suited modes first, in the order ``suits`` gives them."""
    order = {m: i for i, m in enumerate(suits)}
    return sorted(names, key=lambda n: order.get(mode_of(n), len(order)))  # sorted() is stable: newest first stays


def choose(tab: str, names: list[str], mode_of, current: str | None = None, trained: str | None = None) -> Choice:
    """The list and selection of ``tab``. ``names``: every model, newest first; ``mode_of(name)``: its
    train_mode. ``current``: what the tab shows now (kept while it exists; None on a page load);
    ``trained``: a model the page just trained, selected instead when the tab suits its mode.
    Otherwise the newest model of the best-suited mode."""
    usable, suits = TABS[tab]
    listed = rank([n for n in names if usable is None or mode_of(n) in usable], mode_of, suits)
    if trained in listed and mode_of(trained) in suits:
        return Choice(listed, trained)
    if current in listed:  # the user's pick stays
        return Choice(listed, current)
    return Choice(listed, listed[0] if listed else None)


def training_size(folder: Path) -> tuple[int, int] | None:
    """(width, height) of the image a model trained on: its top stage's real.png (read from the
    header only), else the model file's last stage shape; None when neither can be read."""
    stages = sorted((int(p.name), p) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()) \
        if folder.is_dir() else []
    for _, stage in reversed(stages):
        real = stage / "real.png"
        if real.is_file():
            try:
                from ..storage.image_files import image_size

                return image_size(real)
            except Exception:  # noqa: BLE001 - a damaged preview: try the model file
                break
    try:
        import torch

        record = torch.load(folder / "model.pt", map_location="cpu", weights_only=True, mmap=True)
        h, w = record["shapes"][-1]
        return int(w), int(h)
    except Exception:  # noqa: BLE001 - the table still lists the model
        return None
