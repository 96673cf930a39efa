"""The checkpoint manager: what a run saves, when, and where a run resumes from.

It owns the resume policy (``trainer.resume``: auto, a checkpoint path, or never; with auto a
damaged newest checkpoint is set aside and the previous one tried), the registry of stateful
parts saved into ``step-N/`` (model, optimiser, EMA, counters, learning-rate schedule, data
positions, RNG states) and the save schedule (every N steps, every M minutes, on a stop signal).
The files themselves are ``checkpoint.Checkpointer``'s.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import torch

from resdepth import dist
from resdepth.config import config_hash
from resdepth.models.build import check_same_arch
from resdepth.train.checkpoint import Checkpointer, CheckpointError, rng_state, set_rng_state
from resdepth.train.config import Config
from resdepth.train.optim import EMA, lr_at, schedule_steps
from resdepth.train.rundir import write_stop_marker
from resdepth.train.signals import REQUEUE_EXIT_CODE, StopFlag
from resdepth.train.state import TrainState
from resdepth.utils.errors import UserError

log = logging.getLogger("resdepth")
# Keys that may change between a run and its resumption without breaking exactness. max_steps is
# one of them only as the stopping point: the cosine schedule's length enters the hash by itself.
RESUME_FREE_KEYS = ("run", "logging", "trainer.max_steps", "trainer.resume")


def resumable_hash(cfg: Config) -> str:
    """Hash of every setting a resumed run must share with the run it continues.

    A cosine schedule without ``trainer.schedule_steps`` spans ``max_steps``: changing
    ``max_steps`` then changes every later learning rate, so the span is hashed as
    ``schedule_steps`` (set ``schedule_steps`` to extend a run exactly).
    """
    tc = cfg.trainer
    span = schedule_steps(tc) if tc.schedule == "cosine" else tc.schedule_steps
    return config_hash(dataclasses.replace(cfg, trainer=dataclasses.replace(tc, schedule_steps=span)),
                       ignore=RESUME_FREE_KEYS)


class Resume(NamedTuple):
    """A checkpoint chosen to resume from, read into memory."""
    path: Path
    meta: dict[str, Any]
    shared: dict[str, Any]
    per_rank: Optional[dict[str, Any]]  # None when it was written by another number of ranks

    @property
    def residual_std(self) -> Optional[float]:
        """Stage 2's measured residual std, as recorded (None for stage 1 and old checkpoints)."""
        std = self.meta.get("residual_std")
        return None if std is None else float(std)


class Parts(NamedTuple):
    """The stateful things a checkpoint holds."""
    engine: Any                       # DDPEngine or DeepSpeedEngine
    ema: Optional[EMA]
    state: TrainState
    stream: Any                       # the training ShardStream
    ema_net: Callable[[], torch.nn.Module]
    meta: Callable[[], dict[str, Any]]  # what the net is (spec, normalisation, input, scale)


def find_resume(cfg: Config, files: Checkpointer) -> Optional[Resume]:
    """The checkpoint ``trainer.resume`` names, read, or None (collective with auto).

    With ``resume=auto`` a damaged newest checkpoint (a truncated or unreadable file on any
    rank) is set aside with a warning naming it, and the previous complete one is tried."""
    mode = cfg.trainer.resume
    if mode == "never":
        return None
    if mode != "auto":
        path = Path(mode)
        if not (path / "meta.json").is_file():
            what = "no such directory" if not path.exists() else "no meta.json in it"
            raise CheckpointError(f"trainer.resume={mode}: {what}; name a checkpoint directory "
                                  "(RUN/checkpoints/step-NNNNNNN) or use auto or never")
        return Resume(path, *Checkpointer.load(path))
    damaged = []
    for path in reversed(files.complete()):
        try:
            loaded, error = Checkpointer.load(path), None
        except CheckpointError as e:
            loaded, error = None, str(e)
        if not dist.any_rank(error is not None):
            if damaged:
                log.warning("resuming from %s, the newest complete checkpoint that loads; "
                            "damaged and set aside: %s", path, ", ".join(damaged))
            return Resume(path, *loaded)
        reason = error or "a file of another rank cannot be loaded"
        log.warning("checkpoint %s is damaged (%s); falling back to the previous one", path, reason)
        damaged.append(str(files.set_aside(path)))
    if damaged:
        raise CheckpointError(f"every checkpoint in {files.root} is damaged (set aside: "
                              f"{', '.join(damaged)}); resume one by hand with trainer.resume=PATH "
                              "after repairing it, or start over with trainer.resume=never "
                              "run.overwrite=true")
    return None


