"""The scoring protocols against a small case worked out by hand (which pixels count, what the
truth becomes, then the reference formulas)."""
import math

import pytest
import torch

from resdepth.eval.metrics import (depth_metric_sums, ensemble_metric_sums, finalize,
                                   sharpness_sums)

DMAX = 80.0
DMIN = 80.0 * math.exp(-3.7)  # 1.978 m, HMNet's MVSEC min_depth
NAN = float("nan")
# two frames of 5 pixels: [N=2, 1, 1, 5]
TRUE = torch.tensor([[2.0, 10.0, 100.0, 40.0, 1.0], [5.0, 20.0, NAN, 60.0, 7.0]]).view(2, 1, 1, 5)
PRED = torch.tensor([[4.0, 10.0, 80.0, 20.0, 3.0], [10.0, 20.0, 1.0, 90.0, 7.0]]).view(2, 1, 1, 5)
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 1, 0]], dtype=torch.bool).view(2, 1, 1, 5)


def score(protocol):
    return finalize(depth_metric_sums(PRED, TRUE, MASK, protocol=protocol, max_depth=DMAX,
                                      min_depth=DMIN))


def mean(xs):
    return sum(xs) / len(xs)


def test_pooled_by_hand():
    # truth 100 m > Dmax is left out; prediction 90 is clipped to 80; truth 1 m counts
    pairs = [(4, 2), (10, 10), (20, 40), (3, 1), (10, 5), (20, 20), (80, 60)]
    m = score("pooled")
    assert m["num_valid_pixels"] == 7
    assert m["mae"] == pytest.approx(mean([abs(p - t) for p, t in pairs]))
    assert m["rmse"] == pytest.approx(math.sqrt(mean([(p - t) ** 2 for p, t in pairs])))
    assert m["sq_rel"] == pytest.approx(mean([(p - t) ** 2 / t for p, t in pairs]))
    assert m["mae_10m"] == pytest.approx(mean([2, 2, 5]))


def test_e2depth_by_hand():
    # frame 0: truth capped at 80 (100 -> 80, already the frame maximum), then t < 80 strictly
    # drops it; frame 1: maximum 60 -> truth rescaled by 80/60, the 60 m pixel becomes 80 and drops
    f0 = [(4, 2), (10, 10), (20, 40), (3, 1)]
    f1 = [(10, 5 * 80 / 60), (20, 20 * 80 / 60)]
    eps = 1e-5
    m = score("e2depth")
    assert m["num_frames"] == 2 and m["num_valid_pixels"] == 6
    assert m["mae"] == pytest.approx(mean([mean([abs(p - t) for p, t in f]) for f in (f0, f1)]))
    assert m["rmse"] == pytest.approx(mean([math.sqrt(mean([(p - t) ** 2 for p, t in f]))
                                            for f in (f0, f1)]))
    assert m["abs_rel"] == pytest.approx(mean([mean([abs(p - t) / (t + eps) for p, t in f])
                                               for f in (f0, f1)]))
    # rpg_e2depth's squared relative error divides by t^2
    assert m["sq_rel"] == pytest.approx(mean([mean([(p - t) ** 2 / (t ** 2 + eps) for p, t in f])
                                              for f in (f0, f1)]))
    # ratio <= 1.25 (inclusive): frame 0 has 10/10 only; frame 1: 10 / 6.67 = 1.5, 26.7 / 20 = 1.33
    assert m["delta1"] == pytest.approx(mean([1 / 4, 0.0]))
    # cutoff 10 m: t < 10 per frame, then the mean over frames
    assert m["mae_10m"] == pytest.approx(mean([mean([2, 2]), 10 - 5 * 80 / 60]))


def test_ramnet_by_hand():
    # truth capped at 80 (100 -> 80) and never rescaled (frame 1's maximum 60 stays 60); inclusive
    # masks keep the capped pixel (t = 80 <= Dmax) that e2depth drops; prediction 90 -> 80, and
    # RAM-Net keeps predictions up to the frame's deepest truth only: frame 1's 80 m prediction
    # (deepest truth 60 m) drops out with its pixel
    f0 = [(4, 2), (10, 10), (80, 80), (20, 40), (3, 1)]
    f1 = [(10, 5), (20, 20)]
    eps = 1e-5
    m = score("ramnet")
    assert m["num_frames"] == 2 and m["num_valid_pixels"] == 7
    assert m["mae"] == pytest.approx(mean([mean([2, 0, 0, 20, 2]), mean([5, 0])]))
    assert m["rmse"] == pytest.approx(mean([math.sqrt(408 / 5), math.sqrt(25 / 2)]))
    assert m["abs_rel"] == pytest.approx(mean([mean([abs(p - t) / (t + eps) for p, t in f])
                                               for f in (f0, f1)]))
    assert m["abs_rel"] == pytest.approx(mean([3.5 / 5, 1 / 2]), rel=1e-4)
    assert m["sq_rel"] == pytest.approx(mean([mean([(p - t) ** 2 / (t ** 2 + eps) for p, t in f])
                                              for f in (f0, f1)]))
    # ratio <= 1.25: frame 0 has 10/10 and 80/80; frame 1 has 20/20
    assert m["delta1"] == pytest.approx(mean([2 / 5, 1 / 2]))
    # cutoff 10 m: t < 10 per frame (no rescaling: frame 1's 5 m pixel stays 5 m)
    assert m["mae_10m"] == pytest.approx(mean([mean([2, 2]), 5]))
    assert score("e2depth")["abs_rel"] != pytest.approx(m["abs_rel"])


