"""M3ED (events + depth_gt HDF5, 720x1280) and DENSE (per-frame voxel and depth .npy) packed with
the real CLI."""
import numpy as np
import pytest

from resdepth.data.sources import open_events
from tests.data.sources.fakes import float16_error_ok, voxel_reference, write_dense, write_m3ed
from tests.data.sources.test_mvsec import packed, run


def test_pack_m3ed(capsys, tmp_path):
    gt = write_m3ed(tmp_path / "m3ed", "car_urban_day_penno_small_loop", frames=3)
    out = tmp_path / "train"
    code, text = run(capsys, "pack", "--format", "m3ed", "--src", tmp_path / "m3ed", "--sequence",
                     "all", "--out", out, "--bins", 3)
    assert code == 0, text
    index, samples = packed(out)
    assert index["shapes"]["events.npy"] == [3, 720, 1280] and len(samples) == 2
    t, ts = gt["t"], gt["ts"]
    for i, s in enumerate(samples, start=1):
        assert s["meta"]["timestamp_us"] == ts[i] and s["meta"]["t_end"] == ts[i] * 1e-6
        sel = (t >= ts[i - 1]) & (t < ts[i])
        ref = voxel_reference(gt["x"][sel].astype(float), gt["y"][sel].astype(float),
                              t[sel].astype(float), gt["p"][sel].astype(float), 3, 720, 1280,
                              float(ts[i - 1]), float(ts[i]))
        assert float16_error_ok(s["events"], ref) <= 1.0
        d = gt["depth"][i]
        np.testing.assert_array_equal(s["mask"][0], np.isfinite(d))
        np.testing.assert_array_equal(s["depth"][0], np.where(np.isfinite(d), d, 0))
    stream = open_events("m3ed", str(tmp_path / "m3ed" / "car_urban_day_penno_small_loop_data.h5"))
    assert stream.sequence == "car_urban_day_penno_small_loop"
    assert (stream.height, stream.width) == (720, 1280)
    got = stream.events_before(ts[1] * 1e-6, 100)
    np.testing.assert_array_equal(np.round(got.t * 1e6), t[t < ts[1]][-100:])


def test_pack_dense(capsys, tmp_path):
    a = write_dense(tmp_path / "dense", "sequence_0", frames=3)
    write_dense(tmp_path / "dense", "sequence_1", frames=2, seed=1)
    out = tmp_path / "train"
    code, text = run(capsys, "pack", "--format", "dense", "--src", tmp_path / "dense",
                     "--sequence", "all", "--out", out)
    assert code == 0, text
    index, samples = packed(out)
    assert [(s["name"], s["samples"]) for s in index["sequences"]] == [("sequence_0", 3),
                                                                        ("sequence_1", 2)]
    assert index["shapes"]["events.npy"] == [5, 260, 346]
    for i, s in enumerate(samples[:3]):
        assert float16_error_ok(s["events"], a["voxels"][i].astype(np.float64)) <= 1.0
        assert s["meta"]["t_end"] == pytest.approx(a["ts"][i])
        np.testing.assert_array_equal(s["depth"][0], a["depth"][i])
    with pytest.raises(ValueError, match="voxel grids"):
        open_events("dense", str(tmp_path / "dense"), "sequence_0")
