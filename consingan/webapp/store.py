"""The web app's files: the models under ``--models_root`` and the folders the app writes into.

Everything the app reads or writes is under the models root (models, their results) or its upload
folder (what the browser sends); a model is named by its path relative to the root, and a name that
would leave the root (``../x``, an absolute path, a symbolic link pointing outside) is refused.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from ..errors import UserError
from ..storage.model_file import MODEL_FILE
from ..storage.rundir import CHECKPOINT_FILE, RESULTS_DIR, RunDir
from ..storage.paths import inside as confined, is_inside


def inside(root: Path, path: Path) -> bool:
    """Whether ``path`` (symbolic links followed) is ``root`` or below it (storage.paths.is_inside)."""
    return is_inside(root, path)


def shown(name: object) -> str:
    """A name as a message shows it: as it is, or quoted with escapes when it holds line breaks or control
    characters (a message stays one line)."""
    text = str(name)
    return text if text.isprintable() else repr(text)


class ModelStore:
    """The models under one root folder, named by their relative paths, and a cache of loaded ones."""

    def __init__(self, root: str | os.PathLike, device: str = "auto"):
        self.root = Path(root).absolute()
        self.device = device  # where loaded models run
        self._cache: dict[Path, tuple[float, object]] = {}
        self._lock = threading.Lock()

    # --- names -----------------------------------------------------------------------------

    def _walk(self, marker: str) -> list[str]:
        found = []
        if not self.root.is_dir():
            return found
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if d != RESULTS_DIR and not d.startswith("."))
            if marker in files and inside(self.root, Path(folder) / marker):  # no model.pt linked from outside
                found.append(Path(folder).relative_to(self.root).as_posix())
        return found

    def models(self) -> list[str]:
        """Every folder with a model.pt (trained here or with the command line), newest first."""
        names = self._walk(MODEL_FILE)
        return sorted(names, key=lambda n: (self.root / n / MODEL_FILE).stat().st_mtime, reverse=True)

    def interrupted(self) -> list[str]:
        """Runs that stopped with a checkpoint and no model yet (they can be resumed)."""
        return [n for n in self._walk(CHECKPOINT_FILE) if not (self.root / n / MODEL_FILE).exists()]

    def folder(self, name: str | None, what: str = "model") -> Path:
        """The folder of ``name`` (relative to the root); names that leave the root are refused."""
        if not name or not str(name).strip():
            raise UserError(f"no {what} chosen; pick one from the list (train one in the Train tab)")
        name = str(name).strip()
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts or "\\" in name or "\0" in name:
            raise UserError(f"the {what} name {name!r} leaves the models folder; pick a {what} from the list")
        path = self.root / rel
        if not inside(self.root, path):
            raise UserError(f"the {what} name {name!r} leads outside the models folder; pick a {what} from the list")
        return path

    def model_dir(self, name: str | None) -> Path:
        path = self.folder(name)
        if not (path / MODEL_FILE).is_file():
            raise UserError(f"{shown(name)} holds no {MODEL_FILE}; pick a model from the list (refresh it after training)")
        confined(self.root, path / MODEL_FILE, "model file")  # a model.pt linked from outside the root
        return path

    def info(self, name: str) -> dict:
        """The model's config.json ({} when it is missing or unreadable: the list still shows the model)."""
        try:
            info = json.loads(confined(self.root, RunDir(self.folder(name)).config_file).read_text(encoding="utf-8"))
        except (OSError, ValueError, UserError):
            return {}
        return info if isinstance(info, dict) else {}

    def name_of(self, path: Path) -> str:
        return Path(path).absolute().relative_to(self.root).as_posix()

    # --- loading ---------------------------------------------------------------------------

    def load(self, name: str | None):
        """The model (consingan.ConSinGAN), loaded once and again when its model.pt changes."""
        from .. import api

        path = self.model_dir(name)
        stamp = (path / MODEL_FILE).stat().st_mtime
        with self._lock:
            hit = self._cache.get(path)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        model = api.load(path, device=self.device)
        with self._lock:
            self._cache[path] = (stamp, model)
            while len(self._cache) > 4:  # a few models at a time; each holds its generator and images
                self._cache.pop(next(iter(self._cache)))
        return model

    # --- outputs ---------------------------------------------------------------------------

    def results_dir(self, name: str, kind: str) -> Path:
        """A new folder ``<model>/Web/<kind>_<time>`` for one request's results (created here)."""
        base = confined(self.root, RunDir(self.model_dir(name)).results_dir, "results folder")  # Web may be a link out
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S")
        for i in range(1000):
            path = base / (f"{kind}_{stamp}" + (f"_{i}" if i else ""))
            try:
                path.mkdir(parents=True)
                return confined(self.root, path, "results folder")
            except FileExistsError:
                continue
        raise UserError(f"cannot find a free folder name under {base}; remove old results there")
