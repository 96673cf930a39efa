"""Training on data that holds no good sample stops with one clear error, not an endless skip loop."""
from __future__ import annotations

import re
import shutil

from tests.shards import rewrite_shard
from tests.train.runner import TINY, train


def _without_depth(src, dst):
    rewrite_shard(src, lambda raw: {k: v for k, v in raw.items() if k != "depth.npy"}, dst)


def test_skip_with_no_good_sample_stops(tiny_shards, tmp_path):
    root = tmp_path / "bad"
    (root / "train").mkdir(parents=True)
    shutil.copy(tiny_shards / "train" / "index.json", root / "train")
    for tar in (tiny_shards / "train").glob("*.tar"):
        _without_depth(tar, root / "train" / tar.name)
    run = tmp_path / "run"
    proc = train(["experiment=baseline_regression", *TINY, f"data.root={root}", f"run.dir={run}",
                  "data.on_error=skip", "data.max_consecutive_skips=40", "data.num_workers=2",
                  "trainer.max_steps=5"], check=False, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    # the error is one line; a loader worker may still log a line of its own after it
    errors = [line for line in proc.stderr.splitlines() if line.startswith("resdepth-train: error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    err = errors[0]
    assert err.startswith("resdepth-train: error: loader worker ")
    assert "40 bad samples in a row (data.max_consecutive_skips=40)" in err
    assert "depth.npy missing" in err and "Traceback" not in proc.stderr
    log = (run / "log-rank0.txt").read_text()
    assert log.count("skipped bad data") <= 2 * 10  # ten per worker, then only counted
    assert re.search(r"train data: skipped \d+ bad samples on rank 0 in all", log)
