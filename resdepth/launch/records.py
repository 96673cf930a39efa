"""What the launcher leaves in run directories so that ``status`` and ``cancel`` work later.

``RUN/jobs.json``       every job submitted for this run (id, kind, cluster, time, submitit folder)
``RUN/requeues.jsonl``  one line per start of a job incarnation and per requeue decision
``ROOT/pipeline.json``  the stages of a pipeline: name, run or output directory, job ids
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from resdepth.config.core import ConfigError
from resdepth.train.rundir import STOP_MARKER
from resdepth.utils.atomic import write_json_atomic

log = logging.getLogger("resdepth")

JOBS_FILE = "jobs.json"
REQUEUE_FILE = "requeues.jsonl"
PIPELINE_FILE = "pipeline.json"
STEP_DIR = re.compile(r"^step-(\d+)$")


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)


class RecordError(ConfigError):
    """A launcher record that cannot be read; the message names the file."""


def _read_json(path: Path, expected: type) -> Any:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: not valid JSON ({e}); repair or remove it") from None
    if not isinstance(data, expected):
        raise RecordError(f"{path}: expected a JSON {expected.__name__}, got {type(data).__name__}")
    return data


def read_jobs(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / JOBS_FILE
    return _read_json(path, list) if path.exists() else []


def add_job(run_dir: Path, job_id: str, kind: str, cluster: str, folder: Path,
            dependency: str = "", **extra: Any) -> dict:
    """Append one submitted job to ``RUN/jobs.json`` and return its record."""
    record = dict(job_id=str(job_id), kind=kind, cluster=cluster, folder=str(folder),
                  dependency=dependency, submitted=time.strftime("%Y-%m-%dT%H:%M:%S"), **extra)
    _write_json(Path(run_dir) / JOBS_FILE, read_jobs(run_dir) + [record])
    return record


def log_event(run_dir: Path, event: str, **fields: Any) -> None:
    """Append one line to ``RUN/requeues.jsonl`` (called by rank 0 of a job)."""
    path = Path(run_dir) / REQUEUE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = dict(time=time.strftime("%Y-%m-%dT%H:%M:%S"), event=event, **fields)
    with open(path, "a+b") as f:
        torn = f.tell() > 0 and os.pread(f.fileno(), 1, f.tell() - 1) != b"\n"
        # after a line torn by a killed writer, start a new one so this event stays readable
        f.write((("\n" if torn else "") + json.dumps(line) + "\n").encode())


def read_events(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / REQUEUE_FILE
    if not path.exists():
        return []
    events = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as e:  # e.g. a line torn by a job killed while appending
            event = None
            why = f"not JSON ({e})"
        else:
            why = "not an object with an event"
        if isinstance(event, dict) and "event" in event:
            events.append(event)
        else:
            log.warning("%s line %d is %s: skipped", path, n, why)
    return events


def write_pipeline(root: Path, stages: list[dict]) -> Path:
    """``ROOT/pipeline.json``: ``[{"stage", "dir", "job_ids", "depends_on"}, ...]``."""
    path = Path(root) / PIPELINE_FILE
    _write_json(path, {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "stages": stages})
    return path


def read_pipeline(root: Path) -> list[dict]:
    path = Path(root) / PIPELINE_FILE
    data = _read_json(path, dict)
    if not isinstance(data.get("stages"), list):
        raise RecordError(f"{path}: no list of stages in it")
    return data["stages"]


def newest_checkpoint_step(run_dir: Path) -> int | None:
    """Step of the newest checkpoint in ``RUN/checkpoints`` (the trainer keeps only complete ones there)."""
    ckpt = Path(run_dir) / "checkpoints"
    steps = [int(m.group(1)) for p in ckpt.glob("step-*") if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return max(steps) if steps else None


def stop_marker(run_dir: Path) -> dict | None:
    """The trainer's ``stopped.json`` (saved on a stop signal, exit status 3), or None.

    ``torchrun`` reports a rank's status 3 as a ChildFailedError and exits 1; this file is how a
    script tells that save apart from a failure. The trainer removes it when a run starts."""
    path = Path(run_dir) / STOP_MARKER
    return _read_json(path, dict) if path.exists() else None


def tail(path: Path, n: int = 2) -> list[str]:
    """The last ``n`` non-empty lines of a text file (empty when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 8192))
        lines = f.read().decode(errors="replace").splitlines()
    return [line for line in lines if line.strip()][-n:]
