"""Each point estimate's sharpness columns are its own: the ensemble mean's and the member median's
edge MAE and gradient energy score that estimate, the members' average sits apart (``members_*``)."""
from types import SimpleNamespace

import pytest
import torch

from resdepth.eval.metrics import finalize, sharpness_sums
from resdepth.eval.scoring import score_batch


def _scene():
    # a step edge from 4 m to 20 m: a depth boundary along the middle columns
    g = torch.Generator().manual_seed(0)
    depth = torch.full((2, 1, 6, 8), 4.0)
    depth[..., 4:] = 20.0
    mask = torch.ones_like(depth, dtype=torch.bool)
    noise = torch.randn(2, 1, 1, 6, 8, generator=g).abs() + 0.5
    # two members symmetric around the truth: their mean is the truth, each member is off
    members = torch.cat([depth[:, None] + noise, depth[:, None] - noise], 1)
    pred = {"regression": depth + 1.0, "mean": members.mean(1), "median": members.min(1).values,
            "members": members}
    ctx = SimpleNamespace(cfg=SimpleNamespace(protocol="pooled"), baseline=None,
                          depth_range=(1.978, 80.0))
    return {k: finalize(v) for k, v in score_batch(ctx, pred, depth, mask).items()}, pred, depth, mask


def test_the_ensemble_means_sharpness_is_its_own():
    m, pred, depth, mask = _scene()
    assert m["diffusion"]["boundary_mae"] == pytest.approx(0.0, abs=1e-9)
    assert m["diffusion"]["grad_energy"] == pytest.approx(1.0)
    own = finalize(sharpness_sums(pred["mean"][:, None], depth, mask, 80.0))
    assert m["diffusion"]["boundary_mae"] == own["boundary_mae"]


def test_the_members_average_sharpness_is_kept_apart():
    m, pred, depth, mask = _scene()
    members = finalize(sharpness_sums(pred["members"], depth, mask, 80.0))
    assert m["diffusion"]["members_boundary_mae"] == pytest.approx(members["boundary_mae"])
    assert m["diffusion"]["members_grad_energy"] == pytest.approx(members["grad_energy"])
    assert m["diffusion"]["members_boundary_mae"] > 0.5  # every member is at least 0.5 m off
    # the ensemble's probabilistic scores stay on the same row
    assert {"crps", "spread_skill"} <= set(m["diffusion"])


def test_the_member_median_has_its_own_sharpness():
    m, pred, depth, mask = _scene()
    own = finalize(sharpness_sums(pred["median"][:, None], depth, mask, 80.0))
    assert m["diffusion_median"]["boundary_mae"] == pytest.approx(own["boundary_mae"])
    assert m["diffusion_median"]["grad_energy"] == pytest.approx(own["grad_energy"])
    assert "members_boundary_mae" not in m["diffusion_median"]


def test_a_denoised_point_estimate_is_scored_as_a_point():
    from resdepth.eval.metrics import depth_metric_sums
    from resdepth.eval.report import markdown
    from resdepth.eval.scoring import PREDICTORS

    depth = torch.full((1, 1, 4, 4), 10.0)
    mask = torch.ones_like(depth, dtype=torch.bool)
    members = torch.stack([depth * 1.2, depth * 0.9], 1)
    pred = {"regression": depth * 1.5, "mean": members.mean(1), "median": members.min(1).values,
            "members": members, "denoised": depth * 1.1}
    ctx = SimpleNamespace(cfg=SimpleNamespace(protocol="pooled"), baseline=None,
                          depth_range=(1.978, 80.0))
    sums = score_batch(ctx, pred, depth, mask)
    m = finalize(sums["diffusion_denoised"])
    assert m["abs_rel"] == pytest.approx(0.1) and m["crps"] == pytest.approx(1.0)  # its MAE
    assert set(sums["diffusion_denoised"]) >= set(depth_metric_sums(depth, depth, mask))
    assert "diffusion_denoised" in PREDICTORS
    row = {"num_samples": 1, "num_valid_pixels": 16, "diffusion_denoised": m}
    assert "regression + denoised residual" in markdown(row)
    del pred["denoised"]
    assert "diffusion_denoised" not in score_batch(ctx, pred, depth, mask)
