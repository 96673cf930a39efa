"""Owning a run directory: one trainer at a time (a lock), and never two runs mixed in one directory.

Rank 0 of a job takes an exclusive ``flock`` on ``run.dir/run.lock`` and writes its host, pid and
Slurm job id into it; the other ranks of the same job take no lock and wait for rank 0's verdict,
so the ranks of one job never lock each other out. A second trainer on the same directory (a
double submit) stops with a message naming the holder. The kernel drops the lock when its holder
dies; a lock still held for a holder that is gone (a dead pid on this host, or an earlier
incarnation of this Slurm job, whose orphaned loader workers may still hold it) is taken over.

With ``trainer.resume=never`` a directory that already holds a run's outputs is refused, unless
``run.overwrite=true``: then those outputs move to a new sibling directory ``DIR.old-N`` first.
"""
from __future__ import annotations

import fcntl
import json
import logging
import logging.handlers
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Optional

from resdepth import dist
from resdepth.config import to_yaml
from resdepth.train.config import Config
from resdepth.utils.atomic import write_json_atomic
from resdepth.utils.logging import setup_logging

log = logging.getLogger("resdepth")

LOCK_FILE = "run.lock"
# Written by rank 0 after saving on a stop signal (exit status 3), removed when a run starts.
STOP_MARKER = "stopped.json"
# What a trainer writes into run.dir; the launcher's own files (slurm/, jobs.json, requeues.jsonl)
# and the lock stay where they are.
RUN_OUTPUTS = ("checkpoints", "stats.jsonl", "export", "tb")
# wandb-run.json and wandb/: the W&B run id of this run (a new run gets a new one) and its files.
RUN_FILES = (*RUN_OUTPUTS, "config.yaml", STOP_MARKER, "wandb-run.json", "wandb")


class RunDirError(RuntimeError):
    """The run directory is in use by another trainer or holds a run that must not be overwritten."""


def _holder_text(holder: dict) -> str:
    if not holder:
        return "an unknown process (the lock file is empty)"
    job = f", Slurm job {holder['job_id']}" if holder.get("job_id") else ""
    return (f"pid {holder.get('pid')} on host {holder.get('host')}{job}, "
            f"started {holder.get('started', '?')}")


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode(errors="replace")
    try:
        holder = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True  # someone else's live process, or a pid we cannot judge: assume alive
    return True


def _is_stale(holder: dict) -> bool:
    """The holder is gone: a dead pid on this host, or an earlier incarnation of this Slurm job."""
    if not holder:
        return False
    job = os.environ.get("SLURM_JOB_ID")
    if job and holder.get("job_id") == job and holder.get("pid") != os.getpid():
        return True  # Slurm runs one incarnation of a job at a time
    return holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid"))


