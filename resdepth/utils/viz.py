"""Pictures of depth, depth error and events: colour scales, colour bars labelled in metres, and
PNG figure grids (matplotlib, Agg backend).

Training's TensorBoard panels, evaluation's ``samples.png`` and prediction's previews all draw
with these functions, so that a depth has one colour everywhere. Depth is drawn on a log scale by
default: on a linear 0-80 m scale everything nearer than ~15 m, most of a driving scene, is one
colour, while the nets themselves work in log depth (equal colour steps are equal relative
errors). Errors are drawn on a square-root scale from 0 (black), so that a 0.5 m error near the
camera shows next to a 20 m error far away.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

DEPTH_CMAP = "turbo_r"   # near red, far blue: many distinguishable hues
ERROR_CMAP = "inferno"   # zero error black
STD_CMAP = "viridis"
NO_TRUTH = (96, 96, 96)  # error panels: pixels without ground truth
SCALES = ("log", "inverse", "linear", "sqrt")
BAR_MIN_HEIGHT = 192     # panels smaller than this are enlarged so that tick labels can be read


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg", force=False)
    return matplotlib


def _cmap(name: str):
    return _matplotlib().colormaps[name]


@dataclass(frozen=True)
class Scale:
    """Values in ``[lo, hi]`` to ``[0, 1]`` for a colour map: ``log``, ``inverse`` (1/value, near
    values spread out most), ``linear`` or ``sqrt`` (from 0, for errors and spreads)."""
    lo: float
    hi: float
    kind: str = "log"

    def __post_init__(self) -> None:
        if self.kind not in SCALES:
            raise ValueError(f"scale kind {self.kind!r}: expected one of {SCALES}")

    def _bounds(self) -> tuple[float, float]:
        lo = max(self.lo, 1e-3) if self.kind in ("log", "inverse") else max(self.lo, 0.0)
        return lo, max(self.hi, lo * 1.001 + 1e-6)

    def unit(self, v: np.ndarray) -> np.ndarray:
        """``v`` (clipped to the range) mapped to ``[0, 1]``, 0 at ``lo``."""
        lo, hi = self._bounds()
        v = np.clip(np.asarray(v, dtype=np.float64), lo, hi)
        if self.kind == "log":
            return (np.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
        if self.kind == "inverse":
            return (1 / lo - 1 / v) / (1 / lo - 1 / hi)
        if self.kind == "sqrt":
            return np.sqrt((v - lo) / (hi - lo))
        return (v - lo) / (hi - lo)

    def ticks(self, most: int = 8) -> list[float]:
        """Round values (1, 2, 3, 5 x 10^k, and 0 on scales from 0) inside the range, kept only where
        they are at least ``1 / most`` of the bar apart, ending with ``hi``."""
        lo, hi = self._bounds()
        nice = sorted({0.0} | {round(m * 10.0 ** e, 6) for e in range(-3, 6) for m in (1, 2, 3, 5)})
        ticks: list[float] = []
        last = -1.0
        for t in (t for t in nice if lo <= t < hi):
            pos = float(self.unit(t))
            if pos - last >= 1.0 / most and 1.0 - pos >= 0.5 / most:
                ticks.append(t)
                last = pos
        return ticks + [hi]


def metres(v: float) -> str:
    """A tick label in metres: ``0.5``, ``2``, ``80``, ``1.98``."""
    return f"{v:.3g}"


def _image(a: np.ndarray, dtype=np.float64) -> np.ndarray:
    """``[..., H, W]`` with leading size-1 axes to ``[H, W]`` (a 1 x W row stays 2-D)."""
    a = np.asarray(a, dtype=dtype)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    return a


def colorize(values: np.ndarray, scale: Scale, cmap: str, valid: Optional[np.ndarray] = None,
             invalid: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """``[H, W]`` values to uint8 RGB ``[H, W, 3]`` through ``scale`` and ``cmap``; pixels not
    ``valid`` (default: non-finite ones) get the colour ``invalid``."""
    v = _image(values)
    ok = np.isfinite(v) if valid is None else (_image(valid) > 0) & np.isfinite(v)
    x = scale.unit(np.where(ok, v, scale.lo))
    rgb = (_cmap(cmap)(x)[..., :3] * 255).round().astype(np.uint8)
    rgb[~ok] = invalid
    return rgb


def depth_scale(depth: np.ndarray, mask: Optional[np.ndarray] = None, vmin: Optional[float] = None,
                vmax: Optional[float] = None, kind: str = "log") -> Scale:
    """The scale of a depth map: ``[vmin, vmax]``, by default its valid range."""
    depth = np.asarray(depth, dtype=np.float64)
    valid = (depth > 0) & np.isfinite(depth) if mask is None else np.asarray(mask) > 0
    vals = depth[valid]
    lo = float(vals.min()) if vmin is None and vals.size else (vmin if vmin is not None else 1.0)
    hi = float(vals.max()) if vmax is None and vals.size else (vmax if vmax is not None else lo + 1)
    return Scale(lo, hi, kind)


def colorize_depth(depth: np.ndarray, mask: Optional[np.ndarray] = None, vmin: Optional[float] = None,
                   vmax: Optional[float] = None, cmap: str = DEPTH_CMAP,
                   scale: str = "log") -> np.ndarray:
    """``[H, W]`` depth in metres to uint8 RGB ``[H, W, 3]`` on a ``scale`` (log by default) from
    ``vmin`` to ``vmax`` (default: the valid range); invalid pixels (mask false, or depth <= 0 or
    non-finite without a mask) are black."""
    depth = _image(depth)
    valid = (depth > 0) & np.isfinite(depth) if mask is None else _image(mask) > 0
    if not valid.any():
        return np.zeros((*depth.shape, 3), dtype=np.uint8)
    return colorize(depth, depth_scale(depth, valid, vmin, vmax, scale), cmap, valid)


def error_scale(errors: Sequence[np.ndarray], vmax: Optional[float] = None) -> Scale:
    """A square-root scale from 0 to ``vmax`` (default: the 99th percentile of all finite
    ``errors``, rounded up to a round number of metres), shared by a row of error panels."""
    if vmax is None:
        vals = np.concatenate([np.asarray(e, np.float64).ravel() for e in errors]) if errors else []
        vals = vals[np.isfinite(vals)] if len(vals) else vals
        top = float(np.percentile(vals, 99)) if len(vals) else 1.0
        vmax = next(t for t in sorted(m * 10.0 ** e for e in range(-2, 5) for m in (1, 2, 5))
                    if t >= max(top, 0.01))
    return Scale(0.0, float(vmax), "sqrt")


def colorize_error(error: np.ndarray, valid: Optional[np.ndarray] = None,
                   scale: Optional[Scale] = None) -> np.ndarray:
    """``|prediction - truth|`` (metres, ``[H, W]``) to uint8 RGB: black at 0, on ``scale``
    (default ``error_scale``); pixels without truth are grey (``NO_TRUTH``)."""
    err = np.abs(_image(error))
    ok = np.isfinite(err) if valid is None else (_image(valid) > 0) & np.isfinite(err)
    scale = scale or error_scale([err[ok]])
    return colorize(err, scale, ERROR_CMAP, ok, NO_TRUTH)


def colorize_events(events: np.ndarray, limit: Optional[float] = None, cmap: str = "bwr") -> np.ndarray:
    """A voxel grid ``[B, H, W]`` (summed over bins) or an ``[H, W]`` image to uint8 RGB:
    blue negative, white zero, red positive."""
    img = np.asarray(events, dtype=np.float64)
    if img.ndim == 3:
        img = img.sum(0)
    lim = float(np.abs(img).max()) if limit is None else limit
    x = 0.5 + 0.5 * img / (lim if lim > 0 else 1.0)
    return (_cmap(cmap)(np.clip(x, 0, 1))[..., :3] * 255).astype(np.uint8)


def add_colorbar(ax, scale: Scale, cmap: str, label: str, fig=None) -> object:
    """A colour bar beside ``ax`` (an axes or a list of them) with ``scale``'s ticks labelled in
    metres; the bar runs through the same ``Scale.unit`` as the pixels, so tick and colour agree."""
    mpl = _matplotlib()
    fig = fig or (ax[0] if isinstance(ax, (list, tuple)) else ax).figure
    sm = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(0.0, 1.0), cmap=_cmap(cmap))
    bar = fig.colorbar(sm, ax=ax, fraction=0.046, pad=0.02)
    ticks = scale.ticks()
    bar.set_ticks(list(scale.unit(np.array(ticks))), labels=[metres(t) for t in ticks])
    bar.ax.tick_params(labelsize=7)
    bar.set_label(label, fontsize=7)
    return bar


@functools.lru_cache(maxsize=32)
def colorbar_image(scale: Scale, cmap: str, label: str, height: int) -> np.ndarray:
    """A vertical colour bar of ``height`` pixels with ``scale``'s ticks labelled in metres, as
    uint8 RGB (white background), to set beside a panel."""
    mpl = _matplotlib()
    import matplotlib.pyplot as plt

    dpi = 100
    fig = plt.figure(figsize=(0.95 * max(height, 96) / 192, height / dpi), dpi=dpi)
    ax = fig.add_axes([0.08, 0.04, 0.2, 0.92])
    sm = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(0.0, 1.0), cmap=_cmap(cmap))
    bar = fig.colorbar(sm, cax=ax)
    ticks = scale.ticks()
    bar.set_ticks(list(scale.unit(np.array(ticks))), labels=[metres(t) for t in ticks])
    bar.ax.tick_params(labelsize=7, pad=1, length=2)
    bar.set_label(label, fontsize=7, labelpad=1)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


def enlarge(rgb: np.ndarray, height: int = BAR_MIN_HEIGHT) -> np.ndarray:
    """``rgb`` repeated by the smallest whole factor that makes it at least ``height`` tall."""
    k = max(1, math.ceil(height / rgb.shape[0]))
    return rgb.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else rgb


def with_colorbar(rgb: np.ndarray, scale: Scale, cmap: str, label: str) -> np.ndarray:
    """A panel (enlarged to ``BAR_MIN_HEIGHT``) with its labelled colour bar on the right."""
    big = enlarge(rgb)
    return np.concatenate([big, colorbar_image(scale, cmap, label, big.shape[0])], axis=1)


def depth_panel(depth: np.ndarray, scale: Scale, valid: Optional[np.ndarray] = None,
                label: str = "depth [m]") -> np.ndarray:
    """A depth map (metres) on ``scale`` with its colour bar: uint8 RGB, enlarged to be read."""
    return with_colorbar(colorize(depth, scale, DEPTH_CMAP, valid), scale, DEPTH_CMAP,
                         f"{label} ({scale.kind} scale)")


def error_panel(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray,
                scale: Optional[Scale] = None) -> np.ndarray:
    """``|pred - truth|`` in metres (black: none, grey: no truth) with its colour bar."""
    err = np.abs(_image(pred) - _image(truth))
    ok = _image(valid) > 0
    scale = scale or error_scale([err[ok]])
    return with_colorbar(colorize_error(err, ok, scale), scale, ERROR_CMAP,
                         f"|error| [m] ({scale.kind} scale)")


def validation_panels(events: np.ndarray, truth: np.ndarray, valid: np.ndarray, pred: np.ndarray,
                      scale: Scale) -> dict[str, np.ndarray]:
    """TensorBoard panels of one image: events, true and predicted depth on ``scale`` with colour
    bars, the signed residual (truth - prediction: red, prediction too near) and the ``|error|``."""
    residual = np.where(valid, truth - pred, 0.0)
    return {"events": enlarge(colorize_events(events)),
            "depth_true": depth_panel(truth, scale, valid),
            "depth_pred": depth_panel(pred, scale),
            "residual": enlarge(colorize_events(residual)),
            "error": error_panel(pred, truth, valid)}


def save_grid(rows: Sequence[Sequence[np.ndarray]], path: str | os.PathLike,
              titles: Optional[Sequence[str]] = None, row_labels: Optional[Sequence[str]] = None,
              cell_inches: float = 1.8, dpi: int = 100) -> None:
    """Save a grid of RGB images (``rows[r][c]``) as a PNG with column titles and row labels."""
    _matplotlib()
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
