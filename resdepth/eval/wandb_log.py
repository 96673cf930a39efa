"""``resdepth-eval --wandb``: an evaluation's metrics table and ``samples.png`` in Weights & Biases,
in the W&B run of the evaluated net's training run when it has one (after the last step that run
logged), else in a new run. A failure is a warning: the evaluation's own files are written first.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from resdepth.train.wandb_sink import (FINISH_TIMEOUT_S, INIT_TIMEOUT_S, RUN_FILE, find_run_file,
                                       finish_within, logged_step)
from resdepth.utils.atomic import write_json_atomic

log = logging.getLogger("resdepth")


def _metrics_table(wandb: Any, metrics: Mapping[str, Any]) -> Any:
    """One row per predictor of ``metrics.json`` (regression, diffusion, baselines), one column
    per metric."""
    rows = {name: m for name, m in metrics.items()
            if isinstance(m, dict) and name not in ("sequences", "settings", "groups")}
    columns = sorted({k for m in rows.values() for k in m})
    return wandb.Table(columns=["predictor", *columns],
                       data=[[name, *(m.get(k) for k in columns)] for name, m in rows.items()])


def _eval_run(wandb: Any, out: Path, net: str, project: str) -> tuple[Any, int, Optional[dict]]:
    """(W&B run, step to log at, training record) for an evaluation of ``net``: its training run
    continued after its last logged step when it has one, else a new run."""
    record = find_run_file(net)
    settings = wandb.Settings(console="off", init_timeout=INIT_TIMEOUT_S)
    if record is None:
        run = wandb.init(project=project, name=f"eval-{out.resolve().name}", job_type="eval",
                         dir=os.environ.get("WANDB_DIR") or str(out), settings=settings)
        return run, 0, None
    wandb_dir = os.environ.get("WANDB_DIR") or record["run_dir"]
    held = max(int(record.get("last_step", -1)), logged_step(Path(wandb_dir), record["id"]))
    run = wandb.init(id=record["id"], resume="allow", project=record.get("project"),
                     entity=record.get("entity"), name=record.get("name"), group=record.get("group"),
                     dir=wandb_dir, settings=settings)
    if run.resumed and not run.offline:
        held = max(held, run.starting_step - 1)
    return run, held + 1, record


def log_evaluation(out: Path, metrics: Mapping[str, Any], net: str, project: str) -> Optional[str]:
    """Log ``metrics.json`` as a table, its numbers as summary values and ``samples.png`` to the
    W&B run of the training run of ``net`` (a new run when it has none); returns the run id.
    A failure is a warning: the evaluation's own files are written already."""
    out = Path(out)
    try:
        import wandb  # optional heavy dependency

        run, step, record = _eval_run(wandb, out, net, project)
        row: dict[str, Any] = {"eval/metrics": _metrics_table(wandb, metrics)}
        if (out / "samples.png").is_file():
            row["eval/samples"] = wandb.Image(str(out / "samples.png"))
        run.log(row, step=step, commit=True)
        for name, m in metrics.items():
            if isinstance(m, dict) and name not in ("sequences", "settings", "groups"):
                run.summary.update({f"eval/{name}/{k}": v for k, v in m.items()})
        run.summary.update({"eval/num_samples": metrics.get("num_samples"), "eval/out": str(out)})
        finish_within(run, FINISH_TIMEOUT_S)
        if record is not None:  # the training run's next row goes after this one
            write_json_atomic(Path(record["run_dir"]) / RUN_FILE,
                              {**{k: v for k, v in record.items() if k != "run_dir"},
                               "last_step": step})
        log.info("evaluation logged to W&B run %s at step %d", run.id, step)
        return run.id
    except ImportError as e:
        log.warning("wandb=true but wandb cannot be imported (%s): install it with "
                    "pip install -e '.[wandb]'", e)
    except Exception as e:  # noqa: BLE001 - the evaluation is done; W&B is a copy of it
        log.warning("evaluation not logged to W&B (%s: %s)", type(e).__name__, e)
    return None
