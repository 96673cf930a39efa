"""``resdepth-launch``: submit training, pipelines and evaluations to Slurm; show and cancel them.

  resdepth-launch train experiment=baseline_regression --profile mycluster --nodes 2 --gpus-per-node 8
  resdepth-launch train experiment=baseline_regression --nodes 2 --gpus-per-node 8 --dry-run
  resdepth-launch pipeline --regression baseline_regression --diffusion baseline_diffusion --root runs/p1
  resdepth-launch eval regression=runs/p1/regression diffusion=runs/p1/diffusion data=demo/shards/test \\
      out=runs/p1/eval2 --array 4
  resdepth-launch predict regression=runs/p1/regression events=outdoor_day1_data.hdf5 \\
      window_ms=50 out=runs/p1/pred --array 4
  resdepth-launch status runs/p1          (a pipeline root or a run directory)
  resdepth-launch cancel runs/p1

Every job runs the same ``resdepth.train.main(cfg)`` / ``resdepth.eval.main(cfg)`` /
``resdepth.predict.main(cfg)`` a user runs by
hand; how requeue works is described in ``resdepth/launch/jobs.py``.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from resdepth.config.core import ConfigError
from resdepth.launch import records, submit
from resdepth.launch.cluster import Resources, load_profile
from resdepth.launch.status import cancel, render, render_run


def _resource_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster and resources (flags win over --profile)")
    g.add_argument("--cluster", choices=["slurm", "local", "debug"], default="slurm",
                   help="slurm: sbatch; local: subprocesses on this machine; debug: this process")
    g.add_argument("--profile", help="cluster defaults from configs/cluster/NAME.yaml (or a YAML path)")
    g.add_argument("--nodes", type=int, default=1)
    g.add_argument("--gpus-per-node", type=int, help="GPUs per node, one task each (0: CPU tasks)")
    g.add_argument("--tasks-per-node", type=int, help="tasks per node when --gpus-per-node is 0")
    g.add_argument("--cpus-per-task", type=int)
    g.add_argument("--mem-gb", type=float, help="memory per node in GB")
    g.add_argument("--partition")
    g.add_argument("--account")
    g.add_argument("--qos")
    g.add_argument("--time", type=int, dest="time_min", help="time limit in minutes")
    g.add_argument("--constraint")
    g.add_argument("--exclude")
    g.add_argument("--signal-delay", type=int, dest="signal_delay_s",
                   help="seconds before the time limit at which USR2 asks the trainer to save")
    g.add_argument("--max-requeue", type=int, help="requeues after which a job stops for good")


def _resources(args: argparse.Namespace):
    profile = load_profile(args.profile)
    res = Resources.from_profile(
        profile, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
        tasks_per_node=args.tasks_per_node, cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb,
        partition=args.partition, account=args.account, qos=args.qos, time_min=args.time_min,
        constraint=args.constraint, exclude=args.exclude, signal_delay_s=args.signal_delay_s)
    max_requeue = args.max_requeue if args.max_requeue is not None else profile.max_requeue
    if max_requeue < 0:
        raise ConfigError(f"--max-requeue {max_requeue} (profile key max_requeue): must be >= 0")
    if getattr(args, "array", 1) < 1:
        raise ConfigError(f"--array {args.array}: must be >= 1")
    return res, max_requeue


def cmd_train(args: argparse.Namespace) -> int:
    cfg = submit.train_config(args.overrides, args.run_dir)
    res, max_requeue = _resources(args)
    if args.dry_run:
        print(submit.dry_run_script(cfg, res), end="")
        print(f"# dry run, nothing submitted: {res.nodes * res.ntasks_per_node} task(s) would each run "
              f"resdepth.train.main(cfg) in {cfg.run.dir}", file=sys.stderr)
        return 0
    sub = submit.submit_train(cfg, res, args.cluster, max_requeue)
    print(f"submitted train job {sub.job_ids[0]} ({args.cluster}); run directory {sub.dir}")
    if args.cluster != "slurm" or args.wait:
        submit.wait_done(sub)
        print(f"job {sub.job_ids[0]} finished")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    res, max_requeue = _resources(args)
    root = Path(args.root) if args.root else submit.default_pipeline_root()
    subs = submit.submit_pipeline(root, args.regression, args.diffusion, args.overrides, res,
                                  args.cluster, max_requeue, args.eval_data,
                                  args.eval_set + shlex.split(args.eval_args),
                                  args.array, args.regression_set, args.diffusion_set)
    for s in subs:
        print(f"{s.stage:<10} job {','.join(s.job_ids):<24} {s.dir}")
    print(f"pipeline written to {root.resolve() / 'pipeline.json'}")
    if args.wait:
        try:
            submit.wait_done(subs[-1])
        except Exception as e:  # submitit's UncompletedJobError etc.: say where to look, fail
            print(f"pipeline did not complete ({type(e).__name__}); see: resdepth-launch status "
                  f"{root}", file=sys.stderr)
            return 1
        print(f"merge job {subs[-1].job_ids[0]} finished: {subs[-1].dir / 'metrics.json'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    return _array_then_merge(args, "eval ", submit.eval_config, submit.submit_eval, "metrics.json")


def cmd_predict(args: argparse.Namespace) -> int:
    return _array_then_merge(args, "predict", submit.predict_config, submit.submit_predict, "frames.csv")


def _array_then_merge(args: argparse.Namespace, label: str, make_config, submit_jobs, result: str) -> int:
    """An array of tasks sharing the work units, then a merge job that writes ``result``."""
    cfg = make_config(args.overrides)
    if not cfg.out:
        raise ConfigError(f"{label.strip()} needs out=DIR")
    res, _ = _resources(args)
    tasks, merge = submit_jobs(cfg, res, args.cluster, args.array)
    print(f"{label} array job {tasks.base_id} ({len(tasks.job_ids)} tasks)  {tasks.dir}")
    print(f"merge job {merge.job_ids[0]} (afterok:{tasks.base_id})  {merge.dir}/{result}")
    if args.cluster != "slurm":
        submit.wait_done(merge)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    path = Path(args.dir)
    if not (path / records.PIPELINE_FILE).exists() and not (path / records.JOBS_FILE).exists() \
            and (path / "config.yaml").exists():
        return render_run(path)  # a run started by hand or by torchrun
    render(path)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    ids = cancel(Path(args.dir))
    print(f"cancelled {' '.join(ids)}" if ids else "no Slurm jobs recorded")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resdepth-launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="submit one training job")
    p.add_argument("overrides", nargs="*", help="experiment=NAME and key=value settings")
    p.add_argument("--run-dir", help="run directory (default: run.dir of the config)")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script, submit nothing")
    p.add_argument("--wait", action="store_true", help="wait for the job to end")
    _resource_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pipeline", help="regression -> residual diffusion -> evaluation, chained by afterok")
    p.add_argument("overrides", nargs="*", help="key=value settings for both training stages")
    p.add_argument("--regression", required=True, help="experiment of stage 1")
    p.add_argument("--diffusion", required=True, help="experiment of stage 2")
    p.add_argument("--root", "--run-dir", dest="root",
                   help="pipeline directory (default runs/pipeline-DATE-TIME)")
    p.add_argument("--wait", action="store_true", help="wait until the merge job has ended")
    p.add_argument("--eval-args", default="", help="resdepth-eval flags as one string, e.g. '--ensemble 4'")
    p.add_argument("--eval-data", help="split directory to evaluate on (default DATA_ROOT/test)")
    p.add_argument("--eval-set", action="append", default=[], metavar="KEY=VALUE",
                   help="evaluation setting (repeatable), e.g. --eval-set ensemble=4")
    p.add_argument("--regression-set", action="append", default=[], metavar="KEY=VALUE",
                   help="setting of the regression stage only (repeatable)")
    p.add_argument("--diffusion-set", action="append", default=[], metavar="KEY=VALUE",
                   help="setting of the diffusion stage only (repeatable)")
    p.add_argument("--array", type=int, default=1, help="evaluation array tasks")
    _resource_args(p)
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("eval", help="submit an evaluation as an array job plus a merge job",
                       usage="resdepth-launch eval [regression=RUN diffusion=RUN data=SPLIT out=DIR "
                             "... | resdepth-eval flags] --array K [cluster flags]")
    # no positional: every other argument (key=value or resdepth-eval's flags) passes through in order
    p.add_argument("--array", type=int, default=1, help="array tasks sharing the work units")
    _resource_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="submit depth prediction on a raw event recording as an "
                                       "array job plus a merge job",
                       usage="resdepth-launch predict [regression=RUN events=FILE window_ms=MS "
                             "out=DIR ... | resdepth-predict flags] --array K [cluster flags]")
    p.add_argument("--array", type=int, default=1, help="array tasks sharing the windows")
    _resource_args(p)
    p.set_defaults(func=cmd_predict)

    for name, func, doc in (("status", cmd_status, "table of jobs, states, requeues, checkpoints, logs "
                                                   "(a run without launcher records, e.g. from torchrun: "
                                                   "one line, exit status 0 finished, 3 saved on a stop signal, "
                                                   "1 otherwise)"),
                            ("cancel", cmd_cancel, "scancel every job of a run or pipeline")):
        p = sub.add_parser(name, help=doc)
        p.add_argument("dir", help="run directory or pipeline root")
        p.set_defaults(func=func)
    return parser


def cli(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if extra and args.command not in ("eval", "predict"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in ("eval", "predict"):  # their own flags (--regression RUN ...) pass through
        args.overrides = extra
    try:
        sys.exit(args.func(args))
    except (ConfigError, FileNotFoundError) as e:
        print(f"resdepth-launch: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
