"""``resdepth-predict`` on raw recordings written here: one output per window, the same numbers as
``resdepth-eval`` on the same windows packed with depth, the same files for one or two processes,
resume by units, and every reader (MVSEC HDF5, npz, Prophesee EVT3, AEDAT4) through one pipeline."""
from __future__ import annotations

import csv
import json
import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from resdepth.predict import main, parse_args
from tests.eval.runner import make_exports, run_command, run_module

BINS, H, W = 3, 30, 46  # not multiples of 4: the nets below pad and crop back
DUR_MS = 62.5            # exact in binary, so window edges equal the depth timestamps bit for bit
T0 = 1.0
NUM_WINDOWS = 7
FAST = ["--ensemble", "2", "--steps", "3", "--batch", "2", "--unit-size", "3", "--S-churn", "1.0",
        "--device", "cpu"]
TINY3 = dict(model_channels=8, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[])


def random_events(n: int, seed: int, h: int = H, w: int = W, t_end: float = None):
    rng = np.random.default_rng(seed)
    t_end = T0 + NUM_WINDOWS * DUR_MS * 1e-3 + 0.03 if t_end is None else t_end
    t = np.sort(rng.uniform(T0, t_end, n))
    t[0] = T0
    return (rng.integers(0, w, n), rng.integers(0, h, n), t, rng.choice([-1, 1], n))


def window_ends(n: int = NUM_WINDOWS) -> np.ndarray:
    """Window ends as the prediction computes them: t_start + (k + 1) * duration."""
    return np.array([T0 + (k + 1) * (DUR_MS * 1e-3) for k in range(n)])


def write_mvsec_events(folder: Path, seq: str, x, y, t, p) -> Path:
    """``<seq>_data.hdf5`` (events only) and the scene's rectification maps, as MVSEC ships them
    (frame size from the maps: a small H x W here; rectified = raw shifted by a fraction)."""
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{seq}_data.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("davis/left/events", data=np.stack([x, y, t, p], 1).astype(np.float64))
    scene = seq.rstrip("0123456789")
    calib = folder / f"{scene}_calib"
    calib.mkdir(exist_ok=True)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    np.savetxt(calib / f"{scene}_left_x_map.txt", xx * 1.01 + 0.3)
    np.savetxt(calib / f"{scene}_left_y_map.txt", yy * 0.99 - 0.2)
    return path


def write_mvsec_depth(folder: Path, seq: str, ts: np.ndarray, seed: int = 5) -> None:
    import h5py

    rng = np.random.default_rng(seed)
    depth = rng.uniform(2.0, 60.0, (len(ts), H, W)).astype(np.float32)
    depth[:, :5] = np.nan
    with h5py.File(folder / f"{seq}_gt.hdf5", "w") as f:
        f.create_dataset("davis/left/depth_image_rect", data=depth, compression="lzf")
        f.create_dataset("davis/left/depth_image_rect_ts", data=ts)


def frames(out: Path) -> list[dict]:
    with open(out / "frames.csv") as f:
        return list(csv.DictReader(f))


def tree(out: Path, kinds=("depth", "std")) -> dict[str, bytes]:
    return {f"{k}/{p.name}": p.read_bytes() for k in kinds for p in sorted((out / k).glob("*"))}


def predict_args(exports, events: Path, out: Path, *extra: str, diffusion: bool = True) -> list[str]:
    args = ["--regression", str(exports["regression"]), "--events", str(events), "--out", str(out),
            *FAST, *extra]
    return args + (["--diffusion", str(exports["diffusion"])] if diffusion else [])


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return make_exports(tmp_path_factory.mktemp("exports"), size=(H, W), model=TINY3, bins=BINS)


