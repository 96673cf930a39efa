"""Weights & Biases beside TensorBoard: one training run is one W&B run, however often it resumes.

``logging.wandb=true`` opens a ``WandbSink`` on rank 0. The first time, it draws a W&B run id and
keeps it in ``run.dir/wandb-run.json``; every later start in that directory (a Slurm requeue, a
restart by hand, a resume after SIGUSR2) reads it back and continues the same W&B run. The mode
(online, offline, disabled) is W&B's own: ``WANDB_MODE`` and the other ``WANDB_*`` variables.

A resumed run repeats the steps between its checkpoint and the crash. W&B does not drop them by
itself offline (a node without network): the new incarnation writes them again and ``wandb sync``
uploads both. So a resumed sink sends only the steps after the last one W&B already holds:
- online, the step the server resumes the run at (``run.starting_step``);
- offline, the newest step in W&B's own transaction logs of this run (``wandb/*/run-ID.wandb``,
  what ``wandb sync`` uploads), or the step recorded in ``wandb-run.json`` when the sink last
  finished cleanly. The logs are read, not trusted to the sink's own count, because W&B buffers
  them: after a hard kill (SIGKILL, a node failure) only a prefix of the committed rows is on disk,
  and the rows that are not there are re-sent by the resumed run where it can (after its checkpoint).
A step's row (train and val scalars, images) is committed when a later step begins or the sink
closes, so a row goes to W&B whole.

W&B never stops training: not installed, not logged in, no network, or an error while logging,
each gives one warning and the run goes on with TensorBoard. ``wandb`` is imported only here, in
the constructor, so a run that does not ask for it never loads it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import string
import struct
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from resdepth.utils.atomic import write_json_atomic

log = logging.getLogger("resdepth")

RUN_FILE = "wandb-run.json"
# Seconds ``close`` waits for W&B to finish (an upload without network may never end); the data is
# in the local run directory anyway and ``wandb sync`` sends it later.
FINISH_TIMEOUT_S = 60.0
# Seconds ``wandb.init`` may take to reach its service or the server before it gives up.
INIT_TIMEOUT_S = 60.0


def new_run_id() -> str:
    """A W&B run id: 8 lowercase letters and digits (the form W&B draws itself)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def read_run_file(run_dir: Path) -> Optional[dict]:
    """``run_dir/wandb-run.json`` (id, project, entity, name, group, last_step), or None."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        log.warning("%s cannot be read (%s): a new W&B run is started", path, e)
        return None
    return record if isinstance(record, dict) and record.get("id") else None


def find_run_file(path: str | os.PathLike) -> Optional[dict]:
    """The W&B record of the training run that holds ``path``: a run directory, its export or
    checkpoint directory, or a weights file in one of them (searched up to three levels up)."""
    p = Path(path).resolve()
    for candidate in [p, *list(p.parents)[:3]]:
        record = read_run_file(candidate) if candidate.is_dir() else None
        if record is not None:
            return {**record, "run_dir": str(candidate)}
    return None


def stage1_record(cfg: Any) -> Optional[dict]:
    """Stage 2: the W&B record of the stage-1 run ``model.regression_ckpt`` names, if it has one."""
    ckpt = getattr(cfg.model, "regression_ckpt", "")
    if cfg.model.stage != "diffusion" or not ckpt:
        return None
    return find_run_file(ckpt)


def log_records(path: Path) -> Iterator[bytes]:
    """The records of a W&B transaction log (``run-ID.wandb``): a 7-byte header, then the LevelDB
    log format (32 KiB blocks of chunks, each ``crc32 u32, length u16, type u8``). A record cut
    by a kill (a chunk past the end of the file, a first chunk without its last) is not returned:
    ``wandb sync`` cannot send it either."""
    data = Path(path).read_bytes()
    if not data.startswith(b":W&B"):
        return
    pos, parts = 7, []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 or pos + 7 + length > len(data):
            return  # zero padding (nothing more was written) or a chunk cut short
        parts.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: the record is complete
            yield b"".join(parts)
            parts = []


def logged_step(wandb_dir: Path, run_id: str) -> int:
    """The newest ``_step`` in the transaction logs W&B wrote for ``run_id`` under ``wandb_dir``
    (every earlier incarnation of the run; -1 when none holds a row)."""
    from wandb.proto import wandb_internal_pb2 as pb  # optional heavy dependency

    newest = -1
    for path in sorted(Path(wandb_dir).glob(f"wandb/*/run-{run_id}.wandb")):
        if path.parent.is_symlink():  # latest-run: the newest incarnation once more
            continue
        for raw in log_records(path):
            record = pb.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") != "history":
                continue
            for item in record.history.item:
                if (item.key or "/".join(item.nested_key)) == "_step":
                    newest = max(newest, int(json.loads(item.value_json)))
    return newest


def _init_args(run_dir: Path, cfg: Any, record: Optional[dict], stage1: Optional[dict]) -> dict:
    """Arguments of ``wandb.init`` from the config and the run directory's record."""
    lc = cfg.logging
    config = {**dataclasses.asdict(cfg), "run_dir": str(run_dir.resolve())}
    if stage1 is not None:
        config["stage1_wandb_run"] = {k: stage1.get(k) for k in ("id", "project", "entity", "name",
                                                                  "group", "run_dir")}
    group = lc.wandb_group or (stage1 and (stage1.get("group") or stage1.get("name"))) or None
    return {"id": record["id"] if record else new_run_id(), "resume": "allow",
            "project": lc.wandb_project, "entity": lc.wandb_entity,
            "name": lc.wandb_name or run_dir.resolve().name, "group": group,
            "tags": list(lc.wandb_tags) or None, "config": config,
            "dir": os.environ.get("WANDB_DIR") or str(run_dir)}


