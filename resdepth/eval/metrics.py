"""Depth metrics in metres as sums and counts, so that ranks and parts reduce exactly.

``depth_metric_sums`` / ``ensemble_metric_sums`` turn one batch into a dict of float64 sums (0-dim
tensors; python floats after a JSON round trip work as well), ``add_sums`` adds two such dicts and
``finalize`` divides at the very end.

Conventions (read before comparing with published tables):

* Valid pixels: ``mask`` true, true depth finite and > 0. Values elsewhere never matter.
* Predictions are clamped to ``[min_depth, max_depth]`` (default ``min_depth = 1e-3`` m, no upper
  bound) before every metric, so that logs and ratios are defined; after alignment when aligning.
* Pixel-pooled: MSE, RMSE, RMSE-log, AbsRel, SqRel, MAE and the deltas average over all valid
  pixels of the evaluation set (a frame with few valid pixels weighs little). RMSE is
  ``sqrt(pooled MSE)``, not a mean of per-frame RMSEs.
* SILog (Eigen et al. 2014, lambda = 1): per image ``mean(d^2) - mean(d)^2`` with
  ``d = ln(pred) - ln(true)`` over its valid pixels, then averaged over images that have valid
  pixels (scale invariance is meant per image). No square root and no factor 100 (the KITTI
  benchmark reports ``100 * sqrt(.)``).
* ``mae_10m`` etc.: mean absolute error over valid pixels whose true depth is below the cutoff
  (E2Depth / MVSEC tables).
* ``align=True``: per image least-squares scale and shift of the prediction onto the truth over
  its valid pixels (Marigold protocol); a constant prediction gets scale 0 and the mean depth.
* Probabilistic, from ensemble members (at least 2): the fair CRPS estimator per pixel,
  ``mean_i |x_i - y| - sum_ij |x_i - x_j| / (2 M (M - 1))``, pooled over valid pixels; and the
  spread-skill ratio ``sqrt(sum (1 + 1/M) var_i / sum (mean_i - y)^2)`` with the unbiased member
  variance (Fortin et al. 2014), 1 for a calibrated ensemble. Members are not clamped (no logs).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch

MIN_DEPTH = 1e-3
CUTOFFS_M = (10, 20, 30)


def _flat(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.reshape(n, -1).to(torch.float64)


def _valid(true: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return mask.bool() & torch.isfinite(true) & (true > 0)


def align_scale_shift(pred: torch.Tensor, true: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per image (row) least-squares ``s * pred + t`` onto ``true`` over ``valid`` ([N, P] float64)."""
    w = valid.to(pred.dtype)
    n = w.sum(1, keepdim=True).clamp_min(1)
    t_safe = torch.where(valid, true, 0.0)
    mp, mt = (pred * w).sum(1, keepdim=True) / n, (t_safe * w).sum(1, keepdim=True) / n
    var = (((pred - mp) * w) ** 2).sum(1, keepdim=True)
    cov = ((pred - mp) * (t_safe - mt) * w).sum(1, keepdim=True)
    s = torch.where(var > 0, cov / torch.where(var > 0, var, 1.0), 0.0)
    return s * pred + (mt - s * mp)


def depth_metric_sums(pred_m: torch.Tensor, true_m: torch.Tensor, mask: torch.Tensor,
                      align: bool = False, min_depth: float = MIN_DEPTH,
                      max_depth: Optional[float] = None) -> dict[str, torch.Tensor]:
    """Sums and counts of the point metrics of ``pred_m`` against ``true_m`` (metres, ``[N, 1, H, W]``)."""
    n_img = true_m.shape[0]
    true, pred = _flat(true_m, n_img), _flat(pred_m, n_img)
    valid = _valid(true, _flat(mask, n_img))
    if align:
        pred = align_scale_shift(pred, true, valid)
    pred = pred.clamp(min=min_depth, max=max_depth)
    true = torch.where(valid, true, 1.0)  # placeholders keep masked pixels finite; they are zeroed below
    pred = torch.where(valid, pred, 1.0)
    w = valid.to(torch.float64)
    err = pred - true
    d = pred.log() - true.log()
    ratio = torch.maximum(pred / true, true / pred)
    n_pix = w.sum(1)
    sums = {"n": w.sum(), "abs_rel_sum": (err.abs() / true * w).sum(),
            "sq_rel_sum": (err ** 2 / true * w).sum(), "sq_err_sum": (err ** 2 * w).sum(),
            "sq_log_err_sum": (d ** 2 * w).sum(), "abs_err_sum": (err.abs() * w).sum()}
    for k in (1, 2, 3):
        sums[f"delta{k}_n"] = ((ratio < 1.25 ** k) & valid).to(torch.float64).sum()
    has = n_pix > 0
    mean_d = (d * w).sum(1) / n_pix.clamp_min(1)
    silog = (d ** 2 * w).sum(1) / n_pix.clamp_min(1) - mean_d ** 2
    sums["silog_sum"] = torch.where(has, silog, 0.0).sum()
    sums["silog_images"] = has.to(torch.float64).sum()
    for c in CUTOFFS_M:
        near = w * (true < c)
        sums[f"abs_err_{c}m_sum"] = (err.abs() * near).sum()
        sums[f"n_{c}m"] = near.sum()
    return sums


