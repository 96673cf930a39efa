"""DSEC as it ships: one folder per sequence under a split root (e.g. ``train/``)::

    <seq>/events/left/events.h5        events/{x, y, t, p}, ms_to_idx, t_offset (Blosc; hdf5plugin)
    <seq>/events/left/rectify_map.h5   rectify_map [480, 640, 2]: rectified (x, y) of raw pixel [y, x]
    <seq>/disparity/event/*.png        16-bit disparity x 256 in the rectified left event frame;
                                       0 = invalid
    <seq>/disparity/timestamps.txt     one timestamp (microseconds) per disparity PNG
    <seq>/calibration/cam_to_cam.yaml  disparity_to_depth: cams_03 (the event cameras' 4x4 Q)

``events/t`` is in microseconds from ``t_offset``; ``ms_to_idx[k]`` is the first event at or after
``k`` ms. Times here are seconds from ``t_offset`` (``(t_abs_us - t_offset) * 1e-6``): float64 keeps
sub-nanosecond precision at that magnitude, where absolute DSEC times (~1e15 us) would not. The
exact disparity timestamp (us) and PNG name go into each sample's meta, ``t_offset`` into
``index.json``.

Depth from disparity with OpenCV's reprojection matrix Q (``reprojectImageTo3D``):
``[X, Y, Z, W] = Q [x, y, d, 1]``, depth ``Z / W = Q[2,3] / (Q[3,2] d + Q[3,3])`` (= f B / d when
``Q[3,3] = 0``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from resdepth.data import format as fmt
from resdepth.data.sources.base import (DepthFrames, EventStream, MsIndexMixin,
                                        RectifyMapMissing, checked_times, open_h5)
from resdepth.utils.errors import UserError

log = logging.getLogger("resdepth")

SENSOR_HW = (480, 640)


def sequence_dir(src: str | Path, sequence: Optional[str]) -> Path:
    """``src/<sequence>``, or ``src`` itself when it is a sequence folder."""
    src = Path(src)
    if sequence is None:
        if (src / "events").is_dir():
            return src
        raise fmt.DataError(f"{src}: pass --sequence (e.g. zurich_city_00_a) or 'all'")
    d = src / sequence
    if not d.is_dir():
        raise fmt.DataError(f"{d}: no such DSEC sequence folder")
    return d


class DsecEvents(MsIndexMixin, EventStream):
    """One DSEC event camera, rectified with its ``rectify_map.h5``."""

    def __init__(self, folder: str | Path, sequence: str, rectify: bool = True,
                 height: Optional[int] = None, width: Optional[int] = None) -> None:
        folder = Path(folder)
        self.path, self.sequence = str(folder / "events.h5"), sequence
        if not Path(self.path).exists():
            raise fmt.DataError(f"{self.path}: missing (DSEC events of sequence {sequence})")
        self.rectify_map = None
        if rectify:
            rect = folder / "rectify_map.h5"
            if not rect.exists():
                raise RectifyMapMissing(f"{rect}: missing")
            with open_h5(rect) as f:
                if "rectify_map" not in f:
                    raise fmt.DataError(f"{rect}: no dataset rectify_map")
                self.rectify_map = np.asarray(f["rectify_map"][()], dtype=np.float32)
        hw = self.rectify_map.shape[:2] if self.rectify_map is not None else SENSOR_HW
        self.height, self.width = int(height or hw[0]), int(width or hw[1])
        with open_h5(Path(self.path)) as f:
            for k in ("events/x", "events/y", "events/t", "events/p", "ms_to_idx", "t_offset"):
                if k not in f:
                    raise fmt.DataError(f"{self.path}: no dataset {k} (DSEC events.h5 expected)")
            self.n = int(f["events/t"].shape[0])
            self.t_offset_us = int(f["t_offset"][()])
            self.ms_to_idx = np.asarray(f["ms_to_idx"][()], dtype=np.int64)
            t = f["events/t"]
            for _ in checked_times(self.path, lambda a, b: t[a:b] * 1e-6, self.n):
                pass  # ms_to_idx and the searches within it assume ascending times
        self.t_origin = 0.0

    def _file(self) -> Any:
        if getattr(self, "_h5file", None) is None:
            self._h5file = open_h5(Path(self.path))
        return self._h5file

    def __len__(self) -> int:
        return self.n

    def _read(self, i0: int, i1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        g = self._file()["events"]
        return g["x"][i0:i1], g["y"][i0:i1], self._times(i0, i1), g["p"][i0:i1]

    def _times(self, i0: int, i1: int) -> np.ndarray:
        return np.asarray(self._file()["events/t"][i0:i1], dtype=np.float64) * 1e-6

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "t_offset_us": self.t_offset_us}


def load_q(path: Path) -> np.ndarray:
    """``disparity_to_depth.cams_03`` of ``cam_to_cam.yaml`` as a 4x4 array."""
    import yaml

    if not path.exists():
        raise fmt.DataError(f"{path}: missing (DSEC calibration of the sequence)")
    data = yaml.safe_load(path.read_text())
    try:
        q = np.asarray(data["disparity_to_depth"]["cams_03"], dtype=np.float64)
    except (KeyError, TypeError) as e:
        raise fmt.DataError(f"{path}: no disparity_to_depth.cams_03") from e
    if q.shape != (4, 4):
        raise fmt.DataError(f"{path}: disparity_to_depth.cams_03 has shape {q.shape}, not 4x4")
    return q


def disparity_to_depth(disp: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Metric depth (float32; NaN where the disparity is 0 or the depth would not be > 0)."""
    disp = np.asarray(disp, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = q[2, 3] / (q[3, 2] * disp + q[3, 3])
    ok = (disp > 0) & np.isfinite(depth) & (depth > 0)
    return np.where(ok, depth, np.nan).astype(np.float32)


def read_png16(path: Path) -> np.ndarray:
    """A 16-bit PNG as uint16."""
    from PIL import Image

    with Image.open(path) as im:
        a = np.array(im)
    if a.dtype != np.uint16 and not (a.dtype.kind in "iu" and a.max(initial=0) < 65536):
        raise fmt.DataError(f"{path}: not a 16-bit disparity PNG (mode {im.mode})")
    return a.astype(np.uint16)


class DsecDepth(DepthFrames):
    """Disparity PNGs of the left event camera as metric depth, on the events' clock."""

    def __init__(self, seq_dir: Path, sequence: str, t_offset_us: int) -> None:
        disp = seq_dir / "disparity"
        self.sequence, self.t_offset_us = sequence, int(t_offset_us)
        ts_file = disp / "timestamps.txt"
        if not ts_file.exists():
            raise fmt.DataError(f"{ts_file}: missing (DSEC disparity timestamps)")
        self.timestamps_us = np.loadtxt(ts_file, dtype=np.int64, ndmin=1)
        self.files = sorted(str(p) for p in (disp / "event").glob("*.png"))
        if len(self.files) != len(self.timestamps_us):
            raise fmt.DataError(f"{disp / 'event'}: {len(self.files)} PNG files for "
                                f"{len(self.timestamps_us)} timestamps in {ts_file}")
        self.timestamps = (self.timestamps_us - self.t_offset_us) * 1e-6
        self.q = load_q(seq_dir / "calibration" / "cam_to_cam.yaml")
        first = read_png16(Path(self.files[0])) if self.files else np.zeros(SENSOR_HW)
        self.height, self.width = (int(v) for v in first.shape[:2])

    def depth(self, i: int) -> np.ndarray:
        raw = read_png16(Path(self.files[i]))
        if raw.shape != (self.height, self.width):
            raise fmt.DataError(f"{self.files[i]}: {raw.shape[0]}x{raw.shape[1]}, the first PNG "
                                f"is {self.height}x{self.width}")
        return disparity_to_depth(raw.astype(np.float64) / 256.0, self.q)

    def frame_meta(self, i: int) -> dict[str, Any]:
        return {"timestamp_us": int(self.timestamps_us[i]), "file": Path(self.files[i]).name}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "q_cams_03": self.q.tolist()}


