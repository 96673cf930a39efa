"""The callables that jobs run: each calls the same ``main(cfg)`` a user runs by hand.

Requeue, exactly (see also docs in ``resdepth/launch/__main__.py --help``):

* Slurm sends SIGUSR2 ``signal_delay_s`` before the time limit, or on ``scancel --signal=USR2``,
  to every task. While ``resdepth.train.main`` runs, its own handlers own USR2/SIGTERM: they set
  a flag, all ranks agree at the next step boundary (all-reduce), save a checkpoint and return
  ``REQUEUE_EXIT_CODE``. ``TrainJob`` then requeues: rank 0 runs ``scontrol requeue JOBID`` when the
  job is still RUNNING (when Slurm itself is already requeueing or cancelling it, it leaves Slurm
  to it), every rank leaves with ``SystemExit`` so submitit writes no result, and the next
  incarnation resumes from the newest checkpoint (``trainer.resume=auto``).
* A signal outside ``main`` (start-up, shut-down) reaches submitit's handler on rank 0, which calls
  ``checkpoint()``: it returns this same callable and submitit requeues the job.
* ``scontrol requeue`` or a node failure sends no USR2 (SIGTERM at most): Slurm restarts the job
  and the trainer resumes from its newest periodic checkpoint.
* Every incarnation reads ``SLURM_RESTART_COUNT``; at ``max_requeue`` a requeue request ends the
  job as FAILED with a message naming the newest checkpoint, so dependent jobs never run.
* A peer lost after start-up (its node died, its process was killed or stopped): the surviving
  ranks' next collective fails within the collective timeout (``RESDEPTH_COLLECTIVE_TIMEOUT``, the
  cluster profile's ``collective_timeout_s``); each logs one line naming the lost rank and host
  (``resdepth.dist.lost_peer``), asks Slurm to requeue the job unless it already does (a dead node
  is requeued by Slurm itself) and leaves, so the next incarnation resumes on healthy nodes.
"""
from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import submitit

from resdepth import dist
from resdepth import eval as evaluation
from resdepth import train
from resdepth.launch import records
from resdepth.train.signals import REQUEUE_EXIT_CODE

log = logging.getLogger("resdepth")


class JobFailed(RuntimeError):
    """``main`` returned a failure code, or the job hit its requeue limit."""


def _slurm_state(job_id: str) -> str:
    """The job's state as squeue reports it (empty when squeue does not know it)."""
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                         text=True, timeout=60)
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""


class PeerLost(RuntimeError):
    """Another rank of the job died or stopped; the message names it and its host."""


def run_main(main: Callable[[Any], int], cfg: Any) -> int:
    """``main(cfg)``; a failure caused by a lost peer becomes ``PeerLost`` with one logged line."""
    try:
        return main(cfg)
    except (RuntimeError, OSError) as e:
        line = dist.lost_peer(e)
        if line is None:
            raise
        log.error(line)
        raise PeerLost(line) from None


def requeue_after_lost_peer(env: submitit.JobEnvironment, err: PeerLost) -> None:
    """Every surviving rank asks Slurm to requeue the job (the first one wins; when Slurm already
    requeues it after a node failure, nothing is asked), then leaves; never returns."""
    job_id = str(env.job_id)
    if env.cluster == "slurm" and _slurm_state(job_id) == "RUNNING":
        # no check: another survivor may have requeued it a moment earlier
        subprocess.run(["scontrol", "requeue", job_id], capture_output=True, timeout=60)
    print(f"resdepth: {err}; job {job_id} requeued", file=sys.stderr, flush=True)
    sys.exit(REQUEUE_EXIT_CODE)


