"""The streaming loader: tar shards to batches, split over ranks and workers, resumable.

Training mode (one ``iter()`` = one epoch; the next ``iter()`` is the next epoch):

* ``len(stream) = total_samples // (world_size * batch_size)`` on every rank, so ranks never wait
  for each other at the end of an epoch, whatever the shard sizes.
* An epoch is one pass over the split: the shards, shuffled with ``(seed, epoch)``, make one
  sequence of samples; rank ``r`` takes its ``len(stream) * batch_size`` consecutive samples of
  it, and splits them into consecutive slots for its workers (the last fewer than
  ``world_size * batch_size`` samples wait for a later epoch, when another shard is last). Every
  sample of the epoch is read once, by one worker of one rank; shard counts come from
  ``index.json`` (or the tar headers), so a worker reads only the shards that hold its slot.
* Batch ``j`` of a rank comes from worker ``j % W`` (the order in which torch's DataLoader collects
  results, starting from the batch at ``position``), and worker ``w`` yields exactly the batches
  ``j = w, w + W, ...`` from its slot, read in a ``(seed, epoch, rank, w)`` order through a
  shuffle buffer seeded likewise. The sequence of batches is therefore a pure function of
  (seed, epoch, rank, world size, number of workers).
* With ``on_error="skip"`` a worker whose slot lost samples refills its last batches with a second
  pass over its own slot (counted as skips); after ``max_consecutive_skips`` bad samples in a row
  it stops with an error instead of looping over data that holds no good sample.
* Resuming at ``position`` batches: worker ``w`` drops the raw samples of its first
  ``ceil((position - w) / W)`` batches after the shuffle buffer, without decoding them.
  Exact continuation needs the same world size and number of workers (and, with
  ``on_error="skip"``, bad samples are recognised in the skipped part only by missing members).

Evaluation mode: shards are dealt to ranks (``urls[rank::world]``) and workers in index order;
every sample is read exactly once, nothing is padded or repeated, final batches may be short.

An error in a loader worker reaches the caller as a one-line ``DataError`` naming the shard and
sample, not as the worker's traceback.
"""
from __future__ import annotations

import json
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
from resdepth.data.config import DataConfig
from resdepth.data.norm import DepthNorm
from resdepth.data.netinput import net_input, stored_input
from resdepth.data.voxel import VOXEL_NORMS
from resdepth.utils.errors import UserError

log = logging.getLogger("resdepth")


def split_urls(root_or_urls: str, split: Optional[str] = None) -> list[str]:
    """Shard URLs: a split directory (``root/split`` when ``split`` is given) gives its shards
    from ``index.json``; brace patterns (``a/shard-{000000..000009}.tar``) are expanded, in
    ``pipe:`` commands too (``pipe:aws s3 cp s3://b/train-{000000..000099}.tar -``)."""
    src = str(root_or_urls)
    path = Path(src) / split if split else Path(src)
    if not src.startswith("pipe:") and path.is_dir():
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


def peek_context(urls: list[str]) -> Optional[dict]:
    """The temporal context (``{"ms", "bins"}``) of the first sample of the first shard, read from
    its ``context.npy`` and ``meta.json`` (streaming bare URLs: no ``index.json`` says it)."""
    for raw in fmt.iter_shard(urls[0]):
        if fmt.CONTEXT_KEY not in raw:
            return None
        meta = json.loads(raw["meta.json"])
        ms = (float(meta["t_start"]) - float(meta["context"]["t_start"])) * 1e3
        return {"ms": round(ms, 6), "bins": int(fmt.npy_load(raw[fmt.CONTEXT_KEY]).shape[0])}
    raise fmt.DataError(f"{fmt.shard_label(urls[0])}: empty shard")


def _counts_from_index(urls: list[str], index: Optional[dict]) -> Optional[list[int]]:
    if not index:
        return None
    by_name = {Path(s["name"]).name: int(s["nsamples"]) for s in index["shards"]}
    names = [fmt.shard_label(u) for u in urls]
    if not all(n in by_name for n in names):
        return None
    return [by_name[n] for n in names]


