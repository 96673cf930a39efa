"""Training memory per frame size with the real-data configs: one optimiser step, one process.

    python bench/memory_bench.py                       # MVSEC 260x346 and DSEC 480x640, both stages
    python bench/memory_bench.py --batch 2 --input crop mvsec_regression

Each case runs in a fresh process (peak figures are per process): the config's U-Net (its width,
levels, attention), random events, depth and mask of the frame size (``--input frame``) or of the
config's training crop (``--input crop``), the stage's loss (stage 2 with a frozen random
regression net), backward and an AdamW step, under the trainer's autocast. Printed: parameters,
U-Net input size, seconds of the step, and memory: on CUDA ``torch.cuda.max_memory_allocated``,
on CPU the process's peak resident set size and its growth during the step.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {"mvsec_regression": (260, 346), "mvsec_diffusion": (260, 346),
         "dsec_regression": (480, 640), "dsec_diffusion": (480, 640)}
BINS = 5


def rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(name: str, input_kind: str, batch: int, device_name: str) -> dict:
    import torch

    from resdepth.config import load_config
    from resdepth.train.config import Config
    from resdepth.models.build import arch_spec, build_net
    from resdepth.train.engine import autocast_ctx
    from resdepth.train.stage import build_loss

    cfg = load_config(Config, [f"experiment={name}"])
    frame = CASES[name]
    h, w = cfg.data.crop if input_kind == "crop" and cfg.data.crop else frame
    device = torch.device(device_name)
    torch.manual_seed(0)
    patching = bool(cfg.diffusion.patch_shape)
    net = build_net(arch_spec(cfg.model, cfg.model.stage, BINS, list(frame), patching),
                    cfg.diffusion.sigma_data).to(device).train()
    regression = None
    if cfg.model.stage == "diffusion":
        regression = build_net(arch_spec(cfg.model, "regression", BINS, list(frame)))
        regression = regression.to(device).eval().requires_grad_(False)
    loss_fn = build_loss(cfg, regression)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.trainer.lr)
    g = torch.Generator().manual_seed(1)
    events = torch.randn(batch, BINS, h, w, generator=g) * (torch.rand(batch, BINS, h, w, generator=g) < 0.1)
    mask = (torch.rand(batch, 1, h, w, generator=g) > 0.2).float()
    batch_d = {"events": events.to(device), "depth": (torch.rand(batch, 1, h, w, generator=g) * mask).to(device),
               "mask": mask.to(device), "origin": torch.zeros(batch, 2, dtype=torch.long, device=device)}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2 ** 20
    before = rss_mib()
    t0 = time.perf_counter()
    with autocast_ctx(cfg.trainer, device):
        loss = loss_fn(net, batch_d, torch.Generator(device).manual_seed(2))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    out = {"config": name, "frame": f"{frame[0]}x{frame[1]}", "input": f"{h}x{w}", "batch": batch,
           "params_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 2),
           "unet_resolution": "x".join(map(str, net.unet.img_resolution
                                           if isinstance(net.unet.img_resolution, list)
                                           else [net.unet.img_resolution] * 2)),
           "step_s": round(time.perf_counter() - t0, 2), "device": device.type,
           "loss_finite": bool(torch.isfinite(loss).item())}
    if device.type == "cuda":
        out["peak_allocated_MiB"] = round(torch.cuda.max_memory_allocated() / 2 ** 20)
        out["peak_above_weights_MiB"] = round(out["peak_allocated_MiB"] - base)
    else:
        out["peak_rss_MiB"] = round(rss_mib())
        out["step_rss_growth_MiB"] = round(rss_mib() - before)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="*", default=list(CASES), help=f"of {list(CASES)}")
    p.add_argument("--input", choices=["frame", "crop"], default="frame",
                   help="whole frames (validation, whole-frame training) or the config's crop")
    p.add_argument("--batch", type=int, default=1, help="images per step")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.device is None:
        import torch

        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.one:
        print(json.dumps(one(a.configs[0], a.input, a.batch, a.device)), flush=True)
        return
    for name in a.configs:
        cmd = [sys.executable, __file__, name, "--one", "--input", a.input, "--batch", str(a.batch),
               "--device", a.device]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}")
            continue
        print(proc.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
