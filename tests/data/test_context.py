"""Temporal context (``context.npy``): packed from MVSEC and DSEC as they ship and rendered by
``synth``, each checked against the voxel grid of the raw events before the window computed here
from the definition; the index records it and ``verify`` holds every sample to it."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from resdepth.data import format as fmt
from resdepth.data.synthetic import SynthParams, synth_events, synth_sample
from tests.data.sources.fakes import float16_error_ok, voxel_reference, write_dsec, write_mvsec
from tests.data.sources.test_mvsec import packed, rectified, run

CTX_MS, CTX_BINS = 80.0, 3


def context_reference(x, y, t, p, t_window_start, h, w, bins=CTX_BINS, ms=CTX_MS):
    """The context's grid from the definition: events in ``[t0 - ms, t0)``, bilinear in time."""
    c0 = t_window_start - ms * 1e-3
    sel = (t >= c0) & (t < t_window_start)
    return voxel_reference(x[sel], y[sel], t[sel], p[sel], bins, h, w, c0, t_window_start), sel


def test_mvsec_context_is_the_voxel_grid_of_the_events_before_the_window(capsys, tmp_path):
    root = tmp_path / "mvsec"
    gt = write_mvsec(root, "outdoor_day1", frames=4, events_per_frame=20_000)
    out = tmp_path / "test"
    code, text = run(capsys, "pack", "--format", "mvsec", "--src", root, "--sequence",
                     "outdoor_day1", "--out", out, "--bins", 5, "--context-ms", CTX_MS,
                     "--context-bins", CTX_BINS)
    assert code == 0, text
    assert run(capsys, "verify", out)[0] == 0
    index, samples = packed(out)
    assert index["context"] == {"ms": CTX_MS, "bins": CTX_BINS}
    assert index["shapes"]["context.npy"] == [CTX_BINS, 260, 346]
    assert index["dtypes"]["context.npy"] == "float16"
    assert index["params"]["context_ms"] == CTX_MS
    ev, ts = gt["events"], gt["ts"]
    first = float(ev[:, 2].min())
    for i, s in enumerate(samples, start=1):
        assert s["context"].dtype == np.float16 and s["context"].shape == (CTX_BINS, 260, 346)
        _, sel = context_reference(ev[:, 0], ev[:, 1], ev[:, 2], ev[:, 3], ts[i - 1], 260, 346)
        xr, yr = rectified(gt, sel)
        c0 = ts[i - 1] - CTX_MS * 1e-3
        ref = voxel_reference(xr, yr, ev[sel, 2], ev[sel, 3], CTX_BINS, 260, 346, c0, ts[i - 1])
        assert float16_error_ok(s["context"], ref) <= 1.0
        meta = s["meta"]["context"]
        assert meta["num_events"] == int(sel.sum()) > 10_000
        assert meta["t_start"] == c0
        # the first window's context reaches back before the recording's first event: said so
        if c0 < first:
            assert meta["missing_ms"] == pytest.approx((first - c0) * 1e3, abs=1e-6)
        else:
            assert "missing_ms" not in meta
    assert "missing_ms" in samples[0]["meta"]["context"]
    assert "missing_ms" not in samples[-1]["meta"]["context"]


