"""The metric sums of a batch: every predictor under the configured protocol, per split and per
sequence, kept on the device until the unit ends."""
from __future__ import annotations

from typing import Any, Optional

import torch

from resdepth.diffusion.sampler import widen
from resdepth.eval.metrics import (add_sums, depth_metric_sums, ensemble_metric_sums, finalize,
                                   member_sums, sharpness_sums)


def fold(sums: dict, name: str, new: dict) -> None:
    """Fold one batch's float64 sums into the unit's; they stay 0-dim tensors on the device (no host
    sync per batch) until ``to_floats`` at the end of the unit."""
    sums[name] = add_sums(sums[name], new) if name in sums else dict(new)


def to_floats(sums: dict[str, dict]) -> dict[str, dict[str, float]]:
    """The unit's sums as python floats (exact in JSON): one device-to-host copy per unit."""
    names = [(name, k) for name, d in sums.items() for k in d]
    values = [torch.as_tensor(sums[name][k], dtype=torch.float64) for name, k in names]
    host = torch.stack([v.to(values[0].device) for v in values]).cpu().tolist() if values else []
    out: dict[str, dict[str, float]] = {name: {} for name in sums}
    for (name, k), v in zip(names, host):
        out[name][k] = v
    return out


SEQ_PREFIX = "seq/"
GROUP_PREFIX = "group/"
GROUP_COUNT = "count"  # the sums of a group's sample count, beside its predictors'
# a window with fewer events than this per valid depth pixel is "low activity": about a tenth of
# what a camera moving at walking-to-driving speed gives (2-4 on the synthetic scenes); shot noise
# alone gives 0.05
LOW_ACTIVITY_EPP = 0.25
SAVED = ("regression", "mean", "median", "denoised", "std", "members")
# a calibration run scores the members widened by each of these (``resdepth.eval.run.calibrate``)
SPREAD_GRID = tuple(round(0.5 + 0.1 * i, 1) for i in range(36))  # 0.5 ... 4.0
SPREAD_PREFIX = "spread@"
# predictors in the order of metrics.json and the report
PREDICTORS = ("baseline", "regression", "noise_baseline", "diffusion", "diffusion_median",
              "diffusion_denoised", "diffusion_member")


def score_batch(ctx: Any, pred: dict[str, torch.Tensor], depth: torch.Tensor,
                mask: torch.Tensor) -> dict[str, dict]:
    """The metric sums of every predictor in ``pred`` under the configured protocol.

    Point predictors get the protocol's depth metrics, the CRPS of a point forecast (its MAE) and
    sharpness; ensembles (diffusion members, noise baseline) CRPS, spread/skill and the members'
    sharpness; ``diffusion`` scores the ensemble mean, ``diffusion_median`` the member median and
    ``diffusion_member`` the first member alone, ``diffusion_denoised`` (when ``pred`` has
    ``denoised``) the regression mean plus the residual net's ``D(0; sigma)``. The ``diffusion``
    and ``diffusion_median`` rows' sharpness (``grad_energy``, ``boundary_mae``) is that
    estimate's own, like every other point estimate's; the members' average sharpness is the
    ``diffusion`` row's ``members_`` keys.
    """
    rng = {"protocol": ctx.cfg.protocol, "max_depth": ctx.depth_range[1],
           "min_depth": ctx.depth_range[0]}

    def sharpness(x: torch.Tensor) -> dict:
        return sharpness_sums(x, depth, mask, rng["max_depth"])

    def point(x: torch.Tensor) -> dict:
        return {**depth_metric_sums(x, depth, mask, **rng),
                **ensemble_metric_sums(x[:, None], depth, mask, **rng), **sharpness(x[:, None])}

    def ensemble(x: torch.Tensor) -> dict:
        return {**ensemble_metric_sums(x, depth, mask, **rng), **sharpness(x)}

    out = {"regression": point(pred["regression"])}
    if "members" in pred:
        out["diffusion"] = {**depth_metric_sums(pred["mean"], depth, mask, **rng),
                            **ensemble_metric_sums(pred["members"], depth, mask, **rng),
                            **sharpness(pred["mean"][:, None]),
                            **member_sums(sharpness(pred["members"]))}
        out["diffusion_median"] = {**depth_metric_sums(pred["median"], depth, mask, **rng),
                                   **sharpness(pred["median"][:, None])}
        out["diffusion_member"] = point(pred["members"][:, 0])
    if "denoised" in pred:
        out["diffusion_denoised"] = point(pred["denoised"])
    if "noise_members" in pred:
        out["noise_baseline"] = ensemble(pred["noise_members"])
    if ctx.baseline is not None:
        out["baseline"] = point(ctx.baseline.expand_as(depth))
    if "members_normalised" in pred:  # a calibration run (``predict(..., keep_normalised=True)``)
        for scale in ctx.spread_grid:  # widened as generate_ensemble widens them: before clipping
            widened = ctx.nets.norm.denormalize(widen(pred["members_normalised"], scale)).float()
            out[f"{SPREAD_PREFIX}{scale:g}"] = ensemble_metric_sums(widened, depth, mask, **rng)
    return out