@pytest.fixture(scope="module")
def mvsec(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvsec")
    ev = random_events(7000, seed=3)
    path = write_mvsec_events(root / "events_only", "outdoor_day1", *ev)
    return path


@pytest.fixture(scope="module")
def one_process(exports, mvsec, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pred1")
    run_module("resdepth.predict", predict_args(exports, mvsec, out, "--window-ms", str(DUR_MS)))
    return out


def test_one_output_per_window(one_process, mvsec):
    rows = frames(one_process)
    assert len(rows) == NUM_WINDOWS
    assert [r["key"] for r in rows] == [f"outdoor_day1_{k:06d}" for k in range(NUM_WINDOWS)]
    assert [float(r["t_end"]) for r in rows] == window_ends().tolist()
    for r in rows:
        assert np.load(one_process / r["depth"]).shape == (H, W)
        assert np.load(one_process / r["std"]).shape == (H, W)
        assert (one_process / r["preview"]).stat().st_size > 100
    for kind in ("depth", "std", "preview"):
        assert len(list((one_process / kind).glob("*"))) == NUM_WINDOWS
    d = np.stack([np.load(one_process / r["depth"]) for r in rows])
    assert np.isfinite(d).all() and (d > 0).all() and d.std() > 0
    assert (np.stack([np.load(one_process / r["std"]) for r in rows]) > 0).any()
    import imageio.v2 as iio2

    assert iio2.get_reader(one_process / "preview.mp4").count_frames() == NUM_WINDOWS
    # events per window add up to the events of the whole windows
    import h5py

    with h5py.File(mvsec) as f:
        t = f["davis/left/events"][:, 2]
    assert sum(int(r["num_events"]) for r in rows) == int((t < window_ends()[-1]).sum())


def test_equals_evaluation_of_the_same_windows_packed_with_depth(one_process, exports, mvsec,
                                                                  tmp_path):
    """Pack the same recording with depth at the window ends, evaluate it, compare per window."""
    src = tmp_path / "mvsec"
    shutil.copytree(mvsec.parent, src)
    write_mvsec_depth(src, "outdoor_day1", window_ends())
    run_command([*_py(), "-m", "resdepth.data.cli", "pack", "--format", "mvsec", "--src", str(src),
                 "--sequence", "outdoor_day1", "--out", str(tmp_path / "test"), "--window-ms",
                 str(DUR_MS), "--bins", str(BINS)])
    ev_out = tmp_path / "eval"
    run_module("resdepth.eval", ["--regression", str(exports["regression"]), "--diffusion",
                                 str(exports["diffusion"]), "--data", str(tmp_path / "test"),
                                 "--out", str(ev_out), "--baseline", "none", "--save-predictions",
                                 *FAST])
    preds = saved_predictions(ev_out)
    rows = frames(one_process)
    assert sorted(preds) == [r["key"] for r in rows]
    for r in rows:
        e = preds[r["key"]]
        np.testing.assert_allclose(np.load(one_process / r["depth"]), e["mean.npy"][0],
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.load(one_process / r["std"]), e["std.npy"][0],
                                   rtol=1e-4, atol=1e-5)


def saved_predictions(ev_out: Path) -> dict[str, dict[str, np.ndarray]]:
    """An evaluation's ``--save-predictions`` tars as ``{key: {member name: array}}``."""
    preds: dict[str, dict[str, np.ndarray]] = {}
    for tar in sorted((ev_out / "predictions").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, name = m.name.split(".", 1)
                preds.setdefault(key, {})[name] = np.load(io.BytesIO(tf.extractfile(m).read()))
    return preds


def _py() -> list[str]:
    import sys

    return [sys.executable]


@pytest.mark.dist
def test_two_processes_write_the_same_files(one_process, exports, mvsec, tmp_path):
    out = tmp_path / "pred2"
    run_module("resdepth.predict", predict_args(exports, mvsec, out, "--window-ms", str(DUR_MS)),
               nproc=2)
    assert frames(out) == frames(one_process)
    assert tree(out) == tree(one_process)
    assert len(list((out / "parts").glob("*.json"))) == 3


def test_resume_redoes_only_missing_units(one_process, exports, mvsec, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(one_process, out)
    (out / "frames.csv").unlink()
    (out / "parts" / "outdoor_day1_data.hdf5@0000003-0000006.json").unlink()
    for k in (3, 4, 5):
        (out / "depth" / f"outdoor_day1_{k:06d}.npy").unlink()
    stamp = (out / "depth" / "outdoor_day1_000000.npy").stat().st_mtime_ns
    other_files = run_module("resdepth.predict", predict_args(exports, mvsec, out, "--window-ms",
                                                              str(DUR_MS), "--depth-format", "png"),
                             check=False)
    assert other_files.returncode != 0 and "holds parts of another prediction" in other_files.stderr
    assert "evaluation" not in other_files.stderr and "max_samples" not in other_files.stderr
    assert not list((out / "depth").glob("*.png"))
    proc = run_module("resdepth.predict", predict_args(exports, mvsec, out, "--window-ms",
                                                       str(DUR_MS)))
    assert "1 units of 3 to predict (2 finished earlier)" in proc.stderr + proc.stdout
    assert (out / "depth" / "outdoor_day1_000000.npy").stat().st_mtime_ns == stamp
    assert tree(out) == tree(one_process) and frames(out) == frames(one_process)
    # --sample-rows is not a result setting: the same directory is taken, with nothing left to do
    again = run_module("resdepth.predict", predict_args(exports, mvsec, out, "--window-ms",
                                                        str(DUR_MS), "--sample-rows", "1"))
    assert "0 units of 3 to predict (3 finished earlier)" in again.stderr + again.stdout
    assert tree(out) == tree(one_process)


def test_npz_by_event_count_png_millimetres_odd_frame(exports, tmp_path):
    """A 29 x 45 recording (odd: padded for the U-Net, cropped back), windows of 700 events."""
    h, w = H - 1, W - 1
    x, y, t, p = random_events(5000, seed=8, h=h, w=w)
    np.savez(tmp_path / "rec.npz", x=x, y=y, t=t, p=p, height=h, width=w)
    out = tmp_path / "out"
    cfg = parse_args(predict_args(exports, tmp_path / "rec.npz", out, "--window-events", "700",
                                  "--depth-format", "png", "--video", "gif", diffusion=False))
    assert main(cfg) == 0
    rows = frames(out)
    assert len(rows) == 5000 // 700
    assert all(int(r["num_events"]) == 700 for r in rows)
    assert [float(r["t_start"]) for r in rows] == t[::700][: len(rows)].tolist()
    import imageio.v3 as iio

    d = iio.imread(out / rows[0]["depth"])
    assert d.dtype == np.uint16 and d.shape == (h, w) and d.min() > 0
    assert rows[0]["encoding"] == ("uint16 PNG: metres x 256 (1/256 m steps, up to 255.99 m), "
                                   "0 = no depth")
    assert not list((out / "std").glob("*"))
    assert (out / "preview.gif").stat().st_size > 100


@pytest.mark.parametrize("patch", [[], ["--patch", "16"]])
def test_patch_trained_net_on_a_recording_of_another_size(tmp_path, patch):
    """The patch grid covers the recording's frame (29 x 45), not the one the nets were trained on."""
    exports = make_exports(tmp_path / "exports", size=(H, W), model=TINY3, bins=BINS, patching=True)
    h, w = H - 1, W - 1
    x, y, t, p = random_events(3000, seed=9, h=h, w=w)
    np.savez(tmp_path / "rec.npz", x=x, y=y, t=t, p=p, height=h, width=w)
    out = tmp_path / "out"
    assert main(parse_args(predict_args(exports, tmp_path / "rec.npz", out, "--window-events", "1000",
                                        "--video", "none", *patch))) == 0
    rows = frames(out)
    assert len(rows) == 3
    for r in rows:
        d = np.load(out / r["depth"])
        assert d.shape == (h, w) and np.isfinite(d).all() and d.min() > 0
        assert np.load(out / r["std"]).shape == (h, w)


def test_camera_files_read_through_faery_give_the_npz_numbers(exports, tmp_path):
    """The same events as Prophesee EVT3 .raw, AEDAT4 and .npz predict the same depth."""
    import faery

    x, y, t, p = random_events(4000, seed=9)
    t_us = np.round(t * 1e6)
    arr = np.zeros(len(t), faery.EVENTS_DTYPE)
    arr["t"], arr["x"], arr["y"], arr["on"] = t_us, x, y, p > 0
    faery.events_stream_from_array(arr, dimensions=(W, H)).to_file(tmp_path / "rec.raw",
                                                                   version="evt3")
    faery.events_stream_from_array(arr, dimensions=(W, H)).to_file(tmp_path / "rec.aedat4")
    np.savez(tmp_path / "rec.npz", x=x, y=y, t=t_us * 1e-6, p=p, height=H, width=W)
    from resdepth.data.sources import open_events

    for fmt_name, name in (("evt", "rec.raw"), ("aedat4", "rec.aedat4")):
        s = open_events(fmt_name, str(tmp_path / name))
        assert (s.height, s.width, len(s)) == (H, W, len(t))
        ev = s.events(0, len(s))
        assert (ev.x == x).all() and (ev.y == y).all() and (ev.t == t_us * 1e-6).all()
        assert (ev.p == np.where(p > 0, 1, -1)).all()
    outs = {}
    for name in ("rec.npz", "rec.raw", "rec.aedat4"):
        outs[name] = tmp_path / name.replace(".", "_")
        assert main(parse_args(predict_args(exports, tmp_path / name, outs[name], "--window-ms",
                                            "100", "--no-previews", "--video", "none",
                                            diffusion=False))) == 0
    ref = tree(outs["rec.npz"], ("depth",))
    assert len(ref) == int((t[-1] - t[0]) // 0.1)
    assert tree(outs["rec.raw"], ("depth",)) == ref == tree(outs["rec.aedat4"], ("depth",))


def test_errors_are_one_line(exports, tmp_path, capsys):
    from resdepth.predict.__main__ import cli

    np.savez(tmp_path / "rec.npz", x=[1], y=[1], t=[1.0], p=[1])
    with pytest.raises(SystemExit) as e:
        cli(predict_args(exports, tmp_path / "rec.npz", tmp_path / "o", "--window-ms", "50"))
    assert e.value.code == 1 and "no whole window" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli(["--regression", "r", "--events", "e", "--out", "o"])
    assert e.value.code == 1 and "exactly one of window_ms" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli(["merge", str(tmp_path / "o")])
    assert e.value.code == 1 and "no plan.json" in capsys.readouterr().err
    np.savez(tmp_path / "shuffled.npz", x=[1, 2], y=[1, 1], t=[2.0, 1.0], p=[1, 0])
    with pytest.raises(SystemExit) as e:
        cli(predict_args(exports, tmp_path / "shuffled.npz", tmp_path / "o2", "--window-ms", "50"))
    assert e.value.code == 1 and "shuffled.npz: event times are not ascending" in capsys.readouterr().err


@pytest.mark.parametrize("dataset", ["dsec", "m3ed"])
def test_dataset_files_are_recognised_and_windowed(dataset, tmp_path):
    """DSEC events.h5 (rectified with its rectify_map.h5) and M3ED _data.h5 open by file name."""
    from resdepth.predict.config import PredictConfig
    from resdepth.data.sources import detect_format
    from resdepth.predict.windows import Windows, open_recording
    from tests.data.sources import fakes

    if dataset == "dsec":
        fakes.write_dsec(tmp_path, frames=2, events_per_frame=3000)
        path = next(tmp_path.rglob("events.h5"))
        hw = (480, 640)
    else:
        fakes.write_m3ed(tmp_path, frames=2, events_per_frame=3000)
        path = next(tmp_path.glob("*_data.h5"))
        hw = (720, 1280)
    assert detect_format(path) == dataset
    stream = open_recording(PredictConfig(events=str(path)))
    assert (stream.height, stream.width) == hw
    assert (stream.rectify_map is not None) == (dataset == "dsec")
    windows = Windows(stream, 10.0, 0, bins=2)
    assert len(windows) == int((stream.t_end - stream.t_start) // 0.01) > 0
    w = windows.window(len(windows) - 1)
    assert w.events.shape == (2, *hw) and w.num_events > 0


def test_rectify_map_file_moves_events(tmp_path):
    """``--rectify-map`` (.npy [H, W, 2]): events land where the map sends them."""
    from resdepth.predict.config import PredictConfig
    from resdepth.predict.windows import open_recording

    x, y, t, p = random_events(500, seed=4)
    np.savez(tmp_path / "rec.npz", x=x, y=y, t=t, p=p, height=H, width=W)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    np.save(tmp_path / "map.npy", np.stack([W - 1 - xx, yy + 0.25], -1))  # mirror left-right
    stream = open_recording(PredictConfig(events=str(tmp_path / "rec.npz"),
                                          rectify_map=str(tmp_path / "map.npy")))
    ev = stream.events(0, len(stream))
    assert (ev.x == W - 1 - x).all() and (ev.y == y + 0.25).all()
    np.save(tmp_path / "bad.npy", np.zeros((H, W)))
    with pytest.raises(ValueError, match=r"\[H, W, 2\]"):
        open_recording(PredictConfig(events=str(tmp_path / "rec.npz"),
                                     rectify_map=str(tmp_path / "bad.npy")))


def test_damaged_recordings_and_out_file_are_one_line(exports, tmp_path, capsys):
    """A junk .hdf5, a DSEC events.h5 cut short, a cut-short .npz and --out naming a file: each one
    line naming the file and what is wrong, no traceback."""
    from resdepth.predict.__main__ import cli
    from tests.data.sources import fakes

    def fails(events, out, expect):
        with pytest.raises(SystemExit) as e:
            cli(predict_args(exports, events, out, "--window-ms", "50"))
        err = capsys.readouterr().err
        assert e.value.code == 1 and "Traceback" not in err and expect in err, err

    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"\x89HDF\r\n" + b"junk" * 500)
    fails(junk, tmp_path / "o1", "junk.hdf5: not a readable HDF5 file, damaged or cut short")
    fakes.write_dsec(tmp_path / "dsec", frames=2, events_per_frame=2000)
    ev = next((tmp_path / "dsec").rglob("events.h5"))
    ev.write_bytes(ev.read_bytes()[: ev.stat().st_size // 2])
    fails(ev, tmp_path / "o2", "events.h5: not a readable HDF5 file, damaged or cut short")
    np.savez(tmp_path / "rec.npz", **dict(zip("xytp", random_events(3000, seed=1))))
    rec = tmp_path / "rec.npz"
    rec.write_bytes(rec.read_bytes()[:4000])
    fails(rec, tmp_path / "o3", "rec.npz: not a readable .npz file, damaged or cut short")
    x, y, t, p = random_events(3000, seed=1)
    back = t.copy()
    back[1000:1050] -= 0.2  # 50 events moved back by 0.2 s
    mv = write_mvsec_events(tmp_path / "mvsec", "outdoor_day1", x, y, back, p)
    fails(mv, tmp_path / "o4", f"outdoor_day1_data.hdf5: event times are not ascending: row 1000 at "
                               f"{back[1000]:.6f} s comes after row 999 at {back[999]:.6f} s")
    nan = t.copy()
    nan[7] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=y, t=nan, p=p)
    fails(tmp_path / "nan.npz", tmp_path / "o5", "nan.npz: event time at row 7 is nan")
    np.savez(tmp_path / "ok.npz", **dict(zip("xytp", random_events(3000, seed=1))))
    (tmp_path / "taken").write_text("")
    fails(tmp_path / "ok.npz", tmp_path / "taken", "taken is a file; name an output directory")


def test_png_depth_holds_the_nets_whole_range(tmp_path, caplog):
    """--depth-format png: KITTI's metres x 256 in uint16, so 80 m (and anything to 255.99 m) is
    kept; 0 is no depth, a tiny positive depth is not; beyond 255.99 m is clipped with a warning."""
    import imageio.v3 as iio

    from resdepth.predict.cli import build_parser
    from resdepth.predict.outputs import write_array

    depth = np.array([[80.0, 65.535, 70.0, 255.99],
                      [np.nan, -1.0, 1e-4, 300.0]], np.float32)
    path = tmp_path / "d.png"
    with caplog.at_level("WARNING", logger="resdepth"):
        write_array(path, depth, "png")
    raw = iio.imread(path)
    assert raw.dtype == np.uint16
    back = raw.astype(np.float64) / 256.0
    np.testing.assert_allclose(back[0], depth[0], atol=1 / 512)  # 80 m stays 80 m
    assert raw[1].tolist() == [0, 0, 1, 65535]
    assert "1 pixels beyond 255.996 m written as 65535" in caplog.text
    assert "metres x 256" in " ".join(build_parser().format_help().split())


@pytest.mark.parametrize("dataset", ["mvsec", "dsec"])
def test_missing_maps_hint_names_predicts_own_flag(dataset, tmp_path, capsys):
    """--rectify true without the maps: the hint is predict's `--rectify false` (its parser has
    no --no-rectify); resdepth-shards pack keeps its own --no-rectify."""
    from resdepth.predict.config import PredictConfig
    from resdepth.predict.windows import open_recording
    from resdepth.data.cli import main as shards
    from tests.data.sources import fakes

    if dataset == "mvsec":
        fakes.write_mvsec(tmp_path, "indoor_flying1", frames=2, events_per_frame=300, calib=False)
        events, seq = tmp_path / "indoor_flying1_data.hdf5", "indoor_flying1"
    else:
        fakes.write_dsec(tmp_path, frames=2, events_per_frame=300)
        events, seq = next(tmp_path.rglob("events.h5")), "zurich_city_00_a"
        (events.parent / "rectify_map.h5").unlink()
    with pytest.raises(ValueError) as e:
        open_recording(PredictConfig(events=str(events), rectify="true"))
    assert str(e.value).endswith("(pass --rectify false to use raw pixels)") and "--no-rectify" not in str(e.value)
    assert shards(["pack", "--format", dataset, "--src", str(tmp_path), "--sequence", seq,
                   "--out", str(tmp_path / "out")]) == 1
    assert "(pass --no-rectify to use raw pixels)" in " ".join(capsys.readouterr().err.split())


def test_ctrl_c_keeps_finished_units_in_one_line(exports, tmp_path, capsys, monkeypatch):
    """Ctrl-C during the second unit: one line saying the finished units are kept, exit 130; the
    rerun completes the rest, identical to an uninterrupted run."""
    from resdepth.predict import run as predict_run
    from resdepth.predict.__main__ import cli

    np.savez(tmp_path / "rec.npz", **dict(zip("xytp", random_events(3000, seed=2))), height=H, width=W)
    args = lambda out: predict_args(exports, tmp_path / "rec.npz", out, "--window-ms", str(DUR_MS),
                                    "--no-previews", "--video", "none", diffusion=False)
    real, calls = predict_run.predict_unit, []

    def interrupted(ctx, unit, progress):
        calls.append(unit.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(ctx, unit, progress)

    monkeypatch.setattr(predict_run, "predict_unit", interrupted)
    with pytest.raises(SystemExit) as e:
        cli(args(tmp_path / "o"))
    err = capsys.readouterr().err
    assert e.value.code == 130 and "Traceback" not in err
    assert (f"resdepth-predict: interrupted; the finished units in {tmp_path / 'o'} are kept, and "
            "rerunning the same command completes the rest (the same files)") in err
    assert len(list((tmp_path / "o" / "parts").glob("*.json"))) == 1
    monkeypatch.undo()
    for out in ("o", "ref"):
        with pytest.raises(SystemExit) as e:
            cli(args(tmp_path / out))
        assert e.value.code == 0
    assert tree(tmp_path / "o", ("depth",)) == tree(tmp_path / "ref", ("depth",))
    assert frames(tmp_path / "o") == frames(tmp_path / "ref")


def test_positional_grid_net_trained_on_whole_frames_refuses_another_size_at_start(tmp_path):
    """A SongUNetPosEmbd net trained on whole 30 x 46 frames cannot run on 20 x 30 frames (its grid
    is built for the padded training frame): refused before any work, saying what works."""
    model = dict(TINY3, arch="SongUNetPosEmbd", regression_arch="SongUNetPosEmbd")
    exports = make_exports(tmp_path / "exports", size=(H, W), model=model, bins=BINS)
    h, w = 20, 30
    x, y, t, p = random_events(3000, seed=9, h=h, w=w)
    np.savez(tmp_path / "rec.npz", x=x, y=y, t=t, p=p, height=h, width=w)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        main(parse_args(predict_args(exports, tmp_path / "rec.npz", out, "--window-events", "1000",
                                     "--video", "none")))
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'rec.npz'}: the regression net has a positional grid")
    assert "20x30" in message and "trained on patches" in message and "training size (30x46)" in message
    assert not (out / "parts").exists()  # refused before the work list was written


def test_export_records_the_voxelisation_and_prediction_follows_it(mvsec, tmp_path):
    """Shards packed with splat=bilinear and 62.5 ms windows: the trained net's export records
    both, prediction voxelises with bilinear unasked, and other windows are named in a warning."""
    from tests.train.runner import TINY, train

    src = tmp_path / "mvsec"
    shutil.copytree(mvsec.parent, src)
    write_mvsec_depth(src, "outdoor_day1", window_ends())
    run_command([*_py(), "-m", "resdepth.data.cli", "pack", "--format", "mvsec", "--src", str(src),
                 "--sequence", "outdoor_day1", "--out", str(tmp_path / "shards" / "train"),
                 "--window-ms", str(DUR_MS), "--bins", str(BINS), "--splat", "bilinear"])
    run = tmp_path / "reg"
    train(["experiment=baseline_regression", f"run.dir={run}", f"data.root={tmp_path / 'shards'}",
           *TINY, "trainer.max_steps=1", "data.voxel_norm=nonzero"])
    data = json.loads((run / "export" / "model.json").read_text())["data"]
    assert data["splat"] == "bilinear" and data["window"] == "ms" and data["window_ms"] == DUR_MS
    assert data["bins"] == BINS and data["voxel_norm"] == "nonzero"
    out = tmp_path / "pred"
    proc = run_module("resdepth.predict", ["--regression", str(run), "--events", str(mvsec),
                                           "--out", str(out), "--window-ms", "50", *FAST])
    assert json.loads((out / "plan.json").read_text())["splat"] == "bilinear"
    assert "windows of 50 ms: the nets learnt from 62.5 ms windows" in proc.stderr + proc.stdout
