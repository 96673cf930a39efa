"""The sbatch script of a 2-node, 8-GPU-per-node training job, rendered without Slurm (--dry-run)."""
import re
import subprocess
import sys

import pytest

from resdepth.launch.__main__ import cli
from resdepth.launch.cluster import ClusterProfile, Resources, load_profile
from resdepth.config.core import ConfigError

ARGS = ["train", "experiment=baseline_regression", "--profile", "example", "--nodes", "2",
        "--gpus-per-node", "8", "--dry-run"]


def sbatch_flags(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script, flags=re.M))


@pytest.fixture
def script(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        cli(ARGS + ["--run-dir", str(tmp_path / "run")])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_dry_run_resources(script, tmp_path):
    assert script.startswith("#!/bin/bash\n")
    flags = sbatch_flags(script)
    assert flags["nodes"] == "2"
    assert flags["ntasks-per-node"] == "8"  # one task per GPU
    assert flags["gpus-per-node"] == "8"
    assert flags["signal"] == "USR2@180"  # profile's signal delay
    assert "requeue" in flags
    assert flags["partition"] == "gpu" and flags["account"] == "my-project"
    assert flags["time"] == "1440" and flags["cpus-per-task"] == "8"
    assert flags["job-name"] == "train-run"
    assert flags["output"] == f"{tmp_path}/run/slurm/%j_0_log.out"


def test_dry_run_setup_lines_then_command(script, tmp_path):
    setup = script.index("# setup")
    module = script.index("module load cuda/12.4 nccl")
    command = script.index("srun --unbuffered")
    assert setup < module < command
    last = script.strip().splitlines()[-1]
    assert last.startswith("srun --unbuffered")
    assert last.endswith(f"{sys.executable} -u -m submitit.core._submit {tmp_path}/run/slurm")


def test_flags_win_over_profile_and_gres(tmp_path):
    from resdepth.launch.cluster import render_sbatch

    prof = ClusterProfile(partition="gpu", gpus_per_node=4, gpu_request="gres", time_min=10)
    res = Resources.from_profile(prof, partition="big", time_min=None, qos="high", mem_gb=64.0,
                                 exclude="gpu[013,027]", constraint="a100|h100")
    flags = sbatch_flags(render_sbatch(tmp_path, res))
    assert flags["partition"] == "big" and flags["time"] == "10" and flags["qos"] == "high"
    assert flags["gres"] == "gpu:4" and "gpus-per-node" not in flags
    assert flags["mem"] == "64GB" and flags["exclude"] == "'gpu[013,027]'"
    assert flags["constraint"] == "'a100|h100'"


def test_cpu_tasks_when_no_gpus():
    res = Resources.from_profile(load_profile("local"), tasks_per_node=2)
    p = res.slurm_parameters()
    assert p["ntasks_per_node"] == 2 and "gpus_per_node" not in p and "gres" not in p


def test_bad_profile_fails_with_valid_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("partion: gpu\n")
    with pytest.raises(ConfigError, match="did you mean partition"):
        load_profile(str(bad))


def test_dry_run_submits_nothing(tmp_path):
    """The CLI entry point renders the script even where there is no sbatch at all."""
    out = subprocess.run([sys.executable, "-m", "resdepth.launch", *ARGS, "--run-dir", str(tmp_path / "r")],
                         capture_output=True, text=True, env={"PATH": "/nonexistent"}, check=True)
    assert "#SBATCH --nodes=2" in out.stdout and "nothing submitted" in out.stderr
    assert not (tmp_path / "r").exists()
