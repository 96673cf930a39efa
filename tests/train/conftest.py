"""Tiny synthetic shards shared by the training tests."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """64 train / 16 val / 16 test samples of 32x32 with 3 bins, in shards of 16."""
    root = tmp_path_factory.mktemp("tiny_shards")
    subprocess.run([sys.executable, "-m", "resdepth.data.cli", "synth", "--out", str(root),
                    "--train", "64", "--val", "16", "--test", "16", "--height", "32",
                    "--width", "32", "--bins", "3", "--per-shard", "16", "--seed", "1"],
                   check=True, capture_output=True)
    return root
