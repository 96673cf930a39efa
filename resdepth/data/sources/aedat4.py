"""iniVation AEDAT4 files (the first event stream of the file), decoded by ``faery`` as in ``evt``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from resdepth.data.sources.evt import DecodedEvents, open_file


def open_events(src: str | Path, sequence: Optional[str] = None, height: Optional[int] = None,
                width: Optional[int] = None, **_: Any) -> DecodedEvents:
    """The event stream of the file ``src`` (or ``src/<sequence>.aedat4``)."""
    return open_file(src, sequence, ".aedat4", height, width)
