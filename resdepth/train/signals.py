"""Stop signals: SIGUSR2 (Slurm's warning before the time limit), SIGTERM and a first SIGINT
(Ctrl-C) only set a flag; a second SIGINT aborts at once (``KeyboardInterrupt``, nothing saved).

The training loop polls the flag at step boundaries, all ranks agree through an all-reduce (only
one rank may have received the signal), save a checkpoint and exit with ``REQUEUE_EXIT_CODE``.
"""
from __future__ import annotations

import logging
import os
import signal

from resdepth import dist

log = logging.getLogger("resdepth")

REQUEUE_EXIT_CODE = 3  # "saved on a stop signal; requeue me" (0 = finished, anything else = failed)


class StopFlag:
    """Set by SIGUSR2/SIGTERM/SIGINT; previous handlers are restored by ``restore``."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self._pid = os.getpid()

    def install(self) -> "StopFlag":
        self._pid = os.getpid()
        for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook executor): no signals
                log.warning("stop signals not installed: not in the main thread")
                break
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal API
        if os.getpid() != self._pid:
            return  # a forked data-loader worker: the trainer decides, the worker keeps serving
        if signum == signal.SIGINT:
            if self.signal_name == "SIGINT":
                raise KeyboardInterrupt("second Ctrl-C: aborted without saving")
            if dist.is_main():  # os.write, not logging: a handler may interrupt a log call
                os.write(2, b"\nCtrl-C: saving a checkpoint after this step, then exiting with status "
                         b"3; press Ctrl-C again to abort without saving\n")
        if self.signal_name is None or signum == signal.SIGINT:
            self.signal_name = signal.Signals(signum).name

    @property
    def raised(self) -> bool:
        return self.signal_name is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
