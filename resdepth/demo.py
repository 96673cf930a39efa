"""The end-to-end demo behind ``make demo``: synthetic shards -> regression -> residual diffusion ->
2-process ensemble evaluation -> a table of metrics.

Every stage is resumable: running the demo again continues where it stopped. ``--launch slurm``
(or ``local``) runs the same pipeline through ``resdepth-launch pipeline``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()

# Sizes chosen so that the demo finishes in about 10 minutes on 2 CPU cores (9.5-11 measured).
SHARDS = {"train": 1536, "val": 64, "test": 128}
# Trajectories of 8 windows with slow-downs and stops, and the 200 ms before each window as
# temporal context: context lowers the error where the camera sees few events
# (docs/temporal-context.md).
SYNTH = ["--sequence-length", "8", "--context-ms", "200", "--context-bins", "4"]
REGRESSION = ["experiment=baseline_regression"]
DIFFUSION = ["experiment=baseline_diffusion"]
# deterministic sampler steps, the ensemble's spread fitted on the val split (docs/second-stage.md,
# section 7); units of 32 windows, so that both processes share the 64 val windows
EVAL = ["--ensemble", "6", "--steps", "8", "--sampler", "deterministic", "--calibrate", "auto",
        "--unit-size", "32", "--batch", "16", "--save-predictions"]
ROWS = [("baseline", "per-pixel mean"), ("regression", "regression"),
        ("noise_baseline", "reg + Gaussian noise"), ("diffusion", "reg + diffusion (mean)"),
        ("diffusion_denoised", "reg + denoised residual"), ("diffusion_member", "one diffusion member")]
COLUMNS = [("abs_rel", "abs_rel"), ("rmse", "RMSE m"), ("delta1", "d1"), ("mae_10m", "MAE<10"),
           ("mae_20m", "MAE<20"), ("mae_30m", "MAE<30"), ("crps", "CRPS m"), ("spread_skill", "spr/skill"),
           ("grad_energy", "grad E"), ("boundary_mae", "edge MAE")]


def run(cmd: list[str], **kw) -> None:
    """Run a step, echoing the command; stop the demo with its exit code if it fails."""
    console.print(f"[bold cyan]$[/] {' '.join(cmd)}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, env=env, **kw)
    if proc.returncode != 0:
        console.print(f"[bold red]step failed with exit code {proc.returncode}[/]")
        sys.exit(proc.returncode)


def make_shards(root: Path) -> None:
    if all((root / s / "index.json").exists() for s in SHARDS):
        console.print(f"shards already in {root}")
    else:
        run([sys.executable, "-m", "resdepth.data.cli", "synth", "--out", str(root),
             "--train", str(SHARDS["train"]), "--val", str(SHARDS["val"]), "--test",
             str(SHARDS["test"]), *SYNTH, "--workers", "2", "--resume"])
    run([sys.executable, "-m", "resdepth.data.cli", "verify", str(root / "train")])
    run([sys.executable, "-m", "resdepth.data.cli", "inspect", str(root / "test"), "--png",
         str(root.parent / "preview.png")])


def direct(out: Path) -> Path:
    """Both stages on this machine, then evaluation with two processes."""
    root, runs = out / "shards", out / "runs"
    make_shards(root)
    run([sys.executable, "-m", "resdepth.train", *REGRESSION, f"data.root={root}",
         f"run.dir={runs / 'regression'}"])
    run([sys.executable, "-m", "resdepth.train", *DIFFUSION, f"data.root={root}",
         f"run.dir={runs / 'diffusion'}", f"model.regression_ckpt={runs / 'regression'}"])
    ev = out / "eval"
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "resdepth.eval", "--regression", str(runs / "regression"), "--diffusion",
         str(runs / "diffusion"), "--data", str(root / "test"), "--out", str(ev), *EVAL],
        )
    return ev


def launched(out: Path, cluster: str) -> Path:
    """The same pipeline submitted through ``resdepth-launch pipeline`` (Slurm or submitit local)."""
    root = out / "shards"
    make_shards(root)
    pipe = out / f"pipeline-{cluster}"
    run([sys.executable, "-m", "resdepth.launch", "pipeline", "--cluster", cluster,
         "--regression", "baseline_regression", "--diffusion", "baseline_diffusion",
         "--eval-data", str(root / "test"), "--run-dir", str(pipe), "--wait",
         "--eval-args", " ".join(EVAL), f"data.root={root}"])
    run([sys.executable, "-m", "resdepth.launch", "status", str(pipe)])
    return pipe / "eval"


def print_table(ev: Path) -> dict:
    metrics = json.loads((ev / "metrics.json").read_text())
    protocol = metrics.get("settings", {}).get("protocol", "pooled")
    table = Table(title=f"test split: {metrics['num_samples']} samples, "
                        f"{metrics['num_valid_pixels']:,} valid pixels, protocol {protocol} "
                        "(MAE<X: true depth below X m; CRPS of a point forecast = its MAE; "
                        "grad E: gradient energy / truth's; edge MAE: at depth boundaries)",
                  padding=(0, 0), collapse_padding=True)
    table.add_column("model")
    for _, title in COLUMNS:
        table.add_column(title, justify="right")
    for key, name in ROWS:
        m = metrics.get(key)
        if m is None:
            continue
        table.add_row(name, *cells(m))
    low = (metrics.get("groups") or {}).get("low_activity")
    if low:  # the windows where the camera saw little: what the temporal context is for
        table.add_section()
        for key in ("regression", "diffusion"):
            if key in low:
                table.add_row(f"{dict(ROWS)[key]}, low-activity windows", *cells(low[key]))
    console.print(table)
    if low:
        console.print(metrics["groups_definition"])
    return metrics


def cells(m: dict) -> list[str]:
    """A table row's cells; "-" for a metric the predictor has not (null in metrics.json: nan)."""
    return [f"{math.nan if m[k] is None else m[k]:.3f}" if k in m else "-" for k, _ in COLUMNS]


def verdict(metrics: dict) -> bool:
    """What the two stages add, each against the baseline that shows it."""
    base, reg = metrics["baseline"]["abs_rel"], metrics["regression"]["abs_rel"]
    gain = 1 - reg / base
    diff, noise = metrics.get("diffusion", {}), metrics.get("noise_baseline", {})
    crps_gain = 1 - diff.get("crps", math.nan) / noise.get("crps", math.nan)
    rmse_ok = diff.get("rmse", math.inf) <= metrics["regression"]["rmse"]
    ok = gain >= 0.2 and crps_gain >= 0.1 and rmse_ok
    colour = "green" if ok else "yellow"
    console.print(f"[{colour}]regression abs_rel is {100 * gain:.1f}% below the per-pixel mean-depth "
                  f"baseline (goal >= 20%); diffusion CRPS is {100 * crps_gain:.1f}% below the "
                  f"regression + Gaussian-noise baseline's (goal >= 10%); ensemble-mean RMSE "
                  f"{diff.get('rmse', math.nan):.3f} m vs regression {metrics['regression']['rmse']:.3f} m "
                  f"(goal: not above)[/]")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo", help="demo directory (shards, runs, evaluation)")
    parser.add_argument("--launch", choices=["direct", "local", "slurm"], default="direct")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ev = direct(out) if args.launch == "direct" else launched(out, args.launch)
    metrics = print_table(ev)
    verdict(metrics)
    console.print(f"report:      {ev / 'report.md'}\nsamples:     {ev / 'samples.png'}\n"
                  f"tensorboard: tensorboard --logdir {out / 'runs' if args.launch == 'direct' else ev.parent}\n"
                  f"total time:  {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
