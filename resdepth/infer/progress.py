"""Rank 0's view of the whole task's progress, read from finished part files.

Counting parts instead of exchanging counts means no collective call is ever needed for the bar,
so a slow or failed rank can never make the progress display itself hang.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from resdepth.infer.parts import done_samples, missing_units

log = logging.getLogger("resdepth")

STALL_S = 1800.0  # stop waiting for parts this long after the last one appeared (then: barrier)


class Progress:
    """Samples done in this task's units (all ranks), plus those of rank 0's unit in flight."""

    def __init__(self, out: Path, units: list[dict], enabled: bool, label: str = "eval",
                 noun: str = "samples"):
        self.out = Path(out)
        self.noun = noun
        self.plan = {"units": units}
        self.total = sum(u["stop"] - u["start"] for u in units if u["stop"] is not None) or None
        self.enabled = enabled
        self.bar = None
        self.last_log = 0.0
        self.done = 0
        self.done_at_start = 0
        if not enabled:
            return
        self.done = done_samples(self.out, self.plan)
        self.done_at_start = self.done
        console = Console(stderr=True)
        if console.is_terminal:
            self.bar = Bar(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn(noun), TimeElapsedColumn(), TextColumn("ETA"),
                                TimeRemainingColumn(), console=console)
            self.task = self.bar.add_task(label, total=self.total, completed=self.done)
            self.bar.start()

    def update(self, extra: int = 0) -> None:
        """Refresh from the part files; ``extra``: samples of rank 0's current, unfinished unit."""
        if not self.enabled:
            return
        self.refresh()
        shown = self.done + extra
        if self.bar is not None:
            self.bar.update(self.task, completed=shown)
        elif time.monotonic() - self.last_log > 30:
            self.last_log = time.monotonic()
            log.info("progress: %d%s %s", shown, f" / {self.total}" if self.total else "",
                     self.noun)

    def refresh(self) -> None:
        self.done = done_samples(self.out, self.plan)

    def unit_finished(self, name: str) -> None:
        """Log that this rank finished unit ``name`` and move the bar."""
        log.info("unit %s done", name)
        self.update()

    def all_done(self) -> bool:
        return not missing_units(self.out, self.plan)

    def wait_for_others(self, poll_s: float = 0.5) -> None:
        """Wait for the other ranks' parts, moving the bar on rank 0 (the barrier after this syncs)."""
        self.refresh()
        last_change, seen = time.monotonic(), self.done
        while not self.all_done() and time.monotonic() - last_change < STALL_S:
            time.sleep(poll_s)
            self.refresh()
            self.update()
            if self.done != seen:
                last_change, seen = time.monotonic(), self.done

    def close(self) -> None:
        if self.bar is not None:
            self.update()
            self.bar.stop()
            self.bar = None
