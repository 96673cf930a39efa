"""``resdepth-shards pack`` says why a sequence gives no sample (or fewer than its depth frames),
refuses a repeated --sequence up front, and warns about a split without valid depth."""
import gc
import logging

import h5py
import numpy as np
import pytest

from tests.data.sources.fakes import write_mvsec
from tests.data.sources.test_mvsec import packed, run

SEQ = "outdoor_day1"


@pytest.fixture(scope="module")
def mvsec(tmp_path_factory):
    """4 depth frames 50 ms apart; events from 30 ms before the first to 30 ms after the last."""
    root = tmp_path_factory.mktemp("mvsec")
    return root, write_mvsec(root, SEQ, frames=4, events_per_frame=500)


@pytest.mark.parametrize("flags, reason", [
    (["--frames=5:5"], f"sequence {SEQ}: --frames 5:5 starts past the last depth frame (the "
                       "sequence has 4 depth frames, 0 to 3)"),
    (["--frames=2:2"], f"sequence {SEQ}: --frames 2:2 is an empty range (the sequence has 4 "
                       "depth frames)"),
    (["--frames=9:"], f"sequence {SEQ}: --frames 9: starts past the last depth frame (the "
                      "sequence has 4 depth frames, 0 to 3)"),
    (["--events-per-sample", "99999"], f"sequence {SEQ}: too few events: fewer than 99999 before "
                                       "every depth frame's timestamp (the recording holds 2500 events)"),
    (["--window-ms", "5000"], f"sequence {SEQ}: every depth frame's 5000 ms window starts before "
                              "the recording's first event at"),
])
def test_empty_result_says_why(capsys, tmp_path, mvsec, flags, reason):
    root, _ = mvsec
    code, text = run(capsys, "pack", "--format", "mvsec", "--src", root, "--sequence", SEQ,
                     "--out", tmp_path / "out", *flags)
    assert code == 1 and not (tmp_path / "out").exists()
    assert f"resdepth-shards pack: error: no samples: {reason}" in text
    assert str(root) not in text.split("no samples:")[1]  # the sequence is named, not --src


def test_window_longer_than_frame_spacing_says_how_many_frames_drop(capsys, tmp_path, mvsec, caplog):
    root, gt = mvsec
    with caplog.at_level(logging.WARNING, logger="resdepth"):
        code, text = run(capsys, "pack", "--format", "mvsec", "--src", root, "--sequence", SEQ,
                         "--out", tmp_path / "out", "--window-ms", 90)
    assert code == 0, text
    assert len(packed(tmp_path / "out")[1]) == 2  # frames 0 and 1 start before the first event
    first = gt["events"][0, 2]
    assert (f"sequence {SEQ}: 2 of 4 depth frames dropped: their 90 ms window starts before the "
            f"recording's first event at {first:.6f} s") in caplog.text


def test_same_sequence_twice_is_refused_up_front(capsys, tmp_path, mvsec):
    root, _ = mvsec
    code, text = run(capsys, "pack", "--format", "mvsec", "--src", root, "--sequence", SEQ,
                     "--sequence", SEQ, "--out", tmp_path / "out")
    assert code == 1 and not (tmp_path / "out").exists()
    assert f"--sequence {SEQ} given more than once; name each sequence once" in text


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_keys_colliding_inside_a_shard_leave_no_tar_stream_open(capsys, tmp_path):
    """Two sequences whose names map to one key: refused in one line, and the shard's tar stream
    is closed with its file (no 'Exception ignored ... write to closed file' at exit)."""
    root = tmp_path / "mvsec"
    write_mvsec(root, "outdoor_day1", frames=3, events_per_frame=300, seed=1)
    write_mvsec(root, "outdoor-day1", frames=3, events_per_frame=300, seed=2)
    (root / "outdoor-day1_data.hdf5").rename(root / "outdoor.day1_data.hdf5")
    (root / "outdoor-day1_gt.hdf5").rename(root / "outdoor.day1_gt.hdf5")
    code, text = run(capsys, "pack", "--format", "mvsec", "--src", root, "--sequence",
                     "outdoor_day1", "--sequence", "outdoor.day1", "--out", tmp_path / "out",
                     "--no-rectify")
    gc.collect()
    assert code == 1 and "sample key 'outdoor_day1_000001' twice" in text


def test_split_without_valid_depth_warns(capsys, tmp_path, caplog):
    root = tmp_path / "mvsec"
    write_mvsec(root, SEQ, frames=3, events_per_frame=300)
    with h5py.File(root / f"{SEQ}_gt.hdf5", "r+") as f:
        d = f["davis/left/depth_image_rect"]
        d[...] = np.full(d.shape, np.nan, np.float32)
    with caplog.at_level(logging.WARNING, logger="resdepth"):
        code, text = run(capsys, "pack", "--format", "mvsec", "--src", root, "--sequence", SEQ,
                         "--out", tmp_path / "out")
    assert code == 0, text
    assert "no valid depth pixel in any of its 2 samples" in caplog.text


def test_out_naming_a_file_is_one_line(capsys, tmp_path, mvsec):
    root, _ = mvsec
    (tmp_path / "out").write_text("")
    code, text = run(capsys, "pack", "--format", "mvsec", "--src", root, "--sequence", SEQ,
                     "--out", tmp_path / "out")
    assert code == 1 and "Traceback" not in text
    assert "out: a file, not a directory; --out names the split directory to write" in text
