"""Raw events ``(x, y, t, p)`` to a ``[B, H, W]`` voxel grid, bilinear in time (E2Depth).

An event at time ``t`` in the window ``[t0, t1]`` sits at ``t* = (B - 1)(t - t0)/(t1 - t0)``; its
polarity (+1 or -1) is split between bins ``floor(t*)`` and ``floor(t*) + 1`` with weights
``1 - (t* - floor(t*))`` and ``t* - floor(t*)``. Accumulation uses ``np.bincount``: no Python loop
over events.

Pixel coordinates may be fractional (rectified events): ``splat="round"`` puts each event on the
nearest pixel (``floor(x + 0.5)``), ``splat="bilinear"`` spreads it over its four neighbours.
Events that land outside the frame are dropped, never clamped onto the border.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from resdepth.utils.errors import UserError


def events_to_voxel(x: np.ndarray, y: np.ndarray, t: np.ndarray, p: np.ndarray, bins: int,
                    height: int, width: int, t0: Optional[float] = None,
                    t1: Optional[float] = None, splat: str = "round") -> np.ndarray:
    """Voxel grid ``float32 [bins, height, width]`` of the events.

    ``p`` > 0 counts as +1, anything else as -1 (so both {0, 1} and {-1, 1} polarities work).
    ``t0``/``t1`` default to the first and last event times; events outside the window or the
    frame are dropped. ``splat`` is ``"round"`` or ``"bilinear"`` (see the module docstring).
    The grid is not normalised: a net's input is made from it by ``resdepth.data.netinput``.
    """
    if splat not in SPLATS:
        raise UserError(f"splat must be one of {SPLATS}, got {splat!r}")
    grid = np.zeros(bins * height * width, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if t.size == 0:
        return grid.reshape(bins, height, width).astype(np.float32)
    t0 = float(t[0] if t0 is None else t0)
    t1 = float(t[-1] if t1 is None else t1)
    pol = np.where(np.asarray(p) > 0, 1.0, -1.0)
    if t.min() < t0 or t.max() > t1:  # only build masks when something is outside
        keep = (t >= t0) & (t <= t1)
        x, y, t, pol = np.asarray(x)[keep], np.asarray(y)[keep], t[keep], pol[keep]
    ts = (bins - 1) * (t - t0) / max(t1 - t0, 1e-12)
    left = np.minimum(ts.astype(np.int64), bins - 1)  # ts >= 0, so astype floors
    w_right = ts - left
    for px, py, w in _pixel_weights(x, y, splat):
        lb, wr, pl = left, w_right, pol
        if px.size and (px.min() < 0 or px.max() >= width or py.min() < 0 or py.max() >= height):
            inside = (px >= 0) & (px < width) & (py >= 0) & (py < height)
            px, py, w = px[inside], py[inside], (None if w is None else w[inside])
            lb, wr, pl = left[inside], w_right[inside], pol[inside]
        _accumulate(grid, lb * (height * width) + py * width + px, pl if w is None else pl * w, wr,
                    bins, height * width)
    return grid.reshape(bins, height, width).astype(np.float32)


SPLATS = ("round", "bilinear")


def _pixel_weights(x: np.ndarray, y: np.ndarray,
                   splat: str) -> list[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]:
    """``(px, py, weight)`` triples: one with weight 1 (None; round) or four corners (bilinear)."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.dtype.kind in "iu" and y.dtype.kind in "iu":  # integer pixels: both splats agree
        return [(x.astype(np.int64, copy=False), y.astype(np.int64, copy=False), None)]
    x = x.astype(np.float64, copy=False)
    y = y.astype(np.float64, copy=False)
    if splat == "round":
        return [(np.floor(x + 0.5).astype(np.int64), np.floor(y + 0.5).astype(np.int64), None)]
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    return [(x0, y0, (1 - fx) * (1 - fy)), (x0 + 1, y0, fx * (1 - fy)),
            (x0, y0 + 1, (1 - fx) * fy), (x0 + 1, y0 + 1, fx * fy)]


def _accumulate(grid: np.ndarray, idx: np.ndarray, weight: np.ndarray, w_right: np.ndarray,
                bins: int, plane: int) -> None:
    """Add ``weight`` split between the left time bin (``idx``) and the next one."""
    n = grid.size
    grid += np.bincount(idx, weights=weight * (1.0 - w_right), minlength=n)
    if bins > 1:
        right = idx + plane < n
        grid += np.bincount(np.where(right, idx + plane, idx),
                            weights=np.where(right, weight * w_right, 0.0), minlength=n)


def normalize_voxel(grid: np.ndarray) -> np.ndarray:
    """Zero mean, unit std over the non-zero cells (zeros stay zero), as in E2Depth."""
    nz = grid != 0
    if nz.sum() < 2:
        return grid
    vals = grid[nz]
    std = float(vals.std())
    out = grid.copy()
    out[nz] = (vals - vals.mean()) / (std if std > 0 else 1.0)
    return out


VOXEL_NORMS = ("none", "nonzero")


def apply_voxel_norm(grid: np.ndarray, kind: str) -> np.ndarray:
    """The network's view of one sample's voxel grid: ``none`` as stored, ``nonzero`` through
    ``normalize_voxel`` (the loader, the evaluator and stage 2 all call this)."""
    if kind == "none":
        return grid
    if kind == "nonzero":
        return normalize_voxel(grid)
    raise UserError(f"voxel normalisation {kind!r}: expected one of {list(VOXEL_NORMS)}")
