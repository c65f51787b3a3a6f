"""Writing results without losing or mixing work.

- ``claim_dir``: a run takes its output directory for itself. The claim is an exclusive ``flock`` on
  ``<dir>/.consingan.lock`` (the file holds the owner's pid), taken atomically and held for the whole
  run, so a second run started at the same time with the same directory is refused instead of
  writing over the first. The lock file is removed when the run ends, finished or stopped; a run
  that was killed leaves it behind, harmless: the kernel dropped the lock with the process, and the
  next claim (``--resume``, say) takes it over.
- ``write_bytes`` / ``writing``: every file goes to a temporary ``<name>.<random>.tmp`` beside its
  target and is then renamed into place, so a kill or a full disk never leaves a half-written or
  empty file under the real name. ``overwrite=False`` publishes with ``os.link``, which fails
  instead of replacing a file that another run created meanwhile.
- A full disk (ENOSPC, EDQUOT, or torch.save's own writer failing half-way: a RuntimeError from
  inline_container.cc) is a ``NoSpace`` error that names the device, not a traceback.
- Files get the mode any other program's would: ``0o666`` less the process's umask (``file_mode``;
  a temporary file is made ``0o600`` and changed before it is published).
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from ..errors import UserError

try:
    import fcntl
except ImportError:  # Windows: a create-exclusive marker instead of a lock (see _Claim)
    fcntl = None

LOCK_FILE = ".consingan.lock"
NO_SPACE_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
# What tempfile.mkstemp(prefix=name + ".", suffix=".tmp") makes: the target's name, 8 random characters.
_TEMP_NAME = re.compile(r".+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]{1,5})?")


_UMASK_LOCK = threading.Lock()
_UMASK_READ: list[int] = []  # the umask read by setting it, once (where /proc cannot tell it)


def current_umask() -> int:
    """The process's umask. Linux tells it in /proc/self/status, read each time, so a umask the
    program sets later counts; elsewhere it is read once, by setting it and setting it back at once
    (under a lock: only this module's threads could see the moment it is 0)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        if not _UMASK_READ:
            mask = os.umask(0o077)
            os.umask(mask)
            _UMASK_READ.append(mask)
        return _UMASK_READ[0]


def file_mode() -> int:
    """The mode of a new file: read and write for whom the umask allows (0o644 under umask 022)."""
    return 0o666 & ~current_umask()


# torch.save writes through its own C++ writer, which reports a short write (a full disk) as a RuntimeError
# "[enforce fail at inline_container.cc:...] . unexpected pos ..." or "PytorchStreamWriter failed writing ...".
_TORCH_WRITER_FAILURES = ("inline_container.cc", "PytorchStreamWriter failed")


def torch_writer_failed(exc: BaseException) -> bool:
    """torch's file writer gave up half-way (its files are only ever written by us, so: the disk is full)."""
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_WRITER_FAILURES)


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, NoSpace) or (isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS) \
        or torch_writer_failed(exc)


def mount_point(path: str | os.PathLike) -> Path:
    """The mount point of the file system that holds ``path`` (or would hold it)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def _free_space(path: Path) -> str:
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "?"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if free < 1000 or unit == "TB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1000
    return "?"


class NoSpace(UserError):
    """The disk filled up while writing ``path``; the partial file was removed."""

    def __init__(self, path: str | os.PathLike, advice: str = "free space and run again (no partial file was left)"):
        self.path = Path(path)
        self.device = mount_point(self.path)
        super().__init__(f"no space left on {self.where}; {advice}")

    @property
    def where(self) -> str:
        return f"{self.device} ({_free_space(self.device)} free, writing {self.path})"


class OutputExists(UserError):
    """The file appeared while this run computed it (another run wrote it): it is left as it is."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        super().__init__(f"{path} already exists (another run wrote it meanwhile); choose another output "
                         "(nothing was overwritten)")


class InUse(UserError):
    """Another run holds the directory (its lock): what is there is that run's, not this one's."""


def _reraise_no_space(exc: BaseException, path: Path) -> None:
    if (isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS) or torch_writer_failed(exc):
        raise NoSpace(path) from None


@contextmanager
def writing(path: str | os.PathLike, overwrite: bool = True, durable: bool = False) -> Iterator[IO[bytes]]:
    """``with writing(path) as f: f.write(...)``: the file appears under ``path`` only once complete.

    ``overwrite=False``: an existing ``path`` (say, written by another run meanwhile) is an error and
    stays as it is. ``durable``: fsync before the rename (checkpoints, models)."""
    with temp_file(path, overwrite) as tmp:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())


