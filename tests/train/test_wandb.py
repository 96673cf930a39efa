"""Weights & Biases beside TensorBoard, offline (no network): what a run writes to W&B's own files,
one W&B run across resumes with each step once, stage 2 naming stage 1, evaluation results, and
training that goes on when W&B is missing or broken.

W&B's transaction logs (``run-ID.wandb``) are read back with ``log_records`` and W&B's protobuf
records, the files ``wandb sync`` uploads.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
import wandb
from wandb.proto import wandb_internal_pb2 as pb

from resdepth.config import load_config
from resdepth.train.config import Config
from resdepth.train.wandb_sink import RUN_FILE, log_records, logged_step
from tests.procs import ROOT
from tests.train.runner import FAULTS, TINY, child_env, run_module, stats, train

WANDB_ARGS = ["logging.wandb=true", "logging.wandb_tags=[tiny,test]"]


def wandb_env(tmp: Path, **extra: str) -> dict:
    """Offline W&B whose settings, cache and staging live under ``tmp``; no key, no server."""
    env = {k: v for k, v in child_env().items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_CONFIG_DIR=str(tmp / "wb-config"),
               WANDB_CACHE_DIR=str(tmp / "wb-cache"), WANDB_DATA_DIR=str(tmp / "wb-data"), **extra)
    return env


def args(root: Path, run: Path, *extra: str) -> list[str]:
    return ["experiment=baseline_regression", f"data.root={root}", f"run.dir={run}", *TINY,
            *WANDB_ARGS, *extra]


def transaction_logs(wandb_dir: Path) -> list[Path]:
    """W&B's logs under ``wandb_dir/wandb``, oldest incarnation first (``latest-run`` is a link)."""
    return sorted(p for p in wandb_dir.glob("wandb/*/run-*.wandb") if not p.parent.is_symlink())


def records(path: Path, kind: str) -> list:
    out = []
    for raw in log_records(path):
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == kind:
            out.append(getattr(rec, kind))
    return out


