"""One-process training: run layout, TensorBoard read-back, exact resume, crash safety, stage 2."""
from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from resdepth.config import load_config
from resdepth.train.config import Config
from resdepth.train.signals import REQUEUE_EXIT_CODE
from tests.train.runner import FAULTS, TINY, child_env, stats, train


def tb_steps(run_dir: Path, tag: str = "train/loss") -> list[int]:
    """Steps of a scalar as TensorBoard shows it (purging what a resumed run re-logged)."""
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def args(root: Path, run: Path, *extra: str) -> list[str]:
    return ["experiment=baseline_regression", f"data.root={root}", f"run.dir={run}", *TINY, *extra]


@pytest.fixture(scope="module")
def regression_run(tiny_shards, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("reg") / "run"
    train(args(tiny_shards, run, "trainer.max_steps=20", "run.val_every=10", "run.val_batches=2"))
    return run


def test_run_layout_and_tensorboard(regression_run):
    run = regression_run
    for name in ("config.yaml", "stats.jsonl", "log-rank0.txt", "export/model.safetensors",
                 "export/model.json", "checkpoints/step-0000020/meta.json"):
        assert (run / name).exists(), name
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars, images = acc.Tags()["scalars"], acc.Tags()["images"]
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/images_per_s",
                "train/data_wait_frac", "val/loss"):
        assert tag in scalars, (tag, scalars)
    assert {"images/events", "images/depth_true", "images/depth_pred", "images/residual",
            "images/error"} <= set(images)
    assert [e.step for e in acc.Scalars("train/loss")] == [5, 10, 15, 20]
    assert [e.step for e in acc.Scalars("val/loss")] == [10, 20]
    meta = json.loads((run / "export/model.json").read_text())
    assert meta["spec"]["stage"] == "regression" and meta["step"] == 20 and meta["weights"] == "ema"
    assert all(torch.isfinite(torch.tensor(s[1])) for s in stats(run))


