"""``resdepth-shards``: make, pack, verify, inspect and reshard resdepth tar shards.

Examples::

    resdepth-shards synth --out data/synth --train 1536 --val 64 --test 256 --workers 2
    resdepth-shards pack --format mvsec --src mvsec/ --sequence outdoor_day1 --out data/mvsec/test
    resdepth-shards verify data/synth/train
    resdepth-shards inspect data/synth/test --png preview.png
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from resdepth.data import format as fmt
from resdepth.data.format import DataError, make_sample, read_index
from resdepth.data.sources import (FORMATS, SynthSource, TarSource, TemporalContext, Window,
                                   detect_format, pack_source)
from resdepth.data.synthetic import SynthParams
from resdepth.data.verify import recompute_stats, verify_split
from resdepth.data.writer import write_split
from resdepth.utils.cli import user_errors
from resdepth.utils.errors import UserError
from resdepth.utils.logging import setup_logging
from resdepth.utils.viz import colorize_depth, colorize_events, save_grid

log = logging.getLogger("resdepth")
console = Console(highlight=False)
err = Console(stderr=True, highlight=False)


@contextlib.contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar driven by ``update(done, total)``."""
    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=err, transient=False) as prog:
        task = prog.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        yield update


def index_table(title: str, index: dict) -> Table:
    """A summary table of one split's index."""
    t = Table(title=title)
    for col in ("shards", "samples", "events", "depth", "MB", "depth min/mean/max [m]", "p2/p98 [m]"):
        t.add_column(col)
    s = index.get("depth_stats", {})
    mb = sum(x.get("bytes", 0) for x in index["shards"]) / 1e6
    t.add_row(str(len(index["shards"])), str(index["num_samples"]),
              f"{index['shapes']['events.npy']} {index['dtypes']['events.npy']}",
              f"{index['shapes']['depth.npy']} {index['dtypes']['depth.npy']}", f"{mb:.1f}",
              f"{s.get('min', 0):.2f} / {s.get('mean', 0):.2f} / {s.get('max', 0):.2f}",
              f"{s.get('p2', 0):.2f} / {s.get('p98', 0):.2f}")
    return t


# ---- subcommands --------------------------------------------------------------------------
def cmd_synth(a: argparse.Namespace) -> int:

    if (a.context_ms is None) != (a.context_bins is None):
        raise UserError("--context-ms and --context-bins go together")
    context = TemporalContext(a.context_ms, a.context_bins) if a.context_ms is not None else None
    params = SynthParams(height=a.height, width=a.width, bins=a.bins,
                         context_ms=context.ms if context else 0.0,
                         context_bins=context.bins if context else 0,
                         sequence_length=a.sequence_length)
    for split, n in (("train", a.train), ("val", a.val), ("test", a.test)):
        if n <= 0:
            continue
        src = SynthSource(split, n, a.seed, params)
        meta = {"command": "synth", "per_shard": a.per_shard, **src.describe()}
        with progress_bar(f"synth {split}") as update:
            index = write_split(Path(a.out) / split, src, a.per_shard, meta, a.workers, a.resume, update)
        console.print(index_table(f"{a.out}/{split}", index))
    return 0


