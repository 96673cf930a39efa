"""resdepth-shards: verify catches corruption; pack (npz, MVSEC HDF5), resume, reshard, stats, inspect."""
import json
import shutil

import h5py
import numpy as np
import pytest

from resdepth.data import format as fmt
from resdepth.data.loader import ShardStream
from resdepth.data.cli import main
from tests.shards import rewrite_shard


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture
def split(synth_root, tmp_path):
    dst = tmp_path / "val"
    shutil.copytree(synth_root / "val", dst)
    return dst


def test_verify_clean(capsys, split):
    code, out = run(capsys, "verify", str(split))
    assert code == 0 and "12 samples" in out


def test_verify_truncated(capsys, split):
    p = split / "shard-000001.tar"
    p.write_bytes(p.read_bytes()[:5000])
    code, out = run(capsys, "verify", str(split))
    assert code == 1
    assert "shard-000001.tar: size 5000 bytes" in out and "shard-000001.tar: unreadable tar" in out


def test_verify_flipped_byte(capsys, split):
    p = split / "shard-000000.tar"
    b = bytearray(p.read_bytes())
    b[700] ^= 0x01  # inside the first member's payload
    p.write_bytes(bytes(b))
    code, out = run(capsys, "verify", str(split))
    assert code == 1 and "shard-000000.tar: sha256 does not match" in out


def _rewrite(split, name, mutate):
    rewrite_shard(split / name, mutate)


def test_verify_missing_depth(capsys, split):
    def drop(raw):
        if raw["__key__"] == "val_0000002":
            del raw["depth.npy"]
        return raw

    _rewrite(split, "shard-000000.tar", drop)
    code, out = run(capsys, "verify", str(split))
    assert code == 1 and "shard-000000.tar: sample 'val_0000002': depth.npy missing" in out


def test_verify_nan_events(capsys, split):
    def nan(raw):
        if raw["__key__"] == "val_0000009":
            ev = fmt.npy_load(raw["events.npy"]).copy()
            ev[0, 0, 0] = np.nan
            raw["events.npy"] = fmt.npy_bytes(ev)
        return raw

    _rewrite(split, "shard-000001.tar", nan)
    code, out = run(capsys, "verify", str(split))
    assert code == 1
    assert "shard-000001.tar: sample 'val_0000009': events.npy holds 1 non-finite values" in out


def test_synth_resume_keeps_complete_shards(capsys, tmp_path):
    args = ["synth", "--out", str(tmp_path), "--train", "12", "--val", "0", "--test", "0",
            "--height", "8", "--width", "8", "--bins", "2", "--per-shard", "4"]
    assert run(capsys, *args)[0] == 0
    train = tmp_path / "train"
    want = {p.name: p.read_bytes() for p in train.glob("*.tar")}
    # simulate an interruption: index and one shard gone, a half-written temporary left behind
    (train / "index.json").unlink()
    (train / "shard-000001.tar").unlink()
    (train / ".shard-000001.tar.tmp").write_bytes(b"partial")
    code, out = run(capsys, *args)
    assert code == 1 and "--resume" in out
    mtime0 = (train / "shard-000000.tar").stat().st_mtime_ns
    assert run(capsys, *args, "--resume")[0] == 0
    assert (train / "shard-000000.tar").stat().st_mtime_ns == mtime0
    assert {p.name: p.read_bytes() for p in train.glob("*.tar")} == want
    assert not list(train.glob(".*tmp")) and run(capsys, "verify", str(train))[0] == 0


def test_pack_npz_raw_and_voxel(capsys, tmp_path):
    src = tmp_path / "npz"
    src.mkdir()
    rng = np.random.default_rng(0)
    depth = rng.uniform(1, 50, (6, 8)).astype(np.float32)
    depth[0, 0] = np.nan
    np.savez(src / "a.npz", x=np.array([0, 7]), y=np.array([0, 5]), t=np.array([0.0, 1.0]),
             p=np.array([1, 0]), depth=depth)
    np.savez(src / "b.npz", events=np.ones((3, 6, 8), np.float32), depth=depth,
             mask=np.ones((6, 8), np.uint8))
    code, out = run(capsys, "pack", "--src", str(src), "--out", str(tmp_path / "out"), "--bins", "3")
    assert code == 0, out
    samples = [fmt.decode_sample(r) for r in fmt.iter_shard(str(tmp_path / "out" / "shard-000000.tar"))]
    assert [s["key"] for s in samples] == ["a", "b"]
    assert samples[0]["events"][0, 0, 0] == 1 and samples[0]["events"][2, 5, 7] == -1
    assert samples[1]["mask"][0, 0, 0] == 0 and samples[1]["depth"][0, 0, 0] == 0


