"""What the launcher leaves in run directories so that ``status`` and ``cancel`` work later.

``RUN/jobs.json``       every job submitted for this run (id, kind, cluster, time, submitit folder)
``RUN/requeues.jsonl``  one line per start of a job incarnation and per requeue decision
``ROOT/pipeline.json``  the stages of a pipeline: name, run or output directory, job ids
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from resdepth.utils.atomic import write_json_atomic

JOBS_FILE = "jobs.json"
REQUEUE_FILE = "requeues.jsonl"
PIPELINE_FILE = "pipeline.json"
STEP_DIR = re.compile(r"^step-(\d+)$")


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)


def read_jobs(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / JOBS_FILE
    return json.loads(path.read_text()) if path.exists() else []


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
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def read_events(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / REQUEUE_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_pipeline(root: Path, stages: list[dict]) -> Path:
    """``ROOT/pipeline.json``: ``[{"stage", "dir", "job_ids", "depends_on"}, ...]``."""
    path = Path(root) / PIPELINE_FILE
    _write_json(path, {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "stages": stages})
    return path


def read_pipeline(root: Path) -> list[dict]:
    return json.loads((Path(root) / PIPELINE_FILE).read_text())["stages"]


def newest_checkpoint_step(run_dir: Path) -> int | None:
    """Step of the newest checkpoint in ``RUN/checkpoints`` (the trainer keeps only complete ones there)."""
    ckpt = Path(run_dir) / "checkpoints"
    steps = [int(m.group(1)) for p in ckpt.glob("step-*") if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return max(steps) if steps else None


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