def _pack_source(a: argparse.Namespace) -> Any:

    src = Path(a.src)
    fmt_name = a.format
    rectify: bool | str = not a.no_rectify
    if fmt_name is None:  # inferred from the path, as before --format existed
        # a directory of .npz files, or a recording file told apart as prediction does
        fmt_name = "npz" if src.is_dir() else detect_format(src)
        if fmt_name not in FORMATS or (fmt_name == "npz" and not src.is_dir()):
            raise SystemExit(f"resdepth-shards pack: {src}: pass --format (or a directory of .npz "
                             "files, or an HDF5 recording of MVSEC, DSEC or M3ED)")
        if fmt_name != "npz":
            rectify = "auto" if rectify else False
    if a.window_ms is not None:
        window = Window("ms", ms=a.window_ms)
    elif a.events_per_sample is not None:
        window = Window("count", count=a.events_per_sample)
    else:
        window = Window()
    if fmt_name == "npz" and (a.window_ms is not None or a.events_per_sample is not None):
        raise SystemExit("resdepth-shards pack: --window-ms/--events-per-sample need a recording "
                         "format (mvsec, dsec, ...), not per-sample .npz files")
    twice = sorted({s for s in a.sequence or [] if a.sequence.count(s) > 1})
    if twice:
        raise UserError(f"--sequence {', '.join(twice)} given more than once; name each sequence "
                         "once")
    bins = a.bins if fmt_name in ("npz", "dense") else (a.bins or 5)
    if (a.context_ms is None) != (a.context_bins is None):
        raise UserError("--context-ms and --context-bins go together")
    context = TemporalContext(a.context_ms, a.context_bins) if a.context_ms is not None else None
    return pack_source(fmt_name, str(src), a.sequence or [], bins, window, a.splat, a.camera,
                       rectify, a.height, a.width, _frame_range(a.frames), context)


