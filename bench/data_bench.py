"""Data-layer throughput: synthetic generation, packing (.npz, and MVSEC / DSEC recordings at their
native 260x346 / 480x640 with rectification), voxelisation, and the loader against a bare tar
read of the same shards.

    python bench/data_bench.py [--samples 512] [--height 64 --width 64 --bins 5]
                               [--mvsec-frames 100 --events-per-frame 20000]

Goals: voxelisation >= 10 M events/s on one core; loader >= 0.6 of the bare tar read rate.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from resdepth.data import format as fmt  # noqa: E402
from resdepth.data.loader import ShardStream, split_urls  # noqa: E402
from resdepth.data.sources import NpzSource, SynthSource, Window, pack_source  # noqa: E402
from resdepth.data.synthetic import SynthParams, synth_sample  # noqa: E402
from resdepth.data.voxel import events_to_voxel  # noqa: E402
from resdepth.data.writer import write_split  # noqa: E402

console = Console()


def bench_synth(params: SynthParams, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        synth_sample(0, "train", i, params)
    return n / (time.perf_counter() - t)


def bench_voxel(n_events: int, repeats: int = 3) -> float:
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 346, n_events), rng.integers(0, 260, n_events)
    t, p = np.sort(rng.random(n_events)), rng.choice([-1, 1], n_events)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        events_to_voxel(x, y, t, p, 5, 260, 346, 0.0, 1.0)
        best = min(best, time.perf_counter() - t0)
    return n_events / best


def bench_pack(root: Path, params: SynthParams, n: int) -> float:
    """MB/s of ``pack`` from per-sample .npz voxel files (written first, not timed)."""
    src = root / "npz"
    src.mkdir()
    for i in range(n):
        s = synth_sample(0, "test", i, params)
        np.savez(src / f"s{i:05d}.npz", events=s["events"], depth=s["depth"], mask=s["mask"])
    t = time.perf_counter()
    index = write_split(root / "packed", NpzSource(str(src)), 64, {"command": "bench"})
    return sum(s["bytes"] for s in index["shards"]) / 1e6 / (time.perf_counter() - t)


def bench_pack_recording(root: Path, fmt_name: str, frames: int, per_frame: int) -> tuple:
    """``pack`` of one MVSEC or DSEC recording in the shipped layout (written first, not timed):
    (M events/s, input MB/s, output MB/s, events, samples). Input = events and depth files."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.data.sources.fakes import write_dsec, write_mvsec  # the test suite's format fakes

    src = root / fmt_name
    if fmt_name == "mvsec":
        write_mvsec(src, "outdoor_day2", frames=frames, events_per_frame=per_frame)
        seq = "outdoor_day2"
    else:
        write_dsec(src, "zurich_city_00_a", frames=frames, events_per_frame=per_frame)
        seq = "zurich_city_00_a"
    inputs = sum(p.stat().st_size for p in src.rglob("*") if p.suffix in (".hdf5", ".h5", ".png"))
    t = time.perf_counter()
    source = pack_source(fmt_name, str(src), [seq], 5, Window(), "round")
    index = write_split(root / f"{fmt_name}-packed", source, 64, {"command": "bench"})
    dt = time.perf_counter() - t
    n_events = sum(s["num_events"] for s in _metas(root / f"{fmt_name}-packed", index))
    out_mb = sum(s["bytes"] for s in index["shards"]) / 1e6
    return n_events / 1e6 / dt, inputs / 1e6 / dt, out_mb / dt, n_events, index["num_samples"]


def _metas(split: Path, index: dict) -> list[dict]:
    return [fmt.decode_sample(r)["meta"] for u in fmt.shard_paths(split, index) for r in fmt.iter_shard(u)]


def bare_read(urls: list[str]) -> tuple[float, float]:
    """Samples/s and MB/s of reading the raw tar members (no decoding), the upper bound."""
    t, n, nbytes = time.perf_counter(), 0, 0
    for url in urls:
        for raw in fmt.iter_shard(url):
            n += 1
            nbytes += sum(len(v) for k, v in raw.items() if not k.startswith("__"))
    dt = time.perf_counter() - t
    return n / dt, nbytes / 1e6 / dt


def loader_read(urls: list[str], index: dict, workers: int, batch: int) -> tuple[float, float, float]:
    """Steady-state samples/s and MB/s over two epochs, timed from the first batch, and the
    start-up (worker processes, first batch) in seconds, which is paid once per epoch."""
    s = ShardStream(urls, mode="train", batch_size=batch, num_workers=workers, index=index,
                    rank=0, world_size=1, shuffle_buffer=64)
    t0 = time.perf_counter()
    t = startup = None
    n, nbytes = 0, 0
    for _ in range(2):
        for b in s:
            if t is None:  # the clock starts once the pipeline is full
                t, startup = time.perf_counter(), time.perf_counter() - t0
                continue
            n += len(b["key"])
            nbytes += sum(b[k].numel() * b[k].element_size() // (2 if k == "events" else 1)
                          for k in ("events", "depth_m")) + b["mask"].numel()
    dt = time.perf_counter() - t
    return n / dt, nbytes / 1e6 / dt, startup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=768, help="samples in the loader shards")
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--bins", type=int, default=5)
    ap.add_argument("--mvsec-frames", type=int, default=100, help="depth frames of the recordings")
    ap.add_argument("--events-per-frame", type=int, default=20_000,
                    help="events per depth interval (MVSEC outdoor_day: ~20k at 20 Hz)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = SynthParams(height=args.height, width=args.width, bins=args.bins)
    rows: list[tuple[str, str, str]] = []
    rows.append(("synthetic generation (1 core)", f"{bench_synth(params, 60):.1f} samples/s", ">= 50"))
    rows.append(("voxelisation (1 core, 5 bins, 346x260)",
                 f"{bench_voxel(4_000_000) / 1e6:.1f} M events/s", ">= 10"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows.append(("pack .npz -> shards (1 process)", f"{bench_pack(root, params, 128):.1f} MB/s", ""))
        for name, hw in (("mvsec", "260x346"), ("dsec", "480x640")):
            ev_s, in_mb, out_mb, n_ev, n_s = bench_pack_recording(root, name, args.mvsec_frames,
                                                                  args.events_per_frame)
            rows.append((f"pack {name} {hw}, rectified (1 process)",
                         f"{ev_s:.2f} M events/s, {in_mb:.1f} MB/s in, {out_mb:.1f} MB/s out",
                         f"{n_ev / 1e6:.2f} M events, {n_s} samples"))
        write_split(root / "train", SynthSource("train", args.samples, 0, params), 64,
                    {"command": "bench"}, workers=2)
        urls, index = split_urls(str(root / "train")), fmt.read_index(root / "train")
        bare_read(urls)  # warm the page cache
        bare = bare_read(urls)
        rows.append(("bare tar read (no decoding)", f"{bare[0]:.0f} samples/s, {bare[1]:.1f} MB/s", ""))
        for w in (0, 2):
            got = loader_read(urls, index, w, 16)
            rows.append((f"ShardStream, {w} workers", f"{got[0]:.0f} samples/s, {got[1]:.1f} MB/s",
                         f"ratio to bare read {got[0] / bare[0]:.2f} (goal >= 0.6); "
                         f"start-up {got[2]:.2f} s per epoch"))
    table = Table(title=f"data layer throughput ({args.height}x{args.width}, {args.bins} bins, "
                        f"{os.cpu_count()} cores)")
    for col in ("stage", "rate", "goal / note"):
        table.add_column(col)
    for r in rows:
        table.add_row(*r)
    console.print(table)


if __name__ == "__main__":
    main()
