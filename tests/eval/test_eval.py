"""End-to-end evaluation: the same metrics for any number of processes or array tasks, resume after
a kill, predictions that reproduce the metrics, regression-only runs and clear errors."""
from __future__ import annotations

import shutil
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from resdepth.eval import merge, parse_args
from resdepth.eval.merge import IncompleteEvaluation
from tests.eval.runner import (TEST_SHARD_SIZES, assert_metrics_close, eval_args, make_exports,
                               metrics, run_eval)

NUM_SAMPLES = sum(TEST_SHARD_SIZES)
METRIC_KEYS = {"abs_rel", "sq_rel", "rmse", "rmse_log", "silog", "delta1", "delta2", "delta3", "mae",
               "mae_10m", "mae_20m", "mae_30m"}


@pytest.fixture(scope="module")
def reference(eval_root, exports, tmp_path_factory) -> Path:
    """One process, predictions saved: the run every other layout must reproduce."""
    out = tmp_path_factory.mktemp("ref")
    run_eval(eval_args(exports, eval_root / "test", out, "--save-predictions", "--save-members"))
    return out


def test_one_process_outputs(reference):
    m = metrics(reference)
    assert m["num_samples"] == NUM_SAMPLES
    assert m["num_valid_pixels"] == NUM_SAMPLES * 32 * 32 * 3 // 4
    assert set(m) >= {"baseline", "regression", "diffusion"}
    for entry in ("baseline", "regression", "diffusion"):
        assert METRIC_KEYS <= set(m[entry]), entry
    assert {"crps", "spread_skill"} <= set(m["diffusion"])
    assert m["diffusion"]["crps"] > 0 and m["diffusion"]["spread_skill"] > 0
    assert m["regression"] != m["diffusion"]
    assert {"crps", "spread_skill", "grad_energy"} <= set(m["noise_baseline"])
    assert m["settings"]["protocol"] == "pooled" and m["settings"]["noise_std"] == 0.1
    # one table per sequence: the pixels of the two sequences add up to the split's
    assert set(m["sequences"]) == {"day1", "night1"}
    seq_pixels = [m["sequences"][q]["regression"]["num_valid_pixels"] for q in ("day1", "night1")]
    assert sum(seq_pixels) == m["num_valid_pixels"] and min(seq_pixels) > 0
    assert set(m["sequences"]["day1"]) == set(m) & {"baseline", "regression", "noise_baseline",
                                                    "diffusion", "diffusion_median",
                                                    "diffusion_denoised", "diffusion_member"}
    report = (reference / "report.md").read_text()
    assert "| AbsRel |" in report and "regression + diffusion" in report
    assert "Protocol pooled" in report and "## Sequence night1 (protocol pooled)" in report
    assert (reference / "samples.png").stat().st_size > 1000
    assert len(list((reference / "parts").glob("*.preview.npz"))) == 1  # 3 previews, unit size 3
    base = np.load(reference / "baseline.npy")
    assert base.shape == (32, 32) and np.isfinite(base).all()


def test_baseline_is_the_training_mean_per_pixel(reference, eval_root):
    from resdepth.eval.baseline import accumulate, per_pixel_mean
    from resdepth.data.format import shard_paths

    s, c = accumulate(shard_paths(eval_root / "train"), (32, 32))
    expect = per_pixel_mean(s, c)
    assert np.allclose(np.load(reference / "baseline.npy"), expect)
    never = c == 0  # the sky rows: never valid in training -> global mean
    assert never.any() and np.allclose(expect[never], s.sum() / c.sum())


@pytest.mark.dist
@pytest.mark.parametrize("nproc", [2, 3])
def test_world_size_does_not_change_metrics(reference, eval_root, exports, tmp_path, nproc):
    out = tmp_path / "ev"
    extra = ["--num-workers", "1", "--batch", "3"] if nproc == 3 else []  # neither changes a number
    run_eval(eval_args(exports, eval_root / "test", out, *extra), nproc=nproc)
    m = metrics(out)
    assert m["num_samples"] == NUM_SAMPLES
    assert_metrics_close(m, metrics(reference))
    assert (out / "logs" / f"log-rank{nproc - 1}.txt").exists()


