"""The launcher's clear errors: job resources, damaged records, runs stopped under torchrun."""
import json
import logging
from types import SimpleNamespace

import pytest
import submitit

from resdepth.launch import records
from resdepth.launch.__main__ import cli
from resdepth.launch.jobs import REQUEUE_EXIT_CODE, TrainJob

DRY = ["train", "experiment=baseline_regression", "--dry-run"]


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli(argv)
    return e.value.code, capsys.readouterr()


@pytest.mark.parametrize("flags, message", [
    (["--nodes", "0"], "--nodes 0: must be >= 1"),
    (["--gpus-per-node", "-1"], "--gpus-per-node -1 (or profile key gpus_per_node): must be >= 0"),
    (["--time", "0"], "--time 0 (or profile key time_min): must be >= 1"),
    (["--time", "1", "--signal-delay", "120"], "--signal-delay 120: must be shorter than --time 1"),
    (["--max-requeue", "-1"], "--max-requeue -1 (profile key max_requeue): must be >= 0"),
])
def test_bad_resources_fail_before_anything_is_written(flags, message, tmp_path, capsys):
    code, out = run_cli([*DRY, "--run-dir", str(tmp_path / "r"), *flags], capsys)
    assert code == 2 and message in out.err and "Traceback" not in out.err
    assert not (tmp_path / "r").exists()


def test_all_resource_problems_at_once(tmp_path, capsys):
    code, out = run_cli([*DRY, "--run-dir", str(tmp_path / "r"), "--nodes", "0", "--time", "0"], capsys)
    assert code == 2 and "--nodes 0" in out.err and "--time 0" in out.err


def test_damaged_records_name_the_file(tmp_path, capsys, caplog):
    (tmp_path / "jobs.json").write_text('[{"job_id": "1", "kind": "train"')
    code, out = run_cli(["status", str(tmp_path)], capsys)
    assert code == 2 and f"{tmp_path / 'jobs.json'}: not valid JSON" in out.err
    (tmp_path / "pipeline.json").write_text('{"stages": 3}')
    code, out = run_cli(["status", str(tmp_path)], capsys)
    assert code == 2 and f"{tmp_path / 'pipeline.json'}: no list of stages in it" in out.err
    # A line torn by a job killed while appending is skipped with a warning naming file and line.
    records.log_event(tmp_path, "start", job_id="5")
    with open(tmp_path / "requeues.jsonl", "a") as f:
        f.write('{"time": "2026-01-01T00:00:00", "ev')
    records.log_event(tmp_path, "requeue", job_id="5")
    with caplog.at_level(logging.WARNING, logger="resdepth"):
        events = records.read_events(tmp_path)
    assert [e["event"] for e in events] == ["start", "requeue"]
    assert f"{tmp_path / 'requeues.jsonl'} line 2 is not JSON" in caplog.text


def test_status_of_a_run_stopped_under_torchrun_exits_3(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("trainer: {max_steps: 40}\n")
    code, out = run_cli(["status", str(tmp_path)], capsys)
    assert code == 1 and "not finished" in out.out
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model.json").write_text('{"step": 40}')
    code, out = run_cli(["status", str(tmp_path)], capsys)
    assert code == 0 and "finished at step 40" in out.out
    (tmp_path / "stopped.json").write_text(json.dumps(
        {"stopped": True, "step": 40, "signal": "SIGINT", "checkpoint": "c", "exit_code": 3}))
    code, out = run_cli(["status", str(tmp_path)], capsys)
    assert code == REQUEUE_EXIT_CODE and "saved on SIGINT at step 40" in out.out


def test_a_requeued_incarnation_of_a_resume_never_job_continues(tmp_path):
    seen = []

    def entry(cfg):
        seen.append((cfg.trainer.resume, cfg.run.overwrite))
        return REQUEUE_EXIT_CODE if len(seen) == 1 else 0

    cfg = SimpleNamespace(run=SimpleNamespace(dir=str(tmp_path), overwrite=True),
                          trainer=SimpleNamespace(resume="never"))
    job = submitit.DebugExecutor(tmp_path / "sub").submit(TrainJob(cfg, entry=entry))
    assert job.result() == 0
    assert seen == [("never", True), ("auto", False)]
