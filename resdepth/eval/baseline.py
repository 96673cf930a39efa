"""The per-pixel mean-depth baseline: at every pixel, the training split's mean valid depth there.

A prior that knows the typical scene layout but sees no events; a net that does not beat it has
learnt nothing from the events. Computed once per output directory and cached as ``baseline.npy``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from resdepth import dist
from resdepth.data import format as fmt
from resdepth.eval.config import EvalConfig, sibling_split
from resdepth.eval.samples import iter_samples
from resdepth.infer.parts import save_npy_atomic
from resdepth.infer.work import split_shards
from resdepth.utils.atomic import write_json_atomic
from resdepth.utils.errors import UserError

log = logging.getLogger("resdepth")

CACHE = "baseline.npy"


def baseline_dir(cfg: EvalConfig) -> Optional[Path]:
    """The training split to average, or None when there is none (the baseline is then left out)."""
    if cfg.baseline is not None:
        if cfg.baseline.lower() == "none":
            return None
        p = Path(cfg.baseline)
        if not p.is_dir():
            raise FileNotFoundError(f"baseline={cfg.baseline}: no such split directory")
        return p
    train = sibling_split(cfg.data, "train")
    if train is None:
        log.warning("no training split beside %s (looked for %s): the mean-depth baseline is left "
                    "out; pass --baseline TRAIN_SPLIT to include it", cfg.data,
                    Path(cfg.data).parent / "train")
    return train


def per_pixel_mean(depth_sum: np.ndarray, count: np.ndarray) -> np.ndarray:
    """``sum / count`` per pixel; pixels never valid get the global mean (float32, metres)."""
    total = count.sum()
    if total == 0:
        raise UserError("the baseline's training split has no valid depth pixel")
    global_mean = depth_sum.sum() / total
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, depth_sum / np.maximum(count, 1), global_mean)
    return mean.astype(np.float32)


def accumulate(urls: list[str], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """float64 per-pixel sums of valid depth and counts of valid pixels over ``urls``."""
    s = np.zeros(shape, np.float64)
    c = np.zeros(shape, np.float64)
    for url in urls:
        for sample in iter_samples(url):
            valid = sample.mask[0]
            s += np.where(valid, sample.depth[0], 0.0)
            c += valid
    return s, c


def baseline_identity(train: Path) -> list:
    """What names the baseline's training split in the settings hash and next to the cache: each
    shard's name, count and checksum (so another split, or a rewritten one, differs); a shard
    without a checksum in the index is named by its resolved path, size and modification time."""
    def shard(s: dict) -> list:
        if s.get("sha256"):
            return [s["name"], s["nsamples"], s["sha256"]]
        path = (Path(train) / s["name"]).resolve()
        st = path.stat()
        return [str(path), s["nsamples"], st.st_size, st.st_mtime_ns]

    return [shard(s) for s in fmt.read_index(train)["shards"]]


def load_or_compute(train: Path, identity: list, out: Path, shape: tuple[int, int]) -> np.ndarray:
    """The baseline ``[H, W]`` of the training split ``train`` (``identity``: its
    ``baseline_identity``), cached in ``out``; computed (split across this world's ranks) when
    absent or cached from another training split (``baseline.json`` names the split it came from).

    Collective: every rank of the world calls it. Concurrent array tasks may each compute it;
    the atomic rename makes that harmless.
    """
    path = Path(out) / CACHE
    ident_path = path.with_suffix(".json")
    ident = {"train": str(train), "identity": identity}
    try:
        cached = json.loads(ident_path.read_text())["identity"] == ident["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        cached = False
    if not (cached and path.exists()):
        if path.exists():
            log.warning("%s was computed from another training split than %s: recomputing",
                        path, train)
        shards, _ = split_shards(str(train))
        mine = [u for u, _ in shards][dist.rank()::dist.world_size()]
        s, c = accumulate(mine, shape)
        sums = torch.from_numpy(np.stack([s, c]))
        dist.all_reduce_sum(sums)
        if dist.is_main():
            save_npy_atomic(path, per_pixel_mean(sums[0].numpy(), sums[1].numpy()))
            write_json_atomic(ident_path, ident)
            log.info("per-pixel mean-depth baseline from %d training shards of %s cached in %s",
                     len(shards), train, path)
        dist.barrier()
    base = np.load(path)
    if base.shape != tuple(shape):
        raise UserError(f"{path} is {base.shape}, the data is {tuple(shape)}; delete it to recompute")
    return base
