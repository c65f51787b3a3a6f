"""The one exception type for problems a user can fix: the command line prints its message and exits 2."""


class UserError(Exception):
    """Bad input or settings. The message names the problem and the fix, on one line."""


class ConSinGANWarning(UserWarning):
    """Something the user should know that does not stop the work; the command line prints ``warning: ...``."""
