"""Event-camera files decoded by ``faery``: Prophesee ``.raw`` (EVT 2.0, 2.1, 3.0) here and
iniVation AEDAT4 (``aedat4``), for inference on raw recordings.

The whole file is decoded once into memory (13 bytes per event: time, x, y, polarity); times are
the file's microseconds as seconds. No rectification map ships with these files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from resdepth.data import format as fmt
from resdepth.data.sources.base import InMemoryEvents


class DecodedEvents(InMemoryEvents):
    """The events of one camera file, decoded with ``faery.events_stream_from_file``."""

    def __init__(self, path: str | Path, sequence: Optional[str] = None,
                 height: Optional[int] = None, width: Optional[int] = None) -> None:
        try:
            import faery
        except ImportError as e:  # pragma: no cover - a dependency of the package
            raise fmt.DataError(f"{path}: reading it needs the 'faery' package ({e})") from e
        self.path = str(path)
        self.sequence = sequence or Path(path).stem
        if not Path(path).is_file():
            raise fmt.DataError(f"{path}: missing")
        try:
            stream = faery.events_stream_from_file(self.path)
            w, h = stream.dimensions()
            chunks = [c for c in stream if len(c)]
        except (RuntimeError, OSError, ValueError) as e:
            raise fmt.DataError(f"{path}: not a readable event file ({e})") from e
        ev = np.concatenate(chunks) if chunks else np.zeros(0, faery.EVENTS_DTYPE)
        self._hold(str(path), ev["x"], ev["y"], ev["t"].astype(np.float64) * 1e-6,
                   ev["on"].astype(np.int8))
        self.height, self.width = int(height or h), int(width or w)
        self.rectify_map = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "file": Path(self.path).name}


def open_events(src: str | Path, sequence: Optional[str] = None, height: Optional[int] = None,
                width: Optional[int] = None, **_: Any) -> DecodedEvents:
    """The event stream of the file ``src`` (or ``src/<sequence>.raw``)."""
    return open_file(src, sequence, ".raw", height, width)


def open_file(src: str | Path, sequence: Optional[str], suffix: str, height: Optional[int],
              width: Optional[int]) -> DecodedEvents:
    """The decoded event stream of the file ``src``, or of ``src/<sequence><suffix>`` in a folder."""
    path = Path(src)
    if path.is_dir():
        path = path / f"{sequence}{suffix}"
    return DecodedEvents(path, None, height, width)
