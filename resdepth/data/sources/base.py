"""The one interface every dataset reader implements, and the labelled-window iteration on top.

Two separate things, so that inference on recordings without depth reuses the same readers:

* ``EventStream`` -- one recording's events, depth not needed. It knows its rectified frame size
  (``height``, ``width``), its time range (``t_start``, ``t_end``, seconds on the recording's own
  clock) and returns events with ``events_between(t0, t1)`` (the half-open window
  ``[t0, t1)``), ``events_before(t1, n)`` (the last ``n`` events before ``t1``) or
  ``events(i0, i1)`` (by row). Coordinates come back rectified when the stream has a rectification
  map (MVSEC x/y maps, DSEC ``rectify_map.h5``) -- fractional, possibly outside the frame; the
  voxel grid (``resdepth.data.voxel``) rounds or splats them and drops what falls outside.
* ``DepthFrames`` -- one recording's depth maps (metres; NaN, inf or <= 0 = invalid) and their
  timestamps on the same clock as the events.

``LabelledSource`` pairs the two: one sample per depth frame, events of a window that ends at the
frame's timestamp (between consecutive depth frames by default, or a fixed duration, or a fixed
event count), voxelised to ``[bins, H, W]``. It is the random-access, picklable source
``resdepth.data.writer.write_split`` packs; ``ConcatSource`` joins several sequences into a split.
"""
from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

import numpy as np

from resdepth.data import format as fmt
from resdepth.data.voxel import SPLATS, events_to_voxel
from resdepth.utils.errors import UserError

log = logging.getLogger("resdepth")

# (key, events [B,H,W], depth [H,W] or [1,H,W] in metres, mask or None, meta), and from a source
# packing temporal context a sixth item: the context's voxel grid [N,H,W]
Record = tuple  # (str, np.ndarray, np.ndarray, Optional[np.ndarray], dict[, np.ndarray])