@pytest.mark.dist
def test_array_tasks_then_merge(reference, eval_root, exports, tmp_path):
    out = tmp_path / "ev"
    for t in range(3):
        proc = run_eval(eval_args(exports, eval_root / "test", out, "--num-tasks", "3",
                                  "--task-id", str(t)))
        assert (out / "metrics.json").exists() == (t == 2), proc.stderr[-2000:]
    assert_metrics_close(metrics(out), metrics(reference))
    (out / "metrics.json").unlink()
    assert merge(out)["num_samples"] == NUM_SAMPLES  # the merge job of a Slurm array
    assert_metrics_close(metrics(out), metrics(reference))


@pytest.mark.dist
def test_slurm_array_variables_pick_the_task(reference, eval_root, exports, tmp_path):
    from tests.eval.runner import child_env

    out = tmp_path / "ev"
    for task in (4, 5):  # --array=4-5: indices start at the array's minimum
        run_eval(eval_args(exports, eval_root / "test", out),
                 env=child_env(SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_MIN="4",
                               SLURM_ARRAY_TASK_COUNT="2", SLURM_ARRAY_JOB_ID="77"))
    assert_metrics_close(metrics(out), metrics(reference))


KILL_AFTER = """
import os, sys
import resdepth.eval.run as run
orig, done = run.evaluate_unit, []
def evaluate_unit(*a, **k):
    if len(done) == int(os.environ["KILL_AFTER_UNITS"]):
        os._exit(9)  # as abrupt as a SIGKILL or a node failure: no cleanup runs
    done.append(orig(*a, **k))
    return done[-1]
run.evaluate_unit = evaluate_unit
from resdepth.eval.__main__ import cli
cli(sys.argv[1:])
"""


@pytest.mark.dist
def test_killed_run_resumes_only_missing_units(reference, eval_root, exports, tmp_path):
    from tests.eval.runner import child_env

    out = tmp_path / "ev"
    args = eval_args(exports, eval_root / "test", out, "--save-predictions", "--save-members")
    proc = run_eval(args, prefix=["-c", KILL_AFTER], env=child_env(KILL_AFTER_UNITS="4"),
                    check=False)
    assert proc.returncode == 9
    first = {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("*.json")}
    assert len(first) == 4 and not (out / "metrics.json").exists()
    with pytest.raises(IncompleteEvaluation, match="8 of 12 units have no part"):
        merge(out)
    proc = run_eval(args)
    assert "8 units of 12 to evaluate (4 finished earlier)" in proc.stderr
    after = {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("*.json")}
    assert len(after) == 12 and all(after[k] == v for k, v in first.items())  # not redone
    assert metrics(out) == metrics(reference)  # bit-identical: same units, same order of sums
    assert not list((out / "predictions").glob(".*tmp*"))


def read_tar(path: Path) -> dict[str, dict]:
    import webdataset as wds

    from resdepth.data.format import npy_load

    stream = wds.tariterators.tar_file_expander(wds.tariterators.url_opener([{"url": str(path)}]))
    return {s["__key__"]: {k[:-4]: npy_load(v).copy() for k, v in s.items() if k.endswith(".npy")}
            for s in wds.tariterators.group_by_keys(stream)}