def test_dsec_context_is_the_voxel_grid_of_the_events_before_the_window(capsys, tmp_path):
    root = tmp_path / "dsec" / "train"
    gt = write_dsec(root, "zurich_city_00_a", frames=3, events_per_frame=20_000)
    out = tmp_path / "train"
    code, text = run(capsys, "pack", "--format", "dsec", "--src", root, "--sequence",
                     "zurich_city_00_a", "--out", out, "--bins", 5, "--context-ms", 50,
                     "--context-bins", 2)
    assert code == 0, text
    assert run(capsys, "verify", out)[0] == 0
    index, samples = packed(out)
    assert index["context"] == {"ms": 50.0, "bins": 2} and len(samples) == 2
    t_abs = gt["t_rel"].astype(np.int64) + gt["t_offset"]
    ts = gt["ts_us"]
    for i, s in enumerate(samples, start=1):
        t0 = float(ts[i - 1])  # microseconds: the context is [t0 - 50 ms, t0)
        sel = (t_abs >= t0 - 50_000) & (t_abs < t0)
        rx = gt["rectify_map"][gt["y"][sel], gt["x"][sel], 0].astype(np.float64)
        ry = gt["rectify_map"][gt["y"][sel], gt["x"][sel], 1].astype(np.float64)
        ref = voxel_reference(rx, ry, t_abs[sel].astype(np.float64), gt["p"][sel].astype(np.float64),
                              2, 480, 640, t0 - 50_000, t0)
        assert s["meta"]["context"]["num_events"] == int(sel.sum()) > 5_000
        assert float16_error_ok(s["context"], ref) <= 1.0


CTX = SynthParams(height=24, width=32, bins=3, context_ms=150.0, context_bins=3)


@pytest.mark.parametrize("params", [CTX, SynthParams(height=24, width=32, bins=3, context_ms=150.0,
                                                     context_bins=3, sequence_length=6)],
                         ids=["scenes", "trajectories"])
def test_synth_context_is_the_voxel_grid_of_the_simulated_events_before_the_window(params):
    for index in range(4):
        s = synth_sample(3, "train", index, params)
        raw = synth_events(3, "train", index, params)
        x, y = raw["pix"] % params.width, raw["pix"] // params.width
        t0, t1 = raw["t_start"], raw["t_end"]
        ref, sel = context_reference(x.astype(float), y.astype(float), raw["t"], raw["pol"], t0,
                                     params.height, params.width, 3, 150.0)
        assert np.abs(s["context"] - ref).max() < 1e-4
        now = raw["t"] >= t0
        window = voxel_reference(x[now].astype(float), y[now].astype(float), raw["t"][now],
                                 raw["pol"][now], 3, params.height, params.width, t0, t1)
        assert np.abs(s["events"] - window).max() < 1e-4
        assert s["meta"]["num_events"] == int(now.sum())
        assert s["meta"]["context"]["num_events"] == int(sel.sum()) > 0
        assert t1 - t0 == pytest.approx(params.window_s)


def test_synth_trajectories_are_sequences_of_consecutive_windows_with_stops():
    p = SynthParams(height=24, width=32, bins=3, sequence_length=8)
    metas = [synth_sample(0, "test", i, p)["meta"] for i in range(32)]
    assert [m["sequence"] for m in metas[:9]] == ["test-seed0-seq00000"] * 8 + ["test-seed0-seq00001"]
    assert [m["frame"] for m in metas[:8]] == list(range(8))
    for a, b in zip(metas[:7], metas[1:8]):  # consecutive windows: each starts where the last ended
        assert b["t_start"] == pytest.approx(a["t_end"])
    speeds = [m["speed"] for m in metas]
    assert min(speeds) == 0.0 and max(speeds) > 2.0  # stops and motion
    still = [m["num_events"] for m in metas if m["speed"] == 0.0]
    moving = [m["num_events"] for m in metas if m["speed"] > 2.0]
    # a camera that has stood still for a whole window sees shot noise only (1 event per pixel
    # and second: 38 expected on 24 x 32 pixels in 50 ms)
    assert min(still) < 80 < 0.2 * np.median(moving)


def test_synth_without_the_new_options_writes_the_samples_it_always_wrote():
    s = synth_sample(0, "train", 7)
    digest = hashlib.sha256(s["events"].tobytes() + s["depth"].tobytes()).hexdigest()
    assert digest == SAMPLE_7_SHA256
    assert "context" not in s and "frame" not in s["meta"]
    assert set(SynthParams().to_dict()) == PARAMS_BEFORE


