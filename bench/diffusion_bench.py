"""Timings of the diffusion core: one residual-loss training step, and patched vs whole-image sampling.

    python bench/diffusion_bench.py [--device cuda] [--steps 18] [--repeat 3]

Nets are the configured default sizes (``ModelConfig``), built the way the trainer builds them.
"""
from __future__ import annotations

import argparse
import time

import torch

from resdepth.diffusion.loss import ResidualLoss
from resdepth.diffusion.patching import GridPatching
from resdepth.diffusion.sampler import generate_ensemble
from resdepth.models.build import arch_spec, build_net
from resdepth.models.config import ModelConfig

COND_CHANNELS = 5  # event voxel-grid bins


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device, repeat: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeat


def residual_step(device: torch.device, repeat: int, batch: int = 8, size: int = 64) -> None:
    """Forward + backward of the residual loss, batch 8 at 64x64."""
    cfg = ModelConfig(stage="diffusion")
    torch.manual_seed(0)
    net = build_net(arch_spec(cfg, "diffusion", COND_CHANNELS, [size, size])).to(device)
    reg = build_net(arch_spec(cfg, "regression", COND_CHANNELS, [size, size])).to(device)
    reg.eval().requires_grad_(False)
    loss_fn = ResidualLoss(reg)
    g = torch.Generator(device).manual_seed(0)
    depth = torch.rand(batch, 1, size, size, device=device)
    cond = torch.randn(batch, COND_CHANNELS, size, size, device=device)
    mask = torch.rand(batch, 1, size, size, device=device) > 0.2

    def step():
        net.zero_grad(set_to_none=True)
        loss_fn(net, depth, cond, mask, generator=g).backward()
    sec = _time(step, device, repeat)
    params = sum(p.numel() for p in net.parameters())
    print(f"residual-loss step  {cfg.arch} {params / 1e6:.2f} M params, batch {batch}, "
          f"{size}x{size}: {sec * 1e3:.1f} ms (forward + backward)")


def patched_sampling(device: torch.device, repeat: int, steps: int, size: int = 256,
                     patch: int = 128) -> None:
    """One ensemble member at ``size``^2: whole image vs ``patch``^2 patches, same patch-trained net."""
    cfg = ModelConfig(stage="diffusion", arch="SongUNetPosEmbd")
    torch.manual_seed(0)
    net = build_net(arch_spec(cfg, "diffusion", COND_CHANNELS, [size, size], patching=True))
    net = net.to(device).eval()
    reg = build_net(arch_spec(cfg, "regression", COND_CHANNELS, [size, size])).to(device).eval()
    cond = torch.randn(1, COND_CHANNELS, size, size, device=device)
    kw = dict(seed=0, members=1, num_steps=steps, S_churn=0.0)
    runs = [("whole image", GridPatching((size, size), (size, size))),
            ("patches, no overlap", GridPatching((size, size), (patch, patch), 0, 0)),
            ("patches, overlap 4, boundary 2", GridPatching((size, size), (patch, patch), 4, 2))]
    for i, (label, patching) in enumerate(runs):
        sec = _time(lambda: generate_ensemble(net, reg, cond, ["bench"], patch=patching, **kw),
                    device, repeat, warmup=i == 0 or device.type == "cuda")
        print(f"sampling {size}x{size}, {steps} Heun steps, {label} "
              f"({patching.num_patches} x {patching.patch_shape[0]}x{patching.patch_shape[1]}): "
              f"{sec:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=None,
                    help="sampler steps (default 18 on GPU, 4 on CPU to keep the run short)")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions (sampling: 1 on CPU)")
    args = ap.parse_args()
    device = torch.device(args.device)
    steps = args.steps or (18 if device.type == "cuda" else 4)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    residual_step(device, args.repeat)
    with torch.no_grad():
        patched_sampling(device, 1 if device.type == "cpu" else args.repeat, steps)


if __name__ == "__main__":
    main()
