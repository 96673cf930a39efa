"""Model benchmarks: median forward+backward time of the U-Net, ours beside PhysicsNeMo's.

    .venv/bin/python bench/model_bench.py
runs ours and, when the reference environment exists (``RESDEPTH_PHYSICSNEMO_PYTHON``, default
``/tmp/pnemo/bin/python``), PhysicsNeMo 2.2.2's in a subprocess of that interpreter with the
same thread count, and prints the ratio. Each section is one function returning its figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_PYTHON = os.environ.get("RESDEPTH_PHYSICSNEMO_PYTHON", "/tmp/pnemo/bin/python")
UNET_KWARGS = dict(img_resolution=64, in_channels=6, out_channels=1, model_channels=32,
                   channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[16], dropout=0.0)
BATCH = 8


def median_ms(step: Callable[[], None], warmup: int, repeats: int) -> float:
    """Median wall time of ``step`` in milliseconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def unet_fwd_bwd_ms(impl: str, warmup: int = 2, repeats: int = 7) -> dict[str, Any]:
    """Forward+backward of SongUNet (``impl`` 'resdepth' or 'physicsnemo') at batch 8, 64x64."""
    if impl == "physicsnemo":
        import tv_shim  # noqa: F401  (lets PhysicsNeMo's torchvision import beside CPU torch)
        from physicsnemo.models.diffusion_unets import SongUNet
    else:
        from resdepth.models import SongUNet
    torch.manual_seed(0)
    net = SongUNet(**UNET_KWARGS).train()
    x = torch.randn(BATCH, UNET_KWARGS["in_channels"], 64, 64)
    sigma = torch.rand(BATCH) + 0.1

    def step() -> None:
        net.zero_grad(set_to_none=True)
        net(x, sigma, None).square().mean().backward()

    return {"impl": impl, "ms": median_ms(step, warmup, repeats),
            "params": sum(p.numel() for p in net.parameters()), "threads": torch.get_num_threads()}


def reference_available() -> bool:
    return Path(REFERENCE_PYTHON).exists()


def run_in_reference(section: str, threads: int) -> Optional[dict[str, Any]]:
    """Run ``section`` of this script in the reference interpreter; its JSON result."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads),
               PYTHONWARNINGS="ignore")
    out = subprocess.run([REFERENCE_PYTHON, __file__, "--section", section, "--impl", "physicsnemo",
                          "--threads", str(threads), "--json"],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def section_unet(threads: int) -> None:
    """Print ours, the reference's (when present) and the ratio."""
    ours = unet_fwd_bwd_ms("resdepth")
    print(f"SongUNet fwd+bwd  batch {BATCH} 64x64 in6 out1 mc32 [1,2,2] nb2 attn[16], "
          f"{ours['params']:,} params, {threads} threads")
    print(f"  resdepth     {ours['ms']:8.1f} ms")
    if not reference_available():
        print(f"  physicsnemo  (reference environment {REFERENCE_PYTHON} absent)")
        return
    ref = run_in_reference("unet", threads)
    print(f"  physicsnemo  {ref['ms']:8.1f} ms")
    print(f"  ratio resdepth/physicsnemo {ours['ms'] / ref['ms']:.3f}")


SECTIONS = {"unet": (section_unet, unet_fwd_bwd_ms)}


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--section", choices=sorted(SECTIONS), action="append")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    p.add_argument("--impl", default="resdepth", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.json:  # one measurement for the parent process
        for name in a.section:
            print(json.dumps(SECTIONS[name][1](a.impl)))
        return
    for name in a.section or sorted(SECTIONS):
        SECTIONS[name][0](a.threads)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
