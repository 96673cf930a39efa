"""``.npz`` files: a directory of per-sample files for packing, or one recording's raw events.

Packing (``NpzSource``): each file holds ``depth`` [H, W] (metres; NaN or <= 0 invalid), optional
``mask``, and either a ready voxel grid ``events`` [B, H, W] or raw ``x``, ``y``, ``t``, ``p``
(with optional window bounds ``t0``, ``t1``).

Events only (``NpzEvents``, for inference): one file with raw ``x``, ``y``, ``t`` (seconds,
ascending), ``p`` and optionally ``height``, ``width``; no rectification.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from resdepth.data import format as fmt
from resdepth.data.sources.base import InMemoryEvents, Record, safe_key
from resdepth.data.voxel import events_to_voxel
from resdepth.data.writer import duplicate_key_message


def load_npz(path: str | Path) -> Any:
    """``np.load`` of an ``.npz``; a damaged or cut-short file is a ``DataError`` naming it."""
    try:
        z = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        if not Path(path).exists():
            raise
        raise fmt.DataError(f"{path}: not a readable .npz file, damaged or cut short ({e})") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise fmt.DataError(f"{path}: a single .npy array, not an .npz archive of named arrays")
    return z


@dataclass
class NpzSource:
    """A directory of per-sample ``.npz`` files with ``events`` or raw ``x, y, t, p``, ``depth``
    and optionally ``mask``, ``t0``, ``t1``."""
    src: str
    bins: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None
    files: list[str] = field(default_factory=list)
    splat: str = "round"

    def __post_init__(self) -> None:
        if not self.files:
            self.files = sorted(str(p) for p in Path(self.src).glob("*.npz"))
        if not self.files:
            raise fmt.DataError(f"{self.src}: no .npz files")
        first: dict[str, str] = {}
        for path in self.files:  # refused before anything is written
            other = first.setdefault(safe_key(Path(path).stem), Path(path).name)
            if other != Path(path).name:
                raise fmt.DataError(f"{self.src}: " + duplicate_key_message(
                    safe_key(Path(path).stem), other, Path(path).name))

    def __len__(self) -> int:
        return len(self.files)

    def samples(self, start: int, stop: int) -> Iterator[Record]:
        for path in self.files[start:stop]:
            yield self._load(path)

    def _load(self, path: str) -> Record:
        with load_npz(path) as z:
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
                events = events_to_voxel(z["x"], z["y"], t, z["p"], self.bins, h, w, t0, t1,
                                         splat=self.splat)
            else:
                raise fmt.DataError(f"{path}: needs 'events' or raw 'x', 'y', 't', 'p' arrays")
            mask = np.asarray(z["mask"]) if "mask" in z else None
        if events.shape[-2:] != depth.shape[-2:]:
            raise fmt.DataError(f"{path}: events are {events.shape[-2]}x{events.shape[-1]} (H x W) "
                                f"but depth is {depth.shape[-2]}x{depth.shape[-1]}; they must match")
        meta = {"source": "npz", "sequence": Path(self.src).name, "file": Path(path).name}
        return safe_key(Path(path).stem), events, depth, mask, meta

    def describe(self) -> dict[str, Any]:
        return {"source": "npz", "src": str(self.src), "bins": self.bins, "files": len(self.files),
                "splat": self.splat, "sequences": [{"name": Path(self.src).name,
                                                    "samples": len(self.files)}]}


class NpzEvents(InMemoryEvents):
    """One ``.npz`` recording of raw events ``x, y, t, p`` (loaded into memory)."""

    def __init__(self, path: str | Path, height: Optional[int] = None,
                 width: Optional[int] = None) -> None:
        self.path = str(path)
        self.sequence = Path(path).stem
        with load_npz(self.path) as z:
            missing = [k for k in "xytp" if k not in z]
            if missing:
                raise fmt.DataError(f"{path}: lacks raw event arrays {', '.join(missing)}")
            self._hold(str(path), *(np.asarray(z[k]) for k in "xytp"))
            h = height or (int(z["height"]) if "height" in z else None)
            w = width or (int(z["width"]) if "width" in z else None)
        self.height = h or (int(self.y.max()) + 1 if self.y.size else 1)
        self.width = w or (int(self.x.max()) + 1 if self.x.size else 1)
        self.rectify_map = None


def open_events(src: str | Path, sequence: Optional[str] = None, height: Optional[int] = None,
                width: Optional[int] = None, **_: Any) -> NpzEvents:
    """The event stream of one ``.npz`` file (``src``, or ``src/<sequence>.npz``)."""
    path = Path(src)
    if path.is_dir():
        path = path / f"{sequence}.npz"
    if not path.exists():
        raise fmt.DataError(f"{path}: missing")
    return NpzEvents(path, height, width)
