"""Depth metrics in metres as sums and counts, so that ranks and parts reduce exactly.

``depth_metric_sums`` / ``ensemble_metric_sums`` turn one batch into a dict of float64 sums (0-dim
tensors; python floats after a JSON round trip work as well), ``add_sums`` adds two such dicts and
``finalize`` divides at the very end.

Protocols (``protocol=``; read before comparing with published tables). ``Dmax`` and
``Dmin = Dmax exp(-alpha)`` are the depth normalisation's range, what a log-normalised net can
express (MVSEC: 80 m and 1.978 m):

* ``pooled`` (this project's own): every pixel of the split weighs the same. Truth beyond Dmax is
  left out, predictions are clipped to [Dmin, Dmax] (to ``[min_depth, max_depth]`` when called
  without a range: ``min_depth = 1e-3`` m, no upper bound). MSE, RMSE, RMSE-log, AbsRel, SqRel
  (``err^2 / t``), MAE and the deltas (strict ``<``) average over all valid pixels; RMSE is
  ``sqrt(pooled MSE)``.
* ``e2depth``: rpg_e2depth ``evaluation.py`` (Hidalgo-Carrio et al. 2020): every metric per
  frame, then the mean over frames. Truth capped at Dmax and rescaled so the frame's maximum is
  Dmax; pixels with ``0 < t < Dmax`` and ``0 < pred < Dmax``; ``eps = 1e-5`` in ratios and logs;
  SqRel is ``err^2 / t^2``; deltas count ``ratio <= 1.25^k``; RMSE is the mean of per-frame RMSEs.
* ``ramnet``: RAM-Net's ``RAM_Net/evaluation.py`` (Gehrig et al. 2021): as ``e2depth`` but the
  truth is only capped at Dmax, never rescaled to the frame's maximum, and the masks are
  inclusive: pixels with ``0 < t <= Dmax`` and ``0 < pred <= amax(t)`` (the frame's deepest
  truth). The two differ on every frame whose deepest valid pixel is nearer than Dmax, and on
  pixels at Dmax.
* ``hmnet``: HMNet_pth ``experiments/depth/scripts/eval_depth.py`` (Hamaguchi et al. 2023): per
  frame, then the mean over frames; pixels with ``Dmin <= t <= Dmax`` (truth beyond Dmax left
  out, not capped), predictions clipped to [Dmin, Dmax]; SqRel ``err^2 / t``; SILog reported as
  ``100 sqrt(.)``; deltas strict.

Common to all:

* Valid pixels need ``mask`` true and a finite true depth > 0 besides the protocol's own range.
* SILog (Eigen et al. 2014, lambda = 1): per image ``mean(d^2) - mean(d)^2`` with
  ``d = ln(pred) - ln(true)``, averaged over images with valid pixels (no square root and no
  factor 100, except in ``hmnet``).
* ``mae_10m``, ``abs_rel_10m``, ``rmse_10m`` etc.: the metric over valid pixels whose true depth
  is below the cutoff (``<= c`` in hmnet), per frame in the per-frame protocols (frames without
  such pixels are skipped, where the reference scripts would return NaN).
* ``align=True``: per image least-squares scale and shift of the prediction onto the truth over
  its valid pixels (Marigold protocol); a constant prediction gets scale 0 and the mean depth.
* Probabilistic, from ensemble members, pixel-pooled in every protocol over the protocol's valid
  truth pixels: the fair CRPS estimator per pixel,
  ``mean_i |x_i - y| - sum_ij |x_i - x_j| / (2 M (M - 1))`` (for one member, a point forecast, it
  is the MAE); and the spread-skill ratio ``sqrt(sum (1 + 1/M) var_i / sum (mean_i - y)^2)`` with
  the unbiased member variance (Fortin et al. 2014), 1 for a calibrated ensemble.
* Sharpness (``sharpness_sums``): gradient energy of predictions relative to the truth's, and the
  MAE at true depth boundaries. A point estimate's are its own; an ensemble's are its members'
  average (``member_sums`` keeps them apart from the ensemble mean's own as ``members_*``).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch

from resdepth.utils.errors import UserError

MIN_DEPTH = 1e-3
CUTOFFS_M = (10, 20, 30)
CUTOFF_METRICS = ("mae", "abs_rel", "rmse")
EDGE_RATIO = 1.25  # a depth boundary: neighbouring true depths differ by more than 25 %


PROTOCOLS = ("pooled", "e2depth", "ramnet", "hmnet")
# the rpg_e2depth family: eps in ratios and logs, SqRel err^2 / t^2, deltas ratio <= 1.25^k
E2DEPTH_LIKE = ("e2depth", "ramnet")
E2DEPTH_EPS = 1e-5  # rpg_e2depth evaluation.py adds it in the ratio, the logs and both relative errors


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


def _check_protocol(protocol: str, max_depth: Optional[float]) -> None:
    if protocol not in PROTOCOLS:
        raise UserError(f"protocol {protocol!r}: expected one of {PROTOCOLS}")
    if protocol != "pooled" and max_depth is None:
        raise UserError(f"protocol {protocol!r} needs max_depth (Dmax) and min_depth")


def prepare_truth(true: torch.Tensor, valid: torch.Tensor, protocol: str,
                  max_depth: Optional[float], min_depth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The truth and its valid pixels ([N, P] float64) as ``protocol`` scores them.

    * pooled: truth beyond ``max_depth`` is left out (it cannot be predicted once predictions are
      clipped at Dmax).
    * e2depth (rpg_e2depth ``evaluation.py``, ``prepare_depth_data`` / ``add_to_metrics``): the
      truth is capped at Dmax (``np.clip(target, 0, clip_distance)``), then rescaled per frame so
      that its largest value is Dmax (``target / amax(target) * clip_distance``); pixels need
      ``0 < t < amax(t)`` (strict: pixels at the frame's maximum, e.g. capped ones, drop out).
    * ramnet (RAM-Net ``evaluation.py``): the truth is capped at Dmax and not rescaled; pixels
      need ``0 < t <= Dmax`` (inclusive: capped pixels count), and their prediction
      ``0 < pred <= amax(t)`` (the frame's deepest truth, inclusive).
    * hmnet (HMNet_pth ``experiments/depth/scripts/eval_depth.py``, ``_evaluate``): the truth is
      not changed; pixels need ``min_depth <= t <= max_depth`` (their MVSEC script:
      ``MAX_DEPTH=80``, ``MIN_DEPTH=1.978`` = 80 exp(-3.7)).
    """
    if protocol == "pooled":
        if max_depth is not None:
            valid = valid & (true <= max_depth)
        return true, valid
    if protocol == "e2depth":
        capped = torch.where(valid, true.clamp(max=max_depth), 0.0)
        top = capped.amax(1, keepdim=True)
        t = torch.where(top > 0, capped / torch.where(top > 0, top, 1.0) * max_depth, 0.0)
        return t, valid & (t > 0) & (t < max_depth)
    if protocol == "ramnet":
        t = torch.where(valid, true.clamp(max=max_depth), 0.0)
        return t, valid & (t > 0) & (t <= max_depth)
    return true, valid & (true >= min_depth) & (true <= max_depth)