class WandbSink:
    """Rank 0's W&B run for one training run directory: ``scalars``, ``images``, ``close``."""

    def __init__(self, run_dir: Path, cfg: Any) -> None:
        import wandb  # optional heavy dependency: only when logging.wandb is asked for

        self.wandb = wandb
        self.run_dir = Path(run_dir)
        record = read_run_file(self.run_dir)
        args = _init_args(self.run_dir, cfg, record, stage1_record(cfg))
        # Resumes of this directory reuse the id: written before init, so a failed init keeps it.
        self.record = {k: args[k] for k in ("id", "project", "entity", "name", "group")}
        finished = int(record.get("last_step", -1)) if record else -1
        self.record["last_step"] = finished
        Path(args["dir"]).mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._save_record()
        # read before init: the new incarnation's own log is being written from then on
        self.floor = max(finished, logged_step(Path(args["dir"]), args["id"]))
        # console="off": the run's own log files keep the console; W&B must not rewire stdout.
        self.run = wandb.init(**args, settings=wandb.Settings(console="off",
                                                              init_timeout=INIT_TIMEOUT_S))
        if self.run.resumed and not self.run.offline:  # online, the server's history is the truth
            self.floor = self.run.starting_step - 1
        self.row: dict[str, Any] = {}
        self.row_step = self.last_step = self.floor
        self.skipped = 0
        self.broken = False
        log.info("W&B run %s (%s) in project %s%s", self.run.id, self.run.name, args["project"],
                 f", continuing after step {self.floor}" if self.floor >= 0 else "")

    def _save_record(self) -> None:
        write_json_atomic(self.run_dir / RUN_FILE, self.record)

    def _accepts(self, step: int) -> bool:
        """False once W&B failed, for the steps W&B held before this resume, and for a step
        older than the open row (W&B keeps steps increasing; it would land in the wrong row)."""
        if self.broken:
            return False
        if step <= self.floor or step < self.row_step:
            self.skipped += 1
            return False
        return True

    def _add(self, step: int, values: Mapping[str, Any]) -> None:
        """Put ``values`` into the row of ``step``; commit the previous row when ``step`` is new."""
        try:
            if step > self.row_step and self.row:
                self._commit()
            self.row_step = max(self.row_step, step)
            self.row.update(values)
        except Exception as e:  # noqa: BLE001 - any W&B failure turns W&B off, never training
            self._fail(e)

    def _commit(self) -> None:
        self.run.log(self.row, step=self.row_step, commit=True)
        self.last_step = self.row_step
        self.row = {}

    def _fail(self, error: BaseException) -> None:
        self.broken = True
        log.warning("W&B logging stopped (%s: %s); training goes on with TensorBoard",
                    type(error).__name__, error)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Scalars by full tag (``train/loss``), as TensorBoard names them."""
        if self._accepts(step):
            self._add(step, {k: float(v) for k, v in values.items()})

    def images(self, step: int, panels: Mapping[str, np.ndarray]) -> None:
        """Named uint8 RGB ``[H,W,3]`` images, under ``images/`` as TensorBoard has them."""
        if not self._accepts(step):
            return
        try:
            values = {f"images/{k}": self.wandb.Image(np.asarray(v)) for k, v in panels.items()}
        except Exception as e:  # noqa: BLE001
            self._fail(e)
            return
        self._add(step, values)

    def close(self) -> None:
        """Commit the last row and finish the run, waiting at most ``FINISH_TIMEOUT_S``; a clean
        finish records the last step in ``wandb-run.json``."""
        if self.skipped:
            log.info("W&B: %d logging calls for steps up to %d were not sent again (W&B holds "
                     "them from before this resume)", self.skipped, self.floor)
        if not self.broken and self.row:
            try:
                self._commit()
            except Exception as e:  # noqa: BLE001
                self._fail(e)
        if finish_within(self.run, FINISH_TIMEOUT_S) and not self.broken:
            self.record["last_step"] = self.last_step
            self._save_record()


def finish_within(run: Any, seconds: float) -> bool:
    """``run.finish()`` in a thread, waiting at most ``seconds`` (an upload without network may
    not end); True when it finished. What is not sent stays in the run's files for ``wandb sync``."""
    done = threading.Event()

    def finish() -> None:
        try:
            run.finish()
            done.set()
        except Exception as e:  # noqa: BLE001 - the run's own outputs are written already
            log.warning("W&B finish failed (%s: %s)", type(e).__name__, e)

    thread = threading.Thread(target=finish, daemon=True, name="wandb-finish")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        log.warning("W&B did not finish within %.0f s; its files are in %s (send them with "
                    "`wandb sync`)", seconds, run.dir)
    return done.is_set()


def open_sink(run_dir: Path, cfg: Any) -> Optional[WandbSink]:
    """A ``WandbSink`` when ``logging.wandb`` is on and W&B starts; otherwise None, with one
    warning saying why when it was asked for."""
    if not cfg.logging.wandb:
        return None
    try:
        return WandbSink(run_dir, cfg)
    except ImportError as e:
        log.warning("logging.wandb=true but wandb cannot be imported (%s): install it with "
                    "pip install -e '.[wandb]'; training goes on with TensorBoard", e)
    except Exception as e:  # noqa: BLE001 - not logged in, no network, a bad setting: never fatal
        log.warning("logging.wandb=true but W&B did not start (%s: %s); training goes on with "
                    "TensorBoard", type(e).__name__, e)
    return None
