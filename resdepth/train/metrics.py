"""The metrics logger: reduces a log interval's sums over ranks, guards against non-finite
steps, and hands the numbers to its writers (TensorBoard and ``stats.jsonl`` by default; any
object with ``scalars(step, dict)``, ``images(step, dict)`` and ``close()`` can be added)."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np
import torch

from resdepth import dist
from resdepth.train.config import TrainerConfig
from resdepth.train.monitor import ProgressBar, StatsWriter, TensorBoardWriter
from resdepth.train.optim import lr_at
from resdepth.train.state import TrainState

log = logging.getLogger("resdepth")


class NonFiniteError(RuntimeError):
    """Too many non-finite losses or gradients in a row."""


class Writer(Protocol):
    """A sink for metrics (written on rank 0 only)."""

    def scalars(self, step: int, values: dict[str, float]) -> None: ...
    def images(self, step: int, panels: dict[str, np.ndarray]) -> None: ...
    def close(self) -> None: ...


class MetricsLogger:
    """Scalars and images of a run to every writer, a progress bar and one log line per interval."""

    def __init__(self, run_dir: Path, start_step: int, cfg: TrainerConfig,
                 writers: Optional[list[Writer]] = None):
        self.cfg = cfg
        self.main = dist.is_main()
        if writers is None:
            writers = [TensorBoardWriter(run_dir, start_step), StatsWriter(run_dir, start_step)] \
                if self.main else []
        self.writers = list(writers)
        self.progress = ProgressBar(start_step, cfg.max_steps) if self.main else None
        self.shown = "loss -"
        self.zero_timing()

    def add_writer(self, writer: Writer) -> None:
        """One more sink (e.g. an experiment tracker); rank 0 only."""
        if self.main:
            self.writers.append(writer)

    def scalars(self, step: int, values: dict[str, Any], prefix: str = "train") -> None:
        """``values`` as ``prefix/name`` to every writer."""
        named = {f"{prefix}/{k}": v for k, v in values.items()}
        for w in self.writers:
            w.scalars(step, named)

    def images(self, step: int, panels: dict[str, np.ndarray]) -> None:
        """Named uint8 RGB ``[H,W,3]`` images to every writer."""
        for w in self.writers:
            w.images(step, panels)

    def zero_timing(self) -> None:
        """Start timing a new interval."""
        self.timing = {"elapsed": 0.0, "wait": 0.0, "images": 0}

    def time_step(self, wait: float, elapsed: float, images: int) -> None:
        """Add one step's data wait and wall time (seconds) and images."""
        self.timing["wait"] += wait
        self.timing["elapsed"] += elapsed
        self.timing["images"] += images

    def log_interval(self, state: TrainState, drained: float) -> float:
        """Reduce the interval's sums over ranks (the one host sync of the interval), check the
        non-finite counts, write and log; returns the mean loss. ``drained``: seconds spent
        waiting for the interval's queued device work, part of its wall time."""
        world = dist.world_size()
        totals = dist.all_reduce_sum(torch.stack(list(state.interval.values())))
        loss_sum, n, nonfinite = totals.tolist()
        n, nonfinite = n / world, int(round(nonfinite / world))
        self.check_nonfinite(state, nonfinite)
        norm = float(state.last_norm) if state.last_norm is not None else float("nan")
        values = {"loss": loss_sum / world / max(n, 1), "lr": lr_at(state.step - 1, self.cfg),
                  "grad_norm": norm, "images_seen": state.images_seen, "nonfinite": nonfinite}
        elapsed = max(self.timing["elapsed"] + drained, 1e-9)
        perf = {"images_per_s": self.timing["images"] / elapsed,
                "data_wait_frac": self.timing["wait"] / elapsed}
        self.scalars(state.step, {**values, **{k: round(v, 4) for k, v in perf.items()}})
        log.info("step %d loss %.5f lr %.2e grad %.3f %.1f img/s data-wait %.1f%%", state.step,
                 values["loss"], values["lr"], norm, perf["images_per_s"], 100 * perf["data_wait_frac"])
        state.zero_interval()
        self.zero_timing()
        self.shown = f"loss {values['loss']:.4f}"
        return values["loss"]

    def check_nonfinite(self, state: TrainState, nonfinite: int) -> None:
        """Raise once ``max_nonfinite`` steps in a row were skipped (checked at log intervals:
        the skipped steps changed nothing, so stopping a few steps late loses nothing)."""
        limit = self.cfg.max_nonfinite
        if nonfinite:
            log.warning("step %d: %d non-finite steps skipped since the last log line (%d in a row "
                        "now, limit %d)", state.step, nonfinite, state.nonfinite_in_row, limit)
        limit_step = int(state.limit_step)
        if limit_step >= 0:
            raise NonFiniteError(f"step {limit_step}: {limit} non-finite losses or gradients in a "
                                 f"row (trainer.max_nonfinite={limit}); check the data "
                                 "(resdepth-shards verify) and lower trainer.lr")

    def advance(self, step: int) -> None:
        """Move the progress bar to ``step``, showing the last logged loss."""
        if self.progress is not None:
            self.progress.advance(step, self.shown)

    def close(self) -> None:
        """Close every writer and the progress bar."""
        if self.progress is not None:
            self.progress.close()
        for w in self.writers:
            w.close()


def drain(device: torch.device) -> float:
    """Wait for the queued device work (once per log interval); returns the seconds waited."""
    before = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - before