def _clip_pred(pred: torch.Tensor, max_depth: Optional[float], min_depth: float) -> torch.Tensor:
    # Every protocol scores predictions in [Dmax exp(-alpha), Dmax], what the log normalisation can
    # express (RAM-Net's prepare_depth_data clips to it; HMNet's clip_pred clips to
    # [min_depth, max_depth]); pooled keeps min_depth > 0 so that logs and ratios are defined.
    return pred.clamp(min=min_depth, max=max_depth)


def _pixel_terms(pred: torch.Tensor, true: torch.Tensor, protocol: str) -> dict[str, torch.Tensor]:
    """Per-pixel error terms of ``protocol`` (placeholders where invalid are zeroed by the caller)."""
    err = pred - true
    eps = E2DEPTH_EPS if protocol in E2DEPTH_LIKE else 0.0
    d = (pred + eps).log() - (true + eps).log()
    ratio = torch.maximum(pred / (true + eps), true / (pred + eps))
    # sq_rel: err^2 / t^2 in rpg_e2depth (``abs_diff**2/(target**2+eps)``, also RAM-Net's
    # metric.squ_rel_diff), err^2 / t in HMNet and in the KITTI convention used for pooled
    sq_rel = err ** 2 / (true ** 2 + eps) if protocol in E2DEPTH_LIKE else err ** 2 / true
    terms = {"abs_rel": err.abs() / (true + eps), "sq_rel": sq_rel, "sq_err": err ** 2,
             "sq_log": d ** 2, "log_diff": d, "abs_err": err.abs()}
    for k in (1, 2, 3):
        # rpg_e2depth counts ratio <= 1.25^k, HMNet and pooled ratio < 1.25^k
        hit = ratio <= 1.25 ** k if protocol in E2DEPTH_LIKE else ratio < 1.25 ** k
        terms[f"delta{k}"] = hit.to(torch.float64)
    return terms


