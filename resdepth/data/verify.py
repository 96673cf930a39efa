"""Checking a split directory against its ``index.json``, and recomputing its statistics."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from resdepth.data import format as fmt

log = logging.getLogger("resdepth")


@dataclass
class Report:
    """What ``verify_split`` found: one line per problem, ``shard: key: reason``."""
    problems: list[str] = field(default_factory=list)
    samples: int = 0
    shards: int = 0
    bytes: int = 0
    keys: dict[str, str] = field(default_factory=dict, repr=False)  # sample key -> shard

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_shard(split_dir: Path, entry: dict, index: dict, report: Report) -> None:
    """Check one shard: size, sha256, every sample's members, shapes, dtypes, finiteness, count."""
    name = entry["name"]
    path = split_dir / name
    if not path.exists():
        report.problems.append(f"{name}: missing file")
        return
    size = path.stat().st_size
    report.bytes += size
    if "bytes" in entry and size != entry["bytes"]:
        report.problems.append(f"{name}: size {size} bytes, index says {entry['bytes']} (truncated?)")
    if "sha256" in entry and fmt.sha256_file(path) != entry["sha256"]:
        report.problems.append(f"{name}: sha256 does not match index.json (corrupted bytes)")
    n = 0
    try:
        for raw in fmt.iter_shard(str(path)):
            n += 1
            key = raw.get("__key__", "?")
            if key in report.keys:
                report.problems.append(f"{name}: sample '{key}': key also in {report.keys[key]} "
                                       "(evaluation would count it twice)")
            report.keys.setdefault(key, name)
            try:
                fmt.decode_sample(raw, index["shapes"])
            except fmt.DataError as e:
                report.problems.append(f"{name}: sample '{raw.get('__key__', '?')}': {e}")
    except fmt.DataError as e:
        report.problems.append(str(e))
    report.samples += n
    if n != entry["nsamples"]:
        report.problems.append(f"{name}: {n} samples, index says {entry['nsamples']}")


def frame_size_problems(index: dict) -> list[str]:
    """Lines for events, depth and mask of different height x width in ``index.json``'s shapes
    (each sample is then checked against these shapes)."""
    shapes = index["shapes"]
    sizes = {k: tuple(shapes[k][-2:]) for k in fmt.ARRAY_KEYS if k in shapes}
    ev = sizes.get("events.npy")
    return [f"index.json: events are {ev[0]}x{ev[1]} (H x W) but {k.split('.')[0]} is "
            f"{hw[0]}x{hw[1]}; they must match" for k, hw in sizes.items() if ev and hw != ev]


def verify_split(split_dir: str | os.PathLike,
                 progress: Optional[Callable[[int, int], None]] = None) -> Report:
    """Check every shard of a split against ``index.json``."""
    split_dir = Path(split_dir)
    report = Report()
    try:
        index = fmt.read_index(split_dir)
    except fmt.DataError as e:
        report.problems.append(str(e))
        return report
    report.problems += frame_size_problems(index)
    listed = {s["name"] for s in index["shards"]}
    for extra in sorted(p.name for p in split_dir.glob("*.tar") if p.name not in listed):
        report.problems.append(f"{extra}: tar file not listed in index.json")
    for i, entry in enumerate(index["shards"]):
        verify_shard(split_dir, entry, index, report)
        report.shards += 1
        if progress:
            progress(i + 1, len(index["shards"]))
    total = sum(s["nsamples"] for s in index["shards"])
    if index["num_samples"] != total:
        report.problems.append(f"index.json: num_samples {index['num_samples']} but shards sum "
                               f"to {total}")
    return report


def recompute_stats(split_dir: str | os.PathLike,
                    progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Recompute the depth statistics (and sample counts) of a split; rewrites ``index.json``."""
    split_dir = Path(split_dir)
    index = fmt.read_index(split_dir)
    stats = fmt.DepthStats()
    for i, entry in enumerate(index["shards"]):
        n = 0
        for raw in fmt.iter_shard(str(split_dir / entry["name"])):
            d = fmt.decode_sample(raw, index["shapes"])
            stats.add(d["depth"], d["mask"])
            n += 1
        entry["nsamples"] = n
        if progress:
            progress(i + 1, len(index["shards"]))
    index["num_samples"] = sum(s["nsamples"] for s in index["shards"])
    index["depth_stats"] = stats.to_dict()
    fmt.write_json_atomic(split_dir / fmt.INDEX_NAME, index)
    return index
