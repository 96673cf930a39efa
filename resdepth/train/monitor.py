"""What the user sees of a run: a rich progress bar, TensorBoard scalars and images, ``stats.jsonl``.

Only rank 0 writes. On resume from step S, ``stats.jsonl`` lines after S are dropped and the
TensorBoard writer purges events after S, so curves continue without duplicated points.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

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


class Monitor:
    """Rank-0 sinks for progress, scalars, images and the stats file."""

    def __init__(self, run_dir: Path, start_step: int, max_steps: int, enabled: bool,
                 wandb: Optional[Any] = None):
        self.enabled = enabled
        self.wandb = wandb  # a resdepth.train.wandb_sink.WandbSink, when logging.wandb is on
        self.stats_path = Path(run_dir) / "stats.jsonl"
        self.tb = None
        self.progress = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        truncate_stats(self.stats_path, start_step)
        self.tb = SummaryWriter(str(Path(run_dir) / "tb"),
                                purge_step=start_step + 1 if start_step > 0 else None)
        console = Console(stderr=True)
        if console.is_terminal:
            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                     TextColumn("ETA"), TimeRemainingColumn(), console=console)
            self.task = self.progress.add_task("train", total=max_steps, completed=start_step,
                                               info="")
            self.progress.start()

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if self.tb is None:
            return
        for k, v in values.items():
            self.tb.add_scalar(f"{prefix}/{k}", v, step)
        if self.wandb is not None:
            self.wandb.scalars(step, {f"{prefix}/{k}": v for k, v in values.items()})

    def stats(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        with open(self.stats_path, "a") as f:
            f.write(json.dumps({"step": step, **values, "time": round(time.time(), 3)}) + "\n")

    def images(self, step: int, panels: dict[str, np.ndarray]) -> None:
        """Named uint8 RGB ``[H,W,3]`` images to TensorBoard."""
        if self.tb is None:
            return
        for name, img in panels.items():
            self.tb.add_image(f"images/{name}", img, step, dataformats="HWC")
        if self.wandb is not None:
            self.wandb.images(step, {f"images/{name}": img for name, img in panels.items()})

    def advance(self, step: int, info: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, info=info)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
        if self.wandb is not None:
            self.wandb.close()