def _frame_metrics(terms: dict[str, torch.Tensor], w: torch.Tensor,
                   protocol: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-frame metric values ``[N]`` over the pixels weighted by ``w`` and the frames that have any."""
    n = w.sum(1)
    has = n > 0
    mean = {k: (v * w).sum(1) / n.clamp_min(1) for k, v in terms.items()}
    silog = (mean["sq_log"] - mean["log_diff"] ** 2).clamp_min(0)
    if protocol == "hmnet":
        silog = 100 * silog.sqrt()  # HMNet reports sqrt(.) * 100
    out = {"abs_rel": mean["abs_rel"], "sq_rel": mean["sq_rel"], "rmse": mean["sq_err"].sqrt(),
           "rmse_log": mean["sq_log"].sqrt(), "silog": silog, "mae": mean["abs_err"]}
    out.update({f"delta{k}": mean[f"delta{k}"] for k in (1, 2, 3)})
    return out, has


def _cutoff_weight(true: torch.Tensor, valid: torch.Tensor, c: float, protocol: str,
                   min_depth: float) -> torch.Tensor:
    # rpg_e2depth / RAM-Net: the frame's mask and ``target < c``; HMNet: ``min_depth <= t <= c``
    if protocol == "hmnet":
        return (valid & (true >= min_depth) & (true <= c)).to(torch.float64)
    return (valid & (true < c)).to(torch.float64)


def depth_metric_sums(pred_m: torch.Tensor, true_m: torch.Tensor, mask: torch.Tensor,
                      align: bool = False, min_depth: float = MIN_DEPTH,
                      max_depth: Optional[float] = None,
                      protocol: str = "pooled") -> dict[str, torch.Tensor]:
    """Sums and counts of the point metrics of ``pred_m`` against ``true_m`` (metres, ``[N, 1, H, W]``).

    ``protocol`` pooled sums over pixels; e2depth, ramnet and hmnet sum per-frame values over frames
    (frames without a valid pixel are skipped and counted in ``frames_empty``).
    """
    _check_protocol(protocol, max_depth)
    n_img = true_m.shape[0]
    true, pred = _flat(true_m, n_img), _flat(pred_m, n_img)
    valid = _valid(true, _flat(mask, n_img))
    if align:
        pred = align_scale_shift(pred, true, valid)
    true, valid = prepare_truth(true, valid, protocol, max_depth, min_depth)
    pred = _clip_pred(pred, max_depth, min_depth)
    if protocol == "e2depth":
        # rpg_e2depth also drops pixels whose prediction is not in (0, amax(target)) = (0, Dmax)
        valid = valid & (pred > 0) & (pred < max_depth)
    elif protocol == "ramnet":
        # RAM-Net keeps predictions in [0, amax(target)], inclusive; its truth is not rescaled, so
        # a frame whose deepest truth is nearer than Dmax drops the predictions beyond it
        top = torch.where(valid, true, 0.0).amax(1, keepdim=True)
        valid = valid & (pred > 0) & (pred <= top)
    true = torch.where(valid, true, 1.0)  # placeholders keep masked pixels finite; they are zeroed below
    pred = torch.where(valid, pred, 1.0)
    w = valid.to(torch.float64)
    terms = _pixel_terms(pred, true, protocol)
    if protocol == "pooled":
        return _pooled_sums(terms, true, valid, w)
    per_frame, has = _frame_metrics(terms, w, protocol)
    sums = {"n": w.sum(), "frames": has.to(torch.float64).sum(),
            "frames_empty": (~has).to(torch.float64).sum()}
    for k, v in per_frame.items():
        sums[f"f_{k}_sum"] = torch.where(has, v, 0.0).sum()
        sums[f"f_{k}_n"] = sums["frames"]
    for c in CUTOFFS_M:
        wc = _cutoff_weight(true, valid, c, protocol, min_depth)
        vals, has_c = _frame_metrics(terms, wc, protocol)
        for k in CUTOFF_METRICS:
            sums[f"f_{k}_{c}m_sum"] = torch.where(has_c, vals[k], 0.0).sum()
            sums[f"f_{k}_{c}m_n"] = has_c.to(torch.float64).sum()
    return sums


def _pooled_sums(terms: dict[str, torch.Tensor], true: torch.Tensor, valid: torch.Tensor,
                 w: torch.Tensor) -> dict[str, torch.Tensor]:
    n_pix = w.sum(1)
    sums = {"n": w.sum(), "abs_rel_sum": (terms["abs_rel"] * w).sum(),
            "sq_rel_sum": (terms["sq_rel"] * w).sum(), "sq_err_sum": (terms["sq_err"] * w).sum(),
            "sq_log_err_sum": (terms["sq_log"] * w).sum(), "abs_err_sum": (terms["abs_err"] * w).sum()}
    for k in (1, 2, 3):
        sums[f"delta{k}_n"] = (terms[f"delta{k}"] * w).sum()
    has = n_pix > 0
    d = terms["log_diff"]
    mean_d = (d * w).sum(1) / n_pix.clamp_min(1)
    silog = (d ** 2 * w).sum(1) / n_pix.clamp_min(1) - mean_d ** 2
    sums["silog_sum"] = torch.where(has, silog, 0.0).sum()
    sums["silog_images"] = has.to(torch.float64).sum()
    for c in CUTOFFS_M:
        near = w * (true < c)
        sums[f"abs_err_{c}m_sum"] = (terms["abs_err"] * near).sum()
        sums[f"abs_rel_{c}m_sum"] = (terms["abs_rel"] * near).sum()
        sums[f"sq_err_{c}m_sum"] = (terms["sq_err"] * near).sum()
        sums[f"n_{c}m"] = near.sum()
    return sums


def ensemble_metric_sums(members_m: torch.Tensor, true_m: torch.Tensor, mask: torch.Tensor,
                         protocol: str = "pooled", max_depth: Optional[float] = None,
                         min_depth: float = MIN_DEPTH) -> dict[str, torch.Tensor]:
    """Sums of CRPS and spread/skill of ``members_m [N, M, 1, H, W]`` against ``true_m [N, 1, H, W]``.

    Pixel-pooled over the truth's valid pixels of ``protocol`` (its truth cap and rescaling; the
    members are clipped like point predictions when ``max_depth`` is given). One member (a point
    forecast) gives the CRPS only, which is then its MAE; spread/skill needs ``M >= 2``.
    """
    _check_protocol(protocol, max_depth)
    n_img, m = members_m.shape[:2]
    if m < 1:
        raise ValueError("ensemble metrics need at least 1 member")
    x = members_m.reshape(n_img, m, -1).to(torch.float64)
    true = _flat(true_m, n_img)
    true, valid = prepare_truth(true, _valid(true, _flat(mask, n_img)), protocol, max_depth, min_depth)
    if max_depth is not None:
        x = _clip_pred(x, max_depth, min_depth)
    true = torch.where(valid, true, 0.0)
    x = torch.where(valid[:, None], x, 0.0)
    w = valid.to(torch.float64)
    skill_term = (x - true[:, None]).abs().mean(1)
    if m == 1:
        return {"crps_sum": (skill_term * w).sum(), "crps_n": w.sum()}
    xs = x.sort(dim=1).values
    rank_weight = (2 * torch.arange(m, dtype=torch.float64, device=x.device) - m + 1).view(1, m, 1)
    pair_sum = 2 * (rank_weight * xs).sum(1)  # sum over ordered pairs i, j of |x_i - x_j|
    crps = skill_term - pair_sum / (2 * m * (m - 1))
    ens_mean = x.mean(1)
    var = x.var(1, unbiased=True)
    return {"crps_sum": (crps * w).sum(), "crps_n": w.sum(),
            "spread_sum": ((1 + 1 / m) * var * w).sum(), "skill_sum": ((ens_mean - true) ** 2 * w).sum()}


def sharpness_sums(preds_m: torch.Tensor, true_m: torch.Tensor, mask: torch.Tensor,
                   max_depth: Optional[float] = None, edge_ratio: float = EDGE_RATIO) -> dict[str, torch.Tensor]:
    """Sums of how sharp ``preds_m [N, M, 1, H, W]`` (M members, or 1 for a point) are.

    * ``grad_energy``: sum of squared horizontal and vertical differences of each prediction over
      neighbour pairs where both truth pixels are valid, divided by the same sum of the truth (1: as
      much structure as the truth; a smooth mean is below 1, added white noise above).
    * ``boundary_mae``: mean absolute error (metres, averaged over members) at depth boundaries:
      valid pixels with a valid 4-neighbour whose true depth differs by a factor above
      ``edge_ratio``. A blurred edge shows here first.
    """
    n, m = preds_m.shape[:2]
    true = true_m.reshape(n, 1, *true_m.shape[-2:]).to(torch.float64)
    x = preds_m.reshape(n, m, *preds_m.shape[-2:]).to(torch.float64)
    valid = _valid(true, mask.reshape(true.shape))
    if max_depth is not None:
        valid = valid & (true <= max_depth)
        x = x.clamp(max=max_depth)
    true = torch.where(valid, true, 1.0)
    x = torch.where(valid, x, 1.0)
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    sums: dict[str, torch.Tensor] = {"grad_pred_sum": zero, "grad_true_sum": zero}
    edge = torch.zeros_like(valid)
    log_t = true.log()
    for dim in (-1, -2):
        both = _pairs(valid, dim)
        dx, dt = x.diff(dim=dim), true.diff(dim=dim)
        sums["grad_pred_sum"] = sums["grad_pred_sum"] + (dx ** 2 * both).sum() / m
        sums["grad_true_sum"] = sums["grad_true_sum"] + (dt ** 2 * both).sum()
        jump = both & (log_t.diff(dim=dim).abs() > math.log(edge_ratio))
        edge = edge | _spread(jump, dim)
    err = (x - true).abs().mean(1, keepdim=True)
    sums["boundary_err_sum"] = (err * edge).sum()
    sums["boundary_n"] = edge.to(torch.float64).sum()
    return sums


MEMBERS_PREFIX = "members_"


def member_sums(sums: Mapping[str, Any]) -> dict[str, Any]:
    """``sharpness_sums`` of an ensemble's members under ``members_`` keys, so that they sit beside
    its point estimate's own (``finalize`` gives ``members_grad_energy``, ``members_boundary_mae``)."""
    return {MEMBERS_PREFIX + k: v for k, v in sums.items()}


