"""The GPU path checked on the CPU: DeepSpeed bf16 with an fp32 EMA, DeepSpeed fp32 ZeRO-0, the
device rule under Slurm GPU binding, the resume hash of the cosine schedule's length."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from resdepth.config import load_config
from resdepth.train.config import Config
from tests.train.runner import TINY, stats, train


def args(root: Path, run: Path, *extra: str) -> list[str]:
    return ["experiment=baseline_regression", f"data.root={root}", f"run.dir={run}", *TINY, *extra]


def init_weights(run: Path) -> dict[str, torch.Tensor]:
    from resdepth.models.build import build_net

    meta = json.loads((run / "export/model.json").read_text())
    torch.manual_seed(0)  # run.seed: the trainer's initial weights
    return {k: v.float() for k, v in build_net(meta["spec"]).unet.state_dict().items()}


def test_deepspeed_bf16_trains_with_a_moving_fp32_ema(tiny_shards, tmp_path):
    run = tmp_path / "bf16"
    # A realistic half-life: each EMA update is ~1e-3 of the distance, below bf16 resolution.
    common = ("trainer.backend=deepspeed", "trainer.zero_stage=0", "trainer.precision=bf16",
              "trainer.cpu_bf16=true", "trainer.ema_halflife_images=5000",
              "trainer.schedule_steps=6", "run.log_every=3")
    train(args(tiny_shards, run, "trainer.max_steps=3", *common))
    short = load_file(run / "export/model.safetensors")
    shutil.rmtree(run / "export")
    train(args(tiny_shards, run, "trainer.max_steps=6", *common))
    log = (run / "log-rank0.txt").read_text()
    assert "resumed from" in log and "no longer an exact continuation" not in log
    final = load_file(run / "export/model.safetensors")
    init = init_weights(run)
    weights = [k for k in init if k.endswith("weight") and init[k].numel() > 1]
    assert all(final[k].dtype == torch.float32 for k in final)
    moved_from_init = sum(not torch.equal(final[k], init[k]) for k in weights)
    moved_since_short = sum(not torch.equal(final[k], short[k]) for k in weights)
    assert moved_from_init == len(weights) and moved_since_short == len(weights)
    # The module itself trained in bf16 (DeepSpeed's copy; the masters are fp32).
    state = torch.load(run / "checkpoints/step-0000006/train_state.pt", weights_only=True)
    assert {v.dtype for k, v in state["model"].items() if k.endswith("weight")} == {torch.bfloat16}
    assert all(v.dtype == torch.float32 for v in state["ema"].values())
    assert [s[0] for s in stats(run)] == [3, 6]


def test_deepspeed_fp32_zero0_runs_twenty_steps(tiny_shards, tmp_path):
    run = tmp_path / "fp32"
    train(args(tiny_shards, run, "trainer.backend=deepspeed", "trainer.zero_stage=0",
               "trainer.precision=fp32", "trainer.max_steps=20"))
    rows = stats(run)
    assert [r[0] for r in rows] == [5, 10, 15, 20]
    assert all(0 < r[3] < float("inf") for r in rows), rows  # the grad norm is read, finite
    assert all(json.loads(line)["nonfinite"] == 0
               for line in (run / "stats.jsonl").read_text().splitlines())


@pytest.mark.parametrize("visible, local_rank, expected", [(1, 3, 0), (4, 3, 3), (2, 3, 1)])
def test_device_is_local_rank_modulo_visible_gpus(monkeypatch, visible, local_rank, expected):
    from resdepth import dist

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(dist, "_ENV", dist.DistEnv(rank=local_rank, world_size=4,
                                                   local_rank=local_rank))
    assert dist.device() == torch.device("cuda", expected)


def test_cosine_length_is_part_of_the_resume_hash(tiny_shards, tmp_path):
    from resdepth.train.manager import resumable_hash

    def h(*extra):
        return resumable_hash(load_config(Config, args(tiny_shards, tmp_path, *extra)))

    # max_steps is the cosine's length unless schedule_steps says otherwise
    assert h("trainer.max_steps=10") != h("trainer.max_steps=20")
    assert h("trainer.max_steps=10", "trainer.schedule_steps=20") == h("trainer.max_steps=20")
    assert h("trainer.max_steps=10", "trainer.schedule=constant") == \
        h("trainer.max_steps=20", "trainer.schedule=constant")
