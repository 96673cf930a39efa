"""Tiny shards of uneven size and random-weight exports shared by the evaluation tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.eval.runner import TEST_SHARD_SIZES, make_exports, write_split


@pytest.fixture(scope="session")
def eval_root(tmp_path_factory) -> Path:
    """``train/`` (2 shards) and ``test/`` (7 shards of uneven size), 32x32, 3 bins."""
    root = tmp_path_factory.mktemp("eval_shards")
    write_split(root / "train", [6, 5], seed=1)
    write_split(root / "test", TEST_SHARD_SIZES, seed=2)
    return root


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> dict[str, Path]:
    """Random-weight regression and diffusion exports (tiny U-Nets, no training)."""
    return make_exports(tmp_path_factory.mktemp("exports"))