def _pairs(valid: torch.Tensor, dim: int) -> torch.Tensor:
    """Neighbour pairs along ``dim`` where both pixels are valid (one shorter along ``dim``)."""
    size = valid.shape[dim]
    return valid.narrow(dim, 0, size - 1) & valid.narrow(dim, 1, size - 1)


def _spread(pair_flag: torch.Tensor, dim: int) -> torch.Tensor:
    """Mark both pixels of each flagged neighbour pair (back to the full size along ``dim``)."""
    pad = torch.zeros_like(pair_flag.narrow(dim, 0, 1))
    return torch.cat([pair_flag, pad], dim) | torch.cat([pad, pair_flag], dim)


def add_sums(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Key-wise sum of two sum dicts (a key missing on one side counts as 0)."""
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in {**a, **b}}


def _f(v: Any) -> float:
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


def _ratio(s: Mapping[str, Any], num: str, den: str) -> float:
    d = _f(s[den])
    return _f(s[num]) / d if d > 0 else math.nan


def _finalize_pooled(sums: Mapping[str, Any], out: dict[str, float]) -> None:
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
        if f"abs_rel_{c}m_sum" in sums:
            out[f"abs_rel_{c}m"] = _ratio(sums, f"abs_rel_{c}m_sum", f"n_{c}m")
            out[f"rmse_{c}m"] = math.sqrt(_ratio(sums, f"sq_err_{c}m_sum", f"n_{c}m"))


def _finalize_frames(sums: Mapping[str, Any], out: dict[str, float]) -> None:
    out["num_frames"] = int(_f(sums["frames"]))
    out["frames_empty"] = int(_f(sums.get("frames_empty", 0.0)))
    for key in sorted(k for k in sums if k.startswith("f_") and k.endswith("_sum")):
        name = key[2:-4]
        out[name] = _ratio(sums, key, f"f_{name}_n")


def finalize(sums: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of reduced sums (NaN where no pixel counted), for the keys the sums support."""
    out: dict[str, float] = {}
    if "n" in sums:
        out["num_valid_pixels"] = int(_f(sums["n"]))
        if "frames" in sums:
            _finalize_frames(sums, out)
        else:
            _finalize_pooled(sums, out)
    if "crps_n" in sums:
        out["crps"] = _ratio(sums, "crps_sum", "crps_n")
        if "skill_sum" in sums:
            skill = _f(sums["skill_sum"])
            out["spread_skill"] = math.sqrt(_f(sums["spread_sum"]) / skill) if skill > 0 else math.nan
    for prefix in ("", MEMBERS_PREFIX):
        if f"{prefix}grad_true_sum" in sums:
            out[f"{prefix}grad_energy"] = _ratio(sums, f"{prefix}grad_pred_sum", f"{prefix}grad_true_sum")
            out[f"{prefix}boundary_mae"] = _ratio(sums, f"{prefix}boundary_err_sum", f"{prefix}boundary_n")
    return out
