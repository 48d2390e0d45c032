"""User-facing errors (and the one-line warning).

Anything the user can fix (a bad config key, a missing dataset, a corrupt file) raises
:class:`JigcluError`. The CLI prints its message as one line and exits non-zero; no
traceback is shown for these. Everything else is a bug and keeps its traceback.
"""


import sys


def warn(message: str) -> None:
    """One warning line on stderr (never a traceback)."""
    print(f"jigclu: warning: {message}", file=sys.stderr, flush=True)


class JigcluError(Exception):
    """An error caused by user input, reported as one line without a traceback."""


class ConfigError(JigcluError):
    """A config file or ``key=value`` override is invalid."""


class DataError(JigcluError):
    """A dataset is missing, unreadable or corrupt."""


class TrainingError(JigcluError):
    """Training cannot go on (for example the loss became NaN)."""
