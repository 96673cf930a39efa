"""Shared fixtures: small synthetic shards made once per session."""
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """Synthetic shards written once per session: train 7 shards of uneven size (60 samples:
    six of 9, one of 6), val 12 and test 12 samples, 16x16 frames with 3 bins."""
    from resdepth.data.sources import SynthSource
    from resdepth.data.synthetic import SynthParams
    from resdepth.data.writer import write_split

    root = tmp_path_factory.mktemp("synth_root")
    params = SynthParams(height=16, width=16, bins=3)
    for split, n in (("train", 60), ("val", 12), ("test", 12)):
        src = SynthSource(split, n, seed=3, params=params)
        write_split(root / split, src, per_shard=9, params={"command": "synth", **src.describe()})
    return root
