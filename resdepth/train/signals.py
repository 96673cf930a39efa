"""Preemption signals: SIGUSR2 (Slurm's warning before the time limit) and SIGTERM only set a flag.

The training loop polls the flag at step boundaries, all ranks agree through an all-reduce (only
one rank may have received the signal), save a checkpoint and exit with ``REQUEUE_EXIT_CODE``.
"""
from __future__ import annotations

import logging
import signal

log = logging.getLogger("resdepth")

REQUEUE_EXIT_CODE = 3  # "saved on a stop signal; requeue me" (0 = finished, anything else = failed)


class StopFlag:
    """Set by SIGUSR2/SIGTERM; previous handlers are restored by ``restore``."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> "StopFlag":
        for sig in (signal.SIGUSR2, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook executor): no signals
                log.warning("stop signals not installed: not in the main thread")
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal API
        self.signal_name = signal.Signals(signum).name

    @property
    def raised(self) -> bool:
        return self.signal_name is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
