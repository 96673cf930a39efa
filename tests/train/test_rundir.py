"""The run directory: one trainer at a time, no two runs mixed, damaged checkpoints, Ctrl-C."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resdepth.train.signals import REQUEUE_EXIT_CODE
from tests.train.runner import FAULTS, TINY, child_env, stats, train


def args(root: Path, run: Path, *extra: str) -> list[str]:
    return ["experiment=baseline_regression", f"data.root={root}", f"run.dir={run}", *TINY, *extra]


@pytest.fixture(scope="module")
def ten_steps(tiny_shards, tmp_path_factory) -> Path:
    """A finished run of 10 steps with checkpoints at 5 and 10 (tests work on copies)."""
    run = tmp_path_factory.mktemp("ten") / "run"
    train(args(tiny_shards, run, "trainer.max_steps=10", "trainer.ckpt_every_steps=5"))
    return run


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def start(tiny_shards: Path, run: Path, *extra: str, env: dict | None = None,
          module: str = "resdepth.train") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args(tiny_shards, run, *extra)],
                            env=env or child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"trainer ended before {what}: {proc.communicate()[1][-3000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_resume_never_refuses_an_old_run_unless_overwrite_moves_it_aside(tiny_shards, ten_steps, tmp_path):
    run = copy_run(ten_steps, tmp_path / "run")
    old_stats = (run / "stats.jsonl").read_text()
    refused = train(args(tiny_shards, run, "trainer.max_steps=4", "trainer.resume=never"), check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert (f"run.dir={run} already holds a run (checkpoints, stats.jsonl, export, tb) and "
            "trainer.resume=never would mix") in refused.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000005", "step-0000010"]
    assert (run / "stats.jsonl").read_text() == old_stats
    train(args(tiny_shards, run, "trainer.max_steps=4", "trainer.resume=never", "run.overwrite=true",
               "trainer.ckpt_every_steps=2"))
    old = tmp_path / "run.old-1"
    assert sorted(p.name for p in (old / "checkpoints").iterdir()) == ["step-0000005", "step-0000010"]
    assert (old / "stats.jsonl").read_text() == old_stats
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert [s[0] for s in stats(run)] == [4]
    assert "was moved to " + str(old) in (run / "log-rank0.txt").read_text()
    # A later plain restart continues the new run, not the old one.
    train(args(tiny_shards, run, "trainer.max_steps=5"))
    assert "resumed from " + str(run / "checkpoints" / "step-0000004") in (run / "log-rank0.txt").read_text()
    missing = train(args(tiny_shards, run, f"trainer.resume={tmp_path / 'nope'}"), check=False)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert f"trainer.resume={tmp_path / 'nope'}: no such directory" in missing.stderr


def test_truncated_newest_checkpoint_falls_back_to_previous(tiny_shards, ten_steps, tmp_path):
    run = copy_run(ten_steps, tmp_path / "run")
    state = run / "checkpoints" / "step-0000010" / "train_state.pt"
    with open(state, "r+b") as f:
        f.truncate(state.stat().st_size // 2)
    train(args(tiny_shards, run, "trainer.max_steps=12", "trainer.ckpt_every_steps=5"))
    log = (run / "log-rank0.txt").read_text()
    assert f"checkpoint {run / 'checkpoints' / 'step-0000010'} is damaged" in log
    assert "resumed from " + str(run / "checkpoints" / "step-0000005") + " at step 5" in log
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-0000005", "step-0000010", "step-0000010.damaged", "step-0000012"], names


def test_second_trainer_on_a_run_dir_is_refused_and_a_dead_holder_is_taken_over(tiny_shards, tmp_path):
    run = tmp_path / "run"
    first = start(tiny_shards, run, "trainer.max_steps=100000")
    try:
        wait_for(lambda: (run / "stats.jsonl").exists(), first, "the first trainer's first steps")
        holder = json.loads((run / "run.lock").read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        second = train(args(tiny_shards, run, "trainer.max_steps=2"), check=False, timeout=240)
        assert second.returncode == 1 and "Traceback" not in second.stderr
        assert (f"run.dir={run} is in use by another trainer: pid {first.pid} on host "
                f"{socket.gethostname()}") in second.stderr
    finally:
        first.kill()
        first.communicate()
    # The kernel dropped the killed trainer's lock: the next one starts and says whose lock it took.
    train(args(tiny_shards, run, "trainer.max_steps=2", "trainer.resume=never", "run.overwrite=true"))
    assert f"the previous trainer (pid {first.pid} on host" in (run / "log-rank0.txt").read_text()
    assert (run / "run.lock").read_text() == ""  # released at the end


def test_stale_lock_still_held_for_a_dead_pid_is_taken_over(tiny_shards, tmp_path):
    # An orphaned process (e.g. a loader worker of a killed trainer) may still hold the flock.
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    fd = os.open(run / "run.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, json.dumps({"host": socket.gethostname(), "pid": dead.pid}).encode())
    try:
        train(args(tiny_shards, run, "trainer.max_steps=2"))
    finally:
        os.close(fd)
    assert f"holder pid {dead.pid} on host {socket.gethostname()}" in (run / "log-rank0.txt").read_text()


def test_ctrl_c_saves_and_exits_3_a_second_one_aborts(tiny_shards, tmp_path):
    run = tmp_path / "run"
    proc = start(tiny_shards, run, "trainer.max_steps=100000", "trainer.ckpt_every_steps=0")
    wait_for(lambda: (run / "stats.jsonl").exists(), proc, "the first steps")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == REQUEUE_EXIT_CODE, err[-3000:]
    assert "Ctrl-C: saving a checkpoint" in err and "Traceback" not in err
    marker = json.loads((run / "stopped.json").read_text())
    assert marker["signal"] == "SIGINT" and marker["exit_code"] == REQUEUE_EXIT_CODE
    assert Path(marker["checkpoint"]).name == f"step-{marker['step']:07d}"
    assert (Path(marker["checkpoint"]) / "meta.json").is_file()
    # Restart, and press Ctrl-C twice while the checkpoint is being written (slowed down).
    proc = start(tiny_shards, run, "trainer.max_steps=100000", "trainer.ckpt_every_steps=0",
                 env=child_env(FAULT_CKPT_DELAY="0:120"), module=FAULTS)
    wait_for(lambda: not (run / "stopped.json").exists(), proc, "the marker removed at start")
    lines = len((run / "stats.jsonl").read_text().splitlines())
    wait_for(lambda: len((run / "stats.jsonl").read_text().splitlines()) > lines, proc, "more steps")
    proc.send_signal(signal.SIGINT)
    tmp_dirs = lambda: list((run / "checkpoints").glob(".tmp-step-*"))  # noqa: E731
    wait_for(lambda: tmp_dirs() and (tmp_dirs()[0] / "rank-00000.pt").exists(), proc, "the save")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "aborted by a second Ctrl-C" in err and "Traceback" not in err
    assert not (run / "stopped.json").exists()
    assert [p.name for p in (run / "checkpoints").glob("step-*")] == [Path(marker["checkpoint"]).name]


FULL_DISK_AT_STEP_10 = """
import errno, sys, torch
real_save = torch.save
def save(obj, f, *a, **k):
    if "step-0000010" in str(f) and str(f).endswith("train_state.pt"):
        raise OSError(errno.ENOSPC, "No space left on device", str(f))
    return real_save(obj, f, *a, **k)
