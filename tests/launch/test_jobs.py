"""TrainJob's requeue decisions and the records status reads, without Slurm."""
import json
from types import SimpleNamespace

import pytest
import submitit

from resdepth.launch import records, status
from resdepth.launch.jobs import REQUEUE_EXIT_CODE, JobFailed, TrainJob


def cfg_in(path):
    return SimpleNamespace(run=SimpleNamespace(dir=str(path)))


class Scripted:
    """A stand-in for resdepth.train.main returning the given exit codes in turn."""

    def __init__(self, codes):
        self.codes = list(codes)
        self.calls = 0

    def __call__(self, cfg):
        self.calls += 1
        return self.codes.pop(0)


def test_requeue_code_matches_the_trainer():
    from resdepth.train import REQUEUE_EXIT_CODE as trainer_code

    assert REQUEUE_EXIT_CODE == trainer_code


def test_debug_executor_resumes_in_place(tmp_path):
    entry = Scripted([REQUEUE_EXIT_CODE, REQUEUE_EXIT_CODE, 0])
    job = submitit.DebugExecutor(tmp_path / "sub").submit(TrainJob(cfg_in(tmp_path), entry=entry))
    assert job.result() == 0
    assert entry.calls == 3
    assert [e["event"] for e in records.read_events(tmp_path)] == ["start", "done"]


def test_failure_code_fails_the_job(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "76")
    with pytest.raises(JobFailed, match="exit code 7"):
        TrainJob(cfg_in(tmp_path), entry=Scripted([7]))()


def test_requeue_limit_fails_with_checkpoint_named(tmp_path, monkeypatch):
    (tmp_path / "checkpoints" / "step-0000040").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-0000020").mkdir(parents=True)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    job = TrainJob(cfg_in(tmp_path), max_requeue=2, entry=Scripted([REQUEUE_EXIT_CODE]))
    with pytest.raises(JobFailed, match="requeued 2 times.*step 40"):
        job()
    assert records.read_events(tmp_path)[-1]["event"] == "requeue_limit"
    assert job.checkpoint() is None  # submitit's own handler is refused as well


def test_checkpoint_resubmits_itself(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    job = TrainJob(cfg_in(tmp_path), max_requeue=1)
    delayed = job.checkpoint()
    assert delayed.function is job
    assert records.read_events(tmp_path)[-1]["restart"] == 1


def test_status_says_dependents_never_ran(tmp_path, monkeypatch):
    stages = []
    for name, jid, parent in (("regression", "10", None), ("diffusion", "11", "regression")):
        records.add_job(tmp_path / name, jid, name, "slurm", tmp_path / name / "slurm")
        stages.append(dict(stage=name, dir=str(tmp_path / name), job_ids=[jid], depends_on=parent))
    records.write_pipeline(tmp_path, stages)
    (tmp_path / "regression" / "checkpoints" / "step-0000020").mkdir(parents=True)
    (tmp_path / "regression" / "log-rank0.txt").write_text("step 20 loss 0.5\nboom: bad shard\n")
    monkeypatch.setattr(status, "_sacct", lambda ids: {
        "10": [dict(state="FAILED", exit_code="1:0", start="2025-01-01T00:00:00", elapsed="1",
                    nodes="gpu001")],
        # accounting may still carry the expected start time of a job cancelled while pending
        "11": [dict(state="CANCELLED", exit_code="0:0", start="2025-01-01T00:00:01", elapsed="0",
                    nodes="None assigned")]})
    monkeypatch.setattr(status, "_squeue", lambda ids: {})
    rows = {r.stage: r for r in status.collect(tmp_path)}
    assert rows["regression"].state == "FAILED" and rows["regression"].step == 20
    assert rows["regression"].last_log == ["step 20 loss 0.5", "boom: bad shard"]
    assert rows["diffusion"].note == "never ran: regression job 10 FAILED"
    assert json.loads((tmp_path / "pipeline.json").read_text())["stages"][1]["depends_on"] == "regression"
