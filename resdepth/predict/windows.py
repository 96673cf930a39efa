"""One recording cut into windows, each voxelised as the exported nets were trained.

Windows are consecutive and fixed before any work starts, so window ``k`` is the same whichever
process predicts it: by duration, ``[t_start + k d, t_start + (k + 1) d)`` from the first event
(only whole windows; ``t0`` is computed as ``t1 - d``, exactly as packing computes a
``--window-ms`` window ending at a depth timestamp); by count, rows ``[k n, (k + 1) n)``, the grid
spanning from the window's first event to the next window's first event.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from resdepth.data.netinput import net_input
from resdepth.data.sources import EventStream, TemporalContext, detect_format, open_events, safe_key
from resdepth.data.sources.base import RectifyMapMissing, context_grid, open_h5
from resdepth.data.voxel import events_to_voxel
from resdepth.utils.errors import UserError

log = logging.getLogger("resdepth")


@dataclass
class Window:
    """Window ``index`` of the recording: its sample key, time span, event count and voxel grid."""
    index: int
    key: str
    t0: float
    t1: float
    num_events: int
    events: np.ndarray  # [B (+ context bins), H, W] float32, the nets' condition
    context_missing_ms: Optional[float] = None  # context before the recording's first event


def load_rectify_map(path: str | Path) -> np.ndarray:
    """A rectification map ``[H, W, 2]``: ``.npy``, or HDF5 with a ``rectify_map`` dataset (DSEC)."""
    p = Path(path)
    if p.suffix.lower() == ".npy":
        m = np.load(p, allow_pickle=False)
    else:
        with open_h5(p) as f:
            if "rectify_map" not in f:
                raise UserError(f"{path}: no 'rectify_map' dataset")
            m = f["rectify_map"][()]
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 3 or m.shape[2] != 2:
        raise UserError(f"{path}: a rectification map is [H, W, 2], got {list(m.shape)}")
    return m


def open_recording(cfg: Any) -> EventStream:
    """The event stream ``cfg`` names, with its rectification."""
    fmt_name = detect_format(cfg.events) if cfg.format == "auto" else cfg.format
    rectify = {"auto": "auto", "true": True, "false": False}[cfg.rectify]
    if cfg.rectify_map:
        rectify = False  # the given map replaces the recording's own
    try:
        stream = open_events(fmt_name, str(cfg.events), cfg.sequence, camera=cfg.camera,
                             rectify=rectify)
    except RectifyMapMissing as e:
        e.flag = "--rectify false"  # this command's form of the readers' --no-rectify
        raise
    if cfg.rectify_map:
        m = load_rectify_map(cfg.rectify_map)
        if m.shape[:2] != (stream.height, stream.width):
            log.info("rectification map is %dx%d, the sensor %dx%d: frames take the map's size",
                     m.shape[0], m.shape[1], stream.height, stream.width)
        stream.rectify_map = m
        stream.height, stream.width = int(m.shape[0]), int(m.shape[1])
    return stream


class Windows:
    """The windows of ``stream`` voxelised to ``bins`` with ``splat``, then ``voxel_norm``
    (``resdepth.data.netinput.net_input``, as training and evaluation prepare a net's input);
    with ``context``, each window's temporal context as packing makes it
    (``resdepth.data.sources.base.context_grid``)."""

    def __init__(self, stream: EventStream, window_ms: float, window_events: int, bins: int,
                 splat: str = "round", voxel_norm: str = "none", max_windows: int = 0,
                 context: Optional[TemporalContext] = None) -> None:
        self.stream, self.bins, self.splat, self.voxel_norm = stream, int(bins), splat, voxel_norm
        self.context = context
        self.duration = window_ms * 1e-3 if window_ms > 0 else None
        self.count = int(window_events)
        self.prefix = safe_key(stream.sequence)
        n = self._count_windows()
        self.n = min(n, max_windows) if max_windows else n

    def _count_windows(self) -> int:
        if len(self.stream) == 0:
            return 0
        if self.duration is None:
            return len(self.stream) // self.count
        t_start, t_end = self.stream.t_start, self.stream.t_end
        n = int((t_end - t_start) // self.duration)
        while n > 0 and t_start + n * self.duration > t_end:
            n -= 1
        return n

    def __len__(self) -> int:
        return self.n

    def key(self, k: int) -> str:
        return f"{self.prefix}_{k:06d}"

    def window(self, k: int) -> Window:
        """Window ``k``: its events voxelised at the stream's (rectified) frame size."""
        s = self.stream
        if self.duration is not None:
            t1 = s.t_start + (k + 1) * self.duration
            t0 = t1 - self.duration
            ev = s.events_between(t0, t1)
        else:
            i0, i1 = k * self.count, (k + 1) * self.count
            ev = s.events(i0, i1)
            t0 = float(ev.t[0])
            t1 = float(s.events(i1, i1 + 1).t[0]) if i1 < len(s) else float(ev.t[-1])
        grid = events_to_voxel(ev.x, ev.y, ev.t, ev.p, self.bins, s.height, s.width, t0, t1,
                               splat=self.splat)
        context, missing = None, None
        if self.context is not None:
            context, cmeta = context_grid(s, t0, self.context, self.splat)
            missing = cmeta.get("missing_ms")
        # the nets' input exactly as training and evaluation make it from a shard's grid
        grid = net_input(grid, self.voxel_norm, context)
        return Window(k, self.key(k), float(t0), float(t1), int(len(ev.t)), grid, missing)

    def iter(self, start: int, stop: int) -> Iterator[Window]:
        for k in range(start, stop):
            yield self.window(k)

    def describe(self) -> dict[str, Any]:
        mode = ({"window_ms": self.duration * 1e3} if self.duration is not None
                else {"window_events": self.count})
        return {"windows": self.n, **mode, "bins": self.bins, "splat": self.splat,
                "voxel_norm": self.voxel_norm, "recording": self.stream.describe(),
                **({"context": self.context.describe()} if self.context else {})}
