"""Training on shards with temporal context: the condition grows by the context's bins, the export
records the context, two gloo ranks resume exactly, and stage 2 refuses a regression net trained
with another context."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.runner import FAULTS, TINY, checksums, child_env, stats, train


@pytest.fixture(scope="module")
def context_shards(tmp_path_factory) -> Path:
    """Trajectories of 4 windows, 32x32, 3 bins, with 100 ms of context in 2 bins."""
    root = tmp_path_factory.mktemp("context_shards")
    subprocess.run([sys.executable, "-m", "resdepth.data.cli", "synth", "--out", str(root),
                    "--train", "64", "--val", "16", "--test", "0", "--height", "32", "--width",
                    "32", "--bins", "3", "--per-shard", "16", "--seed", "1", "--sequence-length",
                    "4", "--context-ms", "100", "--context-bins", "2"], check=True,
                   capture_output=True)
    return root


def args(root: Path, run: Path, *extra: str) -> list[str]:
    return ["experiment=baseline_regression", f"data.root={root}", f"run.dir={run}", *TINY, *extra]


@pytest.mark.dist
def test_two_ranks_resume_exactly_and_the_export_records_the_context(context_shards, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    common = ("trainer.max_steps=10", "trainer.ckpt_every_steps=0", "trainer.batch_size=8")
    train(args(context_shards, full, *common), nproc=2)
    sums = checksums(full)
    assert len(sums) == 2 and sums[0] == sums[1]
    meta = json.loads((full / "export/model.json").read_text())
    assert meta["data"]["context"] == {"ms": 100.0, "bins": 2}
    assert meta["spec"]["context"] == {"ms": 100.0, "bins": 2}
    assert meta["spec"]["cond_channels"] == 5 and meta["spec"]["unet"]["in_channels"] == 6
    first = train(args(context_shards, cut, *common), nproc=2,
                  env=child_env(FAULT_SIGNAL_AT_STEP="5"), check=False, module=FAULTS)
    assert first.returncode != 0
    train(args(context_shards, cut, *common), nproc=2)
    assert "resumed from" in (cut / "log-rank0.txt").read_text()
    assert (full / "export/model.safetensors").read_bytes() == (cut / "export/model.safetensors").read_bytes()
    assert stats(full) == stats(cut)


def test_stage2_refuses_a_regression_net_of_another_context(tiny_shards, context_shards, tmp_path):
    plain = tmp_path / "plain"
    train(args(tiny_shards, plain, "trainer.max_steps=1"))
    proc = train(["experiment=baseline_diffusion", f"data.root={context_shards}",
                  f"run.dir={tmp_path / 'stage2'}", f"model.regression_ckpt={plain}", *TINY,
                  "trainer.max_steps=1"], check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in text
    assert "the regression net: trained with no temporal context; this run's training split: " \
           "context 100 ms in 2 bins" in " ".join(text.split())


def test_train_and_val_splits_of_different_contexts_are_refused(context_shards, tmp_path):
    root = tmp_path / "mixed"
    shutil.copytree(context_shards / "train", root / "train")
    subprocess.run([sys.executable, "-m", "resdepth.data.cli", "reshard", str(context_shards / "val"),
                    str(root / "val"), "--per-shard", "16", "--drop-context"], check=True,
                   capture_output=True)
    proc = train(args(root, tmp_path / "run", "trainer.max_steps=1", "run.val_every=1"), check=False)
    text = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode != 0 and "Traceback" not in text
    assert ("the train split: packed with context 100 ms in 2 bins; the val split: no temporal "
            "context; pack both splits with the same --context-ms/--context-bins") in text
