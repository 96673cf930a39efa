"""Samples ``[start, stop)`` of one shard, in shard order, as numpy arrays with depth in metres.

Evaluation reads shards in order without shuffling, crops or flips, and keeps the raw depth
(metres, unclipped) as ground truth; only the network input goes through the same event
preprocessing as training.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np


@dataclass
class Sample:
    key: str
    events: np.ndarray  # [B, H, W] float32, the network's condition
    depth: np.ndarray   # [1, H, W] float32, metres
    mask: np.ndarray    # [1, H, W] bool, valid ground truth
    sequence: Optional[str] = None  # meta.json ``sequence`` (recording), for per-sequence tables


def iter_samples(url: str, start: int = 0, stop: Optional[int] = None,
                 shapes: Optional[dict] = None, total: Optional[int] = None) -> Iterator[Sample]:
    """Decoded samples number ``start`` to ``stop - 1`` of the shard at ``url``, each checked
    against ``shapes``. When ``stop`` is the shard's ``total`` (its count in ``index.json``), the
    shard must end there: a stale count would otherwise leave samples out of the evaluation."""
    import tarfile

    import webdataset as wds

    from resdepth.data.format import DataError

    try:
        stream = wds.gopen(url, "rb")
    except OSError as e:
        raise DataError(f"{url}: cannot open ({e})") from e
    try:
        files = wds.tariterators.tar_file_expander([{"url": url, "stream": stream}])
        for i, raw in enumerate(wds.tariterators.group_by_keys(files)):
            if stop is not None and i >= stop:
                if stop == total:
                    raise DataError(f"{url}: holds more samples than the {total} its index.json "
                                    "counts (a stale index.json? `resdepth-shards stats SPLIT` "
                                    "recounts); evaluating it would leave samples out")
                return
            if i >= start:
                yield decode(raw, url, shapes)
    except DataError:
        raise
    except (OSError, tarfile.TarError, EOFError, ValueError) as e:
        reason = str(e.args[0]) if e.args else type(e).__name__
        raise DataError(f"{url}: unreadable tar ({reason.split(' @ ')[0]}); a truncated or "
                        "corrupt shard (`resdepth-shards verify` checks the split)") from e
    finally:
        stream.close()  # also when the caller stops early: no file left to the garbage collector


def decode(raw: dict, url: str, shapes: Optional[dict] = None) -> Sample:
    """A raw tar sample to a ``Sample`` (format and checks of ``resdepth.data.format``)."""
    from resdepth.data.format import DataError, decode_sample

    try:
        d = decode_sample(raw, shapes)
    except DataError as e:
        raise DataError(f"{url}: sample {raw.get('__key__', '?')}: {e}") from e
    depth = d["depth"].astype(np.float32)
    mask = (d["mask"] > 0) & np.isfinite(depth) & (depth > 0)
    seq = d.get("meta", {}).get("sequence") if isinstance(d.get("meta"), dict) else None
    return Sample(d["key"], d["events"].astype(np.float32), depth, mask,
                  None if seq is None else str(seq))


def prefetch(it: Iterator, depth: int) -> Iterator:
    """Run ``it`` in a background thread ``depth`` items ahead (tar reading and decoding overlap
    the forward passes; the order is unchanged)."""
    if depth <= 0:
        yield from it
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work():
        try:
            for x in it:
                q.put(x)
        except BaseException as e:  # re-raised in the consumer, with its traceback
            q.put(e)
        q.put(done)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    while True:
        x = q.get()
        if x is done:
            return
        if isinstance(x, BaseException):
            raise x
        yield x