def spread_fit(sums: dict[str, dict]) -> Optional[dict]:
    """The CRPS of the members widened by each scale of a calibration run and the scale of least
    CRPS (``best``; the one nearest 1 among equals); None when the sums have no such scores."""
    scales = sorted(float(k[len(SPREAD_PREFIX):]) for k in sums if k.startswith(SPREAD_PREFIX))
    if not scales:
        return None
    crps = [finalize(sums[f"{SPREAD_PREFIX}{s:g}"])["crps"] for s in scales]
    best = min(range(len(scales)), key=lambda i: (crps[i], abs(scales[i] - 1.0)))
    return {"best": scales[best], "crps_at_best": crps[best],
            "crps_at_1": crps[scales.index(1.0)] if 1.0 in scales else None,
            "scales": scales, "crps": crps}


def activity_group(num_events: Optional[int], valid_pixels: int) -> Optional[str]:
    """``low_activity`` for a window with fewer than ``LOW_ACTIVITY_EPP`` events per valid depth
    pixel (a camera that slows down or stops), else ``active``; None when the sample does not say
    how many events its window holds."""
    if num_events is None or valid_pixels <= 0:
        return None
    return "low_activity" if num_events < LOW_ACTIVITY_EPP * valid_pixels else "active"


def score_by_group(ctx: Any, sums: dict, pred: dict[str, torch.Tensor], depth: torch.Tensor,
                   mask: torch.Tensor, sequences: list[Optional[str]],
                   activity: Optional[list[Optional[str]]] = None) -> None:
    """Score a batch once per (sequence, activity group) in it and fold each part's sums into the
    split's, its sequence's and its activity group's (samples without one: not in that table).
    Sums add, so the split's are those of the whole batch."""
    activity = activity if activity is not None else [None] * len(sequences)
    parts: dict[tuple, list[int]] = {}
    for i, label in enumerate(zip(sequences, activity)):
        parts.setdefault(label, []).append(i)
    for (seq, act), rows in parts.items():
        if len(rows) == len(sequences):
            part, d, m = pred, depth, mask
        else:
            idx = torch.tensor(rows, device=depth.device)
            part, d, m = {k: v[idx] for k, v in pred.items()}, depth[idx], mask[idx]
        for name, new in score_batch(ctx, part, d, m).items():
            fold(sums, name, new)
            if seq is not None:
                fold(sums, f"{SEQ_PREFIX}{seq}/{name}", new)
            if act is not None:
                fold(sums, f"{GROUP_PREFIX}{act}/{name}", new)
        if act is not None:  # how many windows the group holds
            fold(sums, f"{GROUP_PREFIX}{act}/{GROUP_COUNT}",
                 {"samples": torch.tensor(float(len(rows)), dtype=torch.float64, device=d.device)})
