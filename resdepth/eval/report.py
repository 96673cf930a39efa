"""``report.md`` (metrics side by side) and ``samples.png`` (a fixed set of preview samples)."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

import numpy as np

from resdepth.infer.parts import preview_path
from resdepth.utils.atomic import replacing

log = logging.getLogger("resdepth")

# (key, label, lower is better)
METRICS = [("abs_rel", "AbsRel", True), ("sq_rel", "SqRel", True), ("rmse", "RMSE [m]", True),
           ("rmse_log", "RMSE log", True), ("silog", "SILog", True), ("delta1", "δ<1.25", False),
           ("delta2", "δ<1.25²", False), ("delta3", "δ<1.25³", False), ("mae", "MAE [m]", True),
           ("mae_10m", "MAE <10 m [m]", True), ("mae_20m", "MAE <20 m [m]", True),
           ("mae_30m", "MAE <30 m [m]", True), ("abs_rel_10m", "AbsRel <10 m", True),
           ("abs_rel_20m", "AbsRel <20 m", True), ("abs_rel_30m", "AbsRel <30 m", True),
           ("rmse_10m", "RMSE <10 m [m]", True), ("rmse_20m", "RMSE <20 m [m]", True),
           ("rmse_30m", "RMSE <30 m [m]", True),
           ("crps", "CRPS [m] (a point forecast's is its MAE)", True),
           ("spread_skill", "spread / skill (1 is calibrated)", None),
           ("grad_energy", "gradient energy / truth's (1: as sharp as the truth)", None),
           ("boundary_mae", "MAE at depth boundaries [m]", True)]
COLUMNS = [("baseline", "baseline (per-pixel mean depth)"), ("regression", "regression"),
           ("noise_baseline", "regression + Gaussian noise (residual std)"),
           ("diffusion", "regression + diffusion (ensemble mean)"),
           ("diffusion_median", "ensemble median"), ("diffusion_member", "one member")]
# the per-sequence tables: a few headline metrics per predictor
SEQUENCE_METRICS = [("abs_rel", "AbsRel"), ("rmse", "RMSE"), ("mae_10m", "MAE<10"),
                    ("mae_20m", "MAE<20"), ("mae_30m", "MAE<30"), ("crps", "CRPS")]
PROTOCOL_NOTES = {
    "pooled": "pooled: every valid pixel of the split weighs the same (not comparable with "
              "per-frame tables)",
    "e2depth": "e2depth: per-frame means as rpg_e2depth / RAM-Net score MVSEC (truth capped at Dmax "
               "and rescaled per frame, sq_rel err²/t²)",
    "hmnet": "hmnet: per-frame means as HMNet scores MVSEC (truth in [Dmax·e^-alpha, Dmax], "
             "sq_rel err²/t)"}


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f"{v:.4f}"


def _table(rows: dict[str, dict], metrics_list) -> list[str]:
    cols = [(k, label) for k, label in COLUMNS if k in rows]
    lines = ["| metric | " + " | ".join(label for _, label in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for key, label, *_ in metrics_list:
        if any(key in rows[c] for c, _ in cols):
            lines.append(f"| {label} | " + " | ".join(_fmt(rows[c].get(key)) for c, _ in cols) + " |")
    return lines


def markdown(metrics: dict) -> str:
    """The metrics table (one column per predictor present, one row per metric), then one table per
    sequence when the samples name their sequence; every table states the protocol."""
    settings = metrics.get("settings") or {}
    protocol = settings.get("protocol", "pooled")
    lines = [f"# Evaluation: {metrics['num_samples']} samples, "
             f"{metrics['num_valid_pixels']:,} valid pixels", "",
             f"Protocol {PROTOCOL_NOTES.get(protocol, protocol)}"
             + (" (the default)" if protocol == "pooled" else "") + ".", ""]
    if settings:
        lines += [", ".join(f"{k} {settings[k]}" for k in settings), ""]
    lines += _table({k: v for k, v in metrics.items() if isinstance(v, dict)}, METRICS)
    lines.append("")
    for seq, rows in (metrics.get("sequences") or {}).items():
        lines += [f"## Sequence {seq} (protocol {protocol})", ""]
        lines += _table(rows, [(k, label) for k, label in SEQUENCE_METRICS])
        lines.append("")
    return "\n".join(lines)


def load_previews(out: Path, plan: dict, limit: int) -> Optional[dict[str, np.ndarray]]:
    """The first ``limit`` preview samples in work-list order, stacked; None if there are none."""
    chunks: dict[str, list[np.ndarray]] = {}
    n = 0
    for u in plan["units"]:
        if n >= limit:
            break
        p = preview_path(out, u["name"])
        if not p.exists():
            continue
        with np.load(p) as z:
            for k in z.files:
                chunks.setdefault(k, []).append(z[k])
            n += len(z["keys"])
    if not chunks:
        return None
    return {k: np.concatenate(v)[:limit] for k, v in chunks.items()}


def samples_png(path: Path, prev: dict[str, np.ndarray]) -> None:
    """One row per sample: events, truth, regression, ensemble mean, one member, ensemble std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("events", "events (sum over bins)", "RdBu_r"), ("depth", "true depth [m]", "magma_r"),
              ("regression", "regression [m]", "magma_r"), ("mean", "ensemble mean [m]", "magma_r"),
              ("member", "one member [m]", "magma_r"), ("std", "ensemble std [m]", "viridis")]
    panels = [p for p in panels if p[0] in prev]
    rows = len(prev["keys"])
    fig, axes = plt.subplots(rows, len(panels), figsize=(2.6 * len(panels), 2.2 * rows),
                             squeeze=False, constrained_layout=True)
    for i in range(rows):
        valid = prev["mask"][i] > 0
        depth_vals = prev["depth"][i][valid]
        dmin, dmax = (float(depth_vals.min()), float(depth_vals.max())) if depth_vals.size else (0.0, 1.0)
        for j, (key, title, cmap) in enumerate(panels):
            ax = axes[i, j]
            img = prev[key][i].astype(np.float32)
            if key == "events":
                lim = float(np.abs(img).max()) or 1.0
                kw = {"vmin": -lim, "vmax": lim}
            elif key == "std":
                kw = {"vmin": 0.0, "vmax": float(img.max()) or 1.0}
            else:
                if key == "depth":
                    img = np.where(valid, img, np.nan)
                kw = {"vmin": dmin, "vmax": dmax}
            im = ax.imshow(img, cmap=cmap, **kw)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=9)
            if j == 0:
                ax.set_ylabel(str(prev["keys"][i]), fontsize=7)
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def write_report(out: Path, metrics: dict, plan: dict) -> None:
    """``report.md`` and, when previews exist, ``samples.png`` in ``out``."""
    out = Path(out)
    md = markdown(metrics)
    prev = load_previews(out, plan, int(plan.get("preview", 0)))
    if prev is not None:
        samples_png(out / "samples.png", prev)
        md += "\n![samples](samples.png)\n"
    with replacing(out / "report.md") as tmp:
        tmp.write_text(md)
