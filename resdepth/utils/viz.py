"""Colour maps for depth and events, and PNG figure grids (matplotlib, Agg backend)."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np


def _cmap(name: str):
    import matplotlib

    matplotlib.use("Agg", force=False)
    return matplotlib.colormaps[name]


def colorize_depth(depth: np.ndarray, mask: Optional[np.ndarray] = None, vmin: Optional[float] = None,
                   vmax: Optional[float] = None, cmap: str = "magma_r", log_scale: bool = True) -> np.ndarray:
    """``[H, W]`` depth in metres to uint8 RGB ``[H, W, 3]``; invalid pixels are black."""
    depth = np.asarray(depth, dtype=np.float64).squeeze()
    valid = (depth > 0) & np.isfinite(depth) if mask is None else np.asarray(mask).squeeze() > 0
    if not valid.any():
        return np.zeros((*depth.shape, 3), dtype=np.uint8)
    lo = float(depth[valid].min()) if vmin is None else vmin
    hi = float(depth[valid].max()) if vmax is None else vmax
    d = np.clip(np.where(valid, depth, lo), max(lo, 1e-3), max(hi, lo + 1e-3))
    if log_scale:
        x = (np.log(d) - np.log(max(lo, 1e-3))) / max(np.log(max(hi, lo + 1e-3)) - np.log(max(lo, 1e-3)), 1e-9)
    else:
        x = (d - lo) / max(hi - lo, 1e-9)
    rgb = (_cmap(cmap)(np.clip(x, 0, 1))[..., :3] * 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


def colorize_events(events: np.ndarray, limit: Optional[float] = None, cmap: str = "bwr") -> np.ndarray:
    """A voxel grid ``[B, H, W]`` (summed over bins) or an ``[H, W]`` image to uint8 RGB:
    blue negative, white zero, red positive."""
    img = np.asarray(events, dtype=np.float64)
    if img.ndim == 3:
        img = img.sum(0)
    lim = float(np.abs(img).max()) if limit is None else limit
    x = 0.5 + 0.5 * img / (lim if lim > 0 else 1.0)
    return (_cmap(cmap)(np.clip(x, 0, 1))[..., :3] * 255).astype(np.uint8)


def save_grid(rows: Sequence[Sequence[np.ndarray]], path: str | os.PathLike,
              titles: Optional[Sequence[str]] = None, row_labels: Optional[Sequence[str]] = None,
              cell_inches: float = 1.8, dpi: int = 100) -> None:
    """Save a grid of RGB images (``rows[r][c]``) as a PNG with column titles and row labels."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    nr, nc = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nr, nc, figsize=(cell_inches * nc, cell_inches * nr), squeeze=False)
    for r in range(nr):
        for c in range(nc):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(rows[r]):
                ax.imshow(rows[r][c], interpolation="nearest")
            if r == 0 and titles and c < len(titles):
                ax.set_title(titles[c], fontsize=8)
            if c == 0 and row_labels and r < len(row_labels):
                ax.text(-0.05, 0.5, row_labels[r], transform=ax.transAxes, fontsize=6,
                        ha="right", va="center", rotation=90)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
