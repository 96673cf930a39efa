import json
import math

import pytest
import torch

from resdepth.eval.metrics import (add_sums, align_scale_shift, depth_metric_sums,
                                   ensemble_metric_sums, finalize)


def _img(values):
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


PRED = [2.0, 4.0, 10.0, 25.0]
TRUE = [1.0, 5.0, 10.0, 40.0]


def test_point_metrics_by_hand():
    m = finalize(depth_metric_sums(_img(PRED), _img(TRUE), torch.ones(1, 1, 1, 4, dtype=torch.bool)))
    assert m["num_valid_pixels"] == 4
    assert m["abs_rel"] == pytest.approx((1 + 0.2 + 0 + 15 / 40) / 4)
    assert m["sq_rel"] == pytest.approx((1 + 1 / 5 + 0 + 225 / 40) / 4)
    assert m["mse"] == pytest.approx(227 / 4)
    assert m["rmse"] == pytest.approx(math.sqrt(227 / 4))
    d = [math.log(2), math.log(0.8), 0.0, math.log(25 / 40)]
    assert m["rmse_log"] == pytest.approx(math.sqrt(sum(v * v for v in d) / 4))
    assert m["silog"] == pytest.approx(sum(v * v for v in d) / 4 - (sum(d) / 4) ** 2)
    # ratios 2, 1.25, 1, 1.6: the delta thresholds are strict
    assert (m["delta1"], m["delta2"], m["delta3"]) == (0.25, 0.5, 0.75)
    assert m["mae"] == pytest.approx(17 / 4)
    assert m["mae_10m"] == pytest.approx(1.0)        # true 1 and 5 m
    assert m["mae_20m"] == pytest.approx(2 / 3)      # true 1, 5 and 10 m
    assert m["mae_30m"] == pytest.approx(2 / 3)


def test_masked_and_invalid_pixels_change_nothing():
    base = finalize(depth_metric_sums(_img(PRED), _img(TRUE), torch.ones(1, 1, 1, 4)))
    pred = _img(PRED + [1e9, 3.0, float("nan")])
    true = _img(TRUE + [float("nan"), 0.0, 7.0])   # masked NaN, zero depth under a true mask, masked pred NaN
    mask = torch.tensor([1, 1, 1, 1, 0, 1, 0], dtype=torch.bool).view(1, 1, 1, -1)
    got = finalize(depth_metric_sums(pred, true, mask))
    assert got == pytest.approx(base)


def test_cutoff_without_pixels_is_nan():
    m = finalize(depth_metric_sums(_img([50.0]), _img([45.0]), torch.ones(1, 1, 1, 1)))
    assert math.isnan(m["mae_10m"]) and m["mae"] == pytest.approx(5.0)


def test_predictions_are_clamped_before_logs():
    m = finalize(depth_metric_sums(_img([0.0, -3.0]), _img([2.0, 2.0]), torch.ones(1, 1, 1, 2)))
    assert m["abs_rel"] == pytest.approx((2 - 1e-3) / 2)
    assert m["rmse_log"] == pytest.approx(abs(math.log(1e-3 / 2)))


def test_silog_is_per_image_and_scale_invariant():
    true = torch.tensor([[1.0, 2.0, 4.0], [3.0, 5.0, 7.0]]).view(2, 1, 1, 3)
    pred = true * torch.tensor([2.0, 0.5]).view(2, 1, 1, 1)  # a different scale per image
    m = finalize(depth_metric_sums(pred, true, torch.ones_like(true)))
    assert m["silog"] == pytest.approx(0.0, abs=1e-12)
    assert m["rmse_log"] == pytest.approx(math.log(2))


