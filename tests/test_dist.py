"""Rank and rendezvous detection from torchrun and Slurm variables (no Slurm needed)."""
import pytest

from resdepth.dist import DistEnvError, detect_env, master_port_for_job, parse_nodelist


def test_nodelist_expansion():
    assert parse_nodelist("gpu[001-004,010]") == ["gpu001", "gpu002", "gpu003", "gpu004", "gpu010"]
    assert parse_nodelist("a1,b[2-3]") == ["a1", "b2", "b3"]


def test_single_process_and_batch_script():
    assert detect_env({}).world_size == 1
    assert detect_env({"SLURM_JOB_ID": "5"}).source == "single"


def test_slurm_multinode():
    env = detect_env({"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
                      "SLURM_JOB_NODELIST": "gpu[001-004,010]", "SLURM_JOB_ID": "4242"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr) == (9, 16, 1, "gpu001")
    assert env.master_port == master_port_for_job("4242") == 20000 + 4242
    assert env.source == "slurm"


def test_torchrun_wins_and_half_set_fails():
    env = detect_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
                      "MASTER_PORT": "123", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    assert (env.rank, env.source) == (1, "torchrun")
    with pytest.raises(DistEnvError, match="MASTER_PORT missing"):
        detect_env({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h"})
    with pytest.raises(DistEnvError, match="SLURM_JOB_NODELIST"):
        detect_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0",
                    "SLURM_JOB_ID": "1"})
