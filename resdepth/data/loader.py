"""The streaming loader: tar shards to batches, split over ranks and workers, resumable.

Training mode (one ``iter()`` = one epoch; the next ``iter()`` is the next epoch):

* ``len(stream) = total_samples // (world_size * batch_size)`` on every rank, so ranks never wait
  for each other at the end of an epoch, whatever the shard sizes.
* Shards are shuffled with ``(seed, epoch)`` and dealt to ranks, then to the rank's workers. Batch
  ``j`` of a rank comes from worker ``j % W`` (the order in which torch's DataLoader collects
  results, starting from the batch at ``position``), and worker ``w`` yields exactly the batches
  ``j = w, w + W, ...``: it reads its shards
  in a ``(seed, epoch, rank, w, cycle)`` order, as often as it needs to fill its quota, through a
  shuffle buffer seeded with ``(seed, epoch, rank, w)``. The sequence of batches is therefore a
  pure function of (seed, epoch, rank, world size, number of workers).
* Resuming at ``position`` batches: worker ``w`` drops the raw samples of its first
  ``ceil((position - w) / W)`` batches after the shuffle buffer, without decoding them.
  Exact continuation needs the same world size and number of workers (and, with
  ``on_error="skip"``, bad samples are recognised in the skipped part only by missing members).

Evaluation mode: shards are dealt to ranks (``urls[rank::world]``) and workers in index order;
every sample is read exactly once, nothing is padded or repeated, final batches may be short.
"""
from __future__ import annotations

import logging
import os
import tarfile
from dataclasses import dataclass, field, replace
from itertools import count
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from resdepth import dist
from resdepth.data import format as fmt
from resdepth.data.norm import DepthNorm

log = logging.getLogger("resdepth")


def split_urls(root_or_urls: str, split: Optional[str] = None) -> list[str]:
    """Shard URLs: a split directory (``root/split`` when ``split`` is given) gives its shards
    from ``index.json``; brace patterns (``a/shard-{000000..000009}.tar``) are expanded; ``pipe:``
    URLs pass through unchanged."""
    src = str(root_or_urls)
    if src.startswith("pipe:"):
        return [src]
    path = Path(src) / split if split else Path(src)
    if path.is_dir():
        return fmt.shard_paths(path)
    import webdataset as wds

    urls = wds.shardlists.expand_urls(src)
    if not urls:
        raise fmt.DataError(f"{src}: no shard URLs")
    return urls


def count_samples(url: str) -> int:
    """Samples in a local tar shard, from its member headers (data is skipped, not read)."""
    if url.startswith("pipe:") or "://" in url:
        raise fmt.DataError(f"{url}: cannot count samples of a remote or pipe: shard; pass the "
                            "split's index.json (index=...)")
    keys = set()
    try:
        with tarfile.open(url, "r:") as tf:
            for m in tf:
                keys.add(m.name.split("/")[-1].split(".")[0])
    except (OSError, tarfile.TarError) as e:
        raise fmt.DataError(f"{fmt.shard_label(url)}: unreadable tar ({e})") from e
    return len(keys)


def peek_shape(urls: list[str]) -> tuple[int, int, int]:
    """(bins, H, W) of the first sample of the first shard."""
    for raw in fmt.iter_shard(urls[0]):
        b, h, w = fmt.npy_load(raw["events.npy"]).shape
        return int(b), int(h), int(w)
    raise fmt.DataError(f"{fmt.shard_label(urls[0])}: empty shard")


def _counts_from_index(urls: list[str], index: Optional[dict]) -> Optional[list[int]]:
    if not index:
        return None
    by_name = {Path(s["name"]).name: int(s["nsamples"]) for s in index["shards"]}
    names = [fmt.shard_label(u) for u in urls]
    if not all(n in by_name for n in names):
        return None
    return [by_name[n] for n in names]


