"""MVSEC as it ships (two HDF5 files + calibration maps, 260x346) packed with the real CLI and
checked against an independent float64 computation."""
import json

import h5py
import numpy as np
import pytest

from resdepth.data import format as fmt
from resdepth.data.sources import FORMATS, open_events
from resdepth.data.cli import FORMATS as CLI_FORMATS
from resdepth.data.cli import main
from tests.data.sources.fakes import float16_error_ok, voxel_reference, write_mvsec

H, W = 260, 346


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split())  # the console wraps long lines


def packed(split):
    index = fmt.read_index(split)
    return index, [fmt.decode_sample(r, index["shapes"])
                   for url in fmt.shard_paths(split, index) for r in fmt.iter_shard(url)]


@pytest.fixture(scope="module")
def mvsec(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvsec")
    return root, write_mvsec(root, "outdoor_day1", frames=4, events_per_frame=20_000)


def rectified(gt, sel):
    x, y = gt["events"][sel, 0].astype(int), gt["events"][sel, 1].astype(int)
    return gt["x_map"][y, x], gt["y_map"][y, x]


@pytest.mark.parametrize("splat", ["round", "bilinear"])
def test_pack_mvsec_matches_float64_reference(capsys, tmp_path, mvsec, splat):
    root, gt = mvsec
    out = tmp_path / "test"
    code, text = run(capsys, "pack", "--format", "mvsec", "--src", root, "--sequence",
                     "outdoor_day1", "--out", out, "--bins", 5, "--splat", splat)
    assert code == 0, text
    assert run(capsys, "verify", out)[0] == 0
    index, samples = packed(out)
    ts, ev = gt["ts"], gt["events"]
    assert index["shapes"]["events.npy"] == [5, H, W] and index["num_samples"] == 3
    assert [s["name"] for s in index["sequences"]] == ["outdoor_day1"]
    assert index["sequences"][0]["rectified"] is True
    worst, dropped = 0.0, 0
    for i, s in enumerate(samples, start=1):
        m = s["meta"]
        # timestamps are the depth timestamps, bit for bit
        assert (m["t_start"], m["t_end"]) == (ts[i - 1], ts[i]) and m["sequence"] == "outdoor_day1"
        assert s["key"] == f"outdoor_day1_{i:06d}"
        sel = (ev[:, 2] >= ts[i - 1]) & (ev[:, 2] < ts[i])
        assert m["num_events"] == sel.sum() and 15_000 < sel.sum() < 25_000
        xr, yr = rectified(gt, sel)
        ref = voxel_reference(xr, yr, ev[sel, 2], ev[sel, 3], 5, H, W, ts[i - 1], ts[i], splat)
        worst = max(worst, float16_error_ok(s["events"], ref))
        outside = (np.floor(xr + 0.5) < 0) | (np.floor(xr + 0.5) >= W)
        dropped += int(outside.sum())
        # out-of-frame events are dropped, not piled on the border
        assert abs(np.abs(ref).sum() - np.abs(s["events"].astype(np.float64)).sum()) < 1.0
        d = gt["depth"][i]
        np.testing.assert_array_equal(s["mask"][0], np.isfinite(d).astype(np.uint8))
        np.testing.assert_array_equal(s["depth"][0], np.where(np.isfinite(d), d, 0).astype(np.float32))
    assert worst <= 1.0, f"voxel error {worst:.3f} float16 steps"
    assert dropped > 100  # the fixture's maps push corners out of the frame


def test_rectified_event_positions(mvsec):
    root, gt = mvsec
    stream = open_events("mvsec", str(root), "outdoor_day1")
    ts, ev = gt["ts"], gt["events"]
    assert (stream.height, stream.width) == (H, W) and len(stream) == len(ev)
    assert stream.t_start == ev[0, 2] and stream.t_end == ev[-1, 2]
    got = stream.events_between(ts[1], ts[2])
    sel = (ev[:, 2] >= ts[1]) & (ev[:, 2] < ts[2])
    xr, yr = rectified(gt, sel)
    np.testing.assert_array_equal(got.x, xr)
    np.testing.assert_array_equal(got.y, yr)
    np.testing.assert_array_equal(got.t, ev[sel, 2])
    np.testing.assert_array_equal(got.p, ev[sel, 3].astype(np.int8))
    last = stream.events_before(ts[2], 1000)
    np.testing.assert_array_equal(last.t, ev[sel, 2][-1000:])
    raw = open_events("mvsec", str(root), "outdoor_day1", rectify=False).events_between(ts[1], ts[2])
    np.testing.assert_array_equal(raw.x, ev[sel, 0])


def test_window_ms_and_events_per_sample(capsys, tmp_path, mvsec):
    root, gt = mvsec
    ts, ev = gt["ts"], gt["events"]
    out = tmp_path / "ms"
    assert run(capsys, "pack", "--format", "mvsec", "--src", root, "--sequence", "outdoor_day1",
               "--out", out, "--bins", 3, "--window-ms", 20)[0] == 0
    _, samples = packed(out)
    assert len(samples) == 4  # every depth frame has 20 ms of events before it
    for i, s in enumerate(samples):
        t0 = ts[i] - 0.02
        assert s["meta"]["t_end"] == ts[i] and s["meta"]["t_start"] == pytest.approx(t0, abs=1e-9)
        sel = (ev[:, 2] >= s["meta"]["t_start"]) & (ev[:, 2] < ts[i])
        xr, yr = rectified(gt, sel)
        ref = voxel_reference(xr, yr, ev[sel, 2], ev[sel, 3], 3, H, W, s["meta"]["t_start"], ts[i])
        assert float16_error_ok(s["events"], ref) <= 1.0
    out = tmp_path / "count"
    assert run(capsys, "pack", "--format", "mvsec", "--src", root, "--sequence", "outdoor_day1",
               "--out", out, "--bins", 3, "--events-per-sample", 5000)[0] == 0
    _, samples = packed(out)
    assert len(samples) == 4
    for i, s in enumerate(samples):
        i1 = np.searchsorted(ev[:, 2], ts[i])
        assert s["meta"]["num_events"] == 5000 and s["meta"]["t_start"] == ev[i1 - 5000, 2]


def test_several_sequences_one_split(capsys, tmp_path):
    root = tmp_path / "mvsec"
    write_mvsec(root, "outdoor_day1", frames=3, events_per_frame=2000, seed=1)
    write_mvsec(root, "outdoor_day2", frames=4, events_per_frame=2000, seed=2)
    out = tmp_path / "train"
    code, text = run(capsys, "pack", "--format", "mvsec", "--src", root, "--sequence", "all",
                     "--out", out, "--per-shard", 2, "--workers", 2)  # readers cross processes
    assert code == 0, text
    index, samples = packed(out)
    assert [(s["name"], s["samples"]) for s in index["sequences"]] == [("outdoor_day1", 2),
                                                                        ("outdoor_day2", 3)]
    assert [s["meta"]["sequence"] for s in samples] == ["outdoor_day1"] * 2 + ["outdoor_day2"] * 3
    assert json.loads((out / "index.json").read_text())["params"]["window"] == "depth"
    val = tmp_path / "val"  # the last depth frames of each sequence, as a held-out split
    assert run(capsys, "pack", "--format", "mvsec", "--src", root, "--sequence", "outdoor_day2",
               "--out", val, "--frames=-1:")[0] == 0
    assert [s["key"] for s in packed(val)[1]] == ["outdoor_day2_000003"]
    assert CLI_FORMATS == FORMATS  # --help lists every reader


def test_size_mismatch_refused_and_missing_calibration(capsys, tmp_path):
    root = tmp_path / "mvsec"
    write_mvsec(root, "outdoor_night1", frames=3, events_per_frame=500, depth_hw=(260, 340))
    out = tmp_path / "test"
    code, text = run(capsys, "pack", "--format", "mvsec", "--src", root, "--sequence",
                     "outdoor_night1", "--out", out)
    assert code == 1 and not out.exists()
    assert "outdoor_night1" in text and "events are 260x346 (H x W) but depth is 260x340" in text
    write_mvsec(root, "indoor_flying1", frames=3, events_per_frame=500, calib=False)
    code, text = run(capsys, "pack", "--format", "mvsec", "--src", root, "--sequence",
                     "indoor_flying1", "--out", out)
    assert code == 1 and "indoor_flying_calib/indoor_flying_left_{x,y}_map.txt not found" in text
    assert not out.exists()


def test_verify_reports_size_mismatch(capsys, tmp_path):
    import webdataset as wds

    from resdepth.data.writer import make_index

    split = tmp_path / "bad"
    split.mkdir()
    path = split / fmt.shard_name(0)
    with open(path, "wb") as f:
        w = wds.TarWriter(f, encoder=False)
        w.write(fmt.make_sample("a", np.zeros((3, 6, 8)), np.ones((6, 7)), None, {}))
        w.close()
    rec = {"name": path.name, "nsamples": 1, "bytes": path.stat().st_size,
           "sha256": fmt.sha256_file(path)}
    stats = fmt.DepthStats()
    index = make_index([rec], {"events.npy": [3, 6, 8], "depth.npy": [1, 6, 7],
                               "mask.npy": [1, 6, 7]}, stats, {})
    (split / "index.json").write_text(json.dumps(index))
    code, text = run(capsys, "verify", split)
    assert code == 1 and "index.json: events are 6x8 (H x W) but depth is 6x7" in text


def test_mvsec_gt_file_alone_is_named(capsys, tmp_path, mvsec):
    root, _ = mvsec
    code, text = run(capsys, "pack", "--src", root / "outdoor_day1_gt.hdf5", "--out", tmp_path / "o")
    assert code == 1 and "no dataset davis/left/events" in text
    with h5py.File(root / "outdoor_day1_data.hdf5") as f:
        assert f["davis/left/events"].dtype == np.float64