# from the code before temporal context existed (resdepth-shards synth --seed 0, sample 7)
SAMPLE_7_SHA256 = "c1e9389a84be61ff31b499e669edc6f7c5e86a0a615ad7745c4cd9ba7648ec78"
PARAMS_BEFORE = {"height", "width", "bins", "focal", "window_s", "substeps", "speed", "lateral",
                 "yaw_rate", "contrast", "contrast_spread", "refractory_s", "noise_rate_hz",
                 "max_range", "min_objects", "max_objects"}


@pytest.fixture
def context_split(tmp_path, capsys):
    out = tmp_path / "shards"
    code, text = run(capsys, "synth", "--out", out, "--train", 0, "--val", 0, "--test", 6,
                     "--height", 16, "--width", 16, "--bins", 2, "--per-shard", 3,
                     "--context-ms", 100, "--context-bins", 2, "--sequence-length", 3)
    assert code == 0, text
    return out / "test"


def test_verify_holds_every_sample_to_the_context_in_the_index(context_split, capsys, tmp_path):
    assert run(capsys, "verify", context_split)[0] == 0
    # a shard whose second sample lost its context.npy (rewritten, so the sha256 is fresh)
    import webdataset as wds

    shard = context_split / "shard-000001.tar"
    raws = list(fmt.iter_shard(str(shard)))
    del raws[1]["context.npy"]
    with wds.TarWriter(str(shard), encoder=False) as w:
        for r in raws:
            w.write({k: v for k, v in r.items() if k != "__url__"})
    index = json.loads((context_split / "index.json").read_text())
    entry = index["shards"][1]
    entry["sha256"], entry["bytes"] = fmt.sha256_file(shard), shard.stat().st_size
    (context_split / "index.json").write_text(json.dumps(index))
    code, text = run(capsys, "verify", context_split)
    assert code == 1
    assert "shard-000001.tar: sample 'test_0000004': context.npy missing" in text
    # an index whose context disagrees with its shapes is refused when read
    index["context"]["bins"] = 5
    (context_split / "index.json").write_text(json.dumps(index))
    with pytest.raises(fmt.DataError, match=r"shapes\['context.npy'\] is \[2, 16, 16\], the "
                                            r"context says \[5, 16, 16\]"):
        fmt.read_index(context_split)


def test_context_options_are_checked_in_one_line(capsys, tmp_path):
    code, text = run(capsys, "synth", "--out", tmp_path / "a", "--context-ms", 100)
    assert code != 0 and "--context-ms and --context-bins go together" in text
    code, text = run(capsys, "synth", "--out", tmp_path / "b", "--context-ms", -5,
                     "--context-bins", 2)
    assert code != 0 and "--context-ms must be > 0" in text
    (tmp_path / "npz").mkdir()
    code, text = run(capsys, "pack", "--src", tmp_path / "npz", "--out", tmp_path / "c",
                     "--context-ms", 100, "--context-bins", 2)
    assert code != 0 and "--context-ms needs a recording's events" in text
    assert "Traceback" not in text


def test_reshard_keeps_the_context_or_drops_it_when_asked(context_split, capsys, tmp_path):
    _, before = packed(context_split)
    code, text = run(capsys, "reshard", context_split, tmp_path / "kept", "--per-shard", 2)
    assert code == 0, text
    index, kept = packed(tmp_path / "kept")
    assert index["context"] == {"ms": 100.0, "bins": 2} and len(kept) == len(before)
    for a, b in zip(before, kept):
        np.testing.assert_array_equal(a["context"], b["context"])
    code, text = run(capsys, "reshard", context_split, tmp_path / "dropped", "--per-shard", 6,
                     "--drop-context")
    assert code == 0, text
    assert run(capsys, "verify", tmp_path / "dropped")[0] == 0
    index, dropped = packed(tmp_path / "dropped")
    assert "context" not in index and "context.npy" not in index["shapes"]
    assert index["params"]["dropped_context"] is True
    for a, b in zip(before, dropped):
        assert "context" not in b
        np.testing.assert_array_equal(a["events"], b["events"])
