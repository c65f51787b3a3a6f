"""The one exception type for problems a user can fix: the command line prints its message and exits 2."""


class UserError(Exception):
    """Bad input or settings. The message names the problem and the fix, on one line."""


class ConSinGANWarning(UserWarning):
    """Something the user should know that does not stop the work; the command line prints ``warning: ...``."""


def one_line(exc: BaseException, memory_fix: str) -> str | None:
    """The one line a front-end shows for what the user can fix: a UserError's message, an output that
    cannot be written or an input that cannot be read (OSError), memory that ran out (``memory_fix``
    says what to lower). None for anything else: a bug, which keeps its traceback."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, OSError):
        where = exc.filename if exc.filename is not None else "a file"
        return (f"cannot write or read {where} ({exc.strerror or exc}); check the path and its permissions, or "
                "write the output elsewhere")
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and (
            "out of memory" in str(exc) or "can't allocate memory" in str(exc))):
        return f"out of memory; {memory_fix}"
    return None
