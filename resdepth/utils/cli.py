"""What every resdepth command does with errors written for people: one line, no traceback."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable, NoReturn

from resdepth.utils.errors import UserError
from resdepth.utils.logging import setup_logging


def user_errors(*extra: type[BaseException]) -> tuple[type[BaseException], ...]:
    """Exceptions whose message is written for people: ``UserError`` (bad config, data, weights,
    environment), a missing file, and ``extra``. A ``ValueError`` from elsewhere is a bug and keeps
    its traceback."""
    return (UserError, FileNotFoundError, *extra)


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


def work_list_cli(prog: str, argv: list[str], parse_args: Callable[[list[str]], Any],
                  main: Callable[[Any], int], merge: Callable[[str], str], merge_help: str,
                  dir_help: str, errors: tuple[type[BaseException], ...]) -> NoReturn:
    """The command line of a work-list tool (evaluation, prediction): ``PROG [flags]`` exits with
    ``main(cfg)``; ``PROG merge DIR`` prints what ``merge(DIR)`` returns once every unit is done.
    A bad flag exits 2, an error from ``errors`` 1, each as one line."""
    if argv[:1] == ["merge"]:
        p = argparse.ArgumentParser(prog=f"{prog} merge", description=merge_help)
        p.add_argument("dir", help=dir_help)
        args = p.parse_args(argv[1:])
        setup_logging(None, 0)

        def merge_and_report() -> int:
            print(merge(args.dir))
            return 0

        sys.exit(run_reporting_errors(f"{prog} merge", merge_and_report, errors))
    try:
        cfg = parse_args(argv)
    except UserError as e:  # a config that cannot be used: like a bad flag
        print(f"{prog}: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_reporting_errors(prog, lambda: main(cfg), errors))
