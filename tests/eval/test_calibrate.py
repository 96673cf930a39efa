"""Spread calibration: ``--calibrate VAL`` fits ``spread_scale`` by minimum CRPS on a validation
split, then evaluates the test split with it; the fitted scale scores exactly what an evaluation
given that ``--spread-scale`` scores, for any number of processes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resdepth.diffusion.sampler import ensemble_mean, widen
from resdepth.eval.scoring import SPREAD_GRID
from tests.eval.runner import assert_metrics_close, eval_args, metrics, run_eval, write_split


def test_widen_keeps_the_mean_and_scales_every_deviation():
    members = torch.rand(3, 5, 1, 4, 4, dtype=torch.float64)
    wide = widen(members, 1.7)
    mean = ensemble_mean(members)
    torch.testing.assert_close(ensemble_mean(wide), mean)
    torch.testing.assert_close(wide - mean[:, None], 1.7 * (members - mean[:, None]))
    torch.testing.assert_close(wide.std(dim=1), 1.7 * members.std(dim=1))
    assert widen(members, 1.0) is members


@pytest.fixture(scope="module")
def val_split(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cal")
    write_split(root / "val", [4, 3], seed=3)
    return root / "val"


@pytest.fixture(scope="module")
def calibrated(eval_root, exports, val_split, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("calibrated")
    run_eval(eval_args(exports, eval_root / "test", out, "--calibrate", str(val_split)))
    return out


def test_the_scale_of_least_crps_on_the_validation_split_is_used(calibrated, val_split):
    fit = metrics(calibrated / "calibration")["spread_calibration"]
    assert fit["scales"] == list(SPREAD_GRID)
    crps = dict(zip(fit["scales"], fit["crps"]))
    assert fit["best"] == min(crps, key=crps.get) and fit["crps_at_best"] == crps[fit["best"]]
    assert fit["crps_at_1"] == crps[1.0] and len(set(fit["crps"])) == len(fit["crps"])
    settings = metrics(calibrated)["settings"]
    assert settings["spread_scale"] == fit["best"]
    assert settings["spread_scale_fitted_on"] == str(val_split)
    assert "## Spread calibration" in (calibrated / "calibration" / "report.md").read_text()


def test_the_fit_scores_what_an_evaluation_with_that_scale_scores(calibrated, eval_root, exports,
                                                                   val_split, tmp_path):
    best = metrics(calibrated / "calibration")["spread_calibration"]
    on_val = tmp_path / "val"
    run_eval(eval_args(exports, val_split, on_val, "--spread-scale", str(best["best"]),
                       "--baseline", "none"))
    assert metrics(on_val)["diffusion"]["crps"] == best["crps_at_best"]
    # the test split: the calibrated evaluation is the one given that scale, on two processes too
    given = tmp_path / "given"
    run_eval(eval_args(exports, eval_root / "test", given, "--spread-scale", str(best["best"])),
             nproc=2)
    assert_metrics_close(metrics(calibrated), metrics(given), rel=1e-9)
    as_sampled = metrics(calibrated / "calibration")["spread_calibration"]["crps_at_1"]
    assert best["crps_at_best"] < as_sampled


def test_calibration_resumes_from_its_parts(calibrated, eval_root, exports, val_split):
    parts = sorted((calibrated / "calibration" / "parts").iterdir())
    stamps = [p.stat().st_mtime_ns for p in parts]
    proc = run_eval(eval_args(exports, eval_root / "test", calibrated, "--calibrate", str(val_split)))
    assert "0 units of" in proc.stderr + proc.stdout
    assert [p.stat().st_mtime_ns for p in parts] == stamps


def test_array_tasks_each_fit_the_same_scale(calibrated, eval_root, exports, val_split, tmp_path):
    out = tmp_path / "ev"
    for t in range(2):  # the first task fits on the whole val split, the second finds its parts
        proc = run_eval(eval_args(exports, eval_root / "test", out, "--calibrate", str(val_split),
                                  "--num-tasks", "2", "--task-id", str(t)))
        assert (out / "metrics.json").exists() == (t == 1), proc.stderr[-2000:]
        assert f"spread_scale {metrics(calibrated)['settings']['spread_scale']:g} fitted" in proc.stderr
    assert_metrics_close(metrics(out), metrics(calibrated), rel=1e-9)
    assert metrics(out)["settings"] == metrics(calibrated)["settings"]


def test_bad_calibration_splits_are_refused_in_one_line(eval_root, exports, tmp_path):
    cases = [(["--calibrate", "auto"], "calibrate=auto: no val/ split beside"),
             (["--calibrate", str(eval_root / "test")], "that is the evaluated split itself"),
             (["--calibrate", str(tmp_path / "nope")], "no such split directory")]
    for extra, message in cases:
        proc = run_eval(eval_args(exports, eval_root / "test", tmp_path / "o", *extra), check=False)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    proc = run_eval(eval_args(exports, eval_root / "test", tmp_path / "o", "--calibrate", "auto",
                              diffusion=False), check=False)
    assert proc.returncode == 1 and "pass --diffusion too" in proc.stderr
    proc = run_eval(eval_args(exports, eval_root / "test", tmp_path / "o", "--spread-scale", "0"),
                    check=False)
    assert proc.returncode == 1 and "spread_scale: must be > 0" in proc.stderr
