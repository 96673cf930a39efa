"""Two real gloo processes: DDP exact resume, DeepSpeed ZeRO 1/2, a simulated two-node rendezvous."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from resdepth.train.signals import REQUEUE_EXIT_CODE
from tests.train.runner import FAULTS, TINY, checksums, child_env, free_port, stats, train

pytestmark = pytest.mark.dist


def args(root: Path, run: Path, *extra: str) -> list[str]:
    return ["experiment=baseline_regression", f"data.root={root}", f"run.dir={run}", *TINY, *extra]


def test_ddp_two_ranks_exact_resume(tiny_shards, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    common = ("trainer.max_steps=20", "trainer.ckpt_every_steps=0", "trainer.batch_size=8")
    train(args(tiny_shards, full, *common), nproc=2)
    sums = checksums(full)
    assert len(sums) == 2 and sums[0] == sums[1]
    # Only rank 0 receives the signal (as from submitit); both ranks must save and stop.
    first = train(args(tiny_shards, cut, *common), nproc=2,
                  env=child_env(FAULT_SIGNAL_AT_STEP="10"), check=False, module=FAULTS)
    assert first.returncode != 0
    # torchrun shows the ranks' status 3 as a failure; stopped.json and `status` tell the truth.
    status = subprocess.run([sys.executable, "-m", "resdepth.launch", "status", str(cut)], env=child_env(),
                            capture_output=True, text=True)
    assert status.returncode == REQUEUE_EXIT_CODE, status.stdout + status.stderr
    assert "saved on SIGUSR2 at step 10" in status.stdout
    assert f"exiting with status {REQUEUE_EXIT_CODE}" in (cut / "log-rank0.txt").read_text()
    assert f"exiting with status {REQUEUE_EXIT_CODE}" in (cut / "log-rank1.txt").read_text()
    ckpt = cut / "checkpoints" / "step-0000010"
    assert (ckpt / "rank-00000.pt").exists() and (ckpt / "rank-00001.pt").exists()
    train(args(tiny_shards, cut, *common), nproc=2)
    assert (full / "export/model.safetensors").read_bytes() == (cut / "export/model.safetensors").read_bytes()
    assert stats(full) == stats(cut)


@pytest.mark.parametrize("stage", [1, 2])
def test_deepspeed_zero_two_ranks(tiny_shards, tmp_path, stage):
    run = tmp_path / f"zero{stage}"
    common = ("trainer.backend=deepspeed", f"trainer.deepspeed_config=configs/deepspeed/zero{stage}.json",
              "trainer.batch_size=8", "trainer.ckpt_every_steps=5")
    train(args(tiny_shards, run, "trainer.max_steps=10", *common), nproc=2)
    sums = checksums(run)
    assert len(sums) == 2 and sums[0] == sums[1]
    assert (run / "checkpoints/step-0000010/deepspeed").is_dir()
    # Resume through DeepSpeed's own files (loaded with weights_only=True) and go on.
    train(args(tiny_shards, run, "trainer.max_steps=14", *common), nproc=2)
    log = (run / "log-rank0.txt").read_text()
    assert "resumed from" in log and "step 14" in log
    sums = checksums(run)
    assert sums[0] == sums[1]


def test_two_node_rendezvous_on_localhost(tiny_shards, tmp_path):
    run = tmp_path / "nodes"
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
         "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
         "-m", "resdepth.train", *args(tiny_shards, run, "trainer.max_steps=10", "trainer.batch_size=8")],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:]
    sums = checksums(run)
    assert len(sums) == 2 and sums[0] == sums[1]
    assert "rank 1/2 joined gloo group via torchrun" in (run / "log-rank1.txt").read_text()