def ensemble_metric_sums(members_m: torch.Tensor, true_m: torch.Tensor,
                         mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums of CRPS and spread/skill of ``members_m [N, M, 1, H, W]`` against ``true_m [N, 1, H, W]``.

    Needs ``M >= 2`` (the fair CRPS and the unbiased spread are undefined for one member).
    """
    n_img, m = members_m.shape[:2]
    if m < 2:
        raise ValueError(f"ensemble metrics need at least 2 members, got {m}")
    x = members_m.reshape(n_img, m, -1).to(torch.float64)
    true = _flat(true_m, n_img)
    valid = _valid(true, _flat(mask, n_img))
    true = torch.where(valid, true, 0.0)
    x = torch.where(valid[:, None], x, 0.0)
    w = valid.to(torch.float64)
    skill_term = (x - true[:, None]).abs().mean(1)
    xs = x.sort(dim=1).values
    rank_weight = (2 * torch.arange(m, dtype=torch.float64, device=x.device) - m + 1).view(1, m, 1)
    pair_sum = 2 * (rank_weight * xs).sum(1)  # sum over ordered pairs i, j of |x_i - x_j|
    crps = skill_term - pair_sum / (2 * m * (m - 1))
    ens_mean = x.mean(1)
    var = x.var(1, unbiased=True)
    return {"crps_sum": (crps * w).sum(), "crps_n": w.sum(),
            "spread_sum": ((1 + 1 / m) * var * w).sum(), "skill_sum": ((ens_mean - true) ** 2 * w).sum()}


def add_sums(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Key-wise sum of two sum dicts (a key missing on one side counts as 0)."""
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in {**a, **b}}


def _f(v: Any) -> float:
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


def _ratio(s: Mapping[str, Any], num: str, den: str) -> float:
    d = _f(s[den])
    return _f(s[num]) / d if d > 0 else math.nan


def finalize(sums: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of reduced sums (NaN where no pixel counted), for the keys the sums support."""
    out: dict[str, float] = {}
    if "n" in sums:
        out["num_valid_pixels"] = int(_f(sums["n"]))
        out["abs_rel"] = _ratio(sums, "abs_rel_sum", "n")
        out["sq_rel"] = _ratio(sums, "sq_rel_sum", "n")
        out["mse"] = _ratio(sums, "sq_err_sum", "n")
        out["rmse"] = math.sqrt(out["mse"])
        out["rmse_log"] = math.sqrt(_ratio(sums, "sq_log_err_sum", "n"))
        out["silog"] = _ratio(sums, "silog_sum", "silog_images")
        for k in (1, 2, 3):
            out[f"delta{k}"] = _ratio(sums, f"delta{k}_n", "n")
        out["mae"] = _ratio(sums, "abs_err_sum", "n")
        for c in CUTOFFS_M:
            out[f"mae_{c}m"] = _ratio(sums, f"abs_err_{c}m_sum", f"n_{c}m")
    if "crps_n" in sums:
        out["crps"] = _ratio(sums, "crps_sum", "crps_n")
        skill = _f(sums["skill_sum"])
        out["spread_skill"] = math.sqrt(_f(sums["spread_sum"]) / skill) if skill > 0 else math.nan
    return out
