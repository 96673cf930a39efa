"""What a prediction writes per window (depth, ensemble std, colour preview) and, once every
window is done, for the whole recording (``frames.csv``, the preview video).

Every file is written under a temporary name and renamed, and a unit's part file comes last, so
a killed run leaves no half file that a rerun would take as done. Colours use fixed ranges (the
depth normalisation's range, a tenth of it for the std), so neighbouring windows, whoever
predicted them, share one colour scale.
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any, Optional

import imageio.v2 as iio2
import imageio.v3 as iio
import numpy as np

from resdepth.infer.parts import save_npy_atomic
from resdepth.utils.atomic import replacing
from resdepth.utils.viz import (STD_CMAP, Scale, colorize, colorize_events, depth_panel, enlarge,
                                 with_colorbar)

log = logging.getLogger("resdepth")

CSV_COLUMNS = ("index", "key", "t_start", "t_end", "num_events", "depth", "std", "preview",
               "encoding", "context_missing_ms")
# KITTI's depth PNG: 16 bits hold 1/256 m steps to 255.99 m, the whole range the nets predict
# (millimetres stopped at 65.535 m); 0 stays "no depth".
PNG_SCALE = 256.0
ENCODINGS = {"npy": "float32 metres",
             "png": "uint16 PNG: metres x 256 (1/256 m steps, up to 255.99 m), 0 = no depth"}


def depth_path(out: Path, key: str, fmt: str, kind: str = "depth") -> Path:
    return Path(out) / kind / f"{key}.{fmt}"


def preview_path(out: Path, key: str) -> Path:
    return Path(out) / "preview" / f"{key}.png"


def to_png_depth(depth_m: np.ndarray, where: str = "") -> np.ndarray:
    """Metres to uint16 ``round(metres x 256)`` (``PNG_SCALE``); non-finite or <= 0 -> 0 (no
    depth); a positive depth never rounds to 0, and one beyond 255.99 m is written as 65535 with
    a warning counting such pixels."""
    ok = np.isfinite(depth_m) & (depth_m > 0)
    q = np.rint(np.where(ok, depth_m, 0.0) * PNG_SCALE)
    over = int((q > 65535).sum())
    if over:
        log.warning("%s: %d pixels beyond %.3f m written as 65535, the PNG's largest depth; "
                    "--depth-format npy keeps every value", where, over, 65535 / PNG_SCALE)
    return np.where(ok, np.clip(q, 1, 65535), 0).astype(np.uint16)


def write_image(path: Path, image: np.ndarray) -> None:
    """A PNG written atomically (uint8 RGB or uint16 grey)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        iio.imwrite(tmp, image, extension=".png")


def write_array(path: Path, array: np.ndarray, fmt: str) -> None:
    """``[H, W]`` metres as float32 ``.npy`` or 16-bit ``.png`` (``ENCODINGS``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "npy":
        save_npy_atomic(path, np.ascontiguousarray(array, dtype=np.float32))
    else:
        write_image(path, to_png_depth(array, str(path)))


def preview_image(events: np.ndarray, depth: np.ndarray, std: Optional[np.ndarray],
                  depth_range: tuple[float, float]) -> np.ndarray:
    """Events | depth (log scale) | std (when given) side by side with labelled colour bars, uint8
    RGB; fixed scales, so every window of a recording has the same size and colours."""
    lo, hi = depth_range
    panels = [enlarge(colorize_events(events)), depth_panel(depth, Scale(lo, hi))]
    if std is not None:
        scale = Scale(0.0, (hi - lo) / 10.0, "sqrt")
        panels.append(with_colorbar(colorize(std, scale, STD_CMAP), scale, STD_CMAP,
                                    "ensemble std [m] (sqrt scale)"))
    return np.concatenate(panels, axis=1)


def write_window(out: Path, window: Any, depth: np.ndarray, std: Optional[np.ndarray], fmt: str,
                 previews: bool, depth_range: tuple[float, float]) -> dict:
    """One window's files; returns its ``frames.csv`` row."""
    row = {"index": window.index, "key": window.key, "t_start": window.t0, "t_end": window.t1,
           "num_events": window.num_events, "encoding": ENCODINGS[fmt],
           "context_missing_ms": "" if window.context_missing_ms is None else window.context_missing_ms}
    dp = depth_path(out, window.key, fmt)
    write_array(dp, depth, fmt)
    row["depth"] = str(dp.relative_to(out))
    row["std"] = ""
    if std is not None:
        sp = depth_path(out, window.key, fmt, "std")
        write_array(sp, std, fmt)
        row["std"] = str(sp.relative_to(out))
    row["preview"] = ""
    if previews:
        pp = preview_path(out, window.key)
        write_image(pp, preview_image(window.events, depth, std, depth_range))
        row["preview"] = str(pp.relative_to(out))
    return row


def write_frames_csv(out: Path, rows: list[dict]) -> Path:
    """``frames.csv``: one row per window in window order (times in seconds, the recording's clock)."""
    path = Path(out) / "frames.csv"
    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    return path


def write_video(out: Path, rows: list[dict], kind: str, fps: float) -> Optional[Path]:
    """The previews of every window as ``preview.mp4`` (imageio-ffmpeg) or ``preview.gif``
    (imageio with Pillow, when ffmpeg is unavailable or a gif is asked for)."""
    frames = [Path(out) / r["preview"] for r in rows if r.get("preview")]
    if kind == "none" or not frames:
        if kind != "none":
            log.info("no per-window previews (--no-previews): no preview video")
        return None
    if kind == "mp4":
        try:
            return _write_mp4(Path(out) / "preview.mp4", frames, fps)
        except (ImportError, RuntimeError, OSError) as e:
            log.warning("mp4 preview failed (%s); writing an animated gif instead", e)
    return _write_gif(Path(out) / "preview.gif", frames, fps)


def _even(img: np.ndarray) -> np.ndarray:
    """Pad to even height and width (H.264 in yuv420p needs them)."""
    h, w = img.shape[:2]
    return np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)))


def _write_mp4(path: Path, frames: list[Path], fps: float) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")  # ffmpeg reads the suffix
    try:
        writer = iio2.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                 macro_block_size=1, pixelformat="yuv420p",
                                 ffmpeg_log_level="error")
        try:
            for f in frames:
                writer.append_data(_even(iio.imread(f)))
        finally:
            writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_gif(path: Path, frames: list[Path], fps: float, max_frames: int = 600) -> Path:
    step = max(1, -(-len(frames) // max_frames))  # a long recording: every step-th window
    images = [iio.imread(f) for f in frames[::step]]
    with replacing(path) as tmp:
        iio.imwrite(tmp, np.stack(images), extension=".gif", duration=1000.0 * step / fps, loop=0)
    return path
