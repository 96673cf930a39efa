"""DENSE / EventScape (CARLA, E2Depth's synthetic data): per-frame ``.npy`` files per sequence::

    <seq>/events/voxels/event_tensor_0000000000.npy   voxel grid [B, H, W] (already binned)
    <seq>/events/voxels/timestamps.txt                "index time" per line, seconds
    <seq>/depth/data/depth_0000000000.npy             depth [H, W] in metres (or depth/frames/)
    <seq>/depth/data/timestamps.txt                   "index time" per line, seconds

Each event tensor goes with the depth frame of the same timestamp (as E2Depth pairs them). The
dataset ships voxel grids, not raw events, so there is no event stream to open and the bins are
those of the files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from resdepth.data import format as fmt
from resdepth.data.sources.base import Record, safe_key
from resdepth.utils.errors import UserError

MATCH_TOL_S = 1e-6


def _stamps(folder: Path) -> np.ndarray:
    path = folder / "timestamps.txt"
    if not path.exists():
        raise fmt.DataError(f"{path}: missing (DENSE timestamps)")
    data = np.loadtxt(path, dtype=np.float64, ndmin=2)
    return data[:, -1]


def _depth_dir(seq: Path) -> Path:
    for name in ("data", "frames"):
        if (seq / "depth" / name / "timestamps.txt").exists():
            return seq / "depth" / name
    raise fmt.DataError(f"{seq}/depth/data/timestamps.txt: missing (DENSE depth frames)")


class DenseSequence:
    """The (voxel grid, depth) pairs of one sequence folder."""

    def __init__(self, seq: Path, bins: Optional[int] = None) -> None:
        self.name, self.ev_dir, self.depth_dir = seq.name, seq / "events" / "voxels", _depth_dir(seq)
        ev_t, d_t = _stamps(self.ev_dir), _stamps(self.depth_dir)
        j = np.clip(np.searchsorted(d_t, ev_t - MATCH_TOL_S), 0, max(len(d_t) - 1, 0))
        ok = np.abs(d_t[j] - ev_t) <= MATCH_TOL_S if len(d_t) else np.zeros(len(ev_t), bool)
        self.pairs = [(int(i), int(j[i])) for i in np.flatnonzero(ok)]
        self.ev_t = ev_t
        if not self.pairs:
            raise fmt.DataError(f"{seq}: no event tensor has a depth frame with its timestamp")
        first = np.load(self._ev_path(self.pairs[0][0]), allow_pickle=False)
        depth = np.load(self._depth_path(self.pairs[0][1]), allow_pickle=False)
        if bins is not None and first.shape[0] != bins:
            raise fmt.DataError(f"{self._ev_path(self.pairs[0][0])}: {first.shape[0]} bins, "
                                f"--bins {bins} (DENSE voxel grids are packed as they are)")
        if first.shape[-2:] != depth.shape[-2:]:
            raise fmt.DataError(f"DENSE sequence {self.name}: events are {first.shape[-2]}x"
                                f"{first.shape[-1]} (H x W) but depth is {depth.shape[-2]}x"
                                f"{depth.shape[-1]}; they must match")

    def _ev_path(self, i: int) -> Path:
        return self.ev_dir / f"event_tensor_{i:010d}.npy"

    def _depth_path(self, j: int) -> Path:
        return self.depth_dir / f"depth_{j:010d}.npy"

    def __len__(self) -> int:
        return len(self.pairs)

    def samples(self, start: int, stop: int) -> Iterator[Record]:
        for i, j in self.pairs[start:stop]:
            events = np.load(self._ev_path(i), allow_pickle=False).astype(np.float32)
            depth = np.load(self._depth_path(j), allow_pickle=False).astype(np.float32)
            t1 = float(self.ev_t[i])
            t0 = float(self.ev_t[i - 1]) if i > 0 else t1
            meta = {"source": "dense", "sequence": self.name, "t_start": t0, "t_end": t1,
                    "frame": j, "file": self._ev_path(i).name}
            yield f"{safe_key(self.name)}_{j:06d}", events, depth, None, meta

    def describe(self) -> dict[str, Any]:
        return {"source": "dense", "sequences": [{"name": self.name, "samples": len(self)}]}


def list_sequences(src: str | Path) -> list[str]:
    """Sequence folders under ``src`` with voxel grids and depth."""
    return sorted(p.parents[2].name for p in Path(src).glob("*/events/voxels/timestamps.txt"))


def pack_parts(src: str | Path, sequences: Sequence[str], bins: Optional[int]) -> list[DenseSequence]:
    """One ``DenseSequence`` per name (``[]`` = ``src`` is itself a sequence folder)."""
    src = Path(src)
    names = list(sequences) or [None]
    if names == ["all"]:
        names = list_sequences(src)
    return [DenseSequence(src / n if n else src, bins) for n in names]


def open_events(src: str | Path, sequence: Optional[str] = None, **_: Any) -> Any:
    """DENSE ships voxel grids, not raw events: there is no event stream to open."""
    raise UserError("DENSE ships voxel grids (events/voxels/*.npy), not raw events; it can be "
                     "packed but not read as an event stream")