def test_metrics_recomputed_from_saved_predictions(reference, eval_root):
    from types import SimpleNamespace

    from resdepth.data.format import shard_paths
    from resdepth.data.norm import DepthNorm
    from resdepth.eval.metrics import add_sums, finalize
    from resdepth.eval.scoring import PREDICTORS, score_batch

    preds = {}
    for p in sorted((reference / "predictions").glob("pred-*.tar")):
        preds.update(read_tar(p))
    truth = {}
    for p in shard_paths(eval_root / "test"):
        truth.update(read_tar(Path(p)))
    assert sorted(preds) == sorted(truth) and len(preds) == NUM_SAMPLES
    base = torch.from_numpy(np.load(reference / "baseline.npy"))[None]
    ctx = SimpleNamespace(cfg=SimpleNamespace(protocol="pooled"), baseline=base,
                          depth_range=DepthNorm().valid_range_m())
    sums: dict[str, dict] = {}
    for key in sorted(preds):
        pr, tr = preds[key], truth[key]
        assert pr["regression"].shape == pr["mean"].shape == pr["std"].shape == (1, 32, 32)
        assert pr["regression"].dtype == np.float32 and pr["members"].shape == (2, 1, 32, 32)
        # the mean is taken in normalised space (then clipped to the depth range): between the
        # members in metres; the median of two members is the lower one
        lo, hi = pr["members"].min(0), pr["members"].max(0)
        assert (pr["mean"] >= lo * (1 - 1e-5)).all() and (pr["mean"] <= hi * (1 + 1e-5)).all()
        assert np.array_equal(pr["median"], lo)
        assert np.allclose(pr["std"], pr["members"].std(0, ddof=1), rtol=1e-4, atol=1e-6)
        depth = torch.from_numpy(tr["depth"])[None]
        mask = torch.from_numpy(tr["mask"])[None] > 0
        pred = {k: torch.from_numpy(v)[None] for k, v in pr.items()}
        for k, v in score_batch(ctx, pred, depth, mask).items():
            sums[k] = add_sums(sums[k], v) if k in sums else v
    m = metrics(reference)
    recomputed = {"num_samples": len(preds), "num_valid_pixels": m["num_valid_pixels"],
                  **{k: finalize(sums[k]) for k in PREDICTORS if k in sums}}
    assert set(recomputed) - {"num_samples", "num_valid_pixels"} == \
        {"baseline", "regression", "diffusion", "diffusion_median", "diffusion_denoised",
         "diffusion_member"}
    recomputed["noise_baseline"] = m["noise_baseline"]  # its members are not saved
    assert_metrics_close(recomputed, m, rel=1e-9)
    # the CRPS of a point forecast is its MAE
    assert m["regression"]["crps"] == pytest.approx(m["regression"]["mae"], rel=1e-9)
    assert m["settings"]["protocol"] == "pooled"


def test_regression_only(eval_root, exports, tmp_path):
    from resdepth.eval import main

    out = tmp_path / "ev"
    cfg = parse_args(eval_args(exports, eval_root / "test", out, "--max-samples", "7",
                               diffusion=False))
    assert main(cfg) == 0
    m = metrics(out)
    assert m["num_samples"] == 7 and "diffusion" not in m and "noise_baseline" not in m
    assert m["regression"]["crps"] == pytest.approx(m["regression"]["mae"])  # a point forecast
    assert "regression + diffusion" not in (out / "report.md").read_text()


def test_mismatched_exports_are_refused(eval_root, exports, tmp_path):
    from resdepth.eval import main

    other = make_exports(tmp_path / "other", norm={"kind": "linear", "max_depth": 80.0,
                                                   "min_depth": 1.0, "alpha": 3.7})
    cfg = parse_args(["--regression", str(exports["regression"]), "--diffusion",
                      str(other["diffusion"]), "--data", str(eval_root / "test"),
                      "--out", str(tmp_path / "ev"), "--device", "cpu"])
    with pytest.raises(ValueError, match="depth normalisation differs"):
        main(cfg)
    cfg.diffusion, cfg.regression = str(exports["regression"]), str(exports["diffusion"])
    with pytest.raises(ValueError, match="needs a regression one"):
        main(cfg)


def test_out_dir_of_another_evaluation_is_refused(reference, eval_root, exports, tmp_path):
    from resdepth.eval import main

    out = tmp_path / "ev"
    shutil.copytree(reference, out)
    cfg = parse_args(eval_args(exports, eval_root / "test", out, "--seed", "1"))
    with pytest.raises(ValueError, match="holds parts of another evaluation"):
        main(cfg)