class RunLock:
    """An exclusive lock on ``run_dir/run.lock`` held for the life of a training run."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.fd: Optional[int] = None
        # Warnings found before the run's log file exists (it may have just been moved aside).
        self.notes: list[str] = []

    def acquire(self) -> "RunLock":
        """Take the lock or raise ``RunDirError`` naming the holder; take over a stale one."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                if _is_stale(holder):
                    self.notes.append(f"{self.path}: holder {_holder_text(holder)} is gone; "
                                      "taking the lock over")
                    self.path.unlink(missing_ok=True)  # a new file, so a fresh lock
                    continue
                raise RunDirError(
                    f"run.dir={self.run_dir} is in use by another trainer: {_holder_text(holder)} "
                    f"holds {self.path}; wait for it to end or stop it, or choose another run.dir")
            except OSError as e:  # no flock on this filesystem
                os.close(fd)
                log.warning("%s: cannot lock (%s); a second trainer on this directory would not be "
                            "detected", self.path, e.strerror)
                return self
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # replaced by a takeover between open and flock: try the new file
                os.close(fd)
                continue
            previous = _read_holder(fd)
            if previous:
                self.notes.append(f"{self.path}: the previous trainer ({_holder_text(previous)}) "
                                  "ended without releasing it; lock taken over")
            me = {"host": socket.gethostname(), "pid": os.getpid(),
                  "job_id": os.environ.get("SLURM_JOB_ID", ""),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
            self.fd = fd
            return self
        raise RunDirError(f"{self.path}: could not take the lock (it keeps being replaced)")

    def report(self) -> None:
        """Log the notes gathered while taking the directory (call once logging writes there)."""
        for note in self.notes:
            log.warning("%s", note)
        self.notes.clear()

    def release(self) -> None:
        """Empty the file (a clean end) and drop the lock."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def previous_run(run_dir: Path) -> list[str]:
    """The outputs of an earlier run found in ``run_dir`` (empty directories do not count)."""
    found = []
    for name in RUN_OUTPUTS:
        p = Path(run_dir) / name
        if (p.is_dir() and any(p.iterdir())) or (p.is_file() and p.stat().st_size > 0):
            found.append(name)
    return found


def move_aside(run_dir: Path) -> Path:
    """Move an earlier run's files to a new sibling ``DIR.old-N``; returns that directory."""
    run_dir = Path(run_dir)
    n = 1
    while (target := run_dir.with_name(f"{run_dir.name}.old-{n}")).exists():
        n += 1
    target.mkdir()
    for p in [*(run_dir / name for name in RUN_FILES), *run_dir.glob("log-rank*.txt")]:
        if p.exists():
            shutil.move(str(p), str(target / p.name))
    return target


def _claim(run_dir: Path, resume: str, overwrite: bool) -> RunLock:
    lock = RunLock(run_dir).acquire()
    try:
        found = previous_run(run_dir) if resume == "never" else []
        if found and not overwrite:
            raise RunDirError(
                f"run.dir={run_dir} already holds a run ({', '.join(found)}) and trainer.resume=never "
                "would mix a new run into it: continue it with trainer.resume=auto, choose a new "
                "run.dir, or add run.overwrite=true to move the old run aside")
        if found:
            target = move_aside(run_dir)
            lock.notes.append(f"trainer.resume=never run.overwrite=true: the previous run in "
                              f"{run_dir} was moved to {target}")
        (run_dir / STOP_MARKER).unlink(missing_ok=True)
    except BaseException:
        lock.release()
        raise
    return lock


def claim_run_dir(run_dir: Path, resume: str, overwrite: bool) -> Optional[RunLock]:
    """Collective: rank 0 locks ``run_dir`` and clears it for a new run if asked; every rank
    raises ``RunDirError`` when rank 0 could not. Returns rank 0's lock (None on other ranks)."""
    lock, error = None, None
    if dist.is_main():
        try:
            lock = _claim(Path(run_dir), resume, overwrite)
        except (RunDirError, OSError) as e:
            error = str(e)
    error = dist.broadcast_object(error)
    if error:
        raise RunDirError(error if dist.is_main() else f"rank 0 could not claim run.dir: {error}")
    return lock


def write_stop_marker(run_dir: Path, step: int, signal_name: str, checkpoint: Path,
                      exit_code: int) -> None:
    """``run.dir/stopped.json``: how to tell "saved on a stop signal" from a failure when a
    launcher (torchrun) hides the exit status."""
    write_json_atomic(Path(run_dir) / STOP_MARKER, {
        "stopped": True, "step": step, "signal": signal_name, "checkpoint": str(checkpoint),
        "exit_code": exit_code, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})



def open_run_dir(cfg: Config, rank: int, early: logging.handlers.BufferingHandler) -> Optional[RunLock]:
    """Collective: claim ``run.dir`` and log into it; what ``early`` holds (logged to the console
    only, until the run directory was this run's) goes into the log file too. Returns rank 0's
    lock (None on other ranks)."""
    try:
        lock = claim_run_dir(Path(cfg.run.dir), cfg.trainer.resume, cfg.run.overwrite)
    finally:
        log.removeHandler(early)
    setup_logging(Path(cfg.run.dir), rank)
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler):
            for record in early.buffer:
                handler.handle(record)
    if lock is not None:
        lock.report()
    return lock


def write_run_config(cfg: Config) -> None:
    """The resolved configuration into ``run.dir/config.yaml`` (rank 0)."""
    if dist.is_main():
        Path(cfg.run.dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.run.dir) / "config.yaml").write_text(to_yaml(cfg))
