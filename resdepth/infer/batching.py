"""Batches of a stream, and a stream read ahead in a thread (shared by evaluation and prediction)."""
from __future__ import annotations

import queue
import threading
from typing import Iterator


def batches(it: Iterator, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` items of ``it`` (the last one shorter)."""
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def prefetch(it: Iterator, depth: int) -> Iterator:
    """Run ``it`` in a background thread ``depth`` items ahead (reading and decoding overlap the
    forward passes; the order is unchanged)."""
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