def quota(total: int, w: int, workers: int) -> int:
    """How many of the batch numbers ``0 .. total-1`` are ``w`` modulo ``workers``."""
    return max(0, (total - w + workers - 1) // workers)


@dataclass
class _Plan:
    """Everything a worker needs for one pass (picklable)."""
    urls: list[str]
    counts: Optional[list[int]]
    mode: str
    batch_size: int
    seed: int
    epoch: int
    rank: int
    world: int
    workers: int
    batches: int          # training: batches per rank this epoch
    start: int            # training: batches already consumed
    crop: Optional[tuple[int, int]]
    flip: bool
    norm: DepthNorm
    shuffle_buffer: int
    on_error: str
    shapes: Optional[dict] = None
    worker: int = 0
    pending_skips: int = field(default=0, repr=False)

    # ---- which shards ---------------------------------------------------------------------
    def shards(self) -> list[str]:
        """This worker's shards (training: shuffled by epoch; evaluation: in order)."""
        n, slots = len(self.urls), self.world * self.workers
        if self.mode == "eval":
            return self.urls[self.rank::self.world][self.worker::self.workers]
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        if n >= slots:
            picked = order[self.rank::self.world][self.worker::self.workers]
        else:
            picked = [order[(self.rank * self.workers + self.worker) % n]]
        return [self.urls[i] for i in picked]

    # ---- raw sample streams -------------------------------------------------------------------
    def _raw(self, shards: list[str]) -> Iterator[tuple[str, dict]]:
        for url in shards:
            try:
                for raw in fmt.iter_shard(url):
                    yield url, raw
            except fmt.DataError as e:
                self._bad(str(e) + "; rest of the shard skipped")

    def _cycled(self, shards: list[str]) -> Iterator[tuple[str, dict]]:
        """The worker's shards over and over, reshuffled every cycle."""
        for c in count():
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, self.worker, c])
            got = 0
            for item in self._raw([shards[i] for i in rng.permutation(len(shards))]):
                got += 1
                yield item
            if got == 0:
                raise fmt.DataError(f"rank {self.rank} worker {self.worker}: shards "
                                    f"{[fmt.shard_label(u) for u in shards]} hold no readable sample")

    def _shuffled(self, items: Iterator[tuple[str, dict]]) -> Iterator[tuple[str, dict]]:
        if self.shuffle_buffer <= 1:
            yield from items
            return
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, self.worker, 1 << 30])
        buf: list = []
        for item in items:
            if len(buf) < self.shuffle_buffer:
                buf.append(item)
                continue
            i = int(rng.integers(len(buf)))
            buf[i], item = item, buf[i]
            yield item
        rng.shuffle(buf)
        yield from buf

    # ---- decoding and batches -------------------------------------------------------------
    def _bad(self, message: str) -> None:
        if self.on_error == "raise":
            raise fmt.DataError(message)
        self.pending_skips += 1
        log.warning("skipped bad data: %s", message)

    def _decode(self, url: str, raw: dict) -> Optional[dict]:
        try:
            d = fmt.decode_sample(raw, self.shapes)
        except fmt.DataError as e:
            self._bad(f"{fmt.shard_label(url)}: sample '{raw.get('__key__', '?')}': {e}")
            return None
        if self.shapes is None:  # later samples must match the first
            self.shapes = {k: list(d[k.split('.')[0]].shape) for k in fmt.ARRAY_KEYS}
        return d

    def _complete(self, url: str, raw: dict) -> bool:
        """Member check without decoding (used while fast-forwarding)."""
        missing = [k for k in fmt.SAMPLE_KEYS if k not in raw]
        if missing:
            self._bad(f"{fmt.shard_label(url)}: sample '{raw.get('__key__', '?')}': "
                      f"{missing[0]} missing")
        return not missing

    def _collate(self, samples: list[dict], batch_no: int) -> dict[str, Any]:
        # torch converts float16 to float32 many times faster than numpy's astype
        ev = torch.from_numpy(np.stack([s["events"] for s in samples])).to(torch.float32).numpy()
        depth = np.stack([s["depth"] for s in samples]).astype(np.float32)
        mask = np.stack([s["mask"] for s in samples]).astype(np.float32)
        if self.mode == "train" and (self.crop or self.flip):
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, self.worker, batch_no])
            ev, depth, mask = _augment(ev, depth, mask, self.crop, self.flip, rng)
        depth_m = torch.from_numpy(np.ascontiguousarray(depth * (mask > 0)))
        out = {"key": [s["key"] for s in samples], "events": torch.from_numpy(np.ascontiguousarray(ev)),
               "depth": self.norm.normalize(depth_m), "depth_m": depth_m,
               "mask": torch.from_numpy(np.ascontiguousarray(mask))}
        out["_skipped"], self.pending_skips = self.pending_skips, 0
        return out

    def batches_eval(self) -> Iterator[dict]:
        buf: list[dict] = []
        j = 0
        for url, raw in self._raw(self.shards()):
            d = self._decode(url, raw)
            if d is not None:
                buf.append(d)
            if len(buf) == self.batch_size:
                yield self._collate(buf, j)
                buf, j = [], j + 1
        if buf:
            yield self._collate(buf, j)
        if self.pending_skips:
            yield {"_skipped": self.pending_skips}

    def batches_train(self) -> Iterator[dict]:
        mine = quota(self.batches, self.worker, self.workers)
        done = quota(self.start, self.worker, self.workers)
        if mine <= done:
            return
        stream = self._shuffled(self._cycled(self.shards()))
        drop = done * self.batch_size
        while drop > 0:  # fast-forward: no decoding
            url, raw = next(stream)
            if self._complete(url, raw):
                drop -= 1
        for local in range(done, mine):
            buf: list[dict] = []
            while len(buf) < self.batch_size:
                url, raw = next(stream)
                d = self._decode(url, raw)
                if d is not None:
                    buf.append(d)
            yield self._collate(buf, local)

    def run(self) -> Iterator[dict]:
        return self.batches_eval() if self.mode == "eval" else self.batches_train()


