"""Atomic, resumable checkpoints: ``checkpoints/step-0000200/`` appears only when complete.

Every rank writes its own ``rank-0000N.pt`` (RNG states, data-loader position) into a temporary
directory; rank 0 writes ``train_state.pt`` (model, EMA, optimiser, schedule, counters) and, last,
``meta.json``; then it renames the directory into place. A crash at any moment leaves either the
previous complete checkpoint or the new one, never a half one that could be loaded. Everything is
read back with ``torch.load(weights_only=True)``: no arbitrary pickle is ever executed.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from resdepth import dist
from resdepth.utils.atomic import write_json_atomic

log = logging.getLogger("resdepth")
STEP_DIR = re.compile(r"^step-(\d{7,})$")


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be used."""


def step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states as tensors and plain values."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                       int(np_state[2]), int(np_state[3]), float(np_state[4])],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # this rank's own GPU only: others may be another rank's
        state["cuda"] = torch.cuda.get_rng_state(dist.device())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # written by an older version: every visible GPU
            cuda = cuda[dist.device().index] if dist.device().index < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, dist.device())


def safe_load(path: str | Path, allowed: tuple = ()) -> Any:
    """``torch.load`` restricted to tensors, plain containers and the ``allowed`` classes, with
    the file named on failure."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise CheckpointError(f"{path}: cannot be loaded as a checkpoint ({type(e).__name__}: {e})") from e


class Checkpointer:
    """Saves and finds complete checkpoints under ``run_dir/checkpoints``."""

    def __init__(self, run_dir: Path, keep_last: int = 3):
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    # ---- finding -------------------------------------------------------------------------
    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first (a directory counts only once renamed with meta.json)."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir()
                 if STEP_DIR.match(p.name) and (p / "meta.json").is_file()]
        return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))

    def latest(self) -> Optional[Path]:
        done = self.complete()
        return done[-1] if done else None

    # ---- saving --------------------------------------------------------------------------
    def save(self, step: int, shared: dict[str, Any], per_rank: dict[str, Any],
             meta: dict[str, Any], engine_save=None) -> Path:
        """Collective: every rank calls it. ``engine_save(tmp_dir)`` lets DeepSpeed write its part."""
        final = self.root / step_dir_name(step)
        tmp = self.root / f".tmp-{step_dir_name(step)}"
        if dist.is_main():
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        dist.barrier()
        failure = self._write_rank_files(step, tmp, per_rank, engine_save)
        self._all_saved(failure, step, tmp)
        if dist.is_main():
            try:
                torch.save(shared, tmp / "train_state.pt")
                _fsync_tree(tmp)
                write_json_atomic(tmp / "meta.json", {**meta, "step": step,
                                                      "world_size": dist.world_size(),
                                                      "saved_at": time.time()}, default=str)
                if final.exists():  # a re-save of the same step (e.g. final save after a periodic one)
                    shutil.rmtree(final)
                os.replace(tmp, final)
                _fsync_dir(self.root)
            except (OSError, RuntimeError) as e:
                failure = e
        self._all_saved(failure, step, tmp)
        if dist.is_main():
            self.prune()
            log.info("checkpoint saved: %s", final)
        dist.barrier()
        return final

    @staticmethod
    def _write_rank_files(step: int, tmp: Path, per_rank: dict[str, Any],  # noqa: ARG004
                          engine_save) -> Optional[BaseException]:
        """This rank's files of checkpoint ``step`` into ``tmp``; the error, if writing failed."""
        try:
            torch.save(per_rank, tmp / f"rank-{dist.rank():05d}.pt")
            if engine_save is not None:
                engine_save(tmp)
        except (OSError, RuntimeError) as e:  # RuntimeError: torch's writer hides the errno
            return e
        return None

    def _all_saved(self, failure: Optional[BaseException], step: int, tmp: Path) -> None:
        """Collective: when a write failed on any rank, remove the partial checkpoint and raise
        ``CheckpointError`` on every rank, saying whether the disk is full; older ones stay."""
        if not dist.any_rank(failure is not None):
            return
        if dist.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        free_mb = shutil.disk_usage(self.root).free / 2**20
        full = failure is not None and (
            getattr(failure, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
            or "No space left" in str(failure) or free_mb < 1)
        what = "the disk is full (No space left on device)" if full else \
            (f"{type(failure).__name__}: {failure}" if failure is not None else "it failed on another rank")
        kept = ", ".join(p.name for p in self.complete()) or "none"
        raise CheckpointError(f"step {step}: saving the checkpoint to {self.root} failed: {what}; "
                              f"{free_mb:.0f} MiB free there. The partial checkpoint was removed; "
                              f"older checkpoints are kept ({kept}). Free space and restart: "
                              "trainer.resume=auto continues from the newest of them")

    def prune(self) -> None:
        """Keep the newest ``keep_last`` complete checkpoints; drop stale temporary directories."""
        done = self.complete()
        for old in done[:-self.keep_last] if self.keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def set_aside(self, path: Path) -> Path:
        """Collective: rename a damaged checkpoint to ``step-N.damaged[-K]`` so it is neither
        resumed nor counted by ``keep_last``, yet kept for inspection; returns the new name."""
        n, target = 0, path.with_name(path.name + ".damaged")
        while target.exists():
            n += 1
            target = path.with_name(f"{path.name}.damaged-{n}")
        dist.barrier()
        if dist.is_main():
            os.replace(path, target)
        dist.barrier()
        return target

    # ---- loading -------------------------------------------------------------------------
    @staticmethod
    def load(path: Path) -> tuple[dict[str, Any], dict[str, Any], Optional[dict[str, Any]]]:
        """(meta, shared state, this rank's state or None when the world size changed)."""
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise CheckpointError(f"{path}: incomplete checkpoint (no meta.json); refusing to load it")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{meta_path}: not valid JSON ({e})") from None
        shared = safe_load(path / "train_state.pt")
        rank_file = path / f"rank-{dist.rank():05d}.pt"
        per_rank = None
        if meta.get("world_size") == dist.world_size() and rank_file.is_file():
            per_rank = safe_load(rank_file)
        return meta, shared, per_rank


def safe_load_deepspeed(path: str | Path) -> Any:
    """Load one of DeepSpeed's own checkpoint files with ``weights_only=True``.

    DeepSpeed stores a few plain objects beside tensors (its config, enums, a loss-scaler); only
    those classes are allowed, so a tampered file still cannot run code.
    """
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return safe_load(path, (set, frozenset, LossScaler, DynamicLossScaler, ZeroStageEnum,
                            fragment_address))
