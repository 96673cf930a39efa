"""MVSEC as it ships: ``<seq>_data.hdf5`` (events), ``<seq>_gt.hdf5`` (depth) and per-scene
calibration maps.

* ``<seq>_data.hdf5``: ``davis/<camera>/events`` float64 ``[N, 4]`` = x, y (raw, distorted
  pixels), t (seconds), p (+1/-1).
* ``<seq>_gt.hdf5``: ``davis/<camera>/depth_image_rect`` ``[T, 260, 346]`` (metres, NaN invalid;
  lzf-compressed) and ``davis/<camera>/depth_image_rect_ts`` ``[T]`` seconds.
* ``<scene>_calib/<scene>_<camera>_{x,y}_map.txt``: 260 rows x 346 columns of floats; the scene is
  the sequence without its trailing digits (``outdoor_day1`` -> ``outdoor_day``). The rectified
  position of raw pixel ``(x, y)`` is ``(x_map[y, x], y_map[y, x])``. The calibration folder is
  looked for in the recording's folder and in its parent.

A single HDF5 file holding both events and depth (an older export) is read too: pass the file.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np

from resdepth.data import format as fmt
from resdepth.data.sources.base import (DepthFrames, EventStream, MsIndexMixin,
                                        RectifyMapMissing, check_times, checked_times, open_h5)

log = logging.getLogger("resdepth")

SENSOR_HW = (260, 346)  # DAVIS 346
_CHUNK = 1 << 22


def scene_of(sequence: str) -> str:
    """The calibration scene of a sequence: ``outdoor_day2`` -> ``outdoor_day``."""
    return re.sub(r"\d+$", "", sequence)


def data_file(src: str | Path, sequence: Optional[str]) -> Path:
    """The events file: ``src`` itself when it is a file, else ``src/<sequence>_data.hdf5``."""
    src = Path(src)
    if src.is_file():
        return src
    if not sequence:
        raise fmt.DataError(f"{src}: a directory needs --sequence (e.g. outdoor_day1)")
    path = src / f"{sequence}_data.hdf5"
    if not path.exists():
        raise fmt.DataError(f"{path}: missing (MVSEC events file of sequence {sequence})")
    return path


def gt_file(src: str | Path, sequence: Optional[str]) -> Path:
    """The depth file: ``src`` itself when it is a file, else ``src/<sequence>_gt.hdf5``."""
    src = Path(src)
    if src.is_file():
        return src
    path = src / f"{sequence}_gt.hdf5"
    if not path.exists():
        raise fmt.DataError(f"{path}: missing (MVSEC depth file of sequence {sequence})")
    return path


def sequence_name(src: str | Path, sequence: Optional[str]) -> str:
    """``sequence``, or the file name without ``_data``/``_gt`` and suffix."""
    if sequence:
        return sequence
    return re.sub(r"_(data|gt)$", "", Path(src).stem)


def find_calibration(folder: Path, sequence: str, camera: str) -> Optional[tuple[Path, Path]]:
    """The x and y map files of ``sequence``'s scene, in ``folder``, its parent, or their
    ``<scene>_calib`` subfolders; None when absent."""
    scene = scene_of(sequence)
    names = (f"{scene}_{camera}_x_map.txt", f"{scene}_{camera}_y_map.txt")
    for base in (folder, folder.parent):
        for d in (base / f"{scene}_calib", base):
            if all((d / n).exists() for n in names):
                return d / names[0], d / names[1]
    return None


def load_maps(xy: tuple[Path, Path]) -> np.ndarray:
    """The rectification map ``float64 [H, W, 2]`` from the two text files."""
    mx, my = (np.loadtxt(p, dtype=np.float64, ndmin=2) for p in xy)
    if mx.shape != my.shape:
        raise fmt.DataError(f"{xy[0]} is {mx.shape[0]}x{mx.shape[1]} but {xy[1]} is "
                            f"{my.shape[0]}x{my.shape[1]}")
    return np.stack([mx, my], -1)


class MvsecEvents(MsIndexMixin, EventStream):
    """The events of one MVSEC camera, rectified with the scene's maps.

    ``rectify``: ``True`` requires the maps, ``False`` ignores them, ``"auto"`` uses them when
    found (and says so when not).
    """

    def __init__(self, path: str | Path, sequence: str, camera: str = "left",
                 rectify: bool | str = True, height: Optional[int] = None,
                 width: Optional[int] = None) -> None:
        self.path, self.sequence, self.camera = str(path), sequence, camera
        self.key = f"davis/{camera}/events"
        self.rectify_map = None
        if rectify:
            maps = find_calibration(Path(path).parent, sequence, camera)
            if maps is not None:
                self.rectify_map = load_maps(maps)
                self.calibration = [str(p) for p in maps]
            elif rectify == "auto":
                log.warning("%s: no %s_calib/%s_%s_{x,y}_map.txt found; events NOT rectified",
                            path, scene_of(sequence), scene_of(sequence), camera)
            else:
                raise RectifyMapMissing(
                    f"{sequence}: calibration maps {scene_of(sequence)}_calib/"
                    f"{scene_of(sequence)}_{camera}_{{x,y}}_map.txt not found next to {path} or "
                    "in its parent folder")
        hw = self.rectify_map.shape[:2] if self.rectify_map is not None else SENSOR_HW
        self.height, self.width = int(height or hw[0]), int(width or hw[1])
        with self._open() as f:
            ds = self._events(f)
            self.n = int(ds.shape[0])
            self.t_origin, self.ms_to_idx = self._build_ms_index(ds)

    def _open(self) -> Any:
        return open_h5(self.path)

    def _events(self, f: Any) -> Any:
        if self.key not in f:
            raise fmt.DataError(f"{self.path}: no dataset {self.key} (MVSEC events expected in "
                                f"<sequence>_data.hdf5)")
        ds = f[self.key]
        if ds.ndim != 2 or ds.shape[1] != 4:
            raise fmt.DataError(f"{self.path}: {self.key} has shape {ds.shape}, expected [N, 4]")
        return ds

    def _build_ms_index(self, ds: Any) -> tuple[float, np.ndarray]:
        """First row at or after each millisecond from the first event, one pass over t that
        also checks the times (finite, ascending)."""
        if self.n == 0:
            return 0.0, np.zeros(0, np.int64)
        t0, t1 = float(ds[0, 2]), float(ds[self.n - 1, 2])
        check_times(self.path, np.array([t0]), 0)  # the grid below needs both ends finite
        check_times(self.path, np.array([t1]), self.n - 1)
        grid = t0 + np.arange(max(int(np.ceil((t1 - t0) * 1e3)), 0) + 1) * 1e-3
        idx = np.zeros(len(grid), np.int64)
        for _, t in checked_times(self.path, lambda a, b: ds[a:b, 2], self.n, _CHUNK):
            idx += np.searchsorted(t, grid, side="left")
        return t0, idx

    def _ds(self) -> Any:
        if getattr(self, "_h5file", None) is None:
            self._h5file = self._open()
        return self._events(self._h5file)

    def __len__(self) -> int:
        return self.n

    def _read(self, i0: int, i1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        ev = np.asarray(self._ds()[i0:i1], dtype=np.float64)
        return ev[:, 0], ev[:, 1], ev[:, 2], ev[:, 3]

    def _times(self, i0: int, i1: int) -> np.ndarray:
        return np.asarray(self._ds()[i0:i1, 2], dtype=np.float64)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "file": Path(self.path).name, "camera": self.camera}


class MvsecDepth(DepthFrames):
    """``davis/<camera>/depth_image_rect`` and its timestamps."""

    def __init__(self, path: str | Path, sequence: str, camera: str = "left") -> None:
        self.path, self.sequence, self.camera = str(path), sequence, camera
        self.key = f"davis/{camera}/depth_image_rect"
        with open_h5(self.path) as f:
            for k in (self.key, self.key + "_ts"):
                if k not in f:
                    raise fmt.DataError(f"{self.path}: no dataset {k} (MVSEC depth expected in "
                                        "<sequence>_gt.hdf5)")
            self.height, self.width = (int(v) for v in f[self.key].shape[1:3])
            self.timestamps = np.asarray(f[self.key + "_ts"][:], dtype=np.float64)
            if len(self.timestamps) != f[self.key].shape[0]:
                raise fmt.DataError(f"{self.path}: {len(self.timestamps)} depth timestamps for "
                                    f"{f[self.key].shape[0]} depth frames")

    def depth(self, i: int) -> np.ndarray:
        if getattr(self, "_h5file", None) is None:
            self._h5file = open_h5(self.path)
        return np.asarray(self._h5file[self.key][i], dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "file": Path(self.path).name}


def open_events(src: str | Path, sequence: Optional[str] = None, camera: str = "left",
                rectify: bool | str = True, height: Optional[int] = None,
                width: Optional[int] = None) -> MvsecEvents:
    """The event stream of ``src/<sequence>_data.hdf5`` (or of the file ``src``); ``height`` and
    ``width`` override the frame size (default: the maps', or the DAVIS 346's 260 x 346)."""
    path = data_file(src, sequence)
    return MvsecEvents(path, sequence_name(path, sequence), camera, rectify, height, width)


def open_depth(src: str | Path, sequence: Optional[str] = None, camera: str = "left") -> MvsecDepth:
    """The depth frames of ``src/<sequence>_gt.hdf5`` (or of the file ``src``)."""
    path = gt_file(src, sequence)
    return MvsecDepth(path, sequence_name(path, sequence), camera)


def list_sequences(src: str | Path) -> list[str]:
    """Sequences with both files in ``src``."""
    src = Path(src)
    return sorted(p.name[:-len("_data.hdf5")] for p in src.glob("*_data.hdf5")
                  if (src / p.name.replace("_data.hdf5", "_gt.hdf5")).exists())
