"""Raw events ``(x, y, t, p)`` to a ``[B, H, W]`` voxel grid, bilinear in time (E2Depth).

An event at time ``t`` in the window ``[t0, t1]`` sits at ``t* = (B - 1)(t - t0)/(t1 - t0)``; its
polarity (+1 or -1) is split between bins ``floor(t*)`` and ``floor(t*) + 1`` with weights
``1 - (t* - floor(t*))`` and ``t* - floor(t*)``. Accumulation uses ``np.bincount``: no Python loop
over events.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def events_to_voxel(x: np.ndarray, y: np.ndarray, t: np.ndarray, p: np.ndarray, bins: int,
                    height: int, width: int, t0: Optional[float] = None,
                    t1: Optional[float] = None, normalize: bool = False) -> np.ndarray:
    """Voxel grid ``float32 [bins, height, width]`` of the events.

    ``p`` > 0 counts as +1, anything else as -1 (so both {0, 1} and {-1, 1} polarities work).
    ``t0``/``t1`` default to the first and last event times; events outside the window or the
    frame are dropped. ``normalize`` scales non-zero cells to zero mean and unit std.
    """
    grid = np.zeros(bins * height * width, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if t.size == 0:
        return grid.reshape(bins, height, width).astype(np.float32)
    t0 = float(t[0] if t0 is None else t0)
    t1 = float(t[-1] if t1 is None else t1)
    x = np.asarray(x).astype(np.int64, copy=False)
    y = np.asarray(y).astype(np.int64, copy=False)
    pol = np.where(np.asarray(p) > 0, 1.0, -1.0)
    keep = _inside(x, y, t, width, height, t0, t1)
    if keep is not None:
        x, y, t, pol = x[keep], y[keep], t[keep], pol[keep]
    ts = (bins - 1) * (t - t0) / max(t1 - t0, 1e-12)
    left = np.minimum(ts.astype(np.int64), bins - 1)  # ts >= 0, so astype floors
    w_right = ts - left
    pix = y * width + x
    idx = left * (height * width) + pix
    n = grid.size
    grid += np.bincount(idx, weights=pol * (1.0 - w_right), minlength=n)
    right = left + 1 < bins
    if bins > 1:
        grid += np.bincount(np.where(right, idx + height * width, idx),
                            weights=np.where(right, pol * w_right, 0.0), minlength=n)
    out = grid.reshape(bins, height, width).astype(np.float32)
    return normalize_voxel(out) if normalize else out


def _inside(x: np.ndarray, y: np.ndarray, t: np.ndarray, width: int, height: int,
            t0: float, t1: float) -> Optional[np.ndarray]:
    """A keep-mask when some events fall outside the frame or window, else None (the fast path)."""
    if (x.min() >= 0 and x.max() < width and y.min() >= 0 and y.max() < height
            and t.min() >= t0 and t.max() <= t1):
        return None
    return (x >= 0) & (x < width) & (y >= 0) & (y < height) & (t >= t0) & (t <= t1)


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
