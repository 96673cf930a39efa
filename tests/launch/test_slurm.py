"""Jobs on a real Slurm (``launch/local_slurm.sh start``): requeue, multi-task training, pipelines.

Skipped when ``sinfo`` is absent or the node is not up. The stand-in tests need only Slurm; the
others run the real trainer, evaluator and ``resdepth-shards`` on tiny synthetic data.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import pytest

from resdepth.launch import records, status, submit
from resdepth.launch.cluster import Resources, load_profile

# The stand-in entry point below travels to the job by value: the job cannot import tests/.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _node_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return out.returncode == 0 and any(s.startswith(("idle", "mix", "alloc")) for s in out.stdout.split())


pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(not _node_up(), reason="no local Slurm (launch/local_slurm.sh start)")]

TINY = ["trainer.max_steps=40", "trainer.batch_size=4", "model.model_channels=8",
        "model.channel_mult=[1,2]", "model.num_blocks=1", "model.attn_resolutions=[]",
        "data.num_workers=0", "run.val_every=0", "trainer.ckpt_every_steps=10",
        "trainer.ckpt_every_minutes=0", "trainer.precision=fp32"]
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")


# ---------------------------------------------------------------------------------------------
# helpers


def local_resources(tasks: int = 1, **kw) -> Resources:
    return Resources.from_profile(load_profile("local"), tasks_per_node=tasks, time_min=10, **kw)


def sacct_states(job_id: str) -> list[str]:
    """States of every incarnation of a job, oldest first (REQUEUED for each requeue)."""
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-j", job_id, "--format=State"],
                         capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.split()]


def wait_final(job_id: str, timeout_s: float = 300) -> str:
    """Poll accounting until the job's newest incarnation is final (records arrive a bit late)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
        states = sacct_states(job_id)
        if not queued.stdout.strip() and states and states[-1] in FINAL:
            return states[-1]
        time.sleep(1)
    raise TimeoutError(f"job {job_id} not final after {timeout_s} s: {sacct_states(job_id)}")