class CheckpointManager:
    """Finds the checkpoint to resume from when built (before the nets, so that stage 2 can take
    its residual scale from it), restores the parts from it, and saves them on schedule."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.files = Checkpointer(Path(cfg.run.dir), cfg.trainer.keep_last)
        self.found = find_resume(cfg, self.files)
        self.parts: Optional[Parts] = None
        self.saved_step = -1
        self.last_save_time = time.monotonic()

    def restore(self, parts: Parts) -> Optional[Path]:
        """Register ``parts`` and load the found checkpoint into them; its path, or None."""
        self.parts = parts
        self.last_save_time = time.monotonic()
        if self.found is None:
            return None
        path, meta, shared, per_rank = self.found
        self._check_compatible(path, meta)
        engine = parts.engine
        engine.module.load_state_dict(shared["model"])
        engine.load_state_dict(shared["engine"])
        engine.load_from(path)
        if parts.ema is not None and shared.get("ema") is not None:
            parts.ema.load_state_dict(shared["ema"])
        parts.state.load_state_dict(shared)
        self.saved_step = parts.state.step
        self._check_lr_schedule(path, shared.get("lr_schedule"))
        if per_rank is not None:
            set_rng_state(per_rank["rng"])
            parts.stream.load_state_dict(per_rank["data"])
        else:
            log.warning("%s was written by %s ranks, this run has %d: the data order restarts at "
                        "the epoch (model and optimiser are restored)", path,
                        meta.get("world_size"), dist.world_size())
            parts.stream.load_state_dict({**shared["data0"], "position": 0})
        self.found = None  # the parts own the state now; free the copy
        log.info("resumed from %s at step %d (%d images seen)", path, parts.state.step,
                 parts.state.images_seen)
        return path

    def _check_compatible(self, path: Path, meta: dict[str, Any]) -> None:
        spec = self.parts.meta()["spec"]
        if meta.get("spec") != spec:
            check_same_arch(meta.get("spec", {}), spec, str(path))
        if meta.get("resume_hash") != resumable_hash(self.cfg):
            log.warning("%s was written with a different configuration (hash %s, now %s): "
                        "resuming anyway, the run is no longer an exact continuation",
                        path, meta.get("resume_hash"), resumable_hash(self.cfg))
        if meta.get("backend") != self.parts.engine.name:
            raise UserError(f"{path} was written by trainer.backend={meta.get('backend')}, "
                             f"this run uses {self.parts.engine.name}")

    def _check_lr_schedule(self, path: Path, saved: Optional[dict[str, Any]]) -> None:
        """The learning rate is a function of the step and the trainer settings: the saved entry
        says which rate the next step had; a schedule that now gives another says so."""
        step = self.parts.state.step
        if saved is None or int(saved["step"]) != step:
            return
        now = lr_at(step, self.cfg.trainer)
        if now != float(saved["lr"]):
            log.warning("%s: the learning-rate schedule changed: step %d had lr %.6g when saved, "
                        "the trainer settings now give %.6g (set trainer.schedule_steps to the "
                        "old span to extend a run without changing its schedule)", path, step,
                        float(saved["lr"]), now)

    def save(self) -> Path:
        """Collective: write every part into ``checkpoints/step-N``."""
        p = self.parts
        step = p.state.step
        ema = p.ema_net().state_dict() if p.ema is not None else None
        shared = {"model": p.engine.module.state_dict(), "engine": p.engine.state_dict(),
                  "ema": ema, **p.state.state_dict(),
                  "lr_schedule": {"step": step, "lr": lr_at(step, self.cfg.trainer)},
                  "data0": p.stream.state_dict()}
        per_rank = {"rng": rng_state(), "data": p.stream.state_dict()}
        meta = {**p.meta(), "backend": p.engine.name, "resume_hash": resumable_hash(self.cfg)}
        self.last_save_time = time.monotonic()
        self.saved_step = step
        return self.files.save(step, shared, per_rank, meta, p.engine.save_into)

    def save_final(self) -> None:
        """Save the last step unless a checkpoint of it exists already."""
        if self.saved_step != self.parts.state.step:
            self.save()

    def maybe_save(self, stop: StopFlag) -> bool:
        """Collective: save on schedule; on a stop signal (any rank) save, leave the stop marker
        and return True (the caller exits with ``REQUEUE_EXIT_CODE``)."""
        tc, step = self.cfg.trainer, self.parts.state.step
        time_due = tc.ckpt_every_minutes > 0 and \
            time.monotonic() - self.last_save_time >= 60 * tc.ckpt_every_minutes
        flags = torch.tensor([float(stop.raised), float(time_due and dist.is_main())],
                             dtype=torch.float64)
        dist.all_reduce_sum(flags)
        stopping, due = flags[0] > 0, flags[1] > 0
        step_due = tc.ckpt_every_steps > 0 and step % tc.ckpt_every_steps == 0
        if stopping or due or step_due:
            path = self.save()
        if stopping:
            name = stop.signal_name or "on another rank"
            if dist.is_main():
                write_stop_marker(Path(self.cfg.run.dir), step, name, path, REQUEUE_EXIT_CODE)
            log.warning("stop signal (%s) at step %d: checkpoint saved, exiting with status %d "
                        "(requeue)", name, step, REQUEUE_EXIT_CODE)
        return bool(stopping)