@contextmanager
def temp_file(path: str | os.PathLike, overwrite: bool = True, keep_suffix: bool = False) -> Iterator[Path]:
    """The name of an empty temporary file beside ``path``, for a writer that wants a file name; when
    the block ends without error it becomes ``path`` (``publish``), otherwise it is removed.
    ``keep_suffix``: the name ends in ``.tmp<path's suffix>`` (writers that pick the format from it)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = ".tmp" + (path.suffix if keep_suffix else "")
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=suffix, dir=path.parent)
        try:
            os.fchmod(fd, file_mode())  # mkstemp makes it 0o600; the published file follows the umask
        except (AttributeError, OSError):
            pass  # no fchmod (Windows) or a file system without modes
        finally:
            os.close(fd)
    except OSError as exc:
        _reraise_no_space(exc, path)
        raise
    try:
        yield Path(tmp)
        publish(tmp, path, overwrite)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        _reraise_no_space(exc, path)
        raise


def write_bytes(data: bytes, path: str | os.PathLike, overwrite: bool = True, durable: bool = False) -> Path:
    with writing(path, overwrite, durable) as f:
        f.write(data)
    return Path(path)


def publish(tmp: str | os.PathLike, path: str | os.PathLike, overwrite: bool = True) -> None:
    """Move a finished temporary file to ``path`` (atomically; without ``overwrite``, never over a file)."""
    path = Path(path)
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputExists(path) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        # A file system without hard links: reserve the name, then move the file over the reservation.
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            raise OutputExists(path) from None
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def clean_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (``<name>.<8 characters>.tmp[.ext]``) that a killed write left in ``folder``
    and its subfolders. Call it only on a folder this run has claimed."""
    removed = []
    for p in Path(folder).rglob("*.tmp*"):
        if p.is_file() and _TEMP_NAME.fullmatch(p.name):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class Claim:
    """One run's hold on a directory (see ``claim_dir``); ``release()`` ends it and removes the lock file."""

    def __init__(self, folder: Path, fd: int | None):
        self.folder, self.fd = folder, fd
        self.lock = folder / LOCK_FILE

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            # Remove the file while still holding it: a run waiting on the old file finds it gone and
            # makes a new one (see _lock), so two runs never both believe they hold the directory.
            if _same_file(self.fd, self.lock):
                self.lock.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _owner(lock: Path) -> str:
    """The holder's pid from the lock file; it writes it just after taking the lock, so wait a moment for it."""
    import time

    for _ in range(50):
        try:
            text = lock.read_text(encoding="utf-8").strip()
        except OSError:
            text = ""
        if text.isdigit():
            return f"pid {text}"
        time.sleep(0.01)
    return "pid unknown"


def _lock(folder: Path, what: str) -> int | None:
    lock = folder / LOCK_FILE
    in_use = lambda: InUse(f"{folder} is in use by another run ({_owner(lock)}); wait for it to end "  # noqa: E731
                               f"or choose another {what} (nothing was overwritten)")
    while True:
        try:
            # O_NOFOLLOW: a lock file that is a link (say, to a file outside the folder) is never written through
            flags = os.O_RDWR | os.O_CREAT | (os.O_EXCL if fcntl is None else 0) | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(lock, flags, 0o644)
        except FileExistsError:  # no flock on this system: the marker's existence is the claim
            raise in_use() from None
        except OSError as exc:
            _reraise_no_space(exc, lock)
            raise
        if fcntl is None:
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise in_use() from None
        except OSError as exc:  # a file system without locks (some network mounts): proceed unlocked
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                os.close(fd)
                raise
            break
        if _same_file(fd, lock):
            break
        os.close(fd)  # its owner removed the file between our open and our lock: take a fresh one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass  # the pid is only for the message a second run prints
    return fd


def claim_dir(folder: str | os.PathLike, what: str = "--out_dir", fresh: bool = True) -> Claim:
    """Take ``folder`` for this run: create it if needed and lock it; another run holding it is an
    error (``<folder> is in use by another run (pid N)``). ``fresh``: it must also hold no files
    (nothing written before is overwritten). Release the returned Claim when the run ends."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} already exists and is not a directory; choose another directory "
                        "(nothing was overwritten)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _reraise_no_space(exc, folder)
        raise
    claim = Claim(folder, _lock(folder, what))
    if fresh and any(p.name != LOCK_FILE for p in folder.iterdir()):
        claim.release()
        raise UserError(f"{what} {folder} already exists and is not empty; choose another directory "
                        "(nothing was overwritten)")
    return claim


def _holds_files(folder: Path) -> bool:
    """Whether ``folder`` exists as anything but an empty directory (a file, a link, a directory with entries)."""
    if not os.path.lexists(folder):
        return False
    if not folder.is_dir() or folder.is_symlink():
        return True
    return any(p.name != LOCK_FILE for p in folder.iterdir())


def numbered(folder: str | os.PathLike, n: int) -> Path:
    """``folder`` itself for 0, else its sibling ``<name>_<n>`` (random_samples -> random_samples_1)."""
    folder = Path(folder)
    return folder if n == 0 else folder.with_name(f"{folder.name}_{n}")


def free_folder(folder: str | os.PathLike) -> Path:
    """The first of ``folder``, ``folder_1``, ``folder_2``, ... that does not exist or is empty: where a
    command run again writes, so that nothing of the first run is overwritten."""
    n = 0
    while _holds_files(numbered(folder, n)):
        n += 1
    return numbered(folder, n)


def claim_free_dir(folder: str | os.PathLike, what: str = "output folder") -> Claim:
    """``claim_dir(fresh=True)`` on ``free_folder(folder)``; when another run takes that one first, the
    next free one. The claimed folder is ``Claim.folder``."""
    for _ in range(1000):
        candidate = free_folder(folder)
        try:
            return claim_dir(candidate, what, fresh=True)
        except UserError:
            if not _holds_files(candidate) and not (candidate / LOCK_FILE).exists():
                raise  # not taken by another run: a real problem (say, not a directory)
    raise UserError(f"{folder} and its next 1000 numbered siblings are all in use; pass another output folder")
