"""Submit training, evaluation and whole pipelines; every job runs a callable of ``launch.jobs``."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from resdepth import eval as evaluation
from resdepth import predict
from resdepth.config.core import load_config
from resdepth.eval.config import EvalConfig
from resdepth.launch import records
from resdepth.launch.cluster import Resources, make_executor, render_sbatch
from resdepth.launch.jobs import EvalJob, MergeJob, TrainJob
from resdepth.predict.config import PredictConfig
from resdepth.train.config import Config


@dataclass
class Submitted:
    """One submitted job (or array) as the CLI reports it."""
    stage: str
    job_ids: list[str]
    dir: Path
    jobs: list[Any]  # submitit Job objects (to wait on in tests and for local/debug clusters)

    @property
    def base_id(self) -> str:
        """The id a dependency names: an array's job id without the task suffix."""
        return self.job_ids[0].split("_")[0]


def train_config(overrides: list[str], run_dir: Optional[str] = None):
    """The resolved training config; the run directory is made absolute so jobs and status agree."""
    cfg = load_config(Config, list(overrides) + ([f"run.dir={run_dir}"] if run_dir else []))
    cfg.run.dir = str(Path(cfg.run.dir).resolve())
    return cfg


def eval_config(args: list[str]):
    """An ``EvalConfig`` from ``key=value`` arguments or from ``resdepth-eval`` flags (``--out DIR``)."""
    if any(a.startswith("--") for a in args):
        return evaluation.parse_args([f for a in args for f in _as_flags(a)])
    return load_config(EvalConfig, list(args))


def predict_config(args: list[str]):
    """A ``PredictConfig`` from ``key=value`` arguments or ``resdepth-predict`` flags."""
    if any(a.startswith("--") for a in args):
        return predict.parse_args([f for a in args for f in _as_flags(a)])
    return load_config(PredictConfig, list(args))


def _as_flags(arg: str) -> list[str]:
    """``key=value`` as resdepth-eval flags (``--key value``; booleans ``--key`` / ``--no-key``)."""
    if arg.startswith("-") or "=" not in arg:
        return [arg]
    key, value = arg.split("=", 1)
    flag = "--" + key.replace("_", "-")
    if value.lower() in ("true", "false"):
        return [flag if value.lower() == "true" else "--no-" + flag[2:]]
    return [flag, value]


def train_resources(cfg, res: Resources, stage: str = "train") -> Resources:
    """The job's resources with its name (``STAGE-RUNDIR``), the same for dry runs and submissions."""
    return dataclasses.replace(res, job_name=f"{stage}-{Path(cfg.run.dir).name}")


def dry_run_script(cfg, res: Resources, stage: str = "train") -> str:
    """The sbatch script a training submission would use (its folder is ``RUN/slurm``)."""
    return render_sbatch(Path(cfg.run.dir) / "slurm", train_resources(cfg, res, stage))


def submit_train(cfg, res: Resources, cluster: str, max_requeue: int, stage: str = "train",
                 entry: Optional[Callable] = None) -> Submitted:
    """Submit one training job running ``resdepth.train.main(cfg)`` on every task."""
    run_dir = Path(cfg.run.dir)
    folder = run_dir / "slurm"
    res = train_resources(cfg, res, stage)
    ex = make_executor(cluster, folder, res)
    job = ex.submit(TrainJob(cfg, max_requeue=max_requeue, entry=entry))
    records.add_job(run_dir, job.job_id, stage, cluster, folder, dependency=res.dependency,
                    tasks=res.nodes * res.ntasks_per_node)
    return Submitted(stage, [str(job.job_id)], run_dir, [job])


