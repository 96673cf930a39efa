"""Training throughput: images/s of a regression step and a residual step, with 1 process and with
2 DDP processes, and the fraction of step time spent waiting for data.

Runs the real ``resdepth-train`` on synthetic shards and reads what it logs to ``stats.jsonl``
(the first log interval, which holds start-up, is left out). On a GPU machine it also reports
bf16 throughput at the largest batch that fits and the memory per GPU.

    python bench/train_bench.py [--steps 60] [--shards DIR] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = ["model.model_channels=16", "model.num_blocks=1", "model.attn_resolutions=[]"]


def run_train(args: list[str], nproc: int) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    if nproc == 1:
        cmd = [sys.executable, "-m", "resdepth.train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "resdepth.train", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"training failed:\n{proc.stderr[-3000:]}")


def throughput(run_dir: Path) -> tuple[float, float]:
    """Median images/s and data-wait fraction over the log intervals after the first."""
    recs = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "images_per_s" in r][1:]
    return (statistics.median(r["images_per_s"] for r in recs),
            statistics.median(r["data_wait_frac"] for r in recs))


def cpu_section(root: Path, work: Path, steps: int, batch: int) -> list[tuple]:
    rows = []
    common = [f"data.root={root}", f"trainer.max_steps={steps}", f"trainer.batch_size={batch}",
              "run.val_every=0", "run.log_every=10", "trainer.ckpt_every_steps=0", *MODEL]
    reg = work / "reg-1"
    run_train(["experiment=baseline_regression", f"run.dir={reg}", *common], 1)
    rows.append(("regression", 1, *throughput(reg)))
    run_train(["experiment=baseline_regression", f"run.dir={work / 'reg-2'}", *common], 2)
    rows.append(("regression", 2, *throughput(work / "reg-2")))
    for nproc in (1, 2):
        d = work / f"diff-{nproc}"
        run_train(["experiment=baseline_diffusion", f"run.dir={d}", f"model.regression_ckpt={reg}",
                   *common], nproc)
        rows.append(("residual", nproc, *throughput(d)))
    return rows


def gpu_section() -> None:
    """bf16 images/s at the largest power-of-two batch that fits, and peak memory (one GPU)."""
    import time

    import torch

    from resdepth.config import load_config
    from resdepth.train.config import Config
    from resdepth.diffusion.loss import RegressionLoss
    from resdepth.models.build import arch_spec, build_net

    # levels 256, 128, 64: attention in the bottleneck block only
    cfg = load_config(Config, ["experiment=baseline_regression", "model.model_channels=64",
                               "model.num_blocks=2", "model.attn_resolutions=[]"])
    spec = arch_spec(cfg.model, "regression", 5, [256, 256])
    net = build_net(spec).cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    loss_fn = RegressionLoss()
    batch, best = 8, None
    while batch <= 1024:
        try:
            x = torch.randn(batch, 5, 256, 256, device="cuda")
            d, m = torch.rand(batch, 1, 256, 256, device="cuda"), torch.ones(batch, 1, 256, 256, device="cuda")
            torch.cuda.reset_peak_memory_stats()
            for i in range(8):
                if i == 3:
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = loss_fn(net, d, x, m)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            best = (batch, 5 * batch / (time.perf_counter() - t0), torch.cuda.max_memory_allocated() / 2**30)
            batch *= 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    if best:
        print(f"GPU bf16 regression step, 256x256, model_channels 64: largest batch {best[0]}, "
              f"{best[1]:.0f} images/s, peak memory {best[2]:.1f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--shards", help="existing dataset root (default: synthesise --samples)")
    parser.add_argument("--samples", type=int, default=1024,
                        help="training samples to synthesise; loader workers restart every epoch, "
                             "so very short epochs show that start-up as data wait")
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="train_bench_"))
    root = Path(args.shards) if args.shards else work / "shards"
    if not args.shards:
        subprocess.run([sys.executable, "-m", "resdepth.data.cli", "synth", "--out", str(root),
                        "--train", str(args.samples), "--val", "16", "--test", "16", "--workers", "2"],
                       check=True, capture_output=True, cwd=REPO)
    import torch

    from resdepth.data.format import read_index

    n_train = read_index(root / "train")["num_samples"]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {n_train} training samples of 64x64 "
          f"({n_train // args.batch} batches per epoch in one process), batch {args.batch}, "
          f"U-Net model_channels 16, {args.steps} steps")
    rows = cpu_section(root, work, args.steps, args.batch)
    print(f"{'step':<12}{'processes':>10}{'images/s':>10}{'data wait':>11}")
    for name, nproc, ips, wait in rows:
        print(f"{name:<12}{nproc:>10}{ips:>10.1f}{100 * wait:>10.1f}%")
    if torch.cuda.is_available():
        gpu_section()
    else:
        print("no GPU here: bf16 / largest-batch / memory-per-GPU figures skipped")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