def test_hmnet_by_hand():
    # Dmin <= t <= Dmax: the 1 m and 100 m truths drop, nothing is rescaled; prediction 90 -> 80
    f0 = [(4, 2), (10, 10), (20, 40)]
    f1 = [(10, 5), (20, 20), (80, 60)]
    m = score("hmnet")
    assert m["num_frames"] == 2 and m["num_valid_pixels"] == 6
    assert m["mae"] == pytest.approx(mean([mean([abs(p - t) for p, t in f]) for f in (f0, f1)]))
    assert m["sq_rel"] == pytest.approx(mean([mean([(p - t) ** 2 / t for p, t in f])
                                              for f in (f0, f1)]))
    d = [[math.log(p) - math.log(t) for p, t in f] for f in (f0, f1)]
    silog = [100 * math.sqrt(mean([x * x for x in f]) - mean(f) ** 2) for f in d]
    assert m["silog"] == pytest.approx(mean(silog))
    # cutoff 10 m: Dmin <= t <= 10 (inclusive)
    assert m["mae_10m"] == pytest.approx(mean([mean([2, 0]), 5]))


def test_per_frame_and_pooled_differ_on_the_same_pixels():
    true = torch.tensor([[10.0, 10.0, 10.0, 10.0], [10.0, 0.0, 0.0, 0.0]]).view(2, 1, 1, 4)
    pred = torch.tensor([[11.0, 11.0, 11.0, 11.0], [20.0, 5.0, 5.0, 5.0]]).view(2, 1, 1, 4)
    mask = true > 0
    pooled = finalize(depth_metric_sums(pred, true, mask, protocol="pooled", max_depth=DMAX,
                                        min_depth=DMIN))
    hm = finalize(depth_metric_sums(pred, true, mask, protocol="hmnet", max_depth=DMAX,
                                    min_depth=DMIN))
    assert pooled["mae"] == pytest.approx((4 * 1 + 10) / 5)
    assert hm["mae"] == pytest.approx((1 + 10) / 2)


def test_frames_without_valid_pixels_are_skipped_and_counted():
    true = torch.tensor([[5.0, 6.0], [0.0, 0.0]]).view(2, 1, 1, 2)
    m = finalize(depth_metric_sums(true + 1, true, true > 0, protocol="hmnet", max_depth=DMAX,
                                   min_depth=DMIN))
    assert m["num_frames"] == 1 and m["frames_empty"] == 1 and m["mae"] == pytest.approx(1.0)


def test_ensemble_metrics_follow_the_protocol_truth():
    members = torch.stack([PRED, PRED + 2], dim=1)
    pooled = finalize(ensemble_metric_sums(members, TRUE, MASK, "pooled", DMAX, DMIN))
    hm = finalize(ensemble_metric_sums(members, TRUE, MASK, "hmnet", DMAX, DMIN))
    # the 1 m truth counts in pooled only
    assert pooled["crps"] != pytest.approx(hm["crps"])
    s = ensemble_metric_sums(members, TRUE, MASK, "hmnet", DMAX, DMIN)
    assert float(s["crps_n"]) == 6


def test_protocol_needs_a_depth_range():
    with pytest.raises(ValueError, match="max_depth"):
        depth_metric_sums(PRED, TRUE, MASK, protocol="e2depth")
    with pytest.raises(ValueError, match="expected one of"):
        depth_metric_sums(PRED, TRUE, MASK, protocol="kitti", max_depth=DMAX)


def test_sharpness_of_truth_smooth_and_noisy_predictions():
    true = torch.full((1, 1, 8, 8), 10.0)
    true[..., 4:] = 40.0  # a vertical depth boundary between columns 3 and 4
    mask = torch.ones_like(true, dtype=torch.bool)
    same = finalize(sharpness_sums(true[:, None], true, mask))
    assert same["grad_energy"] == pytest.approx(1.0) and same["boundary_mae"] == 0.0
    smooth = true.clone()
    smooth[..., 3], smooth[..., 4] = 17.5, 32.5  # the edge spread over three steps
    s = finalize(sharpness_sums(smooth[:, None], true, mask))
    # squared steps 7.5^2 + 15^2 + 7.5^2 against 30^2 per row; boundary pixels: columns 3 and 4
    assert s["grad_energy"] == pytest.approx((2 * 7.5 ** 2 + 15 ** 2) / 30 ** 2)
    assert s["boundary_mae"] == pytest.approx(7.5)
    g = torch.Generator().manual_seed(0)
    noisy = true[:, None] + torch.randn(1, 4, 1, 8, 8, generator=g)
    assert finalize(sharpness_sums(noisy, true, mask))["grad_energy"] > 1.0


def test_protocol_is_in_the_settings_hash():
    from resdepth.eval.config import EvalConfig, result_hash

    protocols = ("pooled", "e2depth", "ramnet", "hmnet")
    hashes = {result_hash(EvalConfig(protocol=p), {"nets": 1}) for p in protocols}
    assert len(hashes) == 4