def submit_eval(cfg, res: Resources, cluster: str, array: int,
                entry: Optional[Callable] = None, merge_entry: Optional[Callable] = None,
                stage: str = "eval", expect: str = "metrics.json") -> tuple[Submitted, Submitted]:
    """``array`` evaluation tasks (one share of the work units each), then a dependent merge job
    that must leave ``out/expect``. Prediction uses it with its own ``main`` and ``merge``."""
    out = Path(cfg.out).resolve()
    cfg = dataclasses.replace(cfg, out=str(out), num_tasks=array)
    folder = out / "slurm"
    res = dataclasses.replace(res, nodes=1, tasks_per_node=1, gpus_per_node=min(res.gpus_per_node, 1),
                              job_name=f"{stage}-{out.name}")
    ex = make_executor(cluster, folder, res)
    tasks = [EvalJob(dataclasses.replace(cfg, task_id=i), entry=entry) for i in range(array)]
    if cluster == "debug":
        jobs = [ex.submit(t) for t in tasks]
    else:
        with ex.batch():
            jobs = [ex.submit(t) for t in tasks]
    ids = [str(j.job_id) for j in jobs]
    evals = Submitted(stage, ids, out, jobs)
    records.add_job(out, evals.base_id, stage, cluster, folder, dependency=res.dependency,
                    array=array)
    if cluster != "slurm":  # no dependencies outside Slurm: wait for the tasks
        [j.result() for j in jobs]
    merge_res = dataclasses.replace(res, gpus_per_node=0, dependency=f"afterok:{evals.base_id}",
                                    job_name=f"merge-{out.name}")
    mex = make_executor(cluster, folder, merge_res)
    mjob = mex.submit(MergeJob(str(out), entry=merge_entry, expect=expect))
    records.add_job(out, mjob.job_id, "merge", cluster, folder, dependency=merge_res.dependency)
    return evals, Submitted("merge", [str(mjob.job_id)], out, [mjob])


def submit_predict(cfg, res: Resources, cluster: str, array: int) -> tuple[Submitted, Submitted]:
    """``array`` prediction tasks running ``resdepth.predict.main``, then ``resdepth.predict.merge``
    (``frames.csv`` and the preview video) after them."""
    return submit_eval(cfg, res, cluster, array, entry=predict.main, merge_entry=predict.merge, stage="predict",
                       expect="frames.csv")


# how long Slurm may still list a job as running after its result is written
SCHEDULER_GRACE_S = 120.0


def wait_done(sub: Submitted) -> None:
    """Block until a job has ended: its result is written and, on Slurm, sacct no longer lists it
    as running (submitit's result file comes a moment before the job step ends, and a ``status``
    read right after would still say RUNNING)."""
    import submitit

    for job in sub.jobs:
        job.results()
        if isinstance(job, submitit.SlurmJob):
            deadline = time.monotonic() + SCHEDULER_GRACE_S
            while (not job.watcher.is_done(job.job_id, mode="force")
                   and time.monotonic() < deadline):
                time.sleep(1.0)


def submit_pipeline(root: Path, regression: str, diffusion: str, overrides: list[str],
                    res: Resources, cluster: str, max_requeue: int, eval_data: Optional[str],
                    eval_args: list[str], array: int, regression_overrides: list[str] = (),
                    diffusion_overrides: list[str] = ()) -> list[Submitted]:
    """Regression, then residual diffusion (afterok), then evaluation array and merge (afterok)."""
    root = Path(root).resolve()
    reg_cfg = train_config([f"experiment={regression}", *overrides, *regression_overrides],
                           str(root / "regression"))
    diff_cfg = train_config([f"experiment={diffusion}", *overrides, *diffusion_overrides,
                             f"model.regression_ckpt={reg_cfg.run.dir}"], str(root / "diffusion"))
    data = eval_data or str(Path(diff_cfg.data.root).resolve() / "test")
    ev_cfg = eval_config([f"regression={reg_cfg.run.dir}", f"diffusion={diff_cfg.run.dir}",
                          f"data={data}", f"out={root / 'eval'}", *eval_args])
    slurm = cluster == "slurm"
    reg = submit_train(reg_cfg, res, cluster, max_requeue, stage="regression")
    if not slurm:
        wait_done(reg)
    dep = f"afterok:{reg.base_id}" if slurm else ""
    diff = submit_train(diff_cfg, dataclasses.replace(res, dependency=dep), cluster, max_requeue,
                        stage="diffusion")
    if not slurm:
        wait_done(diff)
    dep = f"afterok:{diff.base_id}" if slurm else ""
    evals, merge = submit_eval(ev_cfg, dataclasses.replace(res, dependency=dep), cluster, array)
    subs = [reg, diff, evals, merge]
    parents = [None, "regression", "diffusion", "eval"]
    records.write_pipeline(root, [dict(stage=s.stage, dir=str(s.dir), job_ids=s.job_ids,
                                       depends_on=p) for s, p in zip(subs, parents)])
    return subs


def default_pipeline_root() -> Path:
    return Path("runs") / time.strftime("pipeline-%Y%m%d-%H%M%S")