def items(msg) -> dict:
    """A history row's or a summary's items as {"a/b": value}."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in msg.item}


def rows(path: Path) -> list[dict]:
    return [items(h) for h in records(path, "history")]


def run_record(path: Path):
    (run,) = records(path, "run")
    return run


def config_of(run) -> dict:
    return {item.key: json.loads(item.value_json) for item in run.config.update}


def summary_of(path: Path) -> dict:
    out = {}
    for s in records(path, "summary"):
        out.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in s.update})
    return out


def steps_with(logs: list[Path], key: str) -> list[int]:
    """Every step, across the logs, whose row holds ``key`` (a step sent twice appears twice)."""
    return [row["_step"] for log in logs for row in rows(log) if key in row]


@pytest.fixture(scope="module")
def wandb_run(tiny_shards, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wb")
    run = tmp / "reg"
    train(args(tiny_shards, run, "trainer.max_steps=20", "run.val_every=10", "run.val_batches=1",
               "logging.wandb_group=tiny-group"), env=wandb_env(tmp))
    return run


def test_offline_run_logs_scalars_images_and_config(wandb_run):
    run = wandb_run
    record = json.loads((run / RUN_FILE).read_text())
    (log,) = transaction_logs(run)  # W&B's files go into the run directory by default
    assert log.name == f"run-{record['id']}.wandb" and record["last_step"] == 20
    info = run_record(log)
    assert (info.run_id, info.project, info.display_name, info.run_group) == \
        (record["id"], "resdepth", "reg", "tiny-group")
    assert list(info.tags) == ["tiny", "test"]
    config = config_of(info)
    assert config["trainer"]["max_steps"] == 20 and config["model"]["model_channels"] == 8
    assert config["logging"]["wandb"] is True and config["run_dir"] == str(run.resolve())
    history = rows(log)
    assert [r["_step"] for r in history] == [5, 10, 15, 20]
    # the same numbers as stats.jsonl (and so TensorBoard), to the last digit
    assert [(r["_step"], r["train/loss"], r["train/lr"], r["train/grad_norm"]) for r in history] == \
        [s[:4] for s in stats(run)]
    assert all({"train/images_per_s", "train/data_wait_frac", "train/nonfinite"} <= set(r)
               for r in history)
    for r in history:
        panels = {k.split("/")[1] for k in r if k.startswith("images/")}
        assert panels == ({"events", "depth_true", "depth_pred", "residual", "error"}
                          if r["_step"] % 10 == 0
                          else set()), r["_step"]
        assert ("val/loss" in r) == (r["_step"] % 10 == 0)
    image = history[1]["images/depth_pred/path"]
    assert (log.parent / "files" / image).stat().st_size > 0
    tb = EventAccumulator(str(run / "tb"), size_guidance={"images": 0})
    tb.Reload()
    panel = tb.Images("images/depth_pred")[0]  # the same picture TensorBoard holds
    assert (history[1]["images/depth_pred/height"], history[1]["images/depth_pred/width"]) == \
        (panel.height, panel.width)


def test_wandb_itself_repeats_a_step_logged_again_offline(tmp_path):
    """Why the sink skips steps: two offline incarnations of one run id that log the same step
    both keep it, and ``wandb sync`` would upload it twice."""
    script = ("import sys, wandb\n"
              "run = wandb.init(project='p', id='repeat01', resume='allow', dir=sys.argv[1])\n"
              "for s in map(int, sys.argv[2:]):\n"
              "    run.log({'loss': float(s)}, step=s)\n"
              "run.finish()\n")
    for steps in (["1", "2", "3"], ["2", "3", "4"]):
        subprocess.run([sys.executable, "-c", script, str(tmp_path), *steps], check=True,
                       env=wandb_env(tmp_path), capture_output=True, timeout=120)
    assert steps_with(transaction_logs(tmp_path), "loss") == [1, 2, 3, 2, 3, 4]
    assert logged_step(tmp_path, "repeat01") == 4


def test_hard_kill_keeps_a_prefix_of_the_rows_and_logged_step_reads_it(tmp_path):
    """W&B buffers its transaction log: a SIGKILL of the process that logs leaves only the rows
    already flushed, so a resumed sink reads the newest step from the file, not from its own count."""
    script = ("import sys, time, wandb\n"
              "run = wandb.init(project='p', id='killed01', dir=sys.argv[1])\n"
              "for s in range(3000):\n"
              "    run.log({'loss': float(s)}, step=s)\n"
              "print('logged', flush=True)\n"
              "time.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], env=wandb_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "logged"
        time.sleep(2)
    finally:
        proc.kill()
        proc.wait()
    time.sleep(2)  # W&B's service notices its parent is gone and ends
    (log,) = transaction_logs(tmp_path)
    steps = steps_with([log], "loss")
    assert steps == list(range(len(steps)))  # a prefix, each once
    assert logged_step(tmp_path, "killed01") == len(steps) - 1


def _kill_during_checkpoint(cmd: list[str], run: Path, env: dict, how: str) -> None:
    """Start training, wait until checkpoint 20 is being written (10 is complete, step 20 logged),
    then stop it the way ``how`` says: a double Ctrl-C (an exception: W&B closes cleanly) or
    SIGKILL (nothing closes)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp_ckpt = run / "checkpoints" / ".tmp-step-0000020"
    deadline = time.time() + 300
    while not (tmp_ckpt / "rank-00000.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "never reached checkpoint 20"
        time.sleep(0.2)
    if how == "kill":
        proc.send_signal(signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGINT)  # the first asks for a save at the next step ...
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # ... the second aborts at once, nothing saved
    proc.wait(timeout=120)
    time.sleep(2)  # W&B's service of a killed run ends by itself


@pytest.mark.parametrize("how", ["interrupt", "kill"])
def test_resumed_run_continues_its_wandb_run_with_each_step_once(tiny_shards, tmp_path, how):
    run = tmp_path / "run"
    common = ("trainer.max_steps=30", "trainer.ckpt_every_steps=10", "run.val_every=10",
              "run.val_batches=1")
    cmd = [sys.executable, "-m", FAULTS, *args(tiny_shards, run, *common)]
    _kill_during_checkpoint(cmd, run, wandb_env(tmp_path, FAULT_CKPT_DELAY="20:120"), how)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [".tmp-step-0000020",
                                                                       "step-0000010"]
    first = transaction_logs(run)
    run_id = json.loads((run / RUN_FILE).read_text())["id"]
    before = steps_with(first, "train/loss")
    if how == "interrupt":  # closed cleanly: every row up to the crash is in W&B's log
        assert before == [5, 10, 15, 20] and steps_with(first, "val/loss") == [10, 20]
    train(args(tiny_shards, run, *common), env=wandb_env(tmp_path))
    log = (run / "log-rank0.txt").read_text()
    assert "step-0000010" in log.split("resumed from")[1].splitlines()[0]
    logs = transaction_logs(run)
    assert len(logs) == 2 and {p.name for p in logs} == {f"run-{run_id}.wandb"}
    # a SIGKILL may leave W&B's log of the killed incarnation empty (it buffers): the header only
    assert run_record(logs[-1]).run_id == run_id
    assert {run_record(p).run_id for p in logs if records(p, "run")} == {run_id}
    # each step once across both incarnations: what W&B held is not sent again, the rest is
    train_steps = steps_with(logs, "train/loss")
    assert sorted(train_steps) == sorted(set(train_steps))
    assert train_steps == before + [s for s in (5, 10, 15, 20, 25, 30) if s > max(before, default=10)]
    val_steps = steps_with(logs, "val/loss")
    assert sorted(val_steps) == sorted(set(val_steps)) and {20, 30} <= set(val_steps)
    assert steps_with(logs, "images/depth_pred/path") == val_steps
    if how == "interrupt":
        assert "were not sent again (W&B holds them from before this resume)" in log
    assert json.loads((run / RUN_FILE).read_text())["last_step"] == 30
    # the resumed steps carry the numbers of the uninterrupted run (exact resume)
    wb = {r["_step"]: r["train/loss"] for p in logs for r in rows(p) if "train/loss" in r}
    assert [(s[0], s[1]) for s in stats(run) if s[0] in wb] == sorted(wb.items())


def test_stage2_run_names_its_stage1_run(tiny_shards, wandb_run, tmp_path):
    run = tmp_path / "diff"
    train(["experiment=baseline_diffusion", f"data.root={tiny_shards}", f"run.dir={run}", *TINY,
           *WANDB_ARGS, f"model.regression_ckpt={wandb_run / 'export'}", "trainer.max_steps=2",
           "diffusion.num_steps=4"], env=wandb_env(tmp_path))
    stage1 = json.loads((wandb_run / RUN_FILE).read_text())
    (log,) = transaction_logs(run)
    info = run_record(log)
    assert info.run_group == "tiny-group" and info.run_id != stage1["id"]
    named = config_of(info)["stage1_wandb_run"]
    assert named["id"] == stage1["id"] and named["run_dir"] == str(wandb_run.resolve())


@pytest.mark.dist
def test_two_ranks_log_once_from_rank0(tiny_shards, tmp_path):
    run = tmp_path / "run"
    train(args(tiny_shards, run, "trainer.max_steps=10"), nproc=2, env=wandb_env(tmp_path))
    (log,) = transaction_logs(run)
    assert [r["_step"] for r in rows(log)] == [5, 10]
    assert [(r["_step"], r["train/loss"]) for r in rows(log)] == [s[:2] for s in stats(run)]


def _eval(tiny_shards: Path, net: Path, out: Path, env: dict) -> None:
    run_module("resdepth.eval", ["--regression", str(net), "--data", str(tiny_shards / "test"),
                                 "--out", str(out), "--wandb", "--device", "cpu"], env=env)


def test_eval_logs_metrics_and_samples_to_the_training_run(tiny_shards, wandb_run, tmp_path):
    before = json.loads((wandb_run / RUN_FILE).read_text())
    out = tmp_path / "eval"
    _eval(tiny_shards, wandb_run / "export" / "model.safetensors", out, wandb_env(tmp_path))
    metrics = json.loads((out / "metrics.json").read_text())
    logs = [p for p in transaction_logs(wandb_run) if run_record(p).run_id == before["id"]]
    assert len(logs) >= 2  # training, then the evaluation, in the same W&B run
    step = max(before["last_step"], 20) + 1
    (row,) = rows(logs[-1])
    assert row["_step"] == step and row["eval/metrics/_type"] == "table-file"
    table = json.loads((logs[-1].parent / "files" / row["eval/metrics/path"]).read_text())
    by_name = {r[0]: dict(zip(table["columns"], r)) for r in table["data"]}
    assert by_name["regression"]["abs_rel"] == metrics["regression"]["abs_rel"]
    assert by_name["baseline"]["rmse"] == metrics["baseline"]["rmse"]
    assert (logs[-1].parent / "files" / row["eval/samples/path"]).stat().st_size > 0
    summary = summary_of(logs[-1])
    assert summary["eval/regression/crps"] == metrics["regression"]["crps"]
    assert json.loads((wandb_run / RUN_FILE).read_text())["last_step"] == step
    # a net without a W&B training run: a new run, here under WANDB_DIR
    bare = tmp_path / "bare"
    shutil.copytree(wandb_run / "export", bare)
    _eval(tiny_shards, bare, tmp_path / "eval2", wandb_env(tmp_path, WANDB_DIR=str(tmp_path / "wb")))
    (log,) = transaction_logs(tmp_path / "wb")
    info = run_record(log)
    assert info.run_id != before["id"] and info.display_name == "eval-eval2" and info.job_type == "eval"
    assert rows(log)[0]["eval/metrics/_type"] == "table-file"


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _break_wandb(how: str, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(tmp_path / key.lower()))
    if how == "missing":
        monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    elif how == "init_raises":
        def init(*a, **k):
            raise wandb.errors.CommError("network unreachable")
        monkeypatch.setattr(wandb, "init", init)
    elif how == "not_logged_in":  # online, no API key anywhere: W&B's own refusal
        monkeypatch.setenv("WANDB_MODE", "online")
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
        monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    elif how == "log_raises":
        def log(self, *a, **k):
            raise OSError("disk full")
        monkeypatch.setattr(wandb.Run, "log", log)


@pytest.fixture
def fresh_wandb():
    """W&B's process-wide state (its settings and service) does not leak between in-process runs."""
    yield
    wandb.teardown()


EXPECTED_WARNING = {"missing": "wandb cannot be imported", "init_raises": "W&B did not start (CommError",
                    "not_logged_in": "W&B did not start (UsageError",
                    "log_raises": "W&B logging stopped (OSError: disk full)"}


@pytest.mark.parametrize("how", ["missing", "init_raises", "not_logged_in", "log_raises"])
def test_wandb_missing_or_broken_warns_once_and_training_finishes(tiny_shards, tmp_path,
                                                                  monkeypatch, fresh_wandb, how):
    from resdepth.train.loop import Trainer

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # no terminal to ask for a key on
    _break_wandb(how, monkeypatch, tmp_path)
    run = tmp_path / "run"
    cfg = load_config(Config, args(tiny_shards, run, "trainer.max_steps=10", "run.val_every=10",
                                   "run.val_batches=1"))
    warnings = _Warnings()
    logging.getLogger("resdepth").addHandler(warnings)
    try:
        assert Trainer(cfg).run() == 0
    finally:
        logging.getLogger("resdepth").removeHandler(warnings)
    about_wandb = [m for m in warnings.messages if "W&B" in m or "wandb" in m]
    assert len(about_wandb) == 1, warnings.messages
    assert EXPECTED_WARNING[how] in about_wandb[0] and "TensorBoard" in about_wandb[0]
    assert (run / "export" / "model.safetensors").exists()
    assert [s[0] for s in stats(run)] == [5, 10] and any((run / "tb").iterdir())


def test_wandb_is_not_imported_unless_asked(tmp_path):
    code = ("import sys, resdepth.train.loop, resdepth.eval.run\n"
            "assert 'wandb' not in sys.modules, 'wandb imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=child_env(),
                   timeout=120)
