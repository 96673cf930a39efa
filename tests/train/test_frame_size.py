"""Frames whose size is no multiple of the U-Net's: both stages train on crops (stage 2 with its
positional grid cut at each crop and patch), validate and evaluate on whole frames, with the
E2Depth voxel normalisation recorded in the exports and applied by evaluation."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train.runner import TINY, train

H, W = 26, 34  # the U-Net below takes multiples of 4: runs on 28x36
NET = ["model.channel_mult=[1,2,2]", "model.attn_resolutions=[7]", "data.voxel_norm=nonzero",
       "trainer.max_steps=2", "run.val_every=2", "run.val_batches=1", "data.crop=[18,22]"]


@pytest.fixture(scope="module")
def odd_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("odd_shards")
    subprocess.run([sys.executable, "-m", "resdepth.data.cli", "synth", "--out", str(root),
                    "--train", "8", "--val", "4", "--test", "5", "--height", str(H),
                    "--width", str(W), "--bins", "3", "--per-shard", "4", "--seed", "2"],
                   check=True, capture_output=True)
    return root


@pytest.fixture(scope="module")
def runs(odd_root, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("odd_runs")
    reg, diff = base / "reg", base / "diff"
    common = [f"data.root={odd_root}", *TINY, *NET]
    train(["experiment=baseline_regression", f"run.dir={reg}", *common])
    diff_args = ["experiment=baseline_diffusion", f"run.dir={diff}", f"model.regression_ckpt={reg}",
                 "diffusion.patch_shape=[10,10]", "diffusion.patch_num=2", "diffusion.num_steps=2",
                 *common]
    dry = train([*diff_args, "--dry-run"])
    assert "dry run: train batch [2, 3, 18, 22]: loss" in dry.stdout, dry.stdout
    assert "dry run: val batch [2, 3, 26, 34]: loss" in dry.stdout, dry.stdout
    refused = train([*diff_args, "data.voxel_norm=none", "--dry-run"], check=False)
    assert refused.returncode != 0 and "data.voxel_norm=nonzero" in refused.stderr, refused.stderr
    train(diff_args)
    return {"regression": reg, "diffusion": diff}


def test_training_exports_record_size_and_voxel_norm(runs):
    for stage, run in runs.items():
        meta = json.loads((run / "export" / "model.json").read_text())
        assert meta["data"] == {"bins": 3, "height": H, "width": W, "voxel_norm": "nonzero"}
        assert meta["spec"]["unet"]["img_resolution"] == [28, 36]
        val = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
        assert any(np.isfinite(r.get("val_loss", np.nan)) for r in val), stage


def test_eval_whole_frames_and_patches(runs, odd_root, tmp_path):
    """Predictions have the frame's size; metrics count exactly the valid pixels of the frames."""
    from resdepth.data.format import iter_shard, decode_sample, shard_paths
    from resdepth.data.norm import DepthNorm
    from resdepth.data.voxel import apply_voxel_norm
    from resdepth.eval import main, parse_args
    from resdepth.models.export import load_export
    from tests.eval.test_eval import read_tar

    samples = {}
    for url in shard_paths(odd_root / "test"):
        for raw in iter_shard(url):
            d = decode_sample(raw, None)
            samples[d["key"]] = d
    valid = sum(int((d["mask"] > 0).sum()) for d in samples.values())
    results = {}
    for name, extra in (("whole", ["--save-predictions"]),
                        ("patch", ["--patch", "10", "--overlap", "2", "--boundary", "1"])):
        out = tmp_path / name
        cfg = parse_args(["--regression", str(runs["regression"]), "--diffusion",
                          str(runs["diffusion"]), "--data", str(odd_root / "test"), "--out", str(out),
                          "--device", "cpu", "--ensemble", "2", "--steps", "2", "--batch", "2",
                          "--baseline", "none", *extra])
        assert main(cfg) == 0
        results[name] = json.loads((out / "metrics.json").read_text())
        assert results[name]["num_samples"] == 5
        assert results[name]["num_valid_pixels"] == valid
        assert all(np.isfinite(v) for v in results[name]["diffusion"].values())
    preds = {}
    for p in sorted((tmp_path / "whole" / "predictions").glob("pred-*.tar")):
        preds.update(read_tar(p))
    assert sorted(preds) == sorted(samples)
    net, meta = load_export(runs["regression"])
    key = sorted(samples)[0]
    assert preds[key]["regression"].shape == preds[key]["mean"].shape == (1, H, W)
    events = torch.from_numpy(apply_voxel_norm(samples[key]["events"].astype(np.float32), "nonzero"))
    with torch.no_grad():
        expect = DepthNorm.from_dict(meta["norm"]).denormalize(net(events[None]))[0].numpy()
    np.testing.assert_allclose(preds[key]["regression"], expect, rtol=1e-5, atol=1e-5)
