"""Weights & Biases beside TensorBoard: one training run is one W&B run, however often it resumes.

``logging.wandb=true`` opens a ``WandbSink`` on rank 0. The first time, it draws a W&B run id and
keeps it in ``run.dir/wandb-run.json``; every later start in that directory (a Slurm requeue, a
restart by hand, a resume after SIGUSR2) reads it back and continues the same W&B run. The mode
(online, offline, disabled) is W&B's own: ``WANDB_MODE`` and the other ``WANDB_*`` variables.

A resumed run repeats the steps between its checkpoint and the crash. W&B does not drop them by
itself: an offline run (a node without network) writes them again and ``wandb sync`` uploads them
twice. So the sink keeps in ``wandb-run.json`` the last step whose row it committed, and a resumed
run sends only the steps after it. A step's row (train and val scalars, images) is committed when
a later step begins or the sink closes, so a row is either wholly on the dashboard or re-sent.

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
import threading
from pathlib import Path
from typing import Any, Mapping, Optional

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


def _init_args(run_dir: Path, cfg: Any, record: Optional[dict], stage1: Optional[dict]) -> dict:
    """Arguments of ``wandb.init`` from the config and the run directory's record."""
    lc = cfg.logging
    config = dataclasses.asdict(cfg)
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
        self.last_step = int(record.get("last_step", -1)) if record else -1
        self.record["last_step"] = self.last_step
        self._save_record()
        Path(args["dir"]).mkdir(parents=True, exist_ok=True)
        # console="off": the run's own log files keep the console; W&B must not rewire stdout.
        self.run = wandb.init(**args, settings=wandb.Settings(console="off",
                                                              init_timeout=INIT_TIMEOUT_S))
        self.run.config.update({"run_dir": str(self.run_dir.resolve())}, allow_val_change=True)
        self.row: dict[str, Any] = {}
        self.row_step = -1
        self.skipped = 0
        self.broken = False
        log.info("W&B run %s (%s) in project %s%s", self.run.id, self.run.name, args["project"],
                 f", continuing after step {self.last_step}" if self.last_step >= 0 else "")

    def _save_record(self) -> None:
        write_json_atomic(self.run_dir / RUN_FILE, self.record)

    def _accepts(self, step: int) -> bool:
        """False once W&B failed, and for the steps already committed before this resume."""
        if self.broken:
            return False
        if step <= self.last_step:
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
        self.last_step = self.record["last_step"] = self.row_step
        self._save_record()
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
        """uint8 RGB ``[H,W,3]`` images by full tag (``images/depth_pred``)."""
        if not self._accepts(step):
            return
        try:
            values = {k: self.wandb.Image(np.asarray(v)) for k, v in panels.items()}
        except Exception as e:  # noqa: BLE001
            self._fail(e)
            return
        self._add(step, values)

    def close(self) -> None:
        """Commit the last row and finish the run, waiting at most ``FINISH_TIMEOUT_S``."""
        if self.skipped:
            log.info("W&B: %d logging calls for steps up to %d were already logged before this "
                     "resume and were not sent again", self.skipped, self.last_step)
        if not self.broken and self.row:
            try:
                self._commit()
            except Exception as e:  # noqa: BLE001
                self._fail(e)
        finisher = threading.Thread(target=self._finish, daemon=True, name="wandb-finish")
        finisher.start()
        finisher.join(FINISH_TIMEOUT_S)
        if finisher.is_alive():
            log.warning("W&B did not finish within %.0f s; its files are in %s (send them with "
                        "`wandb sync`)", FINISH_TIMEOUT_S, self.run.dir)

    def _finish(self) -> None:
        try:
            self.run.finish()
        except Exception as e:  # noqa: BLE001
            log.warning("W&B finish failed (%s: %s)", type(e).__name__, e)


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
