"""Nets trained with temporal context on raw recordings and on packed splits: prediction makes each
window's context as packing does (the numbers equal evaluation of the same windows packed with
context), and a net refuses input without its context, or with another, in one line."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.eval.runner import make_exports, run_command, run_module
from tests.predict.test_predict import (BINS, DUR_MS, FAST, H, TINY3, W, _py, frames,
                                        predict_args, random_events, saved_predictions,
                                        window_ends, write_mvsec_depth, write_mvsec_events)

CONTEXT = {"ms": 2 * DUR_MS, "bins": 2}


@pytest.fixture(scope="module")
def context_exports(tmp_path_factory):
    return make_exports(tmp_path_factory.mktemp("ctx_exports"), size=(H, W), model=TINY3, bins=BINS,
                        context=CONTEXT)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctx_mvsec")
    return write_mvsec_events(root / "events_only", "outdoor_day1", *random_events(7000, seed=4))


@pytest.fixture(scope="module")
def packed(recording, tmp_path_factory):
    """The recording packed with depth at the window ends, with and without context."""
    root = tmp_path_factory.mktemp("ctx_packed")
    src = root / "mvsec"
    shutil.copytree(recording.parent, src)
    write_mvsec_depth(src, "outdoor_day1", window_ends())
    out = {}
    for name, extra in (("context", ["--context-ms", str(CONTEXT["ms"]), "--context-bins",
                                     str(CONTEXT["bins"])]), ("plain", [])):
        out[name] = root / name / "test"
        run_command([*_py(), "-m", "resdepth.data.cli", "pack", "--format", "mvsec", "--src",
                     str(src), "--sequence", "outdoor_day1", "--out", str(out[name]),
                     "--window-ms", str(DUR_MS), "--bins", str(BINS), *extra])
    return out


def test_prediction_with_context_equals_evaluation_of_the_windows_packed_with_it(
        context_exports, recording, packed, tmp_path):
    out = tmp_path / "pred"
    run_module("resdepth.predict", predict_args(context_exports, recording, out, "--window-ms",
                                                str(DUR_MS)))
    plan = json.loads((out / "plan.json").read_text())
    assert plan["context"] == {"context_ms": CONTEXT["ms"], "context_bins": 2}
    rows = frames(out)
    # the first windows' context reaches back before the recording: said per window
    assert [r["context_missing_ms"] for r in rows[:3]] == ["125.0", "62.5", ""]
    ev_out = tmp_path / "eval"
    run_module("resdepth.eval", ["--regression", str(context_exports["regression"]), "--diffusion",
                                 str(context_exports["diffusion"]), "--data", str(packed["context"]),
                                 "--out", str(ev_out), "--baseline", "none", "--save-predictions",
                                 *FAST])
    preds = saved_predictions(ev_out)
    assert sorted(preds) == [r["key"] for r in rows]
    for r in rows:
        e = preds[r["key"]]
        np.testing.assert_array_equal(np.load(out / r["depth"]), e["mean.npy"][0])
        np.testing.assert_array_equal(np.load(out / r["std"]), e["std.npy"][0])
    # the context is the nets' input: other context, other depth
    no_ctx = tmp_path / "nets_without"
    plain = make_exports(no_ctx, size=(H, W), model=TINY3, bins=BINS)
    out2 = tmp_path / "pred_plain"
    run_module("resdepth.predict", predict_args(plain, recording, out2, "--window-ms", str(DUR_MS),
                                                diffusion=False))
    assert frames(out2)[0]["context_missing_ms"] == ""


def test_nets_refuse_a_split_without_their_context_and_the_reverse(context_exports, packed,
                                                                  tmp_path):
    proc = run_module("resdepth.eval", ["--regression", str(context_exports["regression"]),
                                        "--data", str(packed["plain"]), "--out",
                                        str(tmp_path / "a"), *FAST], check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in text
    assert (f"the nets: trained with context 125 ms in 2 bins; {packed['plain']}: no temporal "
            "context; pack the split with --context-ms/--context-bins") in text
    plain = make_exports(tmp_path / "plain_nets", size=(H, W), model=TINY3, bins=BINS)
    proc = run_module("resdepth.eval", ["--regression", str(plain["regression"]), "--data",
                                        str(packed["context"]), "--out", str(tmp_path / "b"),
                                        *FAST], check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in text
    assert "the nets: trained with no temporal context" in text
    assert "context 125 ms in 2 bins; use a net trained with context" in text
    # a regression and a diffusion export of different contexts are not evaluated together
    proc = run_module("resdepth.eval", ["--regression", str(plain["regression"]), "--diffusion",
                                        str(context_exports["diffusion"]), "--data",
                                        str(packed["plain"]), "--out", str(tmp_path / "c"), *FAST],
                      check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "input data differs (bins" not in text
    assert "input data differs (context)" in text


@pytest.mark.dist
def test_evaluation_with_context_does_not_depend_on_the_world_size(context_exports, packed,
                                                                   tmp_path):
    from tests.eval.runner import assert_metrics_close

    out = {}
    for nproc in (1, 2):
        out[nproc] = tmp_path / f"ev{nproc}"
        run_module("resdepth.eval", ["--regression", str(context_exports["regression"]),
                                     "--diffusion", str(context_exports["diffusion"]), "--data",
                                     str(packed["context"]), "--out", str(out[nproc]),
                                     "--baseline", "none", *FAST], nproc=nproc)
    m1, m2 = (json.loads((out[n] / "metrics.json").read_text()) for n in (1, 2))
    assert m1["num_samples"] == m2["num_samples"] == 7
    assert_metrics_close(m2, m1)
    # every window of this recording is busy: the activity groups say so and add up
    assert set(m1["groups"]) == {"active"}
    assert m1["groups"]["active"]["regression"]["num_valid_pixels"] == m1["num_valid_pixels"]
    assert m1["groups"]["active"]["num_samples"] == m2["groups"]["active"]["num_samples"] == 7
    assert "0.25 events per valid depth pixel" in (out[1] / "report.md").read_text()
