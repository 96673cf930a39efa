"""Where a run's metrics go: TensorBoard scalars and images, ``stats.jsonl``, a progress bar.

Each writer takes ``scalars(step, dict)``, ``images(step, dict)`` and ``close()``; the metrics
logger (``metrics.MetricsLogger``) feeds a list of them on rank 0. On resume from step S,
``stats.jsonl`` lines after S are dropped and the TensorBoard writer purges events after S, so
curves continue without duplicated points.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from resdepth.utils.atomic import json_text

log = logging.getLogger("resdepth")


def truncate_stats(path: Path, after_step: int) -> None:
    """Drop ``stats.jsonl`` lines logged after ``after_step`` (they are re-logged by the resumed run)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= after_step:
                keep.append(line)
        except json.JSONDecodeError:  # a line cut by a kill: dropped, it is re-logged
            continue
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)


class TensorBoardWriter:
    """Scalars and images into ``run_dir/tb``; events after ``start_step`` are purged on resume."""

    def __init__(self, run_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter  # heavy: only rank 0 opens it

        self.tb = SummaryWriter(str(Path(run_dir) / "tb"),
                                purge_step=start_step + 1 if start_step > 0 else None)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Named scalars (``train/loss``, ``val/loss``...)."""
        for k, v in values.items():
            self.tb.add_scalar(k, v, step)

    def images(self, step: int, panels: dict[str, np.ndarray]) -> None:
        """Named uint8 RGB ``[H,W,3]`` images, under ``images/``."""
        for name, img in panels.items():
            self.tb.add_image(f"images/{name}", img, step, dataformats="HWC")

    def close(self) -> None:
        """Flush and close the event file."""
        self.tb.flush()
        self.tb.close()


class StatsWriter:
    """One JSON line per call in ``run_dir/stats.jsonl``: ``train/`` keys bare (``loss``), other
    sections prefixed (``val_loss``); lines after ``start_step`` are dropped on resume."""

    def __init__(self, run_dir: Path, start_step: int):
        self.path = Path(run_dir) / "stats.jsonl"
        truncate_stats(self.path, start_step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Append one line with the step, the values and the wall time."""
        line = {k.removeprefix("train/").replace("/", "_"): v for k, v in values.items()}
        with open(self.path, "a") as f:
            f.write(json_text({"step": step, **line, "time": round(time.time(), 3)}) + "\n")

    def images(self, step: int, panels: dict[str, np.ndarray]) -> None:  # noqa: ARG002
        """Images are not written to the stats file."""

    def close(self) -> None:
        """Nothing is held open."""


class ProgressBar:
    """A rich progress bar on a terminal (nothing when stderr is not one)."""

    def __init__(self, start_step: int, max_steps: int):
        self.progress = None
        console = Console(stderr=True)
        if console.is_terminal:
            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                     TextColumn("ETA"), TimeRemainingColumn(), console=console)
            self.task = self.progress.add_task("train", total=max_steps, completed=start_step,
                                               info="")
            self.progress.start()

    def advance(self, step: int, info: str) -> None:
        """Show ``step`` and a short ``info`` text (the last logged loss)."""
        if self.progress is not None:
            self.progress.update(self.task, completed=step, info=info)

    def close(self) -> None:
        """Stop redrawing."""
        if self.progress is not None:
            self.progress.stop()