def open_events(src: str | Path, sequence: Optional[str] = None, camera: str = "left",
                rectify: bool | str = True, height: Optional[int] = None,
                width: Optional[int] = None) -> DsecEvents:
    """The events of ``src/<sequence>/events/<camera>/`` (also: a sequence folder, the
    ``events/<camera>`` folder itself or its ``events.h5``). ``rectify="auto"`` rectifies when the
    folder holds ``rectify_map.h5``."""
    src = Path(src)
    if src.is_file():
        src = src.parent
    if (src / "events.h5").exists():
        folder, name = src, sequence or sequence_of(src)
    else:
        d = sequence_dir(src, sequence)
        folder, name = d / "events" / camera, d.name
    if rectify == "auto":
        rectify = (folder / "rectify_map.h5").exists()
        if not rectify:
            log.warning("%s: no rectify_map.h5 beside it; events NOT rectified", folder / "events.h5")
    return DsecEvents(folder, name, bool(rectify), height, width)


def sequence_of(folder: Path) -> str:
    """The sequence a folder holding ``events.h5`` belongs to: ``<seq>`` of ``<seq>/events/<camera>``
    as DSEC ships it, else the folder's own name (``.`` and relative paths resolved first)."""
    folder = folder.resolve()
    return folder.parent.parent.name if folder.parent.name == "events" else folder.name


def open_depth(src: str | Path, sequence: Optional[str] = None, camera: str = "left") -> DsecDepth:
    """The depth of ``src/<sequence>`` (disparity of the left event camera)."""
    if camera != "left":
        raise UserError("DSEC disparity is given in the left event camera's frame; use --camera left")
    d = sequence_dir(src, sequence)
    with open_h5(d / "events" / "left" / "events.h5") as f:
        t_offset = int(f["t_offset"][()])
    return DsecDepth(d, d.name, t_offset)


def list_sequences(src: str | Path) -> list[str]:
    """Sequence folders under ``src`` with events and disparity."""
    src = Path(src)
    return sorted(p.name for p in src.iterdir() if (p / "events" / "left" / "events.h5").exists()
                  and (p / "disparity" / "timestamps.txt").exists())