def _augment(ev: np.ndarray, depth: np.ndarray, mask: np.ndarray, crop: Optional[tuple[int, int]],
             flip: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same random crop and horizontal flip for events, depth and mask of each sample."""
    n, _, H, W = ev.shape
    ch, cw = crop if crop else (H, W)
    if ch > H or cw > W:
        raise ValueError(f"crop {list(crop)} is larger than the frames ({H}x{W})")
    outs: list[list[np.ndarray]] = [[], [], []]
    for i in range(n):
        y0, x0 = int(rng.integers(H - ch + 1)), int(rng.integers(W - cw + 1))
        f = flip and bool(rng.random() < 0.5)
        for k, a in enumerate((ev, depth, mask)):
            c = a[i, :, y0:y0 + ch, x0:x0 + cw]
            outs[k].append(c[..., ::-1] if f else c)
    return np.stack(outs[0]), np.stack(outs[1]), np.stack(outs[2])


class _WorkerDataset(IterableDataset):
    """Runs the plan in each DataLoader worker with that worker's id."""

    def __init__(self, plan: _Plan):
        super().__init__()
        self.plan = plan

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        # The DataLoader asks worker 0 first; batch number `start` belongs to worker start % W.
        if self.plan.mode == "train":
            worker = (worker + self.plan.start) % self.plan.workers
        return replace(self.plan, worker=worker).run()


def _init_worker(_: int) -> None:
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


class ShardStream:
    """Batches from tar shards for one rank (see the module docstring for the guarantees).

    Each batch is a dict: ``key`` list[str], ``events`` float32 [N,B,H,W], ``depth`` float32
    [N,1,H,W] (normalised, 0 where invalid), ``depth_m`` float32 [N,1,H,W] metres, ``mask``
    float32 [N,1,H,W] (1 = valid).
    """

    def __init__(self, urls: list[str] | str, *, mode: str = "train", batch_size: int,
                 num_workers: int = 0, seed: int = 0, crop: Optional[list[int]] = None,
                 flip: bool = False, norm: DepthNorm = DepthNorm(), shuffle_buffer: int = 256,
                 on_error: str = "raise", rank: Optional[int] = None,
                 world_size: Optional[int] = None, index: Optional[dict] = None):
        if mode not in ("train", "eval"):
            raise ValueError(f"mode {mode!r}: expected 'train' or 'eval'")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error {on_error!r}: expected 'raise' or 'skip'")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.urls = split_urls(urls) if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise fmt.DataError("ShardStream: no shard URLs")
        self.mode, self.batch_size, self.num_workers = mode, batch_size, num_workers
        self.seed, self.norm, self.on_error = int(seed), norm, on_error
        self.crop = tuple(int(c) for c in crop) if crop else None
        self.flip, self.shuffle_buffer = flip, shuffle_buffer
        self.rank = dist.rank() if rank is None else int(rank)
        self.world_size = dist.world_size() if world_size is None else int(world_size)
        self.index = index
        self.counts = _counts_from_index(self.urls, index)
        if self.counts is None and mode == "train":
            self.counts = [count_samples(u) for u in self.urls]
        self.epoch, self.position, self.skipped = 0, 0, 0
        if mode == "train" and len(self) == 0:
            raise fmt.DataError(f"{sum(self.counts)} samples make no batch of {batch_size} per "
                                f"rank over {self.world_size} ranks")

    @property
    def workers(self) -> int:
        """Sample streams per rank (``num_workers``, or 1 in the main process)."""
        return max(1, self.num_workers)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.mode == "train":
            return sum(self.counts) // (self.world_size * self.batch_size)
        if self.counts is None:
            raise TypeError("len() of an evaluation stream needs the split's index.json")
        mine = list(zip(self.urls, self.counts))[self.rank::self.world_size]
        per_worker = [sum(n for _, n in mine[w::self.workers]) for w in range(self.workers)]
        return sum(-(-n // self.batch_size) for n in per_worker)

    def num_samples(self) -> Optional[int]:
        """Samples in all shards (every rank), when known."""
        return None if self.counts is None else sum(self.counts)

    def _plan(self) -> _Plan:
        shapes = self.index.get("shapes") if self.index else None
        return _Plan(self.urls, self.counts, self.mode, self.batch_size, self.seed, self.epoch,
                     self.rank, self.world_size, self.workers,
                     len(self) if self.mode == "train" else 0,
                     self.position if self.mode == "train" else 0, self.crop, self.flip,
                     self.norm, self.shuffle_buffer, self.on_error, shapes)

    def _batches(self) -> Iterator[dict]:
        plan = self._plan()
        if self.num_workers == 0:
            return plan.run()
        loader = DataLoader(_WorkerDataset(plan), batch_size=None, num_workers=self.num_workers,
                            worker_init_fn=_init_worker, prefetch_factor=4)
        return iter(loader)

    def __iter__(self) -> Iterator[dict]:
        self.skipped = 0
        for batch in self._batches():
            self.skipped += batch.pop("_skipped", 0)
            if "key" not in batch:
                continue
            if self.mode == "train":
                self.position += 1
            yield batch
        if self.skipped:
            log.warning("%s epoch %d: skipped %d bad samples on rank %d", self.mode, self.epoch,
                        self.skipped, self.rank)
        if self.mode == "train":
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        """Where the stream stands: epoch, seed and batches consumed in the epoch."""
        return {"epoch": self.epoch, "seed": self.seed, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from ``state_dict()``: the next ``iter()`` resumes inside that epoch."""
        if int(state["seed"]) != self.seed:
            log.warning("data stream seed %d from the checkpoint replaces %d", state["seed"], self.seed)
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])
        self.position = int(state["position"])