torch.save = save
from resdepth.train.__main__ import cli
cli(sys.argv[1:])
"""


def test_disk_full_during_a_save_says_so_and_keeps_older_checkpoints(tiny_shards, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_AT_STEP_10,
                           *args(tiny_shards, run, "trainer.max_steps=10", "trainer.ckpt_every_steps=5")],
                          env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (f"step 10: saving the checkpoint to {run / 'checkpoints'} failed: the disk is full "
            "(No space left on device)") in proc.stderr
    assert "older checkpoints are kept (step-0000005)" in proc.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000005"]


@pytest.mark.dist
def test_two_rank_job_on_a_locked_run_dir_stops_on_every_rank(tiny_shards, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / "run.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "job_id": "4242"}).encode())
    try:
        proc = train(args(tiny_shards, run, "trainer.max_steps=2", "trainer.batch_size=8"), nproc=2,
                     check=False, timeout=240)
    finally:
        os.close(fd)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"is in use by another trainer: pid {os.getpid()} on host {socket.gethostname()}, Slurm job 4242" in out
    assert "rank 0 could not claim run.dir" in out  # rank 1 stops too, without waiting for a timeout
    assert not (run / "checkpoints").exists()


def test_resume_compares_the_saved_learning_rate_with_the_schedule(tiny_shards, ten_steps, tmp_path):
    # The checkpoint records the rate its next step had; the cosine spanned max_steps=10.
    saved = torch.load(ten_steps / "checkpoints/step-0000005/train_state.pt", weights_only=True)
    assert saved["lr_schedule"]["step"] == 5
    same = copy_run(ten_steps, tmp_path / "same")
    shutil.rmtree(same / "checkpoints/step-0000010")
    train(args(tiny_shards, same, "trainer.max_steps=12", "trainer.schedule_steps=10"))
    assert "learning-rate schedule changed" not in (same / "log-rank0.txt").read_text()
    longer = copy_run(ten_steps, tmp_path / "longer")
    shutil.rmtree(longer / "checkpoints/step-0000010")
    train(args(tiny_shards, longer, "trainer.max_steps=12"))
    log = (longer / "log-rank0.txt").read_text()
    lr = saved["lr_schedule"]["lr"]
    assert (f"step-0000005: the learning-rate schedule changed: step 5 had lr {lr:.6g} when saved"
            in log), log[-3000:]
