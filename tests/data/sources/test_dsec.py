"""DSEC as it ships (Blosc events.h5, rectify_map.h5, 16-bit disparity PNGs, cam_to_cam.yaml),
packed with the real CLI and checked against an independent float64 computation."""
import h5py
import numpy as np
import pytest

from resdepth.data.sources import open_events
from tests.data.sources.fakes import float16_error_ok, voxel_reference, write_dsec
from tests.data.sources.test_mvsec import packed, run

H, W = 480, 640
SEQ = "zurich_city_00_a"


@pytest.fixture(scope="module")
def dsec(tmp_path_factory):
    root = tmp_path_factory.mktemp("dsec") / "train"
    return root, write_dsec(root, SEQ, frames=4, events_per_frame=20_000)


def test_pack_dsec_matches_float64_reference(capsys, tmp_path, dsec):
    root, gt = dsec
    with h5py.File(root / SEQ / "events/left/events.h5") as f:
        assert "32001" in f["events/t"]._filters  # Blosc, readable only through hdf5plugin
    out = tmp_path / "train"
    code, text = run(capsys, "pack", "--format", "dsec", "--src", root, "--sequence", SEQ,
                     "--out", out, "--bins", 5)
    assert code == 0, text
    assert run(capsys, "verify", out)[0] == 0
    index, samples = packed(out)
    assert index["shapes"]["events.npy"] == [5, H, W] and len(samples) == 3
    assert index["sequences"][0]["name"] == SEQ
    assert index["sequences"][0]["t_offset_us"] == gt["t_offset"]
    t_abs = gt["t_rel"].astype(np.int64) + gt["t_offset"]
    ts, q = gt["ts_us"], gt["q"]
    worst = 0.0
    for i, s in enumerate(samples, start=1):
        m = s["meta"]
        assert m["timestamp_us"] == ts[i] and m["file"] == f"{2 * i:06d}.png"
        assert m["t_end"] * 1e6 == pytest.approx(ts[i] - gt["t_offset"], abs=1e-3)
        assert m["t_start"] * 1e6 == pytest.approx(ts[i - 1] - gt["t_offset"], abs=1e-3)
        sel = (t_abs >= ts[i - 1]) & (t_abs < ts[i])
        assert m["num_events"] == sel.sum() and 15_000 < sel.sum() < 25_000
        rx = gt["rectify_map"][gt["y"][sel], gt["x"][sel], 0].astype(np.float64)
        ry = gt["rectify_map"][gt["y"][sel], gt["x"][sel], 1].astype(np.float64)
        # times in integer microseconds, exact
        ref = voxel_reference(rx, ry, t_abs[sel].astype(np.float64), gt["p"][sel].astype(np.float64),
                              5, H, W, float(ts[i - 1]), float(ts[i]))
        worst = max(worst, float16_error_ok(s["events"], ref))
        raw = gt["disp_raw"][i].astype(np.float64)
        valid = raw > 0
        with np.errstate(divide="ignore"):
            depth = np.where(valid, q[2, 3] / (q[3, 2] * raw / 256.0 + q[3, 3]), 0.0)
        np.testing.assert_array_equal(s["mask"][0], valid.astype(np.uint8))
        np.testing.assert_allclose(s["depth"][0], depth, rtol=1e-6)
        assert s["depth"][0, 0, 0] == pytest.approx(569.7632987676102 / 1.6705925010574574 / 200.0)
    assert worst <= 1.0, f"voxel error {worst:.3f} float16 steps"


def test_dsec_events_only_stream(dsec):
    root, gt = dsec
    stream = open_events("dsec", str(root), SEQ)
    assert (stream.height, stream.width) == (H, W) and len(stream) == len(gt["t_rel"])
    t0, t1 = 0.1234, 0.2345
    got = stream.events_between(t0, t1)
    sel = (gt["t_rel"] >= 123_400) & (gt["t_rel"] < 234_500)
    np.testing.assert_array_equal(got.x, gt["rectify_map"][gt["y"][sel], gt["x"][sel], 0])
    np.testing.assert_array_equal(got.y, gt["rectify_map"][gt["y"][sel], gt["x"][sel], 1])
    np.testing.assert_array_equal(np.round(got.t * 1e6), gt["t_rel"][sel])
    np.testing.assert_array_equal(got.p, np.where(gt["p"][sel] > 0, 1, -1))
    events_dir = open_events("dsec", str(root / SEQ / "events" / "left"))
    assert events_dir.sequence == SEQ and len(events_dir) == len(stream)


def test_dsec_events_file_and_rectify_auto(dsec, tmp_path):
    """The events.h5 file names its folder; rectify="auto" uses rectify_map.h5 only when present."""
    import shutil

    root, gt = dsec
    folder = root / SEQ / "events" / "left"
    sel = gt["t_rel"] < 100_000
    auto = open_events("dsec", str(folder / "events.h5"), rectify="auto").events_between(0.0, 0.1)
    np.testing.assert_array_equal(auto.x, gt["rectify_map"][gt["y"][sel], gt["x"][sel], 0])
    bare = tmp_path / SEQ / "events" / "left"
    bare.mkdir(parents=True)
    shutil.copy(folder / "events.h5", bare)  # no rectify_map.h5 beside it
    raw = open_events("dsec", str(bare / "events.h5"), rectify="auto")
    assert raw.sequence == SEQ
    np.testing.assert_array_equal(raw.events_between(0.0, 0.1).x, gt["x"][sel])


def test_dsec_all_sequences_window_ms_and_size_mismatch(capsys, tmp_path):
    root = tmp_path / "train"
    write_dsec(root, "zurich_city_00_a", frames=3, events_per_frame=2000, seed=1)
    write_dsec(root, "interlaken_00_c", frames=3, events_per_frame=2000, seed=2)
    out = tmp_path / "all"
    code, text = run(capsys, "pack", "--format", "dsec", "--src", root, "--sequence", "all",
                     "--out", out, "--window-ms", 50, "--per-shard", 2, "--workers", 2)
    assert code == 0, text
    index, samples = packed(out)
    assert [s["name"] for s in index["sequences"]] == ["interlaken_00_c", "zurich_city_00_a"]
    assert len(samples) == 6  # the first frame has 50 ms of events before it too
    assert all(s["meta"]["t_end"] - s["meta"]["t_start"] == pytest.approx(0.05) for s in samples)
    write_dsec(root, "thun_00_a", frames=3, events_per_frame=500, disp_hw=(480, 630))
    code, text = run(capsys, "pack", "--format", "dsec", "--src", root, "--sequence", "thun_00_a",
                     "--out", tmp_path / "bad")
    assert code == 1 and not (tmp_path / "bad").exists()
    assert "thun_00_a" in text and "events are 480x640 (H x W) but depth is 480x630" in text
