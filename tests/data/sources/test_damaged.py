"""Recordings as they come: times out of order or not finite, damaged and cut-short files, a DSEC
events.h5 alone. Each is refused (or warned about) in one line naming the file, through the real
readers and the real ``resdepth-shards pack``."""
import logging
import shutil

import h5py
import numpy as np
import pytest

from resdepth.data import format as fmt
from resdepth.data.sources import open_events
from tests.data.sources.fakes import write_dsec, write_m3ed, write_mvsec
from tests.data.sources.test_mvsec import run


def one_line(text: str) -> bool:
    return "Traceback" not in text and text.count("error:") == 1


def test_mvsec_times_going_backwards_are_refused(capsys, tmp_path):
    root = tmp_path / "mvsec"
    gt = write_mvsec(root, "outdoor_day1", frames=3, events_per_frame=2000)
    with h5py.File(root / "outdoor_day1_data.hdf5", "r+") as f:
        ev = f["davis/left/events"]
        t = ev[:, 2]
        t[3000:3050] -= 0.2  # 50 events moved back by 0.2 s, as in a damaged export
        ev[:, 2] = t
    code, text = run(capsys, "pack", "--format", "mvsec", "--src", root, "--sequence",
                     "outdoor_day1", "--out", tmp_path / "out")
    assert code == 1 and one_line(text) and not (tmp_path / "out").exists()
    assert (f"outdoor_day1_data.hdf5: event times are not ascending: row 3000 at "
            f"{gt['events'][3000, 2] - 0.2:.6f} s comes after row 2999 at "
            f"{gt['events'][2999, 2]:.6f} s") in text


def test_times_checked_chunk_by_chunk_across_chunk_edges(tmp_path):
    """The check reads bounded chunks; a step back exactly at a chunk's first row is still seen."""
    from resdepth.data.sources.base import checked_times

    t = np.arange(10, dtype=np.float64)
    t[4] = 2.5
    reads = []

    def times(a, b):
        reads.append((a, b))
        return t[a:b]

    with pytest.raises(fmt.DataError, match=r"rec: event times are not ascending: row 4 at "
                                            r"2.500000 s comes after row 3 at 3.000000 s"):
        list(checked_times("rec", times, len(t), chunk=2))
    assert reads == [(0, 2), (2, 4), (4, 6)]  # never the whole recording at once


@pytest.mark.parametrize("dataset", ["dsec", "m3ed"])
def test_dsec_and_m3ed_times_going_backwards_are_refused(capsys, tmp_path, dataset):
    root = tmp_path / dataset
    if dataset == "dsec":
        write_dsec(root, "zurich_city_00_a", frames=3, events_per_frame=2000)
        path, key, seq = root / "zurich_city_00_a/events/left/events.h5", "events/t", "zurich_city_00_a"
    else:
        write_m3ed(root, "car_urban", frames=3, events_per_frame=2000)
        path, key, seq = root / "car_urban_data.h5", "prophesee/left/t", "car_urban"
    with h5py.File(path, "r+") as f:
        t = f[key][:]
        t[1000] = t[999] - 7  # microseconds
        f[key][1000] = t[1000]
    with pytest.raises(fmt.DataError, match=f"{path.name}: event times are not ascending: row 1000 at "):
        open_events(dataset, str(path))
    code, text = run(capsys, "pack", "--format", dataset, "--src", root, "--sequence", seq,
                     "--out", tmp_path / "out")
    assert code == 1 and one_line(text) and "row 1000" in text and path.name in text


def test_npz_with_a_nan_time_is_refused(tmp_path):
    np.savez(tmp_path / "rec.npz", x=[1, 2, 3], y=[1, 1, 1], t=[0.1, np.nan, 0.3], p=[1, 0, 1])
    with pytest.raises(fmt.DataError, match=r"rec.npz: event time at row 1 is nan \(not a finite"):
        open_events("npz", str(tmp_path / "rec.npz"))
    np.savez(tmp_path / "inf.npz", x=[1, 2], y=[1, 1], t=[0.1, np.inf], p=[1, 0])
    with pytest.raises(fmt.DataError, match=r"inf.npz: event time at row 1 is inf"):
        open_events("npz", str(tmp_path / "inf.npz"))


def test_dsec_events_file_alone_warns_and_names_its_sequence(tmp_path, monkeypatch, caplog):
    src = tmp_path / "train"
    write_dsec(src, "zurich_city_00_a", frames=2, events_per_frame=500)
    left = src / "zurich_city_00_a" / "events" / "left"
    (left / "rectify_map.h5").unlink()
    monkeypatch.chdir(left)
    with caplog.at_level(logging.WARNING, logger="resdepth"):
        stream = open_events("dsec", "events.h5", rectify="auto")  # given as a bare file name
    assert stream.sequence == "zurich_city_00_a" and stream.rectify_map is None
    assert "events.h5: no rectify_map.h5 beside it; events NOT rectified" in caplog.text
    flat = tmp_path / "my_drive"
    flat.mkdir()
    shutil.copy(left / "events.h5", flat)
    assert open_events("dsec", str(flat / "events.h5"), rectify="auto").sequence == "my_drive"


def test_damaged_files_are_one_line(capsys, tmp_path):
    root = tmp_path / "mvsec"
    write_mvsec(root, "outdoor_day1", frames=3, events_per_frame=500)
    data = root / "outdoor_day1_data.hdf5"
    data.write_bytes(data.read_bytes()[:3000])  # cut short
    code, text = run(capsys, "pack", "--format", "mvsec", "--src", root, "--sequence",
                     "outdoor_day1", "--out", tmp_path / "o1")
    assert code == 1 and one_line(text)
    assert "outdoor_day1_data.hdf5: not a readable HDF5 file, damaged or cut short" in text
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"not an hdf5 file at all" * 100)
    code, text = run(capsys, "pack", "--src", junk, "--out", tmp_path / "o2")
    assert code == 1 and one_line(text) and "junk.hdf5: not a readable HDF5 file" in text

    dsec = tmp_path / "dsec"
    write_dsec(dsec, "zurich_city_00_a", frames=2, events_per_frame=2000)
    ev = dsec / "zurich_city_00_a/events/left/events.h5"
    ev.write_bytes(ev.read_bytes()[: ev.stat().st_size // 2])
    code, text = run(capsys, "pack", "--format", "dsec", "--src", dsec, "--sequence",
                     "zurich_city_00_a", "--out", tmp_path / "o3")
    assert code == 1 and one_line(text) and "events.h5: not a readable HDF5 file" in text

    np.savez(tmp_path / "rec.npz", x=np.arange(1000), y=np.zeros(1000), t=np.arange(1000) * 1e-3,
             p=np.ones(1000))
    rec = tmp_path / "rec.npz"
    rec.write_bytes(rec.read_bytes()[:5000])
    with pytest.raises(fmt.DataError, match="rec.npz: not a readable .npz file, damaged or cut short"):
        open_events("npz", str(rec))
    samples = tmp_path / "samples"
    samples.mkdir()
    shutil.copy(rec, samples / "a.npz")
    code, text = run(capsys, "pack", "--src", samples, "--out", tmp_path / "o4")
    assert code == 1 and one_line(text) and "a.npz: not a readable .npz file" in text