def test_exact_resume_after_sigusr2(tiny_shards, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    common = ("trainer.max_steps=40", "trainer.ckpt_every_steps=0", "data.num_workers=2")
    train(args(tiny_shards, full, *common))
    first = train(args(tiny_shards, cut, *common),
                  env=child_env(FAULT_SIGNAL_AT_STEP="20"), check=False, module=FAULTS)
    assert first.returncode == REQUEUE_EXIT_CODE, first.stderr[-2000:]
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["step-0000020"]
    assert not (cut / "export").exists()
    train(args(tiny_shards, cut, *common))
    log = (cut / "log-rank0.txt").read_text()
    assert "resumed from" in log and "no longer an exact continuation" not in log
    assert (full / "export/model.safetensors").read_bytes() == (cut / "export/model.safetensors").read_bytes()
    assert stats(full) == stats(cut)
    assert tb_steps(cut) == list(range(5, 41, 5))


def test_sigkill_while_checkpointing_resumes_from_previous(tiny_shards, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    common = ("trainer.max_steps=20", "trainer.ckpt_every_steps=5")
    train(args(tiny_shards, ref, *common))
    cmd = [sys.executable, "-m", FAULTS, *args(tiny_shards, run, *common)]
    proc = subprocess.Popen(cmd, env=child_env(FAULT_CKPT_DELAY="10:60"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp_ckpt = run / "checkpoints" / ".tmp-step-0000010"
    deadline = time.time() + 240
    while not (tmp_ckpt / "rank-00000.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "never reached checkpoint 10"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [".tmp-step-0000010", "step-0000005"], names
    train(args(tiny_shards, run, *common))
    log = (run / "log-rank0.txt").read_text()
    assert "resumed from" in log and "step-0000005" in log.split("resumed from")[1].splitlines()[0]
    assert (ref / "export/model.safetensors").read_bytes() == (run / "export/model.safetensors").read_bytes()
    assert tb_steps(run) == [5, 10, 15, 20]  # step 10 was logged twice; TensorBoard shows it once
    assert [s[0] for s in stats(run)] == [5, 10, 15, 20]
    assert not (run / "checkpoints" / ".tmp-step-0000010").exists()


def test_nonfinite_losses_stop_with_step(tiny_shards, tmp_path, monkeypatch):
    from resdepth.train.loop import Trainer
    from resdepth.train.metrics import NonFiniteError

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    cfg = load_config(Config, args(tiny_shards, tmp_path / "nan", "trainer.max_steps=10",
                                   "trainer.max_nonfinite=3"))
    trainer = Trainer(cfg)
    calls = {"n": 0}
    real = trainer.loss_core

    def flaky(model, batch, gen):
        calls["n"] += 1
        loss = real(model, batch, gen)
        return loss * float("nan") if calls["n"] >= 3 else loss

    trainer.loss_core = flaky
    snapshot = {}
    original_step = trainer.engine.train_step

    def spy(loss_fn, batches, lr):
        if calls["n"] == 2 and not snapshot:  # weights after the two good steps
            snapshot["w"] = [p.detach().clone() for p in trainer.engine.module.parameters()]
        return original_step(loss_fn, batches, lr)

    trainer.engine.train_step = spy
    with pytest.raises(NonFiniteError, match=r"step 4: 3 non-finite"):
        trainer.run()
    trainer.stop.restore()
    # Steps 2, 3 and 4 were skipped: the weights are still those after steps 0 and 1.
    assert all(torch.equal(a, b) for a, b in zip(snapshot["w"], trainer.engine.module.parameters()))
    # The stop is noticed at the next log line (step 5); steps 2, 3 and 4 were skipped.
    state = trainer.state
    assert state.nonfinite_in_row == 3 and state.images_seen == 5 * 4
    # The skipped steps add nothing to the interval's loss: it stays that of the good steps.
    assert float(state.interval["n"]) == 2 and math.isfinite(float(state.interval["loss_sum"]))


def test_stage2_trains_on_regression_and_refuses_other_arch(tiny_shards, regression_run, tmp_path):
    run = tmp_path / "diff"
    diff = ["experiment=baseline_diffusion", f"data.root={tiny_shards}", f"run.dir={run}", *TINY,
            f"model.regression_ckpt={regression_run}", "trainer.max_steps=10",
            "diffusion.num_steps=4", "run.val_every=10", "run.val_batches=1"]
    train(diff)
    meta = json.loads((run / "export/model.json").read_text())
    assert meta["spec"]["stage"] == "diffusion" and meta["spec"]["arch"] == "SongUNetPosEmbd"
    assert meta["step"] == 10
    # The residual scale comes from the data: measured on the train split, recorded with the
    # weights, and sigma_data, P_mean and the sampler's sigma_max follow from it.
    std = meta["residual_std"]
    assert 0 < std < 1 and meta["sigma_data"] == std
    assert meta["P_mean"] == pytest.approx(math.log(std) - 1.2 - math.log(0.5))
    assert meta["sigma_max"] == pytest.approx(20 * std)
    ckpt_meta = json.loads(next((run / "checkpoints").glob("step-*/meta.json")).read_text())
    assert ckpt_meta["residual_std"] == std
    # A checkpoint directory works as well as the run directory.
    ckpt = regression_run / "checkpoints" / "step-0000020"
    train([*diff, f"run.dir={tmp_path / 'diff2'}", f"model.regression_ckpt={ckpt}", "trainer.max_steps=2"])
    # Patch-based residual training (random 16x16 patches with the global index), previews included.
    train([*diff, f"run.dir={tmp_path / 'patch'}", "diffusion.patch_shape=[16,16]",
           "diffusion.patch_num=2", "trainer.max_steps=2", "run.val_every=2"])
    assert json.loads((tmp_path / "patch/export/model.json").read_text())["spec"]["patching"] is True
    given = train([*diff, f"run.dir={tmp_path / 'given'}", "trainer.max_steps=1",
                   "diffusion.sigma_data=0.3"])
    given_meta = json.loads((tmp_path / "given/export/model.json").read_text())
    assert given_meta["sigma_data"] == 0.3 and given_meta["residual_std"] == std
    assert given_meta["sigma_max"] == pytest.approx(6.0) and given.returncode == 0
    bad = train([*diff, f"run.dir={tmp_path / 'bad'}", "model.model_channels=16"], check=False)
    assert bad.returncode == 1
    assert "different architecture than configured" in bad.stderr
    assert "unet.model_channels: checkpoint has 8, config expects 16" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_dry_run_and_clear_errors(tiny_shards, tmp_path):
    out = train(args(tiny_shards, tmp_path / "dry", "--dry-run"))
    assert "parameters" in out.stdout and "4 train shards" in out.stdout
    assert not (tmp_path / "dry" / "checkpoints").exists()
    missing = train(args(tmp_path / "nowhere", tmp_path / "x"), check=False)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "nowhere" in missing.stderr
    half = train(args(tiny_shards, tmp_path / "y"), env=child_env(RANK="0"), check=False)
    assert half.returncode == 1 and "half-set torch.distributed environment" in half.stderr


@pytest.fixture(scope="module")
def stage2_run(tiny_shards, regression_run, tmp_path_factory) -> Path:
    """Two steps of stage 2 with a checkpoint at step 2 (tests work on copies)."""
    run = tmp_path_factory.mktemp("stage2") / "run"
    train(["experiment=baseline_diffusion", f"data.root={tiny_shards}", f"run.dir={run}", *TINY,
           f"model.regression_ckpt={regression_run}", "diffusion.num_steps=4",
           "trainer.max_steps=2", "trainer.schedule_steps=4", "trainer.ckpt_every_steps=2"])
    return run


def test_stage2_config_yaml_records_the_resolved_residual_scale(stage2_run):
    cfg = yaml.safe_load((stage2_run / "config.yaml").read_text())
    meta = json.loads((stage2_run / "export/model.json").read_text())
    # config.yaml is what ran: the values measured from the data, not the nulls asking for them.
    assert cfg["diffusion"]["sigma_data"] == meta["sigma_data"] == meta["residual_std"]
    assert cfg["diffusion"]["P_mean"] == meta["P_mean"]
    assert cfg["diffusion"]["sigma_max"] == meta["sigma_max"]


def test_stage2_resume_restores_the_residual_scale(stage2_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stage2_run, run)
    first = json.loads((run / "export/model.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    args2 = ["experiment=baseline_diffusion", f"data.root={cfg['data']['root']}", f"run.dir={run}",
             *TINY, f"model.regression_ckpt={cfg['model']['regression_ckpt']}",
             "diffusion.num_steps=4", "trainer.max_steps=4", "trainer.schedule_steps=4",
             "trainer.ckpt_every_steps=2"]
    # Measuring the residual std again would fail: a resumed run takes it from its checkpoint.
    train(args2, env=child_env(FAULT_NO_RESIDUAL_MEASURE="1"), module=FAULTS)
    log = (run / "log-rank0.txt").read_text()
    assert "resumed from" in log and "no longer an exact continuation" not in log
    assert f"restored from {run / 'checkpoints' / 'step-0000002'}" in log
    meta = json.loads((run / "export/model.json").read_text())
    assert meta["step"] == 4
    assert {k: meta[k] for k in ("residual_std", "sigma_data", "P_mean", "sigma_max")} == \
        {k: first[k] for k in ("residual_std", "sigma_data", "P_mean", "sigma_max")}


def test_dry_run_help_says_what_it_does(capsys):
    from resdepth.train.__main__ import parse

    with pytest.raises(SystemExit):
        parse(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "optimiser" not in text  # the dry run builds no optimiser
    assert "one forward pass of the loss on a real train (and val) batch" in text
