"""Voxel grid, normalisation, synthetic samples, index and pack round-trips."""
import json

import numpy as np
import pytest
import torch

from resdepth.data import format as fmt
from resdepth.data.norm import DepthNorm
from resdepth.data.synthetic import SynthParams, synth_sample
from resdepth.data.voxel import events_to_voxel, normalize_voxel


def test_voxel_matches_hand_computed():
    # B=3 over [0, 1]: t* = 2t. t=0 -> bin 0; t=0.25 -> t*=0.5 split 0/1; t=0.75 -> 1.5 split 1/2;
    # t=1 -> bin 2 entirely.
    x = np.array([0, 1, 1, 2]); y = np.array([0, 0, 1, 1]); t = np.array([0.0, 0.25, 0.75, 1.0])
    p = np.array([1, 0, 1, -1])
    g = events_to_voxel(x, y, t, p, bins=3, height=2, width=3, t0=0.0, t1=1.0)
    want = np.zeros((3, 2, 3), np.float32)
    want[0, 0, 0] = 1.0
    want[0, 0, 1], want[1, 0, 1] = -0.5, -0.5
    want[1, 1, 1], want[2, 1, 1] = 0.5, 0.5
    want[2, 1, 2] = -1.0
    np.testing.assert_allclose(g, want, atol=1e-6)
    assert g.dtype == np.float32


def test_voxel_drops_outside_and_normalises():
    g = events_to_voxel(np.array([0, 5]), np.array([0, 0]), np.array([0.5, 0.5]), np.array([1, 1]),
                        2, 1, 2, 0.0, 1.0)
    assert g.sum() == pytest.approx(1.0)
    n = normalize_voxel(np.array([[[0.0, 1.0, 3.0]]], np.float32))
    assert n[0, 0, 0] == 0 and n[0, 0, 1:].mean() == pytest.approx(0.0)


@pytest.mark.parametrize("kind", ["log", "linear", "inverse"])
def test_depth_norm_round_trip(kind):
    norm = DepthNorm(kind=kind)
    d = torch.tensor([0.0, 2.0, 10.0, 40.0, 79.0])
    x = norm.normalize(d)
    assert x[0] == 0 and ((x >= 0) & (x <= 1)).all()
    torch.testing.assert_close(norm.denormalize(x)[1:], d[1:], rtol=1e-5, atol=1e-4)
    assert DepthNorm.from_dict(norm.to_dict()) == norm
    if kind == "log":
        assert x[4] == pytest.approx(1 + np.log(79 / 80) / 3.7, rel=1e-6)


def test_synthetic_is_deterministic_and_splits_differ():
    p = SynthParams(height=24, width=32, bins=4)
    a, b = synth_sample(0, "train", 5, p), synth_sample(0, "train", 5, p)
    assert np.array_equal(a["events"], b["events"]) and np.array_equal(a["depth"], b["depth"])
    assert not np.array_equal(a["depth"], synth_sample(0, "val", 5, p)["depth"])
    assert a["events"].shape == (4, 24, 32) and a["depth"].shape == (1, 24, 32)
    valid = a["mask"] > 0
    assert np.isfinite(a["depth"]).all() and (a["depth"][~valid] == 0).all()
    assert a["depth"][valid].min() > 1.0 and a["depth"][valid].max() <= 80.0
    assert np.abs(a["events"]).sum() > 0


def test_read_index_errors(tmp_path):
    with pytest.raises(fmt.DataError, match="no such split directory"):
        fmt.read_index(tmp_path / "nope")
    (tmp_path / "shard-000000.tar").write_bytes(b"")
    with pytest.raises(fmt.DataError, match="index.json: missing.*--resume"):
        fmt.read_index(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"version": 1}))
    with pytest.raises(fmt.DataError, match="lacks shards"):
        fmt.read_index(tmp_path)


def test_index_contents(synth_root):
    index = fmt.read_index(synth_root / "train")
    assert index["num_samples"] == 60 and [s["nsamples"] for s in index["shards"]] == [9] * 6 + [6]
    assert index["shapes"]["events.npy"] == [3, 16, 16] and index["bins"] == 3
    s = index["depth_stats"]
    assert 0 < s["min"] <= s["p2"] <= s["mean"] <= s["p98"] <= s["max"] <= 80
    for e in index["shards"]:
        assert fmt.sha256_file(synth_root / "train" / e["name"]) == e["sha256"]


def test_voxel_grids_are_normalised_in_one_place():
    """``events_to_voxel`` makes the grid as shards store it; normalisation is the net input's
    (``resdepth.data.netinput.net_input``), so the voxeliser has no second switch for it."""
    import inspect

    from resdepth.data.netinput import net_input

    assert "normalize" not in inspect.signature(events_to_voxel).parameters
    g = events_to_voxel(np.array([0, 1, 2]), np.array([0, 1, 0]), np.array([0.0, 0.5, 1.0]),
                        np.array([1, -1, 1]), bins=2, height=2, width=3)
    want = normalize_voxel(g.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(net_input(g, "nonzero"), want)
    assert net_input(g, "none").dtype == np.float32