def test_pack_mvsec_hdf5_round_trip(capsys, tmp_path):
    H, W, M = 6, 8, 4
    ts = np.array([0.0, 0.1, 0.2, 0.3])
    rng = np.random.default_rng(1)
    n = 400
    t = np.sort(rng.uniform(0, 0.3, n))
    ev = np.stack([rng.integers(0, W, n), rng.integers(0, H, n), t, rng.choice([-1, 1], n)], 1)
    depth = rng.uniform(2, 30, (M, H, W)).astype(np.float32)
    depth[2, 1, 1] = np.nan
    path = tmp_path / "outdoor_day1_data.hdf5"
    with h5py.File(path, "w") as f:
        f["davis/left/events"] = ev
        f["davis/left/depth_image_rect"] = depth
        f["davis/left/depth_image_rect_ts"] = ts
    out = tmp_path / "mvsec"
    code, text = run(capsys, "pack", "--src", str(path), "--out", str(out), "--bins", "3",
                     "--per-shard", "2")
    assert code == 0, text
    assert run(capsys, "verify", str(out))[0] == 0
    index = fmt.read_index(out)
    assert index["num_samples"] == 3 and index["shapes"]["events.npy"] == [3, H, W]
    s = ShardStream(str(out), mode="eval", batch_size=8, index=index)
    b = next(iter(s))
    from resdepth.data.voxel import events_to_voxel

    for i in range(3):
        sel = (t >= ts[i]) & (t < ts[i + 1])
        want = events_to_voxel(ev[sel, 0], ev[sel, 1], t[sel], ev[sel, 3], 3, H, W, ts[i], ts[i + 1])
        np.testing.assert_allclose(b["events"][i].numpy(), want.astype(np.float16), atol=1e-3)
        d = depth[i + 1]
        np.testing.assert_allclose(b["depth_m"][i, 0].numpy(), np.nan_to_num(d, nan=0.0))
        assert (b["mask"][i, 0].numpy() == np.isfinite(d)).all()
    assert b["key"][0] == "outdoor_day1_000001"


