"""``report.md`` (metrics side by side) and ``samples.png`` (a fixed set of preview samples)."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

import numpy as np

from resdepth.infer.parts import preview_path
from resdepth.utils import viz
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
           ("boundary_mae", "MAE at depth boundaries [m]", True),
           ("members_grad_energy", "members' gradient energy / truth's (their average)", None),
           ("members_boundary_mae", "members' MAE at depth boundaries [m] (their average)", True)]
COLUMNS = [("baseline", "baseline (per-pixel mean depth)"), ("regression", "regression"),
           ("noise_baseline", "regression + Gaussian noise (residual std)"),
           ("diffusion", "regression + diffusion (ensemble mean)"),
           ("diffusion_median", "ensemble median"),
           ("diffusion_denoised", "regression + denoised residual D(0; sigma)"),
           ("diffusion_member", "one member")]
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
    lines += _table({k: v for k, v in metrics.items() if isinstance(v, dict) and k != "groups"},
                    METRICS)
    lines.append("")
    fit = metrics.get("spread_calibration")
    if fit:
        lines += ["## Spread calibration", "",
                  f"The members widened about their mean by {fit['best']:g} score the least CRPS here: "
                  f"{fit['crps_at_best']:.4f} m ({_fmt(fit['crps_at_1'])} m as sampled). "
                  "`resdepth-eval --calibrate` evaluates the test split with that spread_scale.", "",
                  "| spread_scale | " + " | ".join(f"{s:g}" for s in fit["scales"]) + " |",
                  "|---|" + "---|" * len(fit["scales"]),
                  "| CRPS [m] | " + " | ".join(f"{c:.4f}" for c in fit["crps"]) + " |", ""]
    for name, rows in (metrics.get("groups") or {}).items():
        lines += [f"## Group {name}: {rows.get('num_samples', '?')} samples (protocol {protocol})", "",
                  metrics.get("groups_definition", ""), ""]
        lines += _table({k: v for k, v in rows.items() if isinstance(v, dict)}, METRICS)
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


PREDICTIONS = [("regression", "regression"), ("mean", "ensemble mean"), ("median", "member median"),
               ("member", "one member")]


def samples_png(path: Path, prev: dict[str, np.ndarray]) -> None:
    """Two rows per sample. Top: events, true depth and each estimate's depth on one log scale in
    metres; bottom: the ensemble std and each estimate's ``|prediction - truth|`` on one
    square-root scale in metres (spread and error comparable by eye; black is no error, grey no
    truth). The depth range is the previews' valid truth range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    preds = [(k, t) for k, t in PREDICTIONS if k in prev]
    truth = [d[m > 0] for d, m in zip(prev["depth"], prev["mask"])]
    vals = np.concatenate(truth) if truth else np.array([])
    dscale = viz.Scale(max(float(vals.min()), 0.1), float(vals.max())) if vals.size \
        else viz.Scale(1.0, 80.0)
    rows, cols = len(prev["keys"]), 2 + len(preds)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(2.3 * cols + 1.2, 2.1 * 2 * rows),
                             squeeze=False, constrained_layout=True)
    for i in range(rows):
        top, bottom = list(axes[2 * i]), list(axes[2 * i + 1])
        sample_rows(prev, i, preds, dscale, top, bottom)
        top[0].set_ylabel(str(prev["keys"][i]), fontsize=7)
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def sample_rows(prev: dict[str, np.ndarray], i: int, preds: list[tuple[str, str]],
                dscale: "viz.Scale", top: list, bottom: list) -> None:
    """Draw sample ``i``: depth panels on ``top``, std and error panels on ``bottom``."""
    valid = prev["mask"][i] > 0
    depth = prev["depth"][i]
    errors = {k: np.abs(prev[k][i] - depth) for k, _ in preds}
    spread = [prev["std"][i]] if "std" in prev else []
    escale = viz.error_scale([e[valid] for e in errors.values()] + spread)
    images = [(top[0], viz.colorize_events(prev["events"][i]), "events (sum over bins)"),
              (top[1], viz.colorize(depth, dscale, viz.DEPTH_CMAP, valid), "true depth")]
    images += [(top[2 + j], viz.colorize(prev[k][i], dscale, viz.DEPTH_CMAP), t)
               for j, (k, t) in enumerate(preds)]
    if spread:
        images.append((bottom[1], viz.colorize(spread[0], escale, viz.ERROR_CMAP), "ensemble std"))
    images += [(bottom[2 + j], viz.colorize_error(errors[k], valid, escale), f"|{t} - truth|")
               for j, (k, t) in enumerate(preds)]
    for ax in top + bottom:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for ax, img, title in images:
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_frame_on(True)
    viz.add_colorbar(top[1:], dscale, viz.DEPTH_CMAP, "depth [m] (log scale)")
    viz.add_colorbar(bottom[1:], escale, viz.ERROR_CMAP, "|error|, std [m] (sqrt scale)")


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
