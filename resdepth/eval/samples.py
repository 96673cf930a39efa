"""Samples ``[start, stop)`` of one shard, in shard order, as numpy arrays with depth in metres.

Evaluation reads shards through the data layer (``resdepth.data.format.iter_shard_range``: one tar
reader, one check of the index's counts) in order, without shuffling, crops or flips, and keeps
the raw depth (metres, unclipped) as ground truth; the network input is made from ``events`` by
``resdepth.data.netinput.net_input``, as in training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from resdepth.data.format import DataError, decode_sample, iter_shard_range


@dataclass
class Sample:
    key: str
    events: np.ndarray  # [B, H, W] float32, the stored voxel grid
    depth: np.ndarray   # [1, H, W] float32, metres
    mask: np.ndarray    # [1, H, W] bool, valid ground truth
    sequence: Optional[str] = None  # meta.json ``sequence`` (recording), for per-sequence tables
    context: Optional[np.ndarray] = None  # [N, H, W] the events before the window, if packed
    num_events: Optional[int] = None  # meta.json ``num_events``: the window's events


def iter_samples(url: str, start: int = 0, stop: Optional[int] = None,
                 shapes: Optional[dict] = None, total: Optional[int] = None) -> Iterator[Sample]:
    """Decoded samples number ``start`` to ``stop - 1`` of the shard at ``url``, each checked
    against ``shapes``; ``total`` is the shard's count in ``index.json`` (checked as the data
    layer checks it)."""
    for raw in iter_shard_range(url, start, stop, total, label=url):
        yield decode(raw, url, shapes)


def decode(raw: dict, url: str, shapes: Optional[dict] = None) -> Sample:
    """A raw tar sample to a ``Sample`` (format and checks of ``resdepth.data.format``)."""
    try:
        d = decode_sample(raw, shapes)
    except DataError as e:
        raise DataError(f"{url}: sample {raw.get('__key__', '?')}: {e}") from e
    depth = d["depth"].astype(np.float32)
    mask = (d["mask"] > 0) & np.isfinite(depth) & (depth > 0)
    meta = d.get("meta") if isinstance(d.get("meta"), dict) else {}
    seq, n = meta.get("sequence"), meta.get("num_events")
    context = d["context"].astype(np.float32) if "context" in d else None
    return Sample(d["key"], d["events"].astype(np.float32), depth, mask,
                  None if seq is None else str(seq), context,
                  int(n) if isinstance(n, (int, float)) else None)
