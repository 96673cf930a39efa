"""Distributed plumbing: one process, torchrun, or srun under Slurm, detected from the environment.

Everything rank-related in resdepth goes through here: ``init``, ``rank``, ``world_size``,
``is_main``, ``barrier``, ``all_reduce_sum``, ``print0``, ``shutdown``.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.distributed as torch_dist

log = logging.getLogger("resdepth")

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
SLURM_VARS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_JOB_ID")


class DistEnvError(RuntimeError):
    """The environment names some but not all of what a distributed launch needs."""


@dataclass
class DistEnv:
    """Where this process sits in the job."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"  # single | torchrun | slurm

    def export(self, environ: Optional[dict] = None) -> None:
        """Write the torch.distributed env:// variables for this process."""
        environ = os.environ if environ is None else environ
        environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size),
                       LOCAL_RANK=str(self.local_rank), MASTER_ADDR=self.master_addr,
                       MASTER_PORT=str(self.master_port))


def parse_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm node list such as ``gpu[001-004,010],cpu7`` into host names."""
    from submitit.slurm.slurm import _parse_node_list  # Slurm's own grammar, kept by submitit

    return _parse_node_list(nodelist)


def master_port_for_job(job_id: str) -> int:
    """A port derived from the Slurm job id, so every task of a job agrees without talking."""
    digits = "".join(ch for ch in str(job_id).split("_")[0] if ch.isdigit()) or "0"
    return 20000 + int(digits) % 20000


def detect_env(environ: Mapping[str, str] = os.environ) -> DistEnv:
    """The process's rank and rendezvous from torchrun's or Slurm's variables (torchrun wins)."""
    tr = [v for v in TORCHRUN_VARS if v in environ]
    if tr:
        missing = [v for v in TORCHRUN_VARS if v not in environ]
        if missing:
            raise DistEnvError(f"half-set torch.distributed environment: {', '.join(tr)} set but "
                               f"{', '.join(missing)} missing; set all of {', '.join(TORCHRUN_VARS)} "
                               "or none")
        return DistEnv(int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ["LOCAL_RANK"]),
                       environ["MASTER_ADDR"], int(environ["MASTER_PORT"]), "torchrun")
    env = dict(environ)
    if "SLURM_JOB_NODELIST" not in env and "SLURM_NODELIST" in env:
        env["SLURM_JOB_NODELIST"] = env["SLURM_NODELIST"]
    # A Slurm batch script (not an srun step) has SLURM_JOB_ID but no task layout: one process.
    if "SLURM_PROCID" not in env or "SLURM_NTASKS" not in env:
        return DistEnv()
    missing = [v for v in SLURM_VARS if v not in env]
    if missing:
        raise DistEnvError(f"half-set Slurm environment: {', '.join(missing)} missing "
                           f"(need {', '.join(SLURM_VARS)})")
    hosts = parse_nodelist(env["SLURM_JOB_NODELIST"])
    port = int(env.get("RESDEPTH_MASTER_PORT", master_port_for_job(env["SLURM_JOB_ID"])))
    return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env["SLURM_LOCALID"]),
                   hosts[0], port, "slurm")


_ENV = DistEnv()


def init(device_type: str = "auto", timeout_s: float = 600.0) -> DistEnv:
    """Join the process group (gloo on CPU, NCCL on GPU) when the world has more than one process."""
    global _ENV
    _ENV = detect_env()
    if _ENV.world_size > 1 and not torch_dist.is_initialized():
        _ENV.export()
        use_cuda = torch.cuda.is_available() if device_type == "auto" else device_type == "cuda"
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(_ENV.local_rank)
        torch_dist.init_process_group(backend=backend,
                                      timeout=datetime.timedelta(seconds=timeout_s))
        log.info("rank %d/%d joined %s group via %s (%s:%d)", _ENV.rank, _ENV.world_size,
                 backend, _ENV.source, _ENV.master_addr, _ENV.master_port)
    return _ENV


def env() -> DistEnv:
    """The environment ``init`` found."""
    return _ENV


def is_dist() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    return torch_dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return torch_dist.get_world_size() if is_dist() else 1


def local_rank() -> int:
    return _ENV.local_rank


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """This rank's device: its local GPU, or the CPU."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def barrier() -> None:
    if is_dist():
        torch_dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (float64 sums stay exact for counts) and return it."""
    if is_dist():
        if torch_dist.get_backend() == "nccl" and t.device.type != "cuda":
            moved = t.to(device())
            torch_dist.all_reduce(moved)
            t.copy_(moved.to(t.device))
        else:
            torch_dist.all_reduce(t)
    return t


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (used for stop signals)."""
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)
    return bool(all_reduce_sum(t).item() > 0)


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]


def print0(*args, **kwargs) -> None:
    """Print on rank 0 only (console output for people; the library logs through ``log``)."""
    if is_main():
        print(*args, **kwargs, flush=True)


def shutdown() -> None:
    """Leave the process group cleanly (without it multi-rank gloo runs abort at exit)."""
    if is_dist():
        torch_dist.barrier()
        torch_dist.destroy_process_group()
