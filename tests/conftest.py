"""Shared fixtures: small synthetic shards made once per session."""
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pytest

from tests.shards import write_synth_splits


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """Synthetic shards written once per session: train 7 shards of uneven size (60 samples:
    six of 9, one of 6), val 12 and test 12 samples, 16x16 frames with 3 bins."""
    return write_synth_splits(tmp_path_factory.mktemp("synth_root"),
                              {"train": 60, "val": 12, "test": 12}, seed=3, per_shard=9)
