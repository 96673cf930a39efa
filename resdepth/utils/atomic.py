"""Files that appear whole or not at all: write beside the target, fsync, rename into place.

Every one-shot output of resdepth (``index.json``, exports, checkpoint metadata, evaluation parts,
reports, launcher records) goes through here, so a killed process never leaves a half file that
a later run would read.
"""
from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional


def tmp_name(path: Path) -> Path:
    """The hidden temporary name a file is written under before it is renamed to ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; if the block succeeds, fsync it and rename it onto
    ``path``; if it fails, remove it and leave ``path`` as it was."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None, in dicts, lists and tuples."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_text(obj: Any, indent: Optional[int] = None,
              default: Optional[Callable[[Any], Any]] = None) -> str:
    """``obj`` as strict JSON: NaN and infinities (a metric with no valid pixel, a step without a
    gradient norm) are written as ``null``. Python's bare ``NaN`` is not JSON: strict parsers
    (JavaScript's ``JSON.parse``, jq, most non-Python readers) reject the whole file."""
    return json.dumps(_finite(obj), indent=indent, default=default, allow_nan=False)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2,
                      default: Optional[Callable[[Any], Any]] = None) -> None:
    """Write ``obj`` as strict JSON (``json_text``) to ``path`` atomically (``default`` as in
    ``json.dumps``)."""
    with replacing(path) as tmp:
        tmp.write_text(json_text(obj, indent=indent, default=default) + "\n")
