"""M3ED: ``<seq>_data.h5`` (events) and ``<seq>_depth_gt.h5`` (depth) in one folder.

* ``<seq>_data.h5``: ``/prophesee/<camera>/{x, y, t, p}`` (pixels, microseconds, 0/1) and
  ``/prophesee/<camera>/calib/resolution`` ``[W, H]`` (1280 x 720).
* ``<seq>_depth_gt.h5``: ``/depth/prophesee/left`` ``[T, H, W]`` metres (inf, NaN or 0 =
  invalid) and ``/ts`` ``[T]`` microseconds on the events' clock.

The depth maps are rendered in the left event camera's own (distorted) pixel grid, so events
are used as recorded: no rectification map. Times here are seconds (``t * 1e-6``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import numpy as np

from resdepth.data import format as fmt
from resdepth.data.sources.base import DepthFrames, EventStream, checked_times, open_h5
from resdepth.utils.errors import UserError

SENSOR_HW = (720, 1280)


def _file(src: str | Path, sequence: Optional[str], suffix: str) -> tuple[Path, str]:
    src = Path(src)
    if src.is_file():
        return src, sequence or re.sub(r"_(data|depth_gt)$", "", src.stem)
    if not sequence:
        raise fmt.DataError(f"{src}: a directory needs --sequence")
    path = src / f"{sequence}{suffix}"
    if not path.exists():
        raise fmt.DataError(f"{path}: missing (M3ED file of sequence {sequence})")
    return path, sequence


class M3edEvents(EventStream):
    """One M3ED event camera (``/prophesee/<camera>``), in sensor pixels."""

    def __init__(self, path: str | Path, sequence: str, camera: str = "left",
                 height: Optional[int] = None, width: Optional[int] = None) -> None:
        self.path, self.sequence, self.group = str(path), sequence, f"prophesee/{camera}"
        self.rectify_map = None
        with open_h5(self.path) as f:
            for k in ("x", "y", "t", "p"):
                if f"{self.group}/{k}" not in f:
                    raise fmt.DataError(f"{self.path}: no dataset /{self.group}/{k} (M3ED "
                                        "<sequence>_data.h5 expected)")
            self.n = int(f[f"{self.group}/t"].shape[0])
            t = f[f"{self.group}/t"]
            for _ in checked_times(self.path, lambda a, b: t[a:b] * 1e-6, self.n):
                pass  # the binary searches over time assume ascending times
            res = f.get(f"{self.group}/calib/resolution")
            hw = (int(res[1]), int(res[0])) if res is not None else SENSOR_HW
        self.height, self.width = int(height or hw[0]), int(width or hw[1])

    def _g(self) -> Any:
        if getattr(self, "_h5file", None) is None:
            self._h5file = open_h5(self.path)
        return self._h5file[self.group]

    def __len__(self) -> int:
        return self.n

    def _read(self, i0: int, i1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        g = self._g()
        return g["x"][i0:i1], g["y"][i0:i1], self._times(i0, i1), g["p"][i0:i1]

    def _times(self, i0: int, i1: int) -> np.ndarray:
        return np.asarray(self._g()["t"][i0:i1], dtype=np.float64) * 1e-6


class M3edDepth(DepthFrames):
    """``/depth/prophesee/left`` of ``<seq>_depth_gt.h5`` and its ``/ts``."""

    def __init__(self, path: str | Path, sequence: str) -> None:
        self.path, self.sequence, self.key = str(path), sequence, "depth/prophesee/left"
        with open_h5(self.path) as f:
            for k in (self.key, "ts"):
                if k not in f:
                    raise fmt.DataError(f"{self.path}: no dataset /{k} (M3ED <sequence>_depth_gt.h5 "
                                        "expected)")
            self.height, self.width = (int(v) for v in f[self.key].shape[1:3])
            self.timestamps_us = np.asarray(f["ts"][()], dtype=np.int64)
            if len(self.timestamps_us) != f[self.key].shape[0]:
                raise fmt.DataError(f"{self.path}: {len(self.timestamps_us)} timestamps for "
                                    f"{f[self.key].shape[0]} depth frames")
        self.timestamps = self.timestamps_us * 1e-6

    def depth(self, i: int) -> np.ndarray:
        if getattr(self, "_h5file", None) is None:
            self._h5file = open_h5(self.path)
        return np.asarray(self._h5file[self.key][i], dtype=np.float32)

    def frame_meta(self, i: int) -> dict[str, Any]:
        return {"timestamp_us": int(self.timestamps_us[i])}


def open_events(src: str | Path, sequence: Optional[str] = None, camera: str = "left",
                rectify: bool | str = True, height: Optional[int] = None,
                width: Optional[int] = None) -> M3edEvents:
    """The events of ``src/<sequence>_data.h5`` (or of the file ``src``); M3ED has no
    rectification step (``rectify`` is accepted and ignored)."""
    path, name = _file(src, sequence, "_data.h5")
    return M3edEvents(path, name, camera, height, width)


def open_depth(src: str | Path, sequence: Optional[str] = None, camera: str = "left") -> M3edDepth:
    """The depth of ``src/<sequence>_depth_gt.h5``."""
    if camera != "left":
        raise UserError("M3ED depth is given for the left event camera; use --camera left")
    path, name = _file(src, sequence, "_depth_gt.h5")
    return M3edDepth(path, name)


def list_sequences(src: str | Path) -> list[str]:
    """Sequences with both files in ``src``."""
    src = Path(src)
    return sorted(p.name[:-len("_data.h5")] for p in src.glob("*_data.h5")
                  if (src / p.name.replace("_data.h5", "_depth_gt.h5")).exists())
