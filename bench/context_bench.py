"""What temporal context buys, measured side by side on the same windows.

    python bench/context_bench.py [--out bench-context] [--train 1536] [--context-ms 200]

Renders the demo's splits as trajectories with slow-downs and stops (``resdepth-shards synth
--sequence-length``) with temporal context, makes the same splits without it
(``reshard --drop-context``: the same windows, the same events), then trains the demo's two stages
on each (``configs/baseline_*.yaml``, the same steps) and evaluates both like the demo. Prints one
markdown table: abs_rel, RMSE and CRPS of the regression and the diffusion ensemble mean, overall
and on the low-activity windows (fewer than 0.25 events per valid depth pixel), with and without
context, and the cost: bytes per sample, synth and training time. Every step is resumable: run it
again and finished steps are skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL = ["--ensemble", "6", "--steps", "8", "--batch", "16"]


def run(cmd: list[str], log: Path) -> float:
    """Run a step (output to ``log``); returns its wall time, or 0 when its log says it finished."""
    done = log.with_suffix(".done")
    if done.exists():
        return float(done.read_text())
    print("$", " ".join(cmd), flush=True)
    t = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode:
        sys.exit(f"step failed ({proc.returncode}), see {log}")
    dt = time.time() - t
    done.write_text(f"{dt:.1f}")
    return dt


def make_data(out: Path, a: argparse.Namespace) -> dict[str, float]:
    """The context splits and the same splits without context; returns step times."""
    py = sys.executable
    times = {"synth": run([py, "-m", "resdepth.data.cli", "synth", "--out", str(out / "context"),
                           "--train", str(a.train), "--val", "64", "--test", "128",
                           "--sequence-length", str(a.sequence_length), "--context-ms",
                           str(a.context_ms), "--context-bins", str(a.context_bins),
                           "--workers", "2"], out / "synth.log")}
    for split in ("train", "val", "test"):
        run([py, "-m", "resdepth.data.cli", "reshard", str(out / "context" / split),
             str(out / "plain" / split), "--per-shard", "64", "--drop-context"],
            out / f"drop-{split}.log")
    return times


def train_and_eval(out: Path, variant: str) -> dict[str, float]:
    py, root, runs = sys.executable, out / variant, out / "runs" / variant
    runs.mkdir(parents=True, exist_ok=True)
    times = {"regression": run([py, "-m", "resdepth.train", "experiment=baseline_regression",
                                f"data.root={root}", f"run.dir={runs / 'regression'}"],
                               runs / "regression.log")}
    times["diffusion"] = run([py, "-m", "resdepth.train", "experiment=baseline_diffusion",
                              f"data.root={root}", f"run.dir={runs / 'diffusion'}",
                              f"model.regression_ckpt={runs / 'regression'}"], runs / "diffusion.log")
    times["eval"] = run([py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                         "-m", "resdepth.eval", "--regression", str(runs / "regression"),
                         "--diffusion", str(runs / "diffusion"), "--data", str(root / "test"),
                         "--out", str(runs / "eval"), *EVAL], runs / "eval.log")
    return times


def split_bytes(split: Path) -> tuple[int, int]:
    index = json.loads((split / "index.json").read_text())
    return sum(s["bytes"] for s in index["shards"]), int(index["num_samples"])


def table(out: Path) -> list[str]:
    rows = ["| run | windows | regression abs_rel | regression RMSE m | reg + diffusion abs_rel "
            "| reg + diffusion RMSE m | diffusion CRPS m | noise CRPS m | pixels |",
            "|---|---|---|---|---|---|---|---|---|"]
    for variant in ("plain", "context"):
        m = json.loads((out / "runs" / variant / "eval" / "metrics.json").read_text())
        for name, part in (("all", m), ("low_activity", m["groups"]["low_activity"]),
                           ("active", m["groups"]["active"])):
            r, d, n = part["regression"], part["diffusion"], part["noise_baseline"]
            rows.append(f"| {'with' if variant == 'context' else 'without'} context | {name} | "
                        f"{r['abs_rel']:.4f} | {r['rmse']:.3f} | {d['abs_rel']:.4f} | "
                        f"{d['rmse']:.3f} | {d['crps']:.4f} | {n['crps']:.4f} | "
                        f"{r['num_valid_pixels']:,} |")
    return rows


def gains(out: Path) -> list[str]:
    m = {v: json.loads((out / "runs" / v / "eval" / "metrics.json").read_text())
         for v in ("plain", "context")}
    lines = []
    for name, get in (("all", lambda x: x), ("low_activity", lambda x: x["groups"]["low_activity"])):
        for pred, key in (("regression", "abs_rel"), ("diffusion", "abs_rel"),
                          ("diffusion", "crps"), ("regression", "rmse"), ("diffusion", "rmse")):
            a, b = get(m["plain"])[pred][key], get(m["context"])[pred][key]
            lines.append(f"- {name} windows, {pred} {key}: {a:.4f} -> {b:.4f} "
                         f"({100 * (b - a) / a:+.1f} %)")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-context")
    p.add_argument("--train", type=int, default=1536)
    p.add_argument("--sequence-length", type=int, default=8)
    p.add_argument("--context-ms", type=float, default=200.0)
    p.add_argument("--context-bins", type=int, default=4)
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    times = make_data(out, a)
    cost = {v: train_and_eval(out, v) for v in ("plain", "context")}
    print("\n".join(table(out)))
    print()
    print("\n".join(gains(out)))
    (bc, n), (bp, _) = split_bytes(out / "context" / "train"), split_bytes(out / "plain" / "train")
    print(f"\nbytes per sample: {bc / n:,.0f} with context, {bp / n:,.0f} without "
          f"(+{100 * (bc - bp) / bp:.0f} %); synth of all splits with context {times['synth']:.0f} s")
    for v in ("plain", "context"):
        print(f"{v}: regression {cost[v]['regression']:.0f} s, diffusion {cost[v]['diffusion']:.0f} s, "
              f"evaluation {cost[v]['eval']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