def test_reshard_stats_inspect(capsys, synth_root, tmp_path):
    out = tmp_path / "re"
    assert run(capsys, "reshard", str(synth_root / "val"), str(out), "--per-shard", "5")[0] == 0
    index = fmt.read_index(out)
    assert [s["nsamples"] for s in index["shards"]] == [5, 5, 2]
    old = fmt.read_index(synth_root / "val")
    assert index["depth_stats"] == pytest.approx(old["depth_stats"])
    data = json.loads((out / "index.json").read_text())
    data["depth_stats"] = {}
    (out / "index.json").write_text(json.dumps(data))
    assert run(capsys, "stats", str(out))[0] == 0
    assert fmt.read_index(out)["depth_stats"] == pytest.approx(old["depth_stats"])
    code, text = run(capsys, "inspect", str(out), "--png", str(tmp_path / "p.png"))
    assert code == 0 and "val_0000000" in text and (tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.parametrize("change,message", [
    (lambda d, m: (np.where(m > 0, -d, d), m), "pixels with mask 1 have depth that is not finite and > 0 (e.g. -"),
    (lambda d, m: (np.where(m > 0, np.float32(np.nan), d), m), "non-finite values"),
    (lambda d, m: (d, m * 2), "mask.npy holds values other than 0 and 1 ([2])"),
])
def test_bad_labels_fail_verify_and_training(capsys, split, change, message):
    def bad(raw):
        if raw["__key__"] == "val_0000004":
            d, m = change(fmt.npy_load(raw["depth.npy"]), fmt.npy_load(raw["mask.npy"]))
            raw["depth.npy"], raw["mask.npy"] = fmt.npy_bytes(d.astype(np.float32)), fmt.npy_bytes(m)
        return raw

    _rewrite(split, "shard-000000.tar", bad)
    code, out = run(capsys, "verify", str(split))
    assert code == 1 and "shard-000000.tar: sample 'val_0000004': " in out and message in out
    urls = [str(split / "shard-000000.tar"), str(split / "shard-000001.tar")]
    with pytest.raises(fmt.DataError, match="sample 'val_0000004'"):
        list(ShardStream(urls, batch_size=2, rank=0, world_size=1))
    s = ShardStream(urls, batch_size=2, rank=0, world_size=1, on_error="skip")
    keys = [k for b in s for k in b["key"]]
    assert "val_0000004" not in keys and s.skipped >= 1


def test_verify_meta_not_an_object(capsys, split):
    def meta(raw):
        if raw["__key__"] == "val_0000001":
            raw["meta.json"] = b"null"
        return raw

    _rewrite(split, "shard-000000.tar", meta)
    code, out = run(capsys, "verify", str(split))
    assert code == 1 and "sample 'val_0000001': meta.json holds a NoneType, not an object" in out


def test_verify_duplicate_key_across_shards(capsys, split):
    def rename(raw):
        if raw["__key__"] == "val_0000010":
            raw["__key__"] = "val_0000003"
        return raw

    _rewrite(split, "shard-000001.tar", rename)
    code, out = run(capsys, "verify", str(split))
    assert code == 1
    assert "shard-000001.tar: sample 'val_0000003': key also in shard-000000.tar" in out


def _npz_dir(tmp_path, names, events=None):
    src = tmp_path / "npz"
    src.mkdir()
    depth = np.full((6, 8), 5.0, np.float32)
    for name in names:
        ev = np.ones((2, 6, 8), np.float32) if events is None else events
        np.savez(src / f"{name}.npz", events=ev, depth=depth)
    return src


def test_pack_refuses_keys_that_collide(capsys, tmp_path):
    src = _npz_dir(tmp_path, ["scene.1", "scene_1", "scene_2"])
    code, out = run(capsys, "pack", "--src", str(src), "--out", str(tmp_path / "out"))
    assert code == 1
    assert "sample key 'scene_1' twice: in scene.1.npz and in scene_1.npz" in " ".join(out.split())
    assert not (tmp_path / "out" / "index.json").exists()


@pytest.mark.parametrize("value,message", [(np.nan, "events hold 1 NaN or infinite values"),
                                           (1e5, "events reach 100000, beyond float16's 65504")])
def test_pack_refuses_events_float16_cannot_hold(capsys, tmp_path, value, message):
    ev = np.ones((2, 6, 8), np.float32)
    ev[1, 2, 3] = value
    src = _npz_dir(tmp_path, ["a"], events=ev)
    code, out = run(capsys, "pack", "--src", str(src), "--out", str(tmp_path / "out"))
    out = " ".join(out.split())
    assert code == 1 and "sample 'a' (a.npz): " + message in out, out
    assert not (tmp_path / "out" / "index.json").exists()


@pytest.mark.parametrize("complete", [True, False])
def test_synth_resume_refuses_other_parameters(capsys, tmp_path, complete):
    args = ["synth", "--out", str(tmp_path), "--train", "8", "--val", "0", "--test", "0",
            "--height", "8", "--width", "8", "--bins", "2", "--per-shard", "4"]
    assert run(capsys, *args)[0] == 0
    if not complete:  # what an interrupted run leaves: shards and .parts/params.json, no index
        index = tmp_path / "train" / "index.json"
        (tmp_path / "train" / ".parts").mkdir()
        (tmp_path / "train" / ".parts" / "params.json").write_text(
            json.dumps(json.loads(index.read_text())["params"]))
        index.unlink()
    for extra, change in ((["--seed", "1"], "seed: 0 -> 1"), (["--bins", "3"], "bins: 2 -> 3"),
                          (["--train", "12"], "samples: 8 -> 12")):
        argv = args + extra if extra[0] != "--train" else [*args[:4], "12", *args[5:]]
        code, out = run(capsys, *argv, "--resume")
        assert code == 1 and change in " ".join(out.split()), out
    assert run(capsys, *args, "--resume")[0] == 0
