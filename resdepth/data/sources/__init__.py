"""Dataset readers: one module per dataset format behind one interface (``base``).

Event recordings (depth not needed; what inference reads)::

    from resdepth.data.sources import open_events
    stream = open_events("mvsec", "data/mvsec", "outdoor_day1")  # rectified with the scene's maps
    stream.height, stream.width, stream.t_start, stream.t_end
    ev = stream.events_between(t0, t1)     # Events(x, y, t, p), x/y rectified floats, t seconds
    ev = stream.events_before(t1, 30000)   # the last 30000 events before t1

Labelled samples for packing (events + depth): ``pack_source(format, src, sequences, ...)``
returns a random-access, picklable source for ``resdepth.data.writer.write_split``.

``format`` is one of ``FORMATS``; see each module's docstring for the files it reads.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, Sequence

from resdepth.data import format as fmt
from resdepth.data.sources.base import (ConcatSource, DepthFrames, Events, EventStream,
                                        LabelledSource, Record, TemporalContext, Window,
                                        check_same_size, open_h5, safe_key)
from resdepth.data.sources.npz import NpzSource
from resdepth.data.sources.shards import TarSource
from resdepth.data.sources.synth import SynthSource
from resdepth.utils.errors import UserError

__all__ = ["EVENT_ONLY_FORMATS", "FORMATS", "ConcatSource", "DepthFrames", "Events", "EventStream",
           "LabelledSource", "NpzSource", "Record", "SynthSource", "TarSource", "TemporalContext",
           "Window", "check_same_size",
           "detect_format", "list_sequences", "open_depth", "open_events", "pack_source", "safe_key"]

FORMATS = ("npz", "mvsec", "dsec", "m3ed", "dense")
# Camera files with events only (decoded by faery): readable as event streams, nothing to pack.
EVENT_ONLY_FORMATS = ("evt", "aedat4")


def detect_format(path: str | Path) -> str:
    """The reader of a recording file ``path``: from its suffix, and for HDF5 files from their
    top-level groups (``davis``: MVSEC, ``events``: DSEC, ``prophesee``: M3ED); ``resdepth-shards
    pack`` and ``resdepth-predict`` both call this. Raises ``ValueError`` naming ``--format``."""
    formats = ", ".join(FORMATS + EVENT_ONLY_FORMATS)
    p = Path(path)
    name = p.name.lower()
    by_suffix = {".npz": "npz", ".raw": "evt", ".aedat4": "aedat4"}
    if p.suffix.lower() in by_suffix:
        return by_suffix[p.suffix.lower()]
    if p.suffix.lower() in (".h5", ".hdf5") and p.is_file():
        with open_h5(p) as f:
            groups = set(f.keys())
        for group, fmt_name in (("davis", "mvsec"), ("events", "dsec"), ("prophesee", "m3ed")):
            if group in groups and fmt_name in FORMATS:
                return fmt_name
        raise UserError(f"{path}: an HDF5 file with groups {sorted(groups)}, none of a known "
                         f"recording layout; pass --format (one of {formats})")
    if name.endswith("_data.hdf5"):
        return "mvsec"
    raise UserError(f"{path}: cannot tell the recording format from its name; pass --format "
                     f"(one of {formats})")


def reader(format: str) -> ModuleType:
    """The module reading ``format``."""
    if format not in FORMATS + EVENT_ONLY_FORMATS:
        raise UserError(f"unknown dataset format {format!r}; one of "
                         f"{', '.join(FORMATS + EVENT_ONLY_FORMATS)}")
    return importlib.import_module(f"resdepth.data.sources.{format}")


def open_events(format: str, src: str, sequence: Optional[str] = None, **options: Any) -> EventStream:
    """The event stream of one recording (``options``: ``camera``, ``rectify``, ``height``,
    ``width`` where the format has them)."""
    return reader(format).open_events(src, sequence, **options)


def open_depth(format: str, src: str, sequence: Optional[str] = None, **options: Any) -> DepthFrames:
    """The depth frames of one recording."""
    mod = reader(format)
    if not hasattr(mod, "open_depth"):
        raise UserError(f"format {format!r} has no separate depth frames")
    return mod.open_depth(src, sequence, **options)


def list_sequences(format: str, src: str) -> list[str]:
    """The sequences under ``src`` that have events and depth."""
    mod = reader(format)
    if not hasattr(mod, "list_sequences"):
        raise UserError(f"format {format!r} has no sequences; pass the directory itself")
    return mod.list_sequences(src)


def pack_source(format: str, src: str, sequences: Sequence[str] = (), bins: int = 5,
                window: Window = Window(), splat: str = "round", camera: str = "left",
                rectify: bool | str = True, height: Optional[int] = None,
                width: Optional[int] = None,
                frames: tuple[Optional[int], Optional[int]] = (None, None),
                context: Optional[TemporalContext] = None) -> Any:
    """The packing source of ``sequences`` (``["all"]``: every one under ``src``), keeping depth
    frames ``frames[0] <= i < frames[1]`` of each; ``context``: also the events before each
    window (``context.npy``), which needs a recording's events."""
    if context is not None and format in ("npz", "dense"):
        raise UserError(f"--context-ms needs a recording's events; --format {format} holds voxel "
                        "grids or per-sample files without the events before each window")
    if format == "npz":
        if sequences or frames != (None, None):
            raise UserError("--sequence and --frames do not apply to --format npz (pass the directory)")
        return NpzSource(str(src), bins, height, width, splat=splat)
    mod = reader(format)
    if format == "dense":
        if window != Window() or frames != (None, None):
            raise UserError("DENSE ships voxel grids: --window-ms, --events-per-sample and "
                             "--frames do not apply")
        parts = mod.pack_parts(src, sequences, bins)
        return parts[0] if len(parts) == 1 else ConcatSource(parts)
    names = list(sequences)
    if names == ["all"]:
        names = mod.list_sequences(src)
        if not names:
            raise fmt.DataError(f"{src}: no {format} sequences found")
    if not names:
        names = [None]
    parts = []
    for name in names:
        ev = mod.open_events(src, name, camera=camera, rectify=rectify, height=height, width=width)
        depth = mod.open_depth(src, name, camera=camera)
        if rectify == "auto" and ev.rectify_map is None and height is None and width is None:
            ev.height, ev.width = depth.height, depth.width  # an older export: raw = depth pixels
        parts.append(LabelledSource(format, ev, depth, bins, window, splat,
                                    where=f"{format} sequence {ev.sequence} ({src})",
                                    frames=frames, context=context))
    return parts[0] if len(parts) == 1 else ConcatSource(parts)
