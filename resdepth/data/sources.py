"""Where samples come from before they are packed: synthetic scenes, ``.npz`` files, MVSEC HDF5
files, or existing shards. Every source is random-access by range (``samples(start, stop)``) and
picklable, so shard writers in separate processes each produce their own range.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from resdepth.data import format as fmt
from resdepth.data.synthetic import SynthParams, synth_sample
from resdepth.data.voxel import events_to_voxel

log = logging.getLogger("resdepth")

# (key, events [B,H,W], depth [H,W] or [1,H,W] in metres, mask or None, meta)
Record = tuple[str, np.ndarray, np.ndarray, Optional[np.ndarray], dict]


def safe_key(text: str) -> str:
    """A webdataset-safe sample key (no dots or slashes)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


@dataclass
class SynthSource:
    """``n`` procedural samples of one split."""
    split: str
    n: int
    seed: int = 0
    params: SynthParams = field(default_factory=SynthParams)

    def __len__(self) -> int:
        return self.n

    def samples(self, start: int, stop: int) -> Iterator[Record]:
        for i in range(start, stop):
            s = synth_sample(self.seed, self.split, i, self.params)
            yield f"{self.split}_{i:07d}", s["events"], s["depth"], s["mask"], s["meta"]

    def describe(self) -> dict[str, Any]:
        return {"source": "synthetic", "split": self.split, "seed": self.seed,
                "split_stream": [self.seed, self.split], **self.params.to_dict()}


@dataclass
class NpzSource:
    """A directory of per-sample ``.npz`` files with ``events`` or raw ``x, y, t, p``, ``depth``
    and optionally ``mask``, ``t0``, ``t1``."""
    src: str
    bins: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None
    files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.files:
            self.files = sorted(str(p) for p in Path(self.src).glob("*.npz"))
        if not self.files:
            raise fmt.DataError(f"{self.src}: no .npz files")

    def __len__(self) -> int:
        return len(self.files)

    def samples(self, start: int, stop: int) -> Iterator[Record]:
        for path in self.files[start:stop]:
            yield self._load(path)

    def _load(self, path: str) -> Record:
        with np.load(path, allow_pickle=False) as z:
            if "depth" not in z:
                raise fmt.DataError(f"{path}: no 'depth' array")
            depth = np.asarray(z["depth"], dtype=np.float32)
            h, w = self.height or depth.shape[-2], self.width or depth.shape[-1]
            if "events" in z:
                events = np.asarray(z["events"], dtype=np.float32)
            elif all(k in z for k in "xytp"):
                if not self.bins:
                    raise fmt.DataError(f"{path}: raw x,y,t,p events need --bins")
                t = z["t"]
                t0 = float(z["t0"]) if "t0" in z else (float(t.min()) if t.size else 0.0)
                t1 = float(z["t1"]) if "t1" in z else (float(t.max()) if t.size else 1.0)
                events = events_to_voxel(z["x"], z["y"], t, z["p"], self.bins, h, w, t0, t1)
            else:
                raise fmt.DataError(f"{path}: needs 'events' or raw 'x', 'y', 't', 'p' arrays")
            mask = np.asarray(z["mask"]) if "mask" in z else None
        meta = {"source": "npz", "sequence": Path(self.src).name, "file": Path(path).name}
        return safe_key(Path(path).stem), events, depth, mask, meta

    def describe(self) -> dict[str, Any]:
        return {"source": "npz", "src": str(self.src), "bins": self.bins, "files": len(self.files)}


@dataclass
class MvsecSource:
    """An MVSEC-layout HDF5 file: ``davis/left/events`` (N x 4: x, y, t, p) and
    ``davis/left/depth_image_rect`` with ``..._ts``. Sample i holds the events between depth
    timestamps i and i+1 and the depth at i+1; NaN depth becomes invalid (mask 0, depth 0)."""
    path: str
    bins: int = 5
    camera: str = "left"
    bounds: list[int] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.ts:
            import h5py

            with h5py.File(self.path, "r") as f:
                g = self._group(f)
                self.ts = [float(v) for v in g["depth_image_rect_ts"][:]]
                self.bounds = _window_bounds(g["events"], np.asarray(self.ts))
        self._file = None

    def _group(self, f: Any) -> Any:
        name = f"davis/{self.camera}"
        for key in ("events", "depth_image_rect", "depth_image_rect_ts"):
            if f"{name}/{key}" not in f:
                raise fmt.DataError(f"{self.path}: no dataset {name}/{key} (MVSEC layout expected)")
        return f[name]

    def __len__(self) -> int:
        return max(len(self.ts) - 1, 0)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}

    def samples(self, start: int, stop: int) -> Iterator[Record]:
        import h5py

        if self._file is None:
            self._file = h5py.File(self.path, "r")
        g = self._group(self._file)
        depth_ds = g["depth_image_rect"]
        h, w = depth_ds.shape[1:]
        seq = safe_key(Path(self.path).stem)
        for i in range(start, stop):
            t0, t1 = self.ts[i], self.ts[i + 1]
            ev = np.asarray(g["events"][self.bounds[i]:self.bounds[i + 1]], dtype=np.float64)
            events = events_to_voxel(ev[:, 0], ev[:, 1], ev[:, 2], ev[:, 3], self.bins, h, w, t0, t1)
            depth = np.asarray(depth_ds[i + 1], dtype=np.float32)
            meta = {"source": "mvsec", "sequence": seq, "t_start": t0, "t_end": t1,
                    "frame": i + 1, "num_events": int(len(ev))}
            yield f"{seq}_{i + 1:06d}", events, depth, None, meta

    def describe(self) -> dict[str, Any]:
        return {"source": "mvsec", "path": str(self.path), "camera": self.camera, "bins": self.bins}


def _window_bounds(events: Any, ts: np.ndarray, chunk: int = 1 << 22) -> list[int]:
    """Row index of the first event at or after each timestamp, reading t in chunks."""
    bounds = np.zeros(len(ts), dtype=np.int64)
    for a in range(0, events.shape[0], chunk):
        t = np.asarray(events[a:a + chunk, 2], dtype=np.float64)
        bounds += np.searchsorted(t, ts, side="left")
    return bounds.tolist()


@dataclass
class TarSource:
    """The samples of an existing split directory, in index order (for resharding)."""
    split_dir: str
    index: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.index:
            self.index = fmt.read_index(self.split_dir)

    def __len__(self) -> int:
        return int(self.index["num_samples"])

    def samples(self, start: int, stop: int) -> Iterator[Record]:
        offset = 0
        for s in self.index["shards"]:
            n = int(s["nsamples"])
            if offset + n > start and offset < stop:
                url = str(Path(self.split_dir) / s["name"])
                for j, raw in enumerate(fmt.iter_shard(url)):
                    if start <= offset + j < stop:
                        d = fmt.decode_sample(raw)
                        yield d["key"], d["events"], d["depth"], d["mask"], d["meta"]
            offset += n

    def describe(self) -> dict[str, Any]:
        return {"source": "shards", "src": str(self.split_dir),
                "parent_params": self.index.get("params", {})}