def test_scale_shift_alignment():
    valid = torch.ones(1, 3, dtype=torch.bool)
    aligned = align_scale_shift(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64),
                                torch.tensor([[1.0, 3.0, 2.0]], dtype=torch.float64), valid)
    torch.testing.assert_close(aligned, torch.tensor([[1.5, 2.0, 2.5]], dtype=torch.float64))
    true = _img([1.0, 3.0, 8.0, 20.0])
    m = finalize(depth_metric_sums(2 * true + 3, true, torch.ones_like(true), align=True))
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-9) and m["delta1"] == 1.0
    # the fit ignores masked pixels
    pred = torch.cat([2 * true + 3, _img([100.0])], -1)
    mask = torch.tensor([1, 1, 1, 1, 0]).view(1, 1, 1, -1)
    m = finalize(depth_metric_sums(pred, torch.cat([true, _img([1.0])], -1), mask, align=True))
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-9)


def test_sums_reduce_exactly_and_survive_json():
    g = torch.Generator().manual_seed(0)
    true = torch.rand(6, 1, 5, 7, generator=g) * 40 + 0.5
    pred = true * (1 + 0.3 * torch.randn(6, 1, 5, 7, generator=g)).abs()
    mask = torch.rand(6, 1, 5, 7, generator=g) > 0.3
    whole = finalize(depth_metric_sums(pred, true, mask))
    a, b = depth_metric_sums(pred[:2], true[:2], mask[:2]), depth_metric_sums(pred[2:], true[2:], mask[2:])
    b_json = json.loads(json.dumps({k: v.item() for k, v in b.items()}))
    assert finalize(add_sums(a, b_json)) == pytest.approx(whole, rel=1e-12)


def test_crps_and_spread_skill_by_hand():
    # pixel 1: members 1, 3, truth 2; pixel 2: members 1, 3, truth 5
    members = torch.tensor([[1.0, 1.0], [3.0, 3.0]]).view(1, 2, 1, 1, 2)
    true = _img([2.0, 5.0])
    s = ensemble_metric_sums(members, true, torch.ones_like(true))
    m = finalize(s)
    # fair CRPS: mean |x - y| - sum_ij |x_i - x_j| / (2 M (M - 1)) = (1 - 1, 3 - 1)
    assert m["crps"] == pytest.approx((0.0 + 2.0) / 2)
    # unbiased var 2 per pixel, (1 + 1/2) * 2 * 2 pixels = 6; squared error of the mean 0 + 9
    assert m["spread_skill"] == pytest.approx(math.sqrt(6 / 9))


def test_crps_three_members_and_mask():
    # [N, M, 1, H, W]: pixel 0 has members 0, 5, 7; pixel 1 (masked, NaN truth) 1, 7, 7
    members = torch.tensor([[0.0, 1.0], [5.0, 7.0], [7.0, 7.0]]).view(1, 3, 1, 1, 2)
    true = _img([2.0, float("nan")])
    m = finalize(ensemble_metric_sums(members, true, torch.tensor([[[[1, 0]]]])))
    x = [0.0, 5.0, 7.0]
    by_hand = sum(abs(v - 2) for v in x) / 3 - sum(abs(a - b) for a in x for b in x) / (2 * 3 * 2)
    assert m["crps"] == pytest.approx(by_hand)


def test_spread_skill_of_a_calibrated_ensemble_is_one():
    g = torch.Generator().manual_seed(1)
    centre = torch.randn(4, 1, 1, 1, 50, generator=g)
    members = centre + torch.randn(4, 3, 1, 1, 50, generator=g)      # 3 draws from N(centre, 1)
    true = (centre + torch.randn(4, 1, 1, 1, 50, generator=g))[:, 0]  # the truth is a fourth draw
    m = finalize(ensemble_metric_sums(members + 10, true + 10, torch.ones_like(true)))
    assert m["spread_skill"] == pytest.approx(1.0, abs=0.08)


def test_one_member_crps_is_its_mae():
    pred, true = _img(PRED), _img(TRUE)
    m = finalize(ensemble_metric_sums(pred[:, None], true, torch.ones_like(true)))
    assert m["crps"] == pytest.approx(17 / 4) and "spread_skill" not in m
