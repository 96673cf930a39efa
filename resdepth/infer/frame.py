"""The process around a work list (evaluation's and prediction's) and this process's share of it.

``process_frame(cfg)`` sets threads, the process group, the array task and the per-task log
files, and tears the group down again; ``Share`` is this worker's units of the work list and
``running(share, todo, ...)`` times them under one progress bar. The command itself loops over its
units and calls its own unit function, so a reader follows the work by following calls::

    with process_frame(cfg) as frame:
        share = Share.of(units, frame)
        todo = [u for u in share.mine if not unit_done(ctx, u)]
        with running(out, share, todo, ("evaluate", "evaluated"), "samples", "eval") as progress:
            for unit in todo:
                evaluate_unit(ctx, unit, progress)
                progress.unit_finished(unit.name)
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from resdepth import dist
from resdepth.infer.config import resolve_tasks
from resdepth.infer.parts import done_samples
from resdepth.infer.progress import Progress
from resdepth.infer.work import Unit, task_units, worker_units
from resdepth.utils.logging import setup_logging

log = logging.getLogger("resdepth")


@dataclass(frozen=True)
class Frame:
    """Where this process writes and which array task it belongs to."""
    out: Path
    num_tasks: int
    task_id: int


@contextmanager
def process_frame(cfg: Any) -> Iterator[Frame]:
    """Threads, process group, array task and per-task log files around a work list's command;
    the process group is shut down cleanly when the body finishes, torn down when it raises."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # the collectives here are few and short, but a rank may wait for another's last unit
    env = dist.init("cpu" if cfg.device == "cpu" else "auto", timeout_s=3600.0)
    num_tasks, task_id = resolve_tasks(cfg)
    out = Path(cfg.out)
    setup_logging(out / "logs" / (f"task-{task_id:04d}" if num_tasks > 1 else ""), env.rank)
    try:
        yield Frame(out, num_tasks, task_id)
    except BaseException:
        if dist.is_dist():
            torch.distributed.destroy_process_group()
        raise
    dist.shutdown()


@dataclass(frozen=True)
class Share:
    """This worker's units (``mine``) and those of its whole array task (``ours``)."""
    mine: list[Unit]
    ours: list[Unit]
    task_id: int
    num_tasks: int
    rank: int
    world: int
    idle: Optional[str] = None  # the line saying that some workers have no unit, when they have none

    @classmethod
    def of(cls, units: list[Unit], frame: Frame) -> "Share":
        """The share of this rank of ``frame``'s array task (``resdepth.infer.work``)."""
        world, rank = dist.world_size(), dist.rank()
        return cls(worker_units(units, frame.num_tasks, frame.task_id, world, rank),
                   task_units(units, frame.num_tasks, frame.task_id, world),
                   frame.task_id, frame.num_tasks, rank, world,
                   idle_workers(units, frame.num_tasks, world))


def idle_workers(units: list[Unit], num_tasks: int, world: int) -> Optional[str]:
    """One line when the work list has fewer units than there are workers (array tasks x ranks),
    naming a ``--unit-size`` that gives each worker a unit; None when every worker has one.

    The units are not cut finer by themselves: the work list must not depend on the world size, so
    that a rerun with another one resumes from the same parts."""
    workers = num_tasks * world
    if len(units) >= workers:
        return None
    line = (f"the work list has {len(units)} units for {workers} workers ({num_tasks} array "
            f"tasks x {world} processes): {workers - len(units)} will have no work")
    size = finer_unit_size(units, workers)
    return line + (f"; --unit-size {size} gives every worker a unit" if size else "")


def finer_unit_size(units: list[Unit], workers: int) -> Optional[int]:
    """The largest unit size cutting the same shards into at least ``workers`` units, or None
    (uncounted shards, or fewer samples than workers)."""
    per_shard: dict[str, int] = {}
    for u in units:
        if u.count is None:
            return None
        per_shard[u.url] = per_shard.get(u.url, 0) + u.count
    for size in range(max(per_shard.values(), default=0), 0, -1):
        if sum(-(-n // size) for n in per_shard.values()) >= workers:
            return size
    return None


@contextmanager
def running(out: Path, share: Share, todo: list[Unit], verbs: tuple[str, str], noun: str,
            label: str) -> Iterator[Progress]:
    """Around the loop over ``todo`` (this worker's units without outputs): one progress bar for
    the task; afterwards every rank waits for the others' parts, and rank 0 logs the rate."""
    log.info("task %d/%d rank %d/%d: %d units of %d to %s (%d finished earlier)", share.task_id,
             share.num_tasks, share.rank, share.world, len(todo), len(share.mine), verbs[0],
             len(share.mine) - len(todo))
    if share.idle and share.rank == 0:
        log.warning(share.idle)
    ours = [u.to_dict() for u in share.ours]
    progress = Progress(out, ours, enabled=dist.is_main(), label=label, noun=noun)
    start = time.perf_counter()
    try:
        yield progress
        if share.world > 1:
            # Ranks that finish early wait on the part files, not in a collective that could
            # time out while a slow rank finishes its last unit.
            progress.wait_for_others()
    finally:
        progress.close()
    dist.barrier()
    elapsed = time.perf_counter() - start
    if dist.is_main():
        new = done_samples(out, {"units": ours}) - progress.done_at_start
        log.info("%s %d %s in %.2f s (%.3f %s/s, %d process%s)", verbs[1], new, noun, elapsed,
                 new / max(elapsed, 1e-9), noun, share.world, "es" if share.world > 1 else "")