def test_cli_errors_are_short(tmp_path):
    proc = run_eval(["--regression", str(tmp_path / "nope"), "--data", str(tmp_path),
                     "--out", str(tmp_path / "o")], check=False)
    assert proc.returncode == 1 and "no exported weights" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_eval(["--sampler", "fast"], check=False)
    assert proc.returncode == 2


def test_patch_based_sampling(eval_root, tmp_path):
    """A net trained on patches runs on a 16x16 grid with overlap and boundary, and on whole
    frames; both give full-size predictions and finite metrics."""
    from resdepth.eval import main

    ex = make_exports(tmp_path / "patch_exports", patching=True)
    results = {}
    for name, extra in (("patched", ["--patch", "16", "--overlap", "4", "--boundary", "2"]),
                        ("whole", [])):
        out = tmp_path / name
        cfg = parse_args(eval_args(ex, eval_root / "test", out, "--max-samples", "4",
                                   "--baseline", "none", *extra))
        assert main(cfg) == 0
        results[name] = metrics(out)
        assert "baseline" not in results[name]
        assert all(math.isfinite(v) for v in results[name]["diffusion"].values())
    assert results["patched"]["diffusion"] != results["whole"]["diffusion"]
    assert results["patched"]["regression"] == results["whole"]["regression"]


def test_key_value_settings(exports, eval_root, tmp_path):
    cfg = parse_args([f"regression={exports['regression']}", f"data={eval_root / 'test'}",
                      f"out={tmp_path}", "ensemble=3", "--ensemble", "5", "sampler=deterministic"])
    assert (cfg.ensemble, cfg.sampler) == (5, "deterministic")


def test_shard_urls_without_index(reference, eval_root, exports, tmp_path):
    """A brace pattern of local shards: counted from tar headers, same work list and metrics."""
    from resdepth.eval import main

    urls = str(eval_root / "test" / "shard-{000000..000006}.tar")
    out = tmp_path / "ev"
    cfg = parse_args(eval_args(exports, urls, out, "--baseline", str(eval_root / "train")))
    assert main(cfg) == 0
    assert_metrics_close(metrics(out), metrics(reference))


def test_scoring_stays_where_the_predictions_are(eval_root, exports, tmp_path, monkeypatch):
    """Without saved predictions or previews, a unit copies nothing to the host per batch: its
    metric sums come back in one copy at its end (on a GPU: no sync per batch)."""
    from resdepth.eval import main
    from resdepth.eval import run as eval_run

    copies, inside = [], []
    cpu = torch.Tensor.cpu

    def counting_cpu(self, *a, **kw):
        if inside:
            copies.append(tuple(self.shape))
        return cpu(self, *a, **kw)

    unit_body = eval_run.evaluate_unit

    def evaluate_unit(*a, **kw):
        inside.append(1)
        try:
            return unit_body(*a, **kw)
        finally:
            inside.pop()

    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    monkeypatch.setattr(eval_run, "evaluate_unit", evaluate_unit)
    out = tmp_path / "ev"
    cfg = parse_args(eval_args(exports, eval_root / "test", out, "--max-samples", "9", "--preview", "0",
                               "--no-save-predictions"))
    assert main(cfg) == 0
    units = len(list((out / "parts").glob("*.json")))
    # unit size 3 over shards of 5, 3, 8: units of 3, 2, 3 and 1 samples, batches of 2
    assert units == 4 and metrics(out)["num_samples"] == 9
    assert len(copies) == units, copies  # the stacked sums, once per unit
    ref = tmp_path / "ref"
    assert main(parse_args(eval_args(exports, eval_root / "test", ref, "--max-samples", "9"))) == 0
    assert_metrics_close(metrics(out), metrics(ref), rel=0)  # saving and previews change no figure
