"""Throughput of ``resdepth-eval``: samples/s on 1 and 2 processes, and patched vs whole-image sampling.

    python bench/eval_bench.py [--samples 32] [--size 64] [--ensemble 4] [--steps 8]

Every process runs with ``--threads 1`` (one intra-op thread), so 2 processes on a 2-core machine
compare like for like; the rate is the one ``resdepth-eval`` logs (samples evaluated / seconds
from the first unit to the barrier after the last, start-up excluded). The second part runs the
same evaluator at 256x256 with a net trained on patches, once on whole frames and once on
128x128 patches (overlap 16, boundary 8: 9 patches per frame).
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.eval.runner import make_exports, run_eval, write_split  # noqa: E402

MODEL = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[])
RATE = re.compile(r"evaluated (\d+) samples in ([\d.]+) s \(([\d.]+) samples/s, (\d+) process")


def rate(stderr: str) -> tuple[int, float, float]:
    m = RATE.search(stderr)
    if m is None:
        raise RuntimeError(f"no rate line in the output:\n{stderr[-3000:]}")
    return int(m.group(1)), float(m.group(2)), float(m.group(3))


def evaluate(exports: dict, data: Path, out: Path, nproc: int, extra: list[str]) -> tuple[int, float, float]:
    args = ["--regression", str(exports["regression"]), "--diffusion", str(exports["diffusion"]),
            "--data", str(data), "--out", str(out), "--device", "cpu", "--threads", "1",
            "--baseline", "none", "--preview", "0", *extra]
    return rate(run_eval(args, nproc=nproc).stderr)


def scaling(tmp: Path, a: argparse.Namespace) -> None:
    per_shard = 4
    write_split(tmp / "scale" / "test", [per_shard] * (a.samples // per_shard), seed=0,
                h=a.size, w=a.size)
    exports = make_exports(tmp / "scale_exports", size=(a.size, a.size), model=MODEL)
    extra = ["--ensemble", str(a.ensemble), "--steps", str(a.steps), "--batch", "4",
             "--unit-size", "4"]
    print(f"scaling: {a.samples} samples of {a.size}x{a.size}, 3 bins, ensemble {a.ensemble}, "
          f"{a.steps} stochastic steps, U-Net {MODEL}, torch.set_num_threads(1) per process")
    rates = {}
    for nproc in (1, 2):
        n, secs, r = evaluate(exports, tmp / "scale" / "test", tmp / f"scale_out{nproc}", nproc, extra)
        rates[nproc] = r
        print(f"  {nproc} process{'es' if nproc > 1 else '  '}: {n} samples in {secs:7.2f} s = "
              f"{r:6.3f} samples/s")
    print(f"  scaling 2 vs 1 process: {rates[2] / rates[1]:.2f}x (goal >= 1.7x)")


def patching(tmp: Path, a: argparse.Namespace) -> None:
    size = 256
    write_split(tmp / "big" / "test", [a.big_samples], seed=0, h=size, w=size)
    exports = make_exports(tmp / "big_exports", size=(size, size), model=MODEL, patching=True)
    extra = ["--ensemble", "2", "--steps", str(a.big_steps), "--batch", "1", "--unit-size", "1"]
    print(f"patching: {a.big_samples} samples of {size}x{size}, ensemble 2, {a.big_steps} steps, "
          "1 process, 1 thread")
    full = evaluate(exports, tmp / "big" / "test", tmp / "big_full", 1, extra)
    patched = evaluate(exports, tmp / "big" / "test", tmp / "big_patch", 1,
                       extra + ["--patch", "128", "--overlap", "16", "--boundary", "8"])
    print(f"  whole frame          : {full[2]:6.3f} samples/s ({full[1] / full[0]:.2f} s/sample)")
    print(f"  128x128 patches (x9) : {patched[2]:6.3f} samples/s ({patched[1] / patched[0]:.2f} "
          f"s/sample)")
    print(f"  patched / whole-frame time: {full[2] / patched[2]:.2f}x "
          f"(9 patches of 128^2 cover {9 * 128 * 128 / size ** 2:.2f}x the pixels of one frame)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=32, help="samples for the scaling run")
    p.add_argument("--size", type=int, default=64, help="image size for the scaling run")
    p.add_argument("--ensemble", type=int, default=4)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--big-samples", type=int, default=2, help="256x256 samples for the patch run")
    p.add_argument("--big-steps", type=int, default=4)
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--skip-patching", action="store_true")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        if not a.skip_scaling:
            scaling(Path(d), a)
        if not a.skip_patching:
            patching(Path(d), a)


if __name__ == "__main__":
    main()