def _frame_range(text: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """``"A:B"``, ``"A:"`` or ``":B"`` as (A or None, B or None)."""
    if not text:
        return None, None
    lo, sep, hi = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return (int(lo) if lo else None), (int(hi) if hi else None)
    except ValueError:
        raise SystemExit(f"resdepth-shards pack: --frames {text!r}: expected START:STOP "
                         "(depth frame indices, either may be empty)") from None


def _per_shard_for(source: Any, a: argparse.Namespace) -> int:
    """Samples per shard: --per-shard, or as many as fit in --max-shard-mb (first sample's size)."""
    if a.max_shard_mb is None:
        return a.per_shard

    key, ev, depth, mask, meta, *context = next(iter(source.samples(0, 1)))
    sample = make_sample(key, ev, depth, mask, meta, context[0] if context else None)
    size = sum(len(v) + 1024 for k, v in sample.items()
               if k != "__key__")
    return max(1, int(a.max_shard_mb * 1e6 // size))


def cmd_pack(a: argparse.Namespace) -> int:

    source = _pack_source(a)
    parts = getattr(source, "parts", [source])
    empty = [p.why_empty() for p in parts if len(p) == 0 and hasattr(p, "why_empty")]
    if len(source) == 0:
        raise DataError("no samples: " + "; ".join(empty or [f"{a.src}: nothing to pack"]))
    for why in empty:
        log.warning("%s; the other sequences are packed", why.replace(": ", " gives no sample: ", 1))
    next(iter(source.samples(0, 1)))  # a size mismatch or unreadable file fails before writing
    per_shard = _per_shard_for(source, a)
    meta = {"command": "pack", "per_shard": per_shard, **source.describe()}
    with progress_bar(f"pack {Path(a.src).name}") as update:
        index = write_split(a.out, source, per_shard, meta, a.workers, a.resume, update)
    console.print(index_table(str(a.out), index))
    if index["depth_stats"]["valid_fraction"] == 0:
        log.warning("%s: no valid depth pixel in any of its %d samples (all NaN, inf or <= 0): the "
                    "split can train or evaluate nothing; check the depth files", a.out,
                    index["num_samples"])
    return 0


def cmd_verify(a: argparse.Namespace) -> int:

    with progress_bar(f"verify {a.dir}") as update:
        report = verify_split(a.dir, update)
    if report.ok:
        console.print(f"[green]OK[/] {a.dir}: {report.samples} samples in {report.shards} shards "
                      f"({report.bytes / 1e6:.1f} MB); every key, shape, dtype, value, count and "
                      "sha256 matches index.json", soft_wrap=True)
        return 0
    for line in report.problems:
        console.print(f"[red]PROBLEM[/] {line}", soft_wrap=True)
    console.print(f"[red]FAILED[/] {a.dir}: {len(report.problems)} problems "
                  f"({report.samples} samples read in {report.shards} shards)", soft_wrap=True)
    return 1


def cmd_stats(a: argparse.Namespace) -> int:

    with progress_bar(f"stats {a.dir}") as update:
        index = recompute_stats(a.dir, update)
    console.print(index_table(f"{a.dir} (index.json updated)", index))
    return 0


def _inspect_samples(path: Path, limit: int) -> list[dict]:

    urls = [str(path)] if path.is_file() else fmt.shard_paths(path)
    out: list[dict] = []
    for url in urls:
        for raw in fmt.iter_shard(url):
            out.append(fmt.decode_sample(raw))
            if len(out) >= limit:
                return out
    return out


def cmd_inspect(a: argparse.Namespace) -> int:

    path = Path(a.path)
    if path.is_dir():

        console.print(index_table(str(path), read_index(path)))
    samples = _inspect_samples(path, a.n)
    t = Table(title=f"first {len(samples)} samples of {path}")
    t.add_column("key", no_wrap=True)
    for col in ("events", "|events| sum", "nonzero %", "valid %", "depth min/max [m]", "source"):
        t.add_column(col)
    for s in samples:
        ev, d, m = s["events"].astype(np.float32), s["depth"], s["mask"] > 0
        rng = f"{d[m].min():.2f} / {d[m].max():.2f}" if m.any() else "-"
        t.add_row(s["key"], f"{list(ev.shape)}", f"{np.abs(ev).sum():.0f}",
                  f"{100 * (ev != 0).mean():.1f}", f"{100 * m.mean():.1f}", rng,
                  str(s["meta"].get("source", "?")))
    console.print(t)
    if a.png:
        write_preview(samples, a.png)
        console.print(f"preview written to {a.png}")
    return 0


def write_preview(samples: list[dict], png: str) -> None:
    """Rows of samples: event voxel bins, their sum, and colour-mapped depth."""


    rows, bins = [], samples[0]["events"].shape[0]
    for s in samples[:8]:
        ev = s["events"].astype(np.float32)
        lim = float(np.abs(ev).max()) or 1.0
        rows.append([colorize_events(ev[b], lim) for b in range(bins)]
                    + [colorize_events(ev), colorize_depth(s["depth"], s["mask"])])
    titles = [f"bin {b}" for b in range(bins)] + ["events (sum)", "depth"]
    save_grid(rows, png, titles=titles, row_labels=[s["key"] for s in samples[:8]])


def cmd_reshard(a: argparse.Namespace) -> int:

    source = TarSource(a.src, drop_context=a.drop_context)
    meta = {"command": "reshard", "per_shard": a.per_shard, **source.describe()}
    with progress_bar(f"reshard {a.src}") as update:
        index = write_split(a.out, source, a.per_shard, meta, a.workers, a.resume, update)
    console.print(index_table(str(a.out), index))
    return 0


# ---- argument parsing ---------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resdepth-shards", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)

    def context_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--context-ms", type=float, default=None, metavar="MS",
                        help="temporal context: also store the events of the MS milliseconds "
                             "before each window (context.npy; off by default)")
        sp.add_argument("--context-bins", type=int, default=None, metavar="N",
                        help="time bins of the context's voxel grid (with --context-ms)")

    def writer_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--workers", type=int, default=1, help="processes writing shards")
        sp.add_argument("--resume", action="store_true",
                        help="continue an interrupted run, keeping its complete shards")

    s = sub.add_parser("synth", help="write synthetic train/val/test splits")
    s.add_argument("--out", required=True, help="dataset root; gets train/, val/, test/")
    for split, n in (("train", 1024), ("val", 64), ("test", 256)):
        s.add_argument(f"--{split}", type=int, default=n, help=f"{split} samples (default {n})")
    s.add_argument("--height", type=int, default=64)
    s.add_argument("--width", type=int, default=64)
    s.add_argument("--bins", type=int, default=5, help="time bins of the voxel grid")
    s.add_argument("--per-shard", type=int, default=64, help="samples per shard")
    s.add_argument("--seed", type=int, default=0, help="base seed (splits use disjoint streams)")
    s.add_argument("--sequence-length", type=int, default=0, metavar="L",
                   help="render sequences of L consecutive windows along paths whose speed changes "
                        "(slow-downs and stops) instead of independent scenes (default 0: off)")
    context_opts(s)
    writer_opts(s)
    s.set_defaults(fn=cmd_synth)

    s = sub.add_parser("pack", help="pack a dataset (npz, MVSEC, DSEC, ...) into shards")
    s.add_argument("--format", default=None, choices=FORMATS,
                   help="dataset layout (default: npz for a directory, mvsec for one .hdf5 file)")
    s.add_argument("--src", required=True,
                   help="npz: directory of .npz files; mvsec: folder of <seq>_data.hdf5 and "
                        "<seq>_gt.hdf5 (or one combined file); dsec: the split root; m3ed: folder "
                        "of <seq>_data.h5 and <seq>_depth_gt.h5; dense: folder of sequences")
    s.add_argument("--sequence", action="append", default=None,
                   help="sequence to pack (repeatable; 'all' = every one under --src)")
    s.add_argument("--out", required=True, help="split directory to write")
    size = s.add_mutually_exclusive_group()
    size.add_argument("--per-shard", type=int, default=64, help="samples per shard")
    size.add_argument("--max-shard-mb", type=float, default=None, help="shard size limit in MB")
    s.add_argument("--bins", type=int, default=None,
                   help="time bins of the voxel grid (default 5 for recordings; required for raw "
                        "npz events; dense: the files')")
    s.add_argument("--height", type=int, default=None,
                   help="frame height (default: npz: the depth's; recordings: their (rectified) frame)")
    s.add_argument("--width", type=int, default=None, help="frame width (default: as --height)")
    s.add_argument("--camera", default="left", help="camera (left or right)")
    win = s.add_mutually_exclusive_group()
    win.add_argument("--window-ms", type=float, default=None,
                     help="events of the last N ms before each depth frame (default: since the "
                          "previous depth frame)")
    win.add_argument("--events-per-sample", type=int, default=None,
                     help="the last N events before each depth frame")
    s.add_argument("--splat", default="round", choices=("round", "bilinear"),
                   help="rectified (fractional) event positions: nearest pixel or bilinear")
    s.add_argument("--frames", default=None, metavar="START:STOP",
                   help="keep depth frames START <= i < STOP of each sequence (negative: from "
                        "the end; e.g. --frames=:-1000 and --frames=-1000: hold out a sequence's end)")
    s.add_argument("--no-rectify", action="store_true",
                   help="use raw sensor pixels (no rectification maps)")
    context_opts(s)
    writer_opts(s)
    s.set_defaults(fn=cmd_pack)

    s = sub.add_parser("verify", help="check every shard against index.json (exit 1 on problems)")
    s.add_argument("dir", help="split directory")
    s.set_defaults(fn=cmd_verify)

    s = sub.add_parser("stats", help="recompute depth statistics and update index.json")
    s.add_argument("dir", help="split directory")
    s.set_defaults(fn=cmd_stats)

    s = sub.add_parser("inspect", help="table of samples and an optional PNG preview")
    s.add_argument("path", help="split directory or one .tar shard")
    s.add_argument("--png", default=None, help="write a preview grid to this PNG")
    s.add_argument("-n", type=int, default=6, help="samples to show")
    s.set_defaults(fn=cmd_inspect)

    s = sub.add_parser("reshard", help="rewrite a split with another number of samples per shard")
    s.add_argument("src", help="split directory to read")
    s.add_argument("out", help="split directory to write")
    s.add_argument("--per-shard", type=int, required=True)
    s.add_argument("--drop-context", action="store_true",
                   help="leave out the temporal context (context.npy): the same windows without it")
    writer_opts(s)
    s.set_defaults(fn=cmd_reshard)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``resdepth-shards``; returns (and exits with) the status."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        code = args.fn(args)
    except user_errors() as e:
        err.print(f"[red]resdepth-shards {args.command}: error:[/] {e}", soft_wrap=True)
        code = 1
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: rerun with --resume to keep the complete shards")
        code = 130
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