def safe_key(text: str) -> str:
    """A webdataset-safe sample key (no dots or slashes)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


class RectifyMapMissing(fmt.DataError):
    """Rectification was asked for and the recording's maps are not there. The message ends with
    the flag that turns rectification off; each command sets ``flag`` to its own form."""
    flag = "--no-rectify"

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what

    def __str__(self) -> str:
        return f"{self.what} (pass {self.flag} to use raw pixels)"


def open_h5(path: Any) -> Any:
    """An HDF5 file for reading, with the Blosc filter that DSEC and M3ED files use registered;
    a damaged or truncated file is a ``DataError`` naming it."""
    import h5py
    import hdf5plugin  # noqa: F401 - registers Blosc and the other filters on import

    try:
        return h5py.File(path, "r")
    except OSError as e:
        if not Path(path).exists():
            raise
        raise fmt.DataError(f"{path}: not a readable HDF5 file, damaged or cut short ({e})") from e


def check_times(where: str, t: np.ndarray, row0: int = 0, before: float = -np.inf) -> None:
    """Refuse event times that are not finite or go backwards: ``t`` are the times of rows
    ``row0, row0 + 1, ...`` and ``before`` the time of row ``row0 - 1`` (a chunk's check joins
    the previous chunk's). Readers look events up by binary search over time, which silently
    returns wrong windows when times are out of order."""
    bad = ~np.isfinite(t)
    if bad.any():
        i = int(np.argmax(bad))
        raise fmt.DataError(f"{where}: event time at row {row0 + i} is {t[i]} (not a finite number)")
    back = np.diff(t, prepend=before) < 0
    if back.any():
        i = int(np.argmax(back))
        prev = float(t[i - 1]) if i else float(before)
        raise fmt.DataError(f"{where}: event times are not ascending: row {row0 + i} at "
                            f"{float(t[i]):.6f} s comes after row {row0 + i - 1} at {prev:.6f} s")


def checked_times(where: str, times: Callable[[int, int], np.ndarray], n: int,
                  chunk: int = 1 << 22) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, times)`` of each chunk of ``chunk`` rows, every one checked by
    ``check_times``: one pass in bounded memory however long the recording."""
    before = -np.inf
    for a in range(0, n, chunk):
        try:
            t = np.asarray(times(a, min(n, a + chunk)), dtype=np.float64)
        except OSError as e:  # a damaged HDF5 chunk
            raise fmt.DataError(f"{where}: event times of rows {a} to {min(n, a + chunk)} "
                                f"unreadable, the file is damaged or cut short ({e})") from e
        check_times(where, t, a, before)
        before = float(t[-1])
        yield a, t


class Events(NamedTuple):
    """A slice of events: ``x``, ``y`` pixel coordinates (float64, rectified when the stream
    rectifies), ``t`` in seconds (float64), ``p`` polarity +1/-1 (int8)."""
    x: np.ndarray
    y: np.ndarray
    t: np.ndarray
    p: np.ndarray


class EventStream(ABC):
    """One recording's events (see the module docstring). Subclasses implement ``__len__``,
    ``_read`` (raw rows), ``_times`` (times of rows) and may override ``index_at``.

    ``rectify_map`` is ``None`` or a float array ``[H_raw, W_raw, 2]`` giving, at raw pixel
    ``(x, y)``, the rectified ``(x_rect, y_rect)``. Instances are picklable; open files are
    dropped on pickling and reopened lazily, so forked shard writers each read on their own.
    """
    sequence: str
    height: int
    width: int
    rectify_map: Optional[np.ndarray] = None

    @abstractmethod
    def __len__(self) -> int:
        """Number of events."""

    @abstractmethod
    def _read(self, i0: int, i1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Raw rows ``[i0, i1)``: integer x, y (sensor pixels), t in seconds, polarity (any sign
        convention: > 0 is positive)."""

    @abstractmethod
    def _times(self, i0: int, i1: int) -> np.ndarray:
        """Times in seconds (float64) of rows ``[i0, i1)``."""

    @property
    def t_start(self) -> float:
        """Time of the first event (seconds)."""
        return float(self._times(0, 1)[0]) if len(self) else 0.0

    @property
    def t_end(self) -> float:
        """Time of the last event (seconds)."""
        n = len(self)
        return float(self._times(n - 1, n)[0]) if n else 0.0

    def index_at(self, t: float) -> int:
        """Row of the first event at or after ``t`` (binary search over rows; subclasses with a
        time index narrow the search first)."""
        return self._search(t, 0, len(self))

    def _search(self, t: float, lo: int, hi: int, block: int = 1 << 16) -> int:
        """First row in ``[lo, hi)`` with time >= ``t``, reading blocks of at most ``block`` rows."""
        while hi - lo > block:
            mid = (lo + hi) // 2
            if float(self._times(mid, mid + 1)[0]) < t:
                lo = mid + 1
            else:
                hi = mid
        return lo + int(np.searchsorted(self._times(lo, hi), t, side="left"))

    def events(self, i0: int, i1: int) -> Events:
        """Events of rows ``[i0, i1)``, rectified when the stream has a map."""
        i0, i1 = max(int(i0), 0), min(int(i1), len(self))
        if i1 <= i0:
            e = np.zeros(0)
            return Events(e, e, e, np.zeros(0, np.int8))
        x, y, t, p = self._read(i0, i1)
        pol = np.where(np.asarray(p) > 0, 1, -1).astype(np.int8)
        x, y = self.rectify(np.asarray(x), np.asarray(y))
        return Events(x, y, np.asarray(t, dtype=np.float64), pol)

    def events_between(self, t0: float, t1: float) -> Events:
        """Events with ``t0 <= t < t1``."""
        return self.events(self.index_at(t0), self.index_at(t1))

    def events_before(self, t1: float, n: int) -> Events:
        """The last ``n`` events with ``t < t1`` (fewer at the start of the recording)."""
        i1 = self.index_at(t1)
        return self.events(i1 - n, i1)

    def rectify(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rectified float64 coordinates of raw integer pixels (identity without a map); raw
        pixels outside the map go to -1 so the voxel grid drops them."""
        if self.rectify_map is None:
            return x.astype(np.float64), y.astype(np.float64)
        xi, yi = x.astype(np.int64), y.astype(np.int64)
        mh, mw = self.rectify_map.shape[:2]
        ok = (xi >= 0) & (xi < mw) & (yi >= 0) & (yi < mh)
        if not ok.all():
            xi, yi = np.where(ok, xi, 0), np.where(ok, yi, 0)
        xy = self.rectify_map[yi, xi].astype(np.float64)
        if not ok.all():
            xy[~ok] = -1.0
        return xy[:, 0], xy[:, 1]

    def describe(self) -> dict[str, Any]:
        """What the stream is, for ``index.json``."""
        return {"sequence": self.sequence, "height": self.height, "width": self.width,
                "rectified": self.rectify_map is not None, "num_events": len(self),
                "t_start": self.t_start, "t_end": self.t_end}

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_h5")}


class InMemoryEvents(EventStream):
    """A recording whose event arrays ``x, y, t, p`` (``t`` float64 seconds) are held in memory;
    subclasses load them and call ``_hold``."""
    x: np.ndarray
    y: np.ndarray
    t: np.ndarray
    p: np.ndarray

    def _hold(self, where: str, x: np.ndarray, y: np.ndarray, t: np.ndarray, p: np.ndarray) -> None:
        t = np.asarray(t, dtype=np.float64)
        check_times(where, t)
        self.x, self.y, self.t, self.p = x, y, t, p

    def __len__(self) -> int:
        return len(self.t)

    def _read(self, i0: int, i1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.x[i0:i1], self.y[i0:i1], self.t[i0:i1], self.p[i0:i1]

    def _times(self, i0: int, i1: int) -> np.ndarray:
        return self.t[i0:i1]

    def index_at(self, t: float) -> int:
        return int(np.searchsorted(self.t, t, side="left"))


class MsIndexMixin:
    """``index_at`` through a millisecond table (``ms_to_idx[k]`` = first row at or after
    ``t_origin + k`` ms, DSEC's convention), so a look-up reads at most one millisecond of rows."""
    ms_to_idx: np.ndarray
    t_origin: float

    def index_at(self, t: float) -> int:
        k = int(np.floor((t - self.t_origin) * 1e3))
        n, m = len(self), len(self.ms_to_idx)  # type: ignore[arg-type]
        if k < 0 or m == 0:
            return self._search(t, 0, int(self.ms_to_idx[0]) if m else n)  # type: ignore[attr-defined]
        # one millisecond of margin each side absorbs float rounding of t - t_origin
        lo = int(self.ms_to_idx[min(max(k - 1, 0), m - 1)])
        hi = int(self.ms_to_idx[k + 2]) if k + 2 < m else n
        return self._search(t, lo, hi)  # type: ignore[attr-defined]


class DepthFrames(ABC):
    """One recording's depth maps and their timestamps (seconds, the events' clock)."""
    sequence: str
    height: int
    width: int
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.timestamps)

    @abstractmethod
    def depth(self, i: int) -> np.ndarray:
        """Depth frame ``i``: float32 ``[H, W]`` metres; NaN, inf or <= 0 mark invalid pixels."""

    def frame_meta(self, i: int) -> dict[str, Any]:
        """Extra per-sample meta of frame ``i`` (e.g. the dataset's own timestamp and file)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What the depth is, for ``index.json``."""
        return {"frames": len(self), "height": self.height, "width": self.width}

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_h5")}


@dataclass(frozen=True)
class Window:
    """Which events go with depth frame ``i``: ``mode="depth"``: ``[ts[i-1], ts[i])`` (the frame
    before to this one); ``"ms"``: the last ``ms`` milliseconds before ``ts[i]``; ``"count"``: the
    last ``count`` events before ``ts[i]``."""
    mode: str = "depth"
    ms: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("depth", "ms", "count"):
            raise UserError(f"window mode must be depth, ms or count, got {self.mode!r}")
        if self.mode == "ms" and self.ms <= 0:
            raise UserError(f"--window-ms must be > 0, got {self.ms}")
        if self.mode == "count" and self.count <= 0:
            raise UserError(f"--events-per-sample must be > 0, got {self.count}")

    def describe(self) -> dict[str, Any]:
        return {"window": self.mode, **({"window_ms": self.ms} if self.mode == "ms" else {}),
                **({"events_per_sample": self.count} if self.mode == "count" else {})}


@dataclass(frozen=True)
class TemporalContext:
    """Temporal context: the events of the ``ms`` milliseconds before a window, voxelised to
    ``bins`` time bins (``context.npy``)."""
    ms: float
    bins: int

    def __post_init__(self) -> None:
        if self.ms <= 0 or self.bins < 1:
            raise UserError(f"--context-ms must be > 0 and --context-bins >= 1, got {self.ms:g} "
                            f"and {self.bins}")

    def describe(self) -> dict[str, Any]:
        return {"context_ms": float(self.ms), "context_bins": int(self.bins)}


def context_grid(stream: EventStream, t0: float, ctx: TemporalContext, splat: str
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """The voxel grid of ``stream``'s events in ``[t0 - ctx.ms, t0)`` and its ``meta.json`` entry.
    Before the recording's first event there is nothing: those bins stay zero and ``missing_ms``
    says how much of the context that is. Packing and prediction both call this."""
    c0 = t0 - ctx.ms * 1e-3
    ev = stream.events_between(c0, t0)
    grid = events_to_voxel(ev.x, ev.y, ev.t, ev.p, ctx.bins, stream.height, stream.width, c0, t0,
                           splat=splat)
    meta: dict[str, Any] = {"t_start": c0, "num_events": int(len(ev.t))}
    if len(stream) == 0 or stream.t_start > c0:
        first = stream.t_start if len(stream) else t0
        meta["missing_ms"] = round(min(first - c0, ctx.ms * 1e-3) * 1e3, 6)
    return grid, meta


def check_same_size(events: EventStream, depth: DepthFrames, where: str) -> None:
    """Refuse a pairing whose event frame and depth frame differ in size (nothing is written)."""
    if (events.height, events.width) != (depth.height, depth.width):
        raise fmt.DataError(f"{where}: events are {events.height}x{events.width} (H x W) but depth "
                            f"is {depth.height}x{depth.width}; they must match")


class LabelledSource:
    """Samples of one sequence: depth frame ``i`` with the voxelised events of its window.

    Skipped frames: the first (``"depth"``: it has no previous frame), those whose window does
    not overlap the events (``"depth"``) or starts before the first event (``"ms"``), and those
    with fewer events before them than asked (``"count"``). Keys are ``<sequence>_<frame:06d>``; ``meta`` holds ``source``, ``sequence``,
    ``t_start``, ``t_end`` (the window, seconds), ``frame`` and ``num_events``.
    """

    def __init__(self, source: str, events: EventStream, depth: DepthFrames, bins: int = 5,
                 window: Window = Window(), splat: str = "round", where: str = "",
                 frames: tuple[Optional[int], Optional[int]] = (None, None),
                 context: Optional[TemporalContext] = None) -> None:
        if splat not in SPLATS:
            raise UserError(f"splat must be one of {SPLATS}, got {splat!r}")
        check_same_size(events, depth, where or events.sequence)
        self.source, self.events, self.depth = source, events, depth
        self.bins, self.window, self.splat, self.context = int(bins), window, splat, context
        lo, hi = frames  # depth frame range [lo, hi), e.g. to hold out the end of a sequence
        self.frame_range = [lo, hi]
        n = len(depth)
        lo = lo + n if lo is not None and lo < 0 else lo  # negative counts from the end
        hi = hi + n if hi is not None and hi < 0 else hi
        self.selected = range(max(lo or 0, 0), min(n if hi is None else hi, n))
        self.frames = [i for i in self._frames() if i in self.selected]
        dropped = len(self.selected) - len(self.frames)
        if self.frames and dropped and self.window.mode != "depth":
            log.warning("sequence %s: %d of %d depth frames dropped: %s", events.sequence, dropped,
                        len(self.selected), self._window_problem("their"))

    def _frames(self) -> list[int]:
        ts = np.asarray(self.depth.timestamps, dtype=np.float64)
        if len(self.events) == 0:
            return []
        first, last = self.events.t_start, self.events.t_end
        if self.window.mode == "depth":
            return [i for i in range(1, len(ts))
                    if ts[i] > ts[i - 1] and ts[i] > first and ts[i - 1] <= last]
        if self.window.mode == "ms":
            return [i for i in range(len(ts)) if ts[i] - self.window.ms * 1e-3 >= first]
        return [i for i in range(len(ts)) if self.events.index_at(ts[i]) >= self.window.count]

    def __len__(self) -> int:
        return len(self.frames)

    def _window_problem(self, which: str) -> str:
        """Why ``which`` frames' ``--window-ms`` or ``--events-per-sample`` windows are refused."""
        if self.window.mode == "ms":
            return (f"{which} {self.window.ms:g} ms window starts before the recording's first "
                    f"event at {self.events.t_start:.6f} s")
        return (f"too few events: fewer than {self.window.count} before {which} timestamp (the "
                f"recording holds {len(self.events)} events)")

    def why_empty(self) -> str:
        """Why this sequence gives no sample: the frame range, the events or the windows."""
        name, n = f"sequence {self.events.sequence}", len(self.depth)
        lo, hi = ("" if v is None else v for v in self.frame_range)
        if n == 0:
            return f"{name}: no depth frames"
        if not self.selected:
            if self.frame_range[0] is not None and self.selected.start >= n:
                return (f"{name}: --frames {lo}:{hi} starts past the last depth frame (the "
                        f"sequence has {n} depth frames, 0 to {n - 1})")
            return f"{name}: --frames {lo}:{hi} is an empty range (the sequence has {n} depth frames)"
        if len(self.events) == 0:
            return f"{name}: the recording has no events"
        if self.window.mode != "depth":
            return f"{name}: " + self._window_problem("every depth frame's")
        ts = self.depth.timestamps
        return (f"{name}: no depth frame has events in its window (events from "
                f"{self.events.t_start:.6f} s to {self.events.t_end:.6f} s, depth frames from "
                f"{float(ts[0]):.6f} s to {float(ts[-1]):.6f} s)")

    def window_of(self, i: int) -> tuple[float, float, Events]:
        """``(t0, t1, events)`` of depth frame ``i``."""
        ts = self.depth.timestamps
        t1 = float(ts[i])
        if self.window.mode == "depth":
            t0 = float(ts[i - 1])
            return t0, t1, self.events.events_between(t0, t1)
        if self.window.mode == "ms":
            t0 = t1 - self.window.ms * 1e-3
            return t0, t1, self.events.events_between(t0, t1)
        ev = self.events.events_before(t1, self.window.count)
        return float(ev.t[0]), t1, ev

    def samples(self, start: int, stop: int) -> Iterator[Record]:
        seq = self.events.sequence
        for i in self.frames[start:stop]:
            t0, t1, ev = self.window_of(i)
            grid = events_to_voxel(ev.x, ev.y, ev.t, ev.p, self.bins, self.events.height,
                                   self.events.width, t0, t1, splat=self.splat)
            meta = {"source": self.source, "sequence": seq, "t_start": t0, "t_end": t1,
                    "frame": int(i), "num_events": int(len(ev.t)), **self.depth.frame_meta(i)}
            record = (f"{safe_key(seq)}_{i:06d}", grid, self.depth.depth(i), None, meta)
            if self.context is None:
                yield record
                continue
            context, meta["context"] = context_grid(self.events, t0, self.context, self.splat)
            yield (*record, context)

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "bins": self.bins, "splat": self.splat,
                **self.window.describe(), **(self.context.describe() if self.context else {}),
                "sequences": [self.sequence_entry()]}

    def sequence_entry(self) -> dict[str, Any]:
        """This sequence's line in ``index.json``'s ``sequences``."""
        return {"name": self.events.sequence, "samples": len(self), **self.events.describe(),
                "depth_frames": len(self.depth), "frame_range": self.frame_range}


class ConcatSource:
    """Several sources one after the other (several sequences in one split)."""

    def __init__(self, parts: Sequence[Any]) -> None:
        if not parts:
            raise fmt.DataError("no sequences to pack")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts]).tolist()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def samples(self, start: int, stop: int) -> Iterator[Record]:
        for j, part in enumerate(self.parts):
            a, b = self.offsets[j], self.offsets[j + 1]
            lo, hi = max(start, a), min(stop, b)
            if lo < hi:
                yield from part.samples(lo - a, hi - a)

    def describe(self) -> dict[str, Any]:
        first = self.parts[0].describe()
        seqs = [s for p in self.parts for s in p.describe().get("sequences", [])]
        return {**{k: v for k, v in first.items() if k != "sequences"}, "sequences": seqs}
