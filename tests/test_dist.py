"""Rank and rendezvous detection from torchrun, Slurm and submitit variables (no Slurm needed),
and the bounded start-up of ``dist.init``."""
import socket
import time

import pytest
import torch

from resdepth import dist
from resdepth.dist import (DistEnvError, RendezvousError, detect_env, master_port_for_job,
                           parse_nodelist, rendezvous_timeout_s)
from tests.procs import free_port


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


def test_world_of_one_needs_no_rendezvous_address():
    env = detect_env({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    assert (env.rank, env.world_size, env.source) == (0, 1, "torchrun")
    with pytest.raises(DistEnvError, match="LOCAL_RANK missing"):
        detect_env({"RANK": "0", "WORLD_SIZE": "1"})


def test_job_script_port_is_trusted_under_slurm():
    slurm = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1",
             "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_ID": "77"}
    assert detect_env(slurm).master_port == master_port_for_job("77")
    assert detect_env({**slurm, "MASTER_PORT": "23456"}).master_port == 23456
    assert detect_env({**slurm, "MASTER_PORT": "23456", "RESDEPTH_MASTER_PORT": "24567"}).master_port == 24567
    assert detect_env({**slurm, "MASTER_ADDR": "n2"}).master_addr == "n2"


def test_submitit_local_tasks():
    env = detect_env({"SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_NTASKS": "2",
                      "SUBMITIT_LOCAL_LOCALID": "1", "SUBMITIT_LOCAL_JOB_ID": "4321"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.source) == \
        (1, 2, 1, "127.0.0.1", "submitit")
    assert env.master_port == master_port_for_job("4321")


def test_rendezvous_timeout_setting():
    assert rendezvous_timeout_s({}) == 300.0
    assert rendezvous_timeout_s({"RESDEPTH_RENDEZVOUS_TIMEOUT": "7.5"}) == 7.5
    for bad in ("0", "-3", "ten"):
        with pytest.raises(DistEnvError, match="RESDEPTH_RENDEZVOUS_TIMEOUT"):
            rendezvous_timeout_s({"RESDEPTH_RENDEZVOUS_TIMEOUT": bad})


def _as_rank(monkeypatch, rank: int, port: int, **extra: str) -> None:
    monkeypatch.setattr(dist, "_ENV", dist.DistEnv())
    for k in ("TORCHELASTIC_USE_AGENT_STORE", "RESDEPTH_RENDEZVOUS_TIMEOUT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in dict(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(port), **extra).items():
        monkeypatch.setenv(k, v)


@pytest.mark.parametrize("rank, agent", [(0, False), (1, False), (0, True)],
                         ids=["rank0-serves", "rank1-waits", "torchrun-agent-store"])
def test_missing_peer_ends_with_named_error_within_timeout(monkeypatch, rank, agent):
    port = free_port()
    _as_rank(monkeypatch, rank, port, RESDEPTH_RENDEZVOUS_TIMEOUT="2",
             **({"TORCHELASTIC_USE_AGENT_STORE": "True"} if agent else {}))
    t0 = time.monotonic()
    with pytest.raises(RendezvousError) as err:
        dist.init("cpu")
    took = time.monotonic() - t0
    assert 1.5 < took <= 2.5, took
    msg = str(err.value)
    assert f"rank {rank} of world size 2" in msg and f"127.0.0.1:{port}" in msg, msg
    assert "within 2 s" in msg and "Check that all 2 processes were started" in msg, msg
    assert not torch.distributed.is_initialized()


def test_taken_port_is_named_at_once(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _as_rank(monkeypatch, 0, port)
        t0 = time.monotonic()
        with pytest.raises(RendezvousError, match=f"Port {port} on 127.0.0.1 is taken"):
            dist.init("cpu", rendezvous_timeout=30)
        assert time.monotonic() - t0 < 5


def test_world_of_one_group_uses_no_port(monkeypatch):
    """Under ``torchrun --nproc_per_node=1`` the launcher's port is the agent's store: a group
    for one process (DeepSpeed's) is built without any rendezvous, even at a dead address."""
    monkeypatch.setattr(dist, "_ENV", dist.DistEnv())
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(free_port()), TORCHELASTIC_USE_AGENT_STORE="True").items():
        monkeypatch.setenv(k, v)
    t0 = time.monotonic()
    try:
        assert dist.init("cpu", rendezvous_timeout=30).world_size == 1
        assert not torch.distributed.is_initialized()  # no group unless asked for
        dist.init("cpu", group=True, rendezvous_timeout=30)
        assert (dist.is_dist(), dist.world_size(), dist.rank()) == (True, 1, 0)
        assert dist.all_reduce_sum(torch.ones(2)).tolist() == [1.0, 1.0]
    finally:
        dist.shutdown()
    assert time.monotonic() - t0 < 5


def test_host_tensors_reduce_over_gloo_beside_nccl(monkeypatch):
    """With an NCCL default group, host tensors (stop flags, counters) are reduced over a gloo
    group of their own: never copied to the GPU, which would wait for its queued work each step."""
    monkeypatch.setattr(dist, "_ENV", dist.DistEnv())
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    dist.init("cpu", group=True)
    try:
        default = torch.distributed.group.WORLD
        monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: "nccl")
        monkeypatch.setattr(dist, "device", lambda: pytest.fail("a host tensor went to the device"))
        used = []
        real = torch.distributed.all_reduce
        monkeypatch.setattr(torch.distributed, "all_reduce",
                            lambda t, group=None, **kw: used.append(group) or real(t, group=group, **kw))
        assert dist.all_reduce_sum(torch.tensor([2.0], dtype=torch.float64)).tolist() == [2.0]
        assert dist.any_rank(True) and not dist.any_rank(False)
        assert len(used) == 3 and all(g is not None and g is not default for g in used)
        assert used[0] is used[1] is used[2]  # one host group, made once
    finally:
        monkeypatch.undo()
        dist.shutdown()
    assert dist._HOST_GROUP is None


def test_interface_towards_the_master_or_a_clear_error():
    """Across hosts the interface that routes to the master is chosen; one host needs none; no
    route at all stops at once naming the address and the variables to set."""
    me = socket.gethostname()
    one_host = dist.DistEnv(rank=0, world_size=2, master_addr=me, hosts=(me,))
    assert dist.pick_interface(one_host, {}) is None
    # the master is this host: the route to its own address leaves through lo only, so the
    # first other node decides; an address on this host's own interface stands in for it here
    two = dist.DistEnv(rank=1, world_size=2, master_addr="127.0.0.1", hosts=("127.0.0.1", "localhost"))
    with pytest.raises(DistEnvError, match="GLOO_SOCKET_IFNAME .*NCCL_SOCKET_IFNAME"):
        dist.pick_interface(two, {})
    unknown = dist.DistEnv(rank=1, world_size=2, master_addr="no-such-host.invalid",
                           hosts=("no-such-host.invalid", "other.invalid"))
    with pytest.raises(DistEnvError, match=r"no-such-host.invalid -> unresolved"):
        dist.pick_interface(unknown, {})
    assert dist.pick_interface(unknown, {"GLOO_SOCKET_IFNAME": "eth9", "NCCL_SOCKET_IFNAME": "eth9"}) is None
    assert dist.interface_of("127.0.0.1") == "lo"


def test_collective_timeout_from_the_environment():
    assert dist.collective_timeout_s(600.0, {}) == 600.0
    assert dist.collective_timeout_s(600.0, {"RESDEPTH_COLLECTIVE_TIMEOUT": "15"}) == 15.0
    with pytest.raises(DistEnvError, match="RESDEPTH_COLLECTIVE_TIMEOUT"):
        dist.collective_timeout_s(600.0, {"RESDEPTH_COLLECTIVE_TIMEOUT": "soon"})