def wait_for(predicate, what: str, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------
# a stand-in for resdepth.train.main with the trainer's contract: stop signals set a flag, the loop
# saves at the next step boundary and returns 3; it resumes from its newest checkpoint.


def standin_main(cfg) -> int:
    import os

    run = Path(cfg.run.dir)
    rank = int(os.environ.get("SLURM_PROCID", "0"))
    stop = []
    previous = {s: signal.signal(s, lambda n, f: stop.append(n)) for s in (signal.SIGUSR2, signal.SIGTERM)}
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    step, value = (0, 1) if not ckpts else json.loads((ckpts[-1] / "state.json").read_text())
    with open(run / f"log-rank{rank}.txt", "a") as log:
        log.write(f"start at step {step}\n")
    try:
        while step < cfg.max_steps:
            time.sleep(cfg.step_s)
            step, value = step + 1, (value * 31 + step) % 1_000_003  # order-dependent "weights"
            if rank == 0 and (step % 5 == 0 or stop):
                d = run / "checkpoints" / f"step-{step:07d}"
                tmp = d.with_name(d.name + ".tmp")
                tmp.mkdir(parents=True, exist_ok=True)
                (tmp / "state.json").write_text(json.dumps([step, value]))
                tmp.rename(d)
            if stop:
                return 3
        if rank == 0:
            (run / "export").mkdir(exist_ok=True)
            (run / "export" / "model.json").write_text(json.dumps({"step": step, "value": value}))
        return 0
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def standin_cfg(run: Path, max_steps: int = 40, step_s: float = 0.5):
    return SimpleNamespace(run=SimpleNamespace(dir=str(run)), max_steps=max_steps, step_s=step_s)


def reference_export(max_steps: int = 40) -> dict:
    value = 1
    for step in range(max_steps):
        value = (value * 31 + step) % 1_000_003
    return {"step": max_steps, "value": value}


def submit_standin(run: Path, tasks: int = 1, max_requeue: int = 3):
    run.mkdir(parents=True)
    return submit.submit_train(standin_cfg(run), local_resources(tasks), "slurm", max_requeue,
                               entry=standin_main)


def checkpoint_at_least(run: Path, step: int):
    return lambda: (records.newest_checkpoint_step(run) or 0) >= step


# ---------------------------------------------------------------------------------------------
# requeue through our TrainJob, with the stand-in (needs only Slurm)


def test_standin_usr2_requeues_and_resumes(tmp_path):
    run = tmp_path / "usr2"
    sub = submit_standin(run, tasks=2)
    jid = sub.job_ids[0]
    wait_for(checkpoint_at_least(run, 5), "a first checkpoint")
    subprocess.run(["scancel", "--signal=USR2", jid], check=True)
    assert wait_final(jid) == "COMPLETED"
    assert "REQUEUED" in sacct_states(jid)
    events = records.read_events(run)
    requeues = [e for e in events if e["event"] == "requeue"]
    assert len(requeues) == 1 and requeues[0]["by"] == "job" and requeues[0]["step"] >= 5
    assert [e["restart"] for e in events if e["event"] == "start"] == [0, 1]
    starts = (run / "log-rank0.txt").read_text().split("\n")
    assert starts[0] == "start at step 0" and int(starts[1].split()[-1]) >= 5  # resumed
    assert json.loads((run / "export" / "model.json").read_text()) == reference_export()
    assert sub.jobs[0].results() == [0, 0]


def test_standin_scontrol_requeue_resumes_from_periodic_checkpoint(tmp_path):
    run = tmp_path / "scontrol"
    sub = submit_standin(run)
    jid = sub.job_ids[0]
    wait_for(checkpoint_at_least(run, 5), "a first checkpoint")
    subprocess.run(["scontrol", "requeue", jid], check=True)
    assert wait_final(jid) == "COMPLETED"
    assert "REQUEUED" in sacct_states(jid)
    assert [e["restart"] for e in records.read_events(run) if e["event"] == "start"] == [0, 1]
    assert json.loads((run / "export" / "model.json").read_text()) == reference_export()


def test_standin_requeue_limit_ends_failed_and_status_says_so(tmp_path, capsys):
    run = tmp_path / "limit"
    sub = submit_standin(run, max_requeue=0)
    jid = sub.job_ids[0]
    wait_for(checkpoint_at_least(run, 5), "a first checkpoint")
    subprocess.run(["scancel", "--signal=USR2", jid], check=True)
    assert wait_final(jid) == "FAILED"
    (row,) = status.collect(run)
    assert row.state == "FAILED" and row.note == "stopped: requeue limit reached"
    assert row.step is not None and row.step >= 5


# ---------------------------------------------------------------------------------------------
# the real trainer and evaluator (need resdepth.train, resdepth.eval and resdepth-shards)


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    # resdepth-shards synth ... (the module form works before the console script is installed)
    subprocess.run([sys.executable, "-m", "resdepth.data.cli", "synth", "--out", str(out), "--train", "64", "--val", "16",
                    "--test", "16", "--height", "32", "--width", "32"], check=True)
    return out


def tiny(shards: Path, *more: str) -> list[str]:
    return ["experiment=baseline_regression", f"data.root={shards}", *TINY, *more]


def export_bytes(run: Path) -> bytes:
    return (run / "export" / "model.safetensors").read_bytes()


def test_two_task_training_finishes(tmp_path, shards):
    cfg = submit.train_config(tiny(shards), str(tmp_path / "run"))
    sub = submit.submit_train(cfg, local_resources(2), "slurm", max_requeue=3)
    assert wait_final(sub.job_ids[0], 600) == "COMPLETED"
    assert sub.jobs[0].results() == [0, 0]
    assert (tmp_path / "run" / "export" / "model.safetensors").exists()
    assert (tmp_path / "run" / "log-rank1.txt").exists()  # both ranks trained


@pytest.mark.parametrize("interrupt", ["usr2", "scontrol"])
def test_interrupted_training_is_bit_identical(tmp_path, shards, interrupt):
    ref_cfg = submit.train_config(tiny(shards), str(tmp_path / "ref"))
    cut_cfg = submit.train_config(tiny(shards), str(tmp_path / "cut"))
    ref = submit.submit_train(ref_cfg, local_resources(1), "slurm", max_requeue=3)
    cut = submit.submit_train(cut_cfg, local_resources(1), "slurm", max_requeue=3)
    wait_for(checkpoint_at_least(tmp_path / "cut", 10), "a periodic checkpoint", 600)
    if interrupt == "usr2":
        subprocess.run(["scancel", "--signal=USR2", cut.job_ids[0]], check=True)
    else:
        subprocess.run(["scontrol", "requeue", cut.job_ids[0]], check=True)
    assert wait_final(cut.job_ids[0], 600) == "COMPLETED"
    assert wait_final(ref.job_ids[0], 600) == "COMPLETED"
    assert "REQUEUED" in sacct_states(cut.job_ids[0])
    assert "REQUEUED" not in sacct_states(ref.job_ids[0])
    assert export_bytes(tmp_path / "cut") == export_bytes(tmp_path / "ref")


def _dependency_of(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    return next((w.split("=", 1)[1] for w in out.stdout.split() if w.startswith("Dependency=")), "")


def test_pipeline_runs_to_metrics(tmp_path, shards):
    root = tmp_path / "pipe"
    subs = submit.submit_pipeline(root, "baseline_regression", "baseline_diffusion",
                                  [f"data.root={shards}", *TINY], local_resources(1), "slurm", 3,
                                  None, ["ensemble=2", "steps=4"], array=2)
    reg, diff, evals, merge = subs
    assert _dependency_of(diff.job_ids[0]).startswith(f"afterok:{reg.job_ids[0]}")
    assert _dependency_of(merge.job_ids[0]).startswith(f"afterok:{evals.base_id}")
    assert wait_final(merge.job_ids[0], 900) == "COMPLETED"
    for s in subs:
        assert wait_final(s.base_id) == "COMPLETED"
    assert len(evals.job_ids) == 2
    assert (root / "eval" / "metrics.json").exists()
    assert json.loads((root / "pipeline.json").read_text())["stages"][1]["depends_on"] == "regression"
    assert all(r.state == "COMPLETED" for r in status.collect(root))


def test_failed_regression_cancels_dependents(tmp_path, shards):
    root = tmp_path / "pipe"
    subs = submit.submit_pipeline(root, "baseline_regression", "baseline_diffusion",
                                  [f"data.root={shards}", *TINY], local_resources(1), "slurm", 3,
                                  None, [], array=1,
                                  regression_overrides=[f"data.root={tmp_path}/no-such-shards"])
    reg, diff, evals, merge = subs
    assert wait_final(reg.job_ids[0]) == "FAILED"
    for s in (diff, evals, merge):
        assert wait_final(s.base_id, 60) == "CANCELLED"
    rows = {r.stage: r for r in status.collect(root)}
    assert rows["diffusion"].note.startswith(f"never ran: regression job {reg.job_ids[0]} FAILED")
    assert not (root / "diffusion" / "log-rank0.txt").exists()
    out = subprocess.run([sys.executable, "-m", "resdepth.launch", "status", str(root)],
                         capture_output=True, text=True, check=True).stdout
    assert "never ran" in out and "FAILED" in out


def test_predict_array_writes_what_one_process_writes(tmp_path):
    """``resdepth-launch predict``: two array tasks share the windows, a merge job lists them."""
    import numpy as np

    from resdepth.predict import main
    from tests.eval.runner import make_exports

    exports = make_exports(tmp_path / "exports", size=(24, 32))
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0.0, 0.53, 6000))  # 10 whole windows of 50 ms
    np.savez(tmp_path / "rec.npz", x=rng.integers(0, 32, 6000), y=rng.integers(0, 24, 6000), t=t,
             p=rng.choice([-1, 1], 6000), height=24, width=32)
    args = [f"regression={exports['regression']}", f"diffusion={exports['diffusion']}",
            f"events={tmp_path / 'rec.npz'}", "window_ms=50", "unit_size=2", "ensemble=2",
            "steps=3", "device=cpu", "video=gif"]
    cfg = submit.predict_config([*args, f"out={tmp_path / 'array'}"])
    tasks, merge = submit.submit_predict(cfg, local_resources(1), "slurm", array=2)
    assert _dependency_of(merge.job_ids[0]).startswith(f"afterok:{tasks.base_id}")
    assert wait_final(merge.job_ids[0], 600) == "COMPLETED"
    assert main(submit.predict_config([*args, f"out={tmp_path / 'one'}"])) == 0
    one, arr = tmp_path / "one", tmp_path / "array"
    assert (arr / "frames.csv").read_text() == (one / "frames.csv").read_text()
    assert len((one / "frames.csv").read_text().splitlines()) == 1 + 10
    for kind in ("depth", "std"):
        names = sorted(p.name for p in (one / kind).glob("*.npy"))
        assert names and names == sorted(p.name for p in (arr / kind).glob("*.npy"))
        assert all((one / kind / n).read_bytes() == (arr / kind / n).read_bytes() for n in names)
    assert (arr / "preview.gif").exists()
    assert len(list((arr / "logs").glob("task-*"))) == 2
