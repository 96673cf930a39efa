"""The work list: fixed units of samples, split between array tasks and ranks without padding.

A unit is a contiguous range of samples in one shard. The list depends only on the data and
``unit_size`` (and ``max_samples``), never on how many processes evaluate it, so a unit's part file
means the same thing under one process, torchrun, srun or a Slurm array, and a rerun with another
world size resumes where the last one stopped.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from resdepth.data import format as fmt
from resdepth.data.loader import count_samples, split_urls
from resdepth.utils.errors import UserError

log = logging.getLogger("resdepth")


@dataclass(frozen=True)
class Unit:
    """Samples ``[start, stop)`` of shard ``url`` (``stop`` None: to the end of an uncounted shard)."""
    name: str
    url: str
    start: int
    stop: Optional[int]
    offset: Optional[int]  # index of the unit's first sample in the whole work list, when known

    @property
    def count(self) -> Optional[int]:
        return None if self.stop is None else self.stop - self.start

    def to_dict(self) -> dict:
        return asdict(self)


def shard_stem(url: str) -> str:
    """A file-name-safe stem of a shard URL (``.../train-000003.tar`` -> ``train-000003``)."""
    name = url.rstrip("/").split("/")[-1].split("::")[-1]
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "shard"


def make_units(shards: list[tuple[str, Optional[int]]], unit_size: int,
               max_samples: int = 0) -> list[Unit]:
    """Cut ``(url, sample count or None)`` shards into units of at most ``unit_size`` samples.

    ``max_samples`` keeps the first N samples of the list (it needs every shard's count).
    """
    if max_samples and any(n is None for _, n in shards):
        raise UserError("max_samples needs the sample count of every shard (an index.json in the "
                         "split directory); without one, evaluate whole shards")
    units: list[Unit] = []
    stems: dict[str, int] = {}
    offset: Optional[int] = 0
    for url, n in shards:
        stem = shard_stem(url)
        stems[stem] = stems.get(stem, 0) + 1
        if stems[stem] > 1:  # two shards with one file name in different directories
            stem = f"{stem}~{stems[stem] - 1}"
        if n is None:
            units.append(Unit(f"{stem}@all", url, 0, None, offset))
            offset = None
            continue
        if max_samples:
            n = min(n, max_samples - offset)
        for start in range(0, n, unit_size):
            stop = min(start + unit_size, n)
            units.append(Unit(f"{stem}@{start:07d}-{stop:07d}", url, start, stop, offset + start))
        offset += n
        if max_samples and offset >= max_samples:
            break
    return units


def worker_units(units: list[Unit], num_tasks: int, task_id: int, world: int, rank: int) -> list[Unit]:
    """This worker's units: worker ``task_id * world + rank`` of ``num_tasks * world`` takes every
    ``num_tasks * world``-th unit. Nothing is padded or repeated: each unit belongs to one worker."""
    workers = num_tasks * world
    me = task_id * world + rank
    return units[me::workers]


def task_units(units: list[Unit], num_tasks: int, task_id: int, world: int) -> list[Unit]:
    """All units of one array task (every rank of it)."""
    return [u for r in range(world) for u in worker_units(units, num_tasks, task_id, world, r)]


def split_shards(data: str) -> tuple[list[tuple[str, Optional[int]]], Optional[dict]]:
    """``(url, count)`` of every shard of a split directory (counts from its index) or of URLs."""
    p = Path(data)
    if p.is_dir():
        index = fmt.read_index(p)
        return [(str(p / name), int(n)) for name, n in index_shard_counts(index)], index
    out: list[tuple[str, Optional[int]]] = []
    for url in split_urls(data, None):
        local = not url.startswith("pipe:") and "://" not in url
        # local tars are counted from their headers (cheap); remote ones are evaluated whole
        out.append((url, count_samples(url) if local else None))
    return out, None


def index_shard_counts(index: dict) -> list[tuple[str, int]]:
    """``(shard file name, samples)`` in index order."""
    return [(str(s["name"]), int(s["nsamples"])) for s in index["shards"]]
