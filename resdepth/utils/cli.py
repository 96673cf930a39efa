"""What every resdepth command does with errors written for people: one line, no traceback."""
from __future__ import annotations

import logging
import sys
from typing import Callable


def user_errors(*extra: type[BaseException]) -> tuple[type[BaseException], ...]:
    """Exceptions whose message says what is wrong and what to do (bad config, data, weights...)."""
    from resdepth.config import ConfigError
    from resdepth.data.format import DataError
    from resdepth.dist import DistEnvError
    from resdepth.models.build import ArchitectureMismatch

    return (ConfigError, DataError, DistEnvError, ArchitectureMismatch, FileNotFoundError,
            ValueError, *extra)


def run_reporting_errors(prog: str, fn: Callable[[], int],
                         errors: tuple[type[BaseException], ...]) -> int:
    """``fn()``'s exit code; an error from ``errors`` prints ``prog: error: ...`` and gives 1.

    The traceback still reaches the per-rank log file at debug level for whoever needs it.
    """
    try:
        return fn()
    except errors as e:
        logging.getLogger("resdepth").debug("error details", exc_info=True)
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