class TrainJob(submitit.helpers.Checkpointable):
    """A training job: every task runs ``entry(cfg)`` (``resdepth.train.main``) and requeues on request."""

    def __init__(self, cfg: Any, max_requeue: int = 10,
                 entry: Optional[Callable[[Any], int]] = None) -> None:
        self.cfg = cfg
        self.max_requeue = max_requeue
        self.entry = entry

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.dir)

    def _main(self) -> Callable[[Any], int]:
        return self.entry if self.entry is not None else train.main

    def continued_config(self) -> Any:
        """The config of a requeued incarnation: it continues what the first one started, so
        ``trainer.resume=never`` (which refuses or moves aside an existing run) becomes auto."""
        if getattr(getattr(self.cfg, "trainer", None), "resume", "auto") != "never":
            return self.cfg
        cfg = copy.deepcopy(self.cfg)
        cfg.trainer.resume = "auto"
        cfg.run.overwrite = False
        return cfg

    def restarts(self, env: submitit.JobEnvironment) -> int:
        """How often this job was requeued: Slurm counts every cause (signal, scontrol, node failure)."""
        if "SLURM_RESTART_COUNT" in os.environ:
            return int(os.environ["SLURM_RESTART_COUNT"])
        return sum(1 for e in records.read_events(self.run_dir)
                   if e["event"] == "requeue" and e.get("job_id") == str(env.job_id))

    def __call__(self) -> int:
        env = submitit.JobEnvironment()
        restarts = self.restarts(env)
        if env.global_rank == 0:
            records.log_event(self.run_dir, "start", job_id=str(env.job_id), restart=restarts,
                              tasks=env.num_tasks, host=env.hostname)
        main = self._main()
        cfg = self.cfg if restarts == 0 else self.continued_config()
        try:
            code = run_main(main, cfg)
        except PeerLost as e:
            if restarts >= self.max_requeue:
                raise JobFailed(f"{e}; requeue limit reached ({restarts} requeues)") from None
            requeue_after_lost_peer(env, e)
        while code == REQUEUE_EXIT_CODE and env.cluster == "debug":
            # in-process executor: nothing to requeue, so resume in place
            cfg = self.continued_config()
            code = main(cfg)
        if code == 0:
            if env.global_rank == 0:
                records.log_event(self.run_dir, "done", job_id=str(env.job_id), restart=restarts)
            return 0
        if code == REQUEUE_EXIT_CODE:
            self._requeue(env, restarts)
        raise JobFailed(f"training returned exit code {code} (0 = done, {REQUEUE_EXIT_CODE} = "
                        f"requeue); see {self.run_dir}/log-rank{env.global_rank}.txt")

    def _requeue(self, env: submitit.JobEnvironment, restarts: int) -> None:
        """Requeue the whole job after ``main`` saved on a stop signal; never returns."""
        job_id = str(env.job_id)
        if restarts >= self.max_requeue:
            step = records.newest_checkpoint_step(self.run_dir)
            msg = (f"requeue limit reached: requeued {restarts} times (max_requeue="
                   f"{self.max_requeue}); newest checkpoint step {step} in {self.run_dir}; "
                   "submit the same command again to continue")
            if env.global_rank == 0:
                records.log_event(self.run_dir, "requeue_limit", job_id=job_id, restart=restarts,
                                  step=step)
            raise JobFailed(msg)
        if env.global_rank == 0:
            if env.cluster == "slurm":
                state = _slurm_state(job_id)
                if state == "RUNNING":
                    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
                    by = "job"
                else:  # Slurm is already requeueing (scontrol requeue) or cancelling it
                    by = f"slurm ({state or 'gone'})"
            else:
                by = env.cluster
            records.log_event(self.run_dir, "requeue", job_id=job_id, restart=restarts + 1,
                              by=by, step=records.newest_checkpoint_step(self.run_dir))
            log.info("job %s requeued (%s), restart %d of at most %d", job_id, by, restarts + 1,
                     self.max_requeue)
            if env.cluster == "local":
                env._requeue(self.max_requeue - restarts)  # exits with submitit's local requeue code
        # SystemExit, not an exception: submitit writes no result, the next incarnation will.
        sys.exit(REQUEUE_EXIT_CODE)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Optional[submitit.helpers.DelayedSubmission]:
        """Called by submitit's USR2 handler (rank 0) when the signal came outside ``main``."""
        env = submitit.JobEnvironment()
        restarts = self.restarts(env)
        if restarts >= self.max_requeue:
            records.log_event(self.run_dir, "requeue_limit", job_id=str(env.job_id),
                              restart=restarts, step=records.newest_checkpoint_step(self.run_dir))
            return None  # submitit ends the job: "not requeued because checkpoint returned None"
        records.log_event(self.run_dir, "requeue", job_id=str(env.job_id), restart=restarts + 1,
                          by="submitit", step=records.newest_checkpoint_step(self.run_dir))
        return super().checkpoint(*args, **kwargs)


class EvalJob(submitit.helpers.Checkpointable):
    """One evaluation array task: ``resdepth.eval.main(cfg)`` on its share of the work units."""

    def __init__(self, cfg: Any, entry: Optional[Callable[[Any], int]] = None) -> None:
        self.cfg = cfg
        self.entry = entry

    def __call__(self) -> int:
        main = self.entry if self.entry is not None else evaluation.main
        try:
            code = run_main(main, self.cfg)
        except PeerLost as e:
            requeue_after_lost_peer(submitit.JobEnvironment(), e)
        if code != 0:
            raise JobFailed(f"array task {self.cfg.task_id} returned exit code {code}")
        return 0
    # checkpoint(): inherited; a requeued task redoes only its missing parts


class MergeJob(submitit.helpers.Checkpointable):
    """After every array task: ``resdepth.eval.merge(out)`` writes ``metrics.json`` (or ``entry``
    writes ``expect``)."""

    def __init__(self, out_dir: str, entry: Optional[Callable[[str], Any]] = None,
                 expect: str = "metrics.json") -> None:
        self.out_dir = out_dir
        self.entry = entry
        self.expect = expect

    def __call__(self) -> str:
        merge = self.entry if self.entry is not None else evaluation.merge
        merge(self.out_dir)
        metrics = Path(self.out_dir) / self.expect
        if not metrics.exists():
            raise JobFailed(f"merge wrote no {metrics}")
        return str(metrics)
