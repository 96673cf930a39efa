"""GPU figures at 256x320 with a CorrDiff-width U-Net: training images/s per stage and variant
(fp32, TF32, bf16, NCHW vs channels-last, torch.compile, Apex group norm when installed), peak
memory, the trainer's data wait, and evaluation samples/s with members batched or not.

    python bench/gpu_bench.py [--batch 8] [--steps 20] [--skip compile,train,eval]
    python bench/gpu_bench.py --cpu-smoke     # tiny sizes on the CPU: checks the script runs

Without a GPU (and without --cpu-smoke) it says so and exits 0. Net: SongUNetPosEmbd,
model_channels 128, channel_mult [1,2,2,2,2], 4 blocks, attention at 28 (as CorrDiff; at 256x320
only the 16x20 bottleneck attends), 5 event bins. A step is the trainer's own engine step (fused
AdamW with the on-device non-finite guard); the regression stage trains a RegressionNet, the
residual stage an EDMResidualNet beside the frozen regression net.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CORRDIFF = ["model.arch=SongUNetPosEmbd", "model.regression_arch=SongUNetPosEmbd",
            "model.model_channels=128", "model.channel_mult=[1,2,2,2,2]", "model.num_blocks=4",
            "model.attn_resolutions=[28]"]
SMOKE = ["model.model_channels=8", "model.channel_mult=[1,2]", "model.num_blocks=1",
         "model.attn_resolutions=[]"]
BINS = 5


def load_cfg(extra: list[str]):
    from resdepth.config import load_config
    from resdepth.train.config import Config

    return load_config(Config, ["experiment=baseline_regression", *extra])


def nets(cfg, hw: tuple[int, int], device: torch.device, apex: bool = False):
    from resdepth.models.build import arch_spec, build_net

    torch.manual_seed(0)
    reg = build_net(arch_spec(cfg.model, "regression", BINS, list(hw)), use_apex_gn=apex).to(device)
    cfg.model.stage = "diffusion"
    res = build_net(arch_spec(cfg.model, "diffusion", BINS, list(hw)), use_apex_gn=apex).to(device)
    cfg.model.stage = "regression"
    return reg, res


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(engine, loss_fn, batch: dict, steps: int, device: torch.device) -> float:
    """Images/s over ``steps`` engine steps after 3 warm-up steps."""
    for i in range(steps + 3):
        if i == 3:
            sync(device)
            t0 = time.perf_counter()
        engine.train_step(loss_fn, [batch], 1e-4)
    sync(device)
    return steps * batch["events"].shape[0] / (time.perf_counter() - t0)


def train_section(args, device: torch.device, hw: tuple[int, int], model: list[str]) -> None:
    from resdepth.diffusion.loss import RegressionLoss, ResidualLoss
    from resdepth.train.engine import DDPEngine, configure_backends

    n = args.batch
    g = torch.Generator(device).manual_seed(0)
    batch = {"events": torch.randn(n, BINS, *hw, device=device, generator=g),
             "depth": torch.rand(n, 1, *hw, device=device, generator=g),
             "mask": (torch.rand(n, 1, *hw, device=device, generator=g) > 0.2).float()}
    variants = [("fp32", dict(precision="fp32", tf32=False), {}),
                ("fp32 + TF32", dict(precision="fp32", tf32=True), {}),
                ("bf16, NCHW", dict(precision="bf16"), {"nchw": True}),
                ("bf16, channels-last", dict(precision="bf16"), {}),
                ("bf16, channels-last, compile", dict(precision="bf16", compile=True), {}),
                ("bf16, channels-last, Apex GN", dict(precision="bf16"), {"apex": True})]
    print(f"training step, batch {n}, {hw[0]}x{hw[1]}, {args.steps} timed steps")
    print(f"{'variant':<32}{'stage':<12}{'images/s':>10}{'peak GiB':>10}")
    for name, tc, opts in variants:
        if "compile" in name and "compile" in args.skip:
            continue
        if opts.get("apex"):
            try:
                import apex.contrib.group_norm  # noqa: F401
            except ImportError:
                print(f"{name:<32}{'-':<12}  skipped: NVIDIA Apex is not installed")
                continue
        cpu = ["trainer.cpu_bf16=true"] if device.type == "cpu" else []
        cfg = load_cfg([*model, *(f"trainer.{k}={str(v).lower()}" for k, v in tc.items()), *cpu])
        configure_backends(cfg.trainer, device)
        reg, res = nets(cfg, hw, device, apex=opts.get("apex", False))
        if opts.get("nchw"):
            for net in (reg, res):
                net.unet.memory_format = torch.contiguous_format
        stages = [("regression", reg, lambda m, b, i: RegressionLoss()(m, b["depth"], b["events"], b["mask"]))]
        frozen = ResidualLoss(reg.eval().requires_grad_(False))
        gen = torch.Generator(device).manual_seed(1)
        stages.append(("residual", res, lambda m, b, i: frozen(m, b["depth"], b["events"], b["mask"],
                                                              generator=gen)))
        for stage, net, loss_fn in stages:
            if stage == "regression":
                net = nets(cfg, hw, device, apex=opts.get("apex", False))[0]
                if opts.get("nchw"):
                    net.unet.memory_format = torch.contiguous_format
            engine = DDPEngine(net.train(), cfg.trainer, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                ips = time_steps(engine, loss_fn, batch, args.steps, device)
            except torch.cuda.OutOfMemoryError:
                print(f"{name:<32}{stage:<12}  out of memory")
                continue
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            print(f"{name:<32}{stage:<12}{ips:>10.1f}{peak:>10.1f}", flush=True)
            del engine
        del reg, res
        if device.type == "cuda":
            torch.cuda.empty_cache()


def trainer_section(args, device: torch.device, hw: tuple[int, int], model: list[str]) -> None:
    """The real trainer on synthetic shards: images/s and data wait from its stats.jsonl."""
    work = Path(tempfile.mkdtemp(prefix="gpu_bench_"))
    n = max(4 * args.batch, 64) if device.type == "cuda" else 8
    subprocess.run([sys.executable, "-m", "resdepth.data.cli", "synth", "--out", str(work / "d"),
                    "--train", str(n), "--val", "4", "--test", "4", "--height", str(hw[0]),
                    "--width", str(hw[1]), "--bins", str(BINS), "--workers", str(min(8, os.cpu_count() or 1))],
                   check=True, capture_output=True, cwd=REPO)
    steps = args.steps * 3 if device.type == "cuda" else 4
    workers = min(6, (os.cpu_count() or 2) - 1) if device.type == "cuda" else 0
    run = work / "run"
    batch = args.batch if device.type == "cuda" else 2
    cmd = [sys.executable, "-m", "resdepth.train", "experiment=baseline_regression",
           f"data.root={work / 'd'}", f"run.dir={run}", *model, f"trainer.batch_size={batch}",
           f"trainer.max_steps={steps}", f"run.log_every={max(steps // 3, 1)}", "run.val_every=0",
           "trainer.ckpt_every_steps=0", "trainer.ckpt_every_minutes=0", f"data.num_workers={workers}",
           "trainer.ema_halflife_images=500"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        print(f"trainer run failed:\n{proc.stderr[-2000:]}")
        return
    recs = [json.loads(l) for l in (run / "stats.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "images_per_s" in r][1:] or recs
    precision = "bf16" if device.type == "cuda" else "fp32"
    print(f"trainer ({precision}, regression, {workers} loader workers, batch {batch}): "
          f"{statistics.median(r['images_per_s'] for r in recs):.1f} images/s, data wait "
          f"{100 * statistics.median(r['data_wait_frac'] for r in recs):.1f}%")


def eval_section(args, device: torch.device, hw: tuple[int, int], model: list[str]) -> None:
    from resdepth.diffusion.sampler import generate_ensemble

    cfg = load_cfg(model)
    reg, res = nets(cfg, hw, device)
    reg.eval().requires_grad_(False)
    res.eval().requires_grad_(False)
    images, members = (4, 8) if device.type == "cuda" else (1, 2)
    steps = 8 if device.type == "cuda" else 2
    cond = torch.randn(images, BINS, *hw, device=device)
    keys = [f"k{i}" for i in range(images)]
    print(f"evaluation: {images} images x {members} members, {steps} Heun steps")
    for prec in ("fp32", "bf16"):
        for rows in (images, images * members):
            amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=prec == "bf16")
            with torch.no_grad(), amp:
                generate_ensemble(res, reg, cond, keys, seed=0, members=members, num_steps=1,
                                  max_rows=rows)  # warm-up
                sync(device)
                t0 = time.perf_counter()
                generate_ensemble(res, reg, cond, keys, seed=0, members=members, num_steps=steps,
                                  max_rows=rows)
                sync(device)
            label = "members one batch at a time" if rows == images else "members and images together"
            print(f"  {prec}, {label} ({rows} rows): {images / (time.perf_counter() - t0):.2f} samples/s",
                  flush=True)
    metrics_timing(device, hw, images, members)


def metrics_timing(device: torch.device, hw: tuple[int, int], images: int, members: int) -> None:
    """Scoring one batch (depth metrics, CRPS, sharpness) where the predictions are vs on the host."""
    from resdepth.eval.metrics import depth_metric_sums, ensemble_metric_sums, sharpness_sums

    kw = {"protocol": "pooled", "max_depth": 80.0, "min_depth": 1.978}
    g = torch.Generator().manual_seed(0)
    true = 2 + 78 * torch.rand(images, 1, *hw, generator=g)
    pred = {"members": true[:, None] * (1 + 0.1 * torch.randn(images, members, 1, *hw, generator=g)),
            "depth": true, "mask": torch.ones(images, 1, *hw, dtype=torch.uint8)}
    pred = {k: v.to(device) for k, v in pred.items()}  # where the sampler leaves them

    def score(on: torch.device) -> float:
        x = {k: v.to(on) for k, v in pred.items()}
        sums = {**depth_metric_sums(x["members"].mean(1), x["depth"], x["mask"], **kw),
                **ensemble_metric_sums(x["members"], x["depth"], x["mask"], **kw),
                **sharpness_sums(x["members"], x["depth"], x["mask"], 80.0)}
        return float(sums["crps_sum"])  # one sync, as evaluation has at the end of a unit

    for on in dict.fromkeys([device, torch.device("cpu")]):
        score(on)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for _ in range(5):
            score(on)  # on the host this includes the copy of the predictions
        sync(device)
        print(f"  metrics of one batch on {on.type}: {(time.perf_counter() - t0) / 5 * 1e3:.1f} ms", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--skip", default="", help="comma-separated sections: compile, train, trainer, eval")
    ap.add_argument("--cpu-smoke", action="store_true")
    args = ap.parse_args()
    args.skip = set(filter(None, args.skip.split(",")))
    if args.cpu_smoke:
        device, hw, model = torch.device("cpu"), (32, 48), SMOKE
        args.batch, args.steps = 2, 1
        args.skip.add("compile")
    elif torch.cuda.is_available():
        device, hw, model = torch.device("cuda", 0), (256, 320), CORRDIFF
    else:
        print("no GPU here: GPU figures skipped (use --cpu-smoke to check the script runs)")
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__} on {name}")
    if "train" not in args.skip:
        train_section(args, device, hw, model)
    if "trainer" not in args.skip:
        trainer_section(args, device, hw, model)
    if "eval" not in args.skip:
        eval_section(args, device, hw, model)


if __name__ == "__main__":
    main()