LOGGED_SKIPS = 10  # bad samples logged one by one per worker and epoch; the rest only counted


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
    max_consecutive_skips: int = 100
    shapes: Optional[dict] = None
    voxel_norm: str = "none"
    raw: bool = False
    worker: int = 0
    pending_skips: int = field(default=0, repr=False)
    logged_skips: int = field(default=0, repr=False)
    skips_in_row: int = field(default=0, repr=False)

    # ---- which samples ------------------------------------------------------------------
    def shards(self) -> list[str]:
        """This worker's shards in evaluation (index order)."""
        return self.urls[self.rank::self.world][self.worker::self.workers]

    def slot(self) -> tuple[int, int]:
        """Training: ``[lo, hi)`` of this worker in the epoch's sequence of samples."""
        before = sum(quota(self.batches, v, self.workers) for v in range(self.worker))
        lo = (self.rank * self.batches + before) * self.batch_size
        return lo, lo + quota(self.batches, self.worker, self.workers) * self.batch_size

    def pieces(self) -> list[tuple[str, int, int, int]]:
        """Training: ``(url, first, stop, count)`` ranges of the shards that make up the slot."""
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.urls))
        lo, hi = self.slot()
        out, at = [], 0
        for i in order:
            n = self.counts[i]
            first, stop = max(lo, at), min(hi, at + n)
            if first < stop:
                out.append((self.urls[i], first - at, stop - at, n))
            at += n
        return out

    # ---- raw sample streams -------------------------------------------------------------------
    def _raw(self, shards: list[str]) -> Iterator[tuple[str, dict]]:
        for url in shards:
            try:
                for raw in fmt.iter_shard(url):
                    yield url, raw
            except fmt.DataError as e:
                self._bad(str(e) + "; rest of the shard skipped")

    def _piece(self, url: str, first: int, stop: int, n: int) -> Iterator[tuple[str, dict]]:
        """Samples ``[first, stop)`` of a shard said to hold ``n``; a count that disagrees with
        the shard (a stale index.json) is an error, found by the slot that reads the shard's end."""
        it = fmt.iter_shard(url)
        i = 0
        try:
            for raw in it:
                if i >= stop:
                    if stop == n:
                        self._bad(fmt.stale_count(fmt.shard_label(url), i + 1, n))
                    return
                if i >= first:
                    yield url, raw
                i += 1
        except fmt.DataError as e:
            self._bad(str(e) + "; rest of the shard skipped")
            return
        finally:
            it.close()
        if i < stop:
            self._bad(fmt.stale_count(fmt.shard_label(url), i, n))

    def _passes(self) -> Iterator[tuple[str, dict]]:
        """The slot once; again (reshuffled) only while the consumer needs more, which happens
        only when samples were skipped. Each pass goes through its own shuffle buffer, so one
        pass never mixes with the next."""
        pieces = self.pieces()
        for c in count():
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, self.worker, c])
            got = 0
            for item in self._shuffled(
                    (x for i in rng.permutation(len(pieces)) for x in self._piece(*pieces[i])), c):
                got += 1
                yield item
            if got == 0:
                raise fmt.DataError(f"rank {self.rank} worker {self.worker}: shards "
                                    f"{[fmt.shard_label(p[0]) for p in pieces]} hold no readable "
                                    "sample")

    def _shuffled(self, items: Iterator[tuple[str, dict]], cycle: int) -> Iterator[tuple[str, dict]]:
        if self.shuffle_buffer <= 1:
            yield from items
            return
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, self.worker, 1 << 30, cycle])
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
        self.logged_skips += 1
        self.skips_in_row += 1
        if self.max_consecutive_skips and self.skips_in_row >= self.max_consecutive_skips:
            raise fmt.DataError(f"{self.skips_in_row} bad samples in a row (data."
                                f"max_consecutive_skips={self.max_consecutive_skips}); the last: "
                                f"{message}")
        if self.logged_skips <= LOGGED_SKIPS:
            more = ("; further skips of this worker are counted, not logged"
                    if self.logged_skips == LOGGED_SKIPS else "")
            log.warning("skipped bad data: %s%s", message, more)

    def _decode(self, url: str, raw: dict) -> Optional[dict]:
        try:
            d = fmt.decode_sample(raw, self.shapes)
        except fmt.DataError as e:
            self._bad(f"{fmt.shard_label(url)}: sample '{raw.get('__key__', '?')}': {e}")
            return None
        self.skips_in_row = 0
        if self.shapes is None:  # later samples must match the first
            self.shapes = fmt.sample_shapes(d)
        return d

    def _complete(self, url: str, raw: dict) -> bool:
        """Member check without decoding (used while fast-forwarding)."""
        missing = [k for k in fmt.SAMPLE_KEYS if k not in raw]
        if missing:
            self._bad(f"{fmt.shard_label(url)}: sample '{raw.get('__key__', '?')}': "
                      f"{missing[0]} missing")
        return not missing

    def _collate(self, samples: list[dict], batch_no: int) -> dict[str, Any]:
        if self.voxel_norm != "none":  # per whole frame, before any crop; float32 from here on
            ev = np.stack([net_input(s["events"], self.voxel_norm, s.get("context")) for s in samples])
        else:  # the window's grid and its context (if any) as stored
            ev = np.stack([stored_input(s["events"], s.get("context")) for s in samples])
        depth = np.stack([s["depth"] for s in samples]).astype(np.float32, copy=False)
        mask = np.stack([s["mask"] for s in samples])
        origin = np.zeros((len(samples), 2), dtype=np.int64)
        if self.mode == "train" and (self.crop or self.flip):
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, self.worker, batch_no])
            ev, depth, mask, origin = _augment(ev, depth, mask, self.crop, self.flip, rng)
        if self.raw:  # as stored (fp16 / fp32 / uint8: 15 B per pixel); finish_batch converts
            out = {"key": [s["key"] for s in samples], "events": torch.from_numpy(np.ascontiguousarray(ev)),
                   "depth_raw": torch.from_numpy(np.ascontiguousarray(depth)),
                   "mask": torch.from_numpy(np.ascontiguousarray(mask)),
                   "origin": torch.from_numpy(origin)}
            out["_skipped"], self.pending_skips = self.pending_skips, 0
            return out
        ev = torch.from_numpy(np.ascontiguousarray(ev)).to(torch.float32).numpy()
        mask = mask.astype(np.float32)
        depth_m = torch.from_numpy(np.ascontiguousarray(depth * (mask > 0)))
        out = {"key": [s["key"] for s in samples], "events": torch.from_numpy(np.ascontiguousarray(ev)),
               "depth": self.norm.normalize(depth_m), "depth_m": depth_m,
               "mask": torch.from_numpy(np.ascontiguousarray(mask)),
               "origin": torch.from_numpy(origin)}
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
        stream = self._passes()
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
             flip: bool, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The same random crop and horizontal flip for events, depth and mask of each sample, and
    each crop's ``origin`` (top, left) in the frame as presented: a flipped crop is the crop of the
    flipped frame at ``(top, W - left - width)`` (the positional grid of ``SongUNetPosEmbd`` is cut
    there)."""
    n, _, H, W = ev.shape
    ch, cw = crop if crop else (H, W)
    if ch > H or cw > W:
        raise UserError(f"crop {list(crop)} is larger than the frames ({H}x{W})")
    outs: list[list[np.ndarray]] = [[], [], []]
    origin = np.zeros((n, 2), dtype=np.int64)
    for i in range(n):
        y0, x0 = int(rng.integers(H - ch + 1)), int(rng.integers(W - cw + 1))
        f = flip and bool(rng.random() < 0.5)
        origin[i] = (y0, W - x0 - cw if f else x0)
        for k, a in enumerate((ev, depth, mask)):
            c = a[i, :, y0:y0 + ch, x0:x0 + cw]
            outs[k].append(c[..., ::-1] if f else c)
    return np.stack(outs[0]), np.stack(outs[1]), np.stack(outs[2]), origin


def finish_batch(batch: dict, device: torch.device, norm: DepthNorm,
                 non_blocking: bool = True) -> dict:
    """Move a batch to ``device`` and, for a ``raw`` batch, convert it there: events and mask to
    float32, ``depth_m`` (metres, 0 where invalid) and ``depth`` (normalised)."""
    out = {k: (v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v)
           for k, v in batch.items()}
    if "depth_raw" in out:
        mask = out["mask"].to(torch.float32)
        depth_m = out.pop("depth_raw").to(torch.float32) * (mask > 0)
        out.update(events=out["events"].to(torch.float32), mask=mask, depth_m=depth_m,
                   depth=norm.normalize(depth_m))
    return out


class _WorkerDataset(IterableDataset):
    """Runs the plan in each DataLoader worker with that worker's id.

    The epoch, start position and seed are read at each ``iter()`` from a small shared-memory
    tensor, so persistent workers (started once) follow the stream from epoch to epoch.
    """

    def __init__(self, plan: _Plan):
        super().__init__()
        self.plan = plan
        self.where = torch.tensor([plan.epoch, plan.start, plan.seed], dtype=torch.int64).share_memory_()

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        epoch, start, seed = (int(v) for v in self.where)
        plan = replace(self.plan, epoch=epoch, start=start, seed=seed)
        # The DataLoader asks worker 0 first; batch number `start` belongs to worker start % W.
        if plan.mode == "train":
            worker = (worker + plan.start) % plan.workers
        plan = replace(plan, worker=worker)
        try:
            yield from plan.run()
        except fmt.DataError as e:
            # the reason travels as data: torch would re-raise it wrapped in the worker's traceback
            yield {"_error": f"loader worker {worker}: {e}", "_skipped": plan.pending_skips}


def _init_worker(_: int) -> None:
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


class ShardStream:
    """Batches from tar shards for one rank (see the module docstring for the guarantees).

    Each batch is a dict: ``key`` list[str], ``events`` float32 [N,B,H,W] (after ``voxel_norm``),
    ``depth`` float32 [N,1,H,W] (normalised, 0 where invalid), ``depth_m`` float32 [N,1,H,W]
    metres, ``mask`` float32 [N,1,H,W] (1 = valid), ``origin`` int64 [N,2] (top, left of each
    training crop in the frame; zeros for whole frames). With ``raw`` the batch is shipped as
    stored (``events`` float16 unless ``voxel_norm``, ``depth_raw`` float32 metres, ``mask``
    uint8: 15 instead of 32 bytes per pixel with 5 bins) and ``finish_batch`` converts it on the
    device. ``pin_memory`` pins the workers' batches for asynchronous copies to the GPU.
    Training workers are persistent.
    """

    def __init__(self, urls: list[str] | str, *, mode: str = "train", batch_size: int,
                 num_workers: int = 0, seed: int = 0, crop: Optional[list[int]] = None,
                 flip: bool = False, norm: DepthNorm = DepthNorm(), shuffle_buffer: int = 256,
                 on_error: str = "raise", rank: Optional[int] = None,
                 world_size: Optional[int] = None, index: Optional[dict] = None,
                 max_consecutive_skips: int = 100, voxel_norm: str = "none", raw: bool = False,
                 pin_memory: bool = False):
        if mode not in ("train", "eval"):
            raise UserError(f"mode {mode!r}: expected 'train' or 'eval'")
        if on_error not in ("raise", "skip"):
            raise UserError(f"on_error {on_error!r}: expected 'raise' or 'skip'")
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if max_consecutive_skips < 0:
            raise UserError(f"max_consecutive_skips must be >= 0, got {max_consecutive_skips}")
        self.max_consecutive_skips = int(max_consecutive_skips)
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
        if voxel_norm not in VOXEL_NORMS:
            raise UserError(f"voxel_norm {voxel_norm!r}: expected one of {list(VOXEL_NORMS)}")
        self.voxel_norm = voxel_norm
        self.counts = _counts_from_index(self.urls, index)
        if self.counts is None and mode == "train":
            self.counts = [count_samples(u) for u in self.urls]
        self.epoch, self.position, self.skipped, self.total_skipped = 0, 0, 0, 0
        self.raw, self.pin_memory = raw, pin_memory
        self._loader: Optional[tuple[DataLoader, _WorkerDataset]] = None
        if mode == "train" and len(self) == 0:
            raise fmt.DataError(f"{sum(self.counts)} samples make no batch of {batch_size} per "
                                f"rank over {self.world_size} ranks")

    @classmethod
    def from_config(cls, data: DataConfig, mode: str, *, urls: list[str] | str, batch_size: int,
                    seed: int, index: Optional[dict] = None, raw: bool = False,
                    pin_memory: bool = False) -> "ShardStream":
        """The stream the ``data`` section describes. Training streams take its worker count,
        crop, flip and shuffle buffer; evaluation streams read in order in this process (they
        are short and restarted often). Both take its depth and voxel normalisation and its
        bad-sample policy."""
        train = mode == "train"
        return cls(urls, mode=mode, batch_size=batch_size, seed=seed,
                   num_workers=data.num_workers if train else 0,
                   crop=(data.crop or None) if train else None, flip=data.flip and train,
                   norm=DepthNorm.from_config(data), shuffle_buffer=data.shuffle_buffer,
                   on_error=data.on_error, index=index,
                   max_consecutive_skips=data.max_consecutive_skips, voxel_norm=data.voxel_norm,
                   raw=raw, pin_memory=pin_memory)

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
                     self.norm, self.shuffle_buffer, self.on_error,
                     self.max_consecutive_skips, shapes, self.voxel_norm, self.raw)

    def _batches(self) -> Iterator[dict]:
        plan = self._plan()
        if self.num_workers == 0:
            return plan.run()
        if self.mode == "eval":  # read once: workers need not outlive the pass
            return iter(DataLoader(_WorkerDataset(plan), batch_size=None,
                                   num_workers=self.num_workers, worker_init_fn=_init_worker,
                                   prefetch_factor=4, pin_memory=self.pin_memory))
        if self._loader is None:  # training: the workers persist from epoch to epoch
            ds = _WorkerDataset(plan)
            self._loader = (DataLoader(ds, batch_size=None, num_workers=self.num_workers,
                                       worker_init_fn=_init_worker, prefetch_factor=4,
                                       pin_memory=self.pin_memory, persistent_workers=True), ds)
        loader, ds = self._loader
        ds.where.copy_(torch.tensor([plan.epoch, plan.start, plan.seed], dtype=torch.int64))
        return iter(loader)

    def __iter__(self) -> Iterator[dict]:
        self.skipped = 0
        for batch in self._batches():
            n = batch.pop("_skipped", 0)
            self.skipped += n
            self.total_skipped += n
            if "_error" in batch:
                raise fmt.DataError(batch["_error"])
            if "key" not in batch:
                continue
            if self.mode == "train":
                self.position += 1
            yield batch
        if self.skipped:
            log.warning("%s epoch %d: skipped %d bad samples on rank %d (%d since start)",
                        self.mode, self.epoch, self.skipped, self.rank, self.total_skipped)
        if self.mode == "train":
            self.epoch, self.position = self.epoch + 1, 0

    def log_skip_summary(self) -> None:
        """Log how many bad samples were skipped since the stream was made (nothing if none)."""
        if self.total_skipped:
            log.warning("%s data: skipped %d bad samples on rank %d in all", self.mode,
                        self.total_skipped, self.rank)

    def state_dict(self) -> dict[str, int]:
        """Where the stream stands: epoch, seed and batches consumed in the epoch."""
        return {"epoch": self.epoch, "seed": self.seed, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from ``state_dict()``: the next ``iter()`` resumes inside that epoch."""
        if int(state["seed"]) != self.seed:
            log.warning("data stream seed %d from the checkpoint replaces %d", state["seed"], self.seed)
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])
        self.position = int(state["position"])
