"""The pictures: depth colours that separate near depths, colour bars whose ticks are labelled in
metres and agree with the pixels, error panels that are black where a prediction is right."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from resdepth.eval.report import sample_rows, samples_png  # noqa: E402
from resdepth.predict.outputs import preview_image  # noqa: E402
from resdepth.utils import viz  # noqa: E402

DMIN, DMAX = 80 * np.exp(-3.7), 80.0


def rgb_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(float) - b.astype(float)))


def test_near_depths_get_clearly_different_colours_on_the_log_scale_not_on_a_linear_one():
    depth = np.array([[2.0, 4.0]])
    # the pictures before: magma_r on a linear 0-80 m scale
    linear = viz.colorize_depth(depth, vmin=0.0, vmax=DMAX, scale="linear", cmap="magma_r")
    log = viz.colorize_depth(depth, vmin=DMIN, vmax=DMAX)
    near_linear = rgb_distance(linear[0, 0], linear[0, 1])
    near_log = rgb_distance(log[0, 0], log[0, 1])
    assert near_linear < 40           # 2 and 4 m: 2.5 % of a 0-80 m bar apart
    assert near_log > 100             # 19 % of the 1.98-80 m log bar apart
    assert near_log > 3 * near_linear
    # equal ratios are equal steps on the log scale: 2->4 m as far along the bar as 20->40 m
    s = viz.Scale(DMIN, DMAX)
    assert s.unit(4.0) - s.unit(2.0) == pytest.approx(s.unit(40.0) - s.unit(20.0))


def test_inverse_scale_spreads_the_near_range_most():
    s = viz.Scale(2.0, 80.0, "inverse")
    assert s.unit(2.0) == 0 and s.unit(80.0) == pytest.approx(1)
    assert s.unit(4.0) - s.unit(2.0) > s.unit(80.0) - s.unit(10.0)


def test_invalid_depth_is_black_and_out_of_range_depth_is_clipped():
    depth = np.array([[0.0, np.nan, 1.0, 200.0]])
    rgb = viz.colorize_depth(depth, vmin=DMIN, vmax=DMAX)
    assert (rgb[0, :2] == 0).all()
    ends = viz.colorize(np.array([[DMIN, DMAX]]), viz.Scale(DMIN, DMAX), viz.DEPTH_CMAP)
    assert (rgb[0, 2] == ends[0, 0]).all() and (rgb[0, 3] == ends[0, 1]).all()


def test_colour_bar_ticks_are_round_metres_and_match_the_pixels():
    scale = viz.Scale(DMIN, DMAX)
    assert [viz.metres(t) for t in scale.ticks()] == ["2", "5", "10", "20", "50", "80"]
    assert [viz.metres(t) for t in viz.Scale(0.0, 20.0, "sqrt").ticks()] == ["0", "0.5", "2", "5",
                                                                              "10", "20"]
    fig, ax = plt.subplots()
    bar = viz.add_colorbar(ax, scale, viz.DEPTH_CMAP, "depth [m]")
    labels = [t.get_text() for t in bar.ax.get_yticklabels()]
    assert labels == ["2", "5", "10", "20", "50", "80"]
    # the bar's colour at the "10" tick is the colour a 10 m pixel gets
    at_tick = np.array(bar.mappable.to_rgba(bar.get_ticks()[2])[:3]) * 255
    pixel = viz.colorize(np.array([[10.0]]), scale, viz.DEPTH_CMAP)[0, 0]
    assert rgb_distance(at_tick, pixel) < 2
    plt.close(fig)


def test_colour_bar_image_has_the_panel_height_and_is_drawn():
    bar = viz.colorbar_image(viz.Scale(DMIN, DMAX), viz.DEPTH_CMAP, "depth [m]", 192)
    assert bar.shape[0] == 192 and bar.dtype == np.uint8 and 40 < bar.shape[1] < 192
    assert len(np.unique(bar.reshape(-1, 3), axis=0)) > 50   # a gradient and text, not blank


def test_error_panel_is_black_where_the_prediction_is_right_grey_without_truth():
    truth = np.full((8, 8), 10.0)
    pred = truth.copy()
    pred[:, 4:] += 5.0
    valid = np.ones_like(truth, bool)
    valid[0] = False
    scale = viz.error_scale([np.abs(pred - truth)[valid]])
    assert scale.hi == 5.0 and scale.kind == "sqrt"
    rgb = viz.colorize_error(pred - truth, valid, scale)
    assert rgb[1:, :4].max() <= 5                        # zero error: black
    assert rgb[1:, 4:].astype(int).sum(-1).min() > 400   # the largest error: bright
    assert (rgb[0] == viz.NO_TRUTH).all()


def test_validation_panels_carry_colour_bars_and_an_error_panel():
    truth = np.linspace(2, 60, 64 * 64).reshape(64, 64)
    valid = np.ones_like(truth, bool)
    panels = viz.validation_panels(np.random.default_rng(0).normal(size=(5, 64, 64)), truth,
                                   valid, truth, viz.Scale(2.0, 80.0))
    assert set(panels) == {"events", "depth_true", "depth_pred", "residual", "error"}
    for name in ("depth_true", "depth_pred", "error"):
        img = panels[name]
        assert img.dtype == np.uint8 and img.shape[0] == 192 and img.shape[1] > 192  # panel + bar
    # prediction == truth: the error panel's image part is black
    assert panels["error"][:, :192].max() <= 5
    assert (panels["depth_true"] == panels["depth_pred"]).all()


def test_prediction_previews_share_one_size_and_scale():
    events = np.zeros((5, 64, 64))
    a = preview_image(events, np.full((64, 64), 3.0), np.zeros((64, 64)), (DMIN, DMAX))
    b = preview_image(events, np.full((64, 64), 40.0), np.full((64, 64), 2.0), (DMIN, DMAX))
    assert a.shape == b.shape and a.shape[0] == 192
    assert rgb_distance(a[100, 200], b[100, 200]) > 100   # 3 m and 40 m: far apart in colour


def previews(n: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    depth = rng.uniform(2, 60, size=(n, 16, 16)).astype(np.float32)
    mask = np.ones_like(depth, bool)
    mask[:, :2] = False
    member = depth * rng.uniform(0.7, 1.3, size=depth.shape).astype(np.float32)
    return {"keys": np.array([f"s{i}" for i in range(n)]), "events": rng.normal(size=depth.shape),
            "depth": depth, "mask": mask, "regression": depth.copy(), "mean": depth * 1.1,
            "median": depth * 0.9, "member": member, "std": np.abs(member - depth)}


def test_samples_png_draws_an_error_panel_per_estimate_black_where_it_is_exact(tmp_path):
    prev = previews()
    fig, axes = plt.subplots(2, 6, squeeze=False)
    preds = [("regression", "regression"), ("mean", "ensemble mean"),
             ("median", "member median"), ("member", "one member")]
    scale = viz.Scale(2.0, 60.0)
    sample_rows(prev, 0, preds, scale, list(axes[0]), list(axes[1]))
    titles = [ax.get_title() for ax in axes[1]]
    assert titles == ["", "ensemble std", "|regression - truth|", "|ensemble mean - truth|",
                      "|member median - truth|", "|one member - truth|"]
    exact = axes[1][2].images[0].get_array()[2:]          # regression == truth on valid rows
    assert exact.max() <= 5
    off = axes[1][5].images[0].get_array()[2:]
    assert off.astype(int).sum(-1).mean() > 100
    labels = [t.get_text() for t in fig.axes[-1].get_yticklabels()]
    assert labels[0] == "0" and all(lab.replace(".", "").isdigit() for lab in labels)
    plt.close(fig)
    samples_png(tmp_path / "two.png", prev)
    samples_png(tmp_path / "one.png", {k: v[:1] for k, v in prev.items()})
    two, one = plt.imread(tmp_path / "two.png"), plt.imread(tmp_path / "one.png")
    assert two.shape[1] == one.shape[1] and two.shape[0] > 1.8 * one.shape[0]
