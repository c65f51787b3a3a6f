"""Paths built from outside input stay inside their root.

Every folder or file name that comes from outside (an upload's file name, an image's stem, a model
name, a manifest's name column) goes through ``safe_name`` before it becomes part of a path, and every
path under a root that is read or written goes through ``inside``: it is resolved (symbolic links
followed, ``..`` removed) and refused unless it is still the root or below it. A link inside the root
that points out of it is therefore refused for reading and for writing alike; a file that does not exist
yet is judged by its resolved parent, so a write never follows a link out of the root. (Files are
written atomically beside their target and renamed into place, which replaces a link rather than
writing through it; the few files opened in place use O_NOFOLLOW.)
"""
from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from ..errors import UserError

MAX_NAME_CHARS = 100  # a folder name made from outside input (file systems allow 255 bytes)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")  # separators, control characters, what Windows refuses


def safe_name(text: object, fallback: str = "image") -> str:
    """``text`` as one plain folder name: no separators or control characters (each becomes ``_``), no
    leading dots or spaces (no hidden folder, never ``.`` or ``..``), no trailing dots or spaces, at most
    MAX_NAME_CHARS characters; ``fallback`` when nothing is left."""
    name = unicodedata.normalize("NFC", str(text))
    name = _UNSAFE.sub("_", name).lstrip(". ").rstrip(". ")
    name = name[:MAX_NAME_CHARS].rstrip(". ")
    return name or fallback


def resolved(path: str | os.PathLike) -> Path:
    """``path`` made absolute with every symbolic link followed (also of a part that does not exist yet)."""
    return Path(os.path.realpath(os.path.abspath(path)))


def is_inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether ``path``, links followed, is ``root`` (links followed) or below it."""
    try:
        resolved(path).relative_to(resolved(root))
        return True
    except (ValueError, OSError):
        return False


def inside(root: str | os.PathLike, path: str | os.PathLike, what: str = "path") -> Path:
    """``path`` if it stays inside ``root`` once resolved, else a UserError. Both are taken as given
    (a relative one from the working folder, as every caller builds ``path`` from ``root``: a relative
    ``path`` is not put under ``root`` a second time). Returns the path as given (not resolved), so
    messages show the names the user knows."""
    path = Path(path)
    if not is_inside(root, path):
        raise UserError(f"the {what} {path} leads outside {root} (a '..' or a symbolic link that points out of it); "
                        "remove the link or choose another name (nothing was read or written there)")
    return path
