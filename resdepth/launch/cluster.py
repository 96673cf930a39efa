"""Cluster profiles and job resources, turned into submitit executors or a rendered sbatch script.

A profile (``configs/cluster/NAME.yaml``) holds what is the same for every job on one cluster:
partition, account, ``module load`` lines, how GPUs are requested, the USR2 warning delay.
``Resources`` is one job's request; command-line flags fill it on top of the profile.
"""
from __future__ import annotations

import dataclasses
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from resdepth.config.core import ConfigError, config_dir, from_dict, opt
from resdepth.utils.errors import UserError

SUBMITIT_COMMAND = "-u -m submitit.core._submit"


@dataclass
class ClusterProfile:
    partition: str = opt("", "Slurm partition (empty: the cluster's default).")
    account: str = opt("", "Slurm account charged for the jobs.")
    qos: str = opt("", "Slurm quality of service.")
    constraint: str = opt("", "Node features required, e.g. a100|h100.")
    exclude: str = opt("", "Nodes never to use, e.g. gpu[013,027].")
    gpus_per_node: int = opt(0, "GPUs per node; one task per GPU (0: CPU tasks).")
    gpu_request: Literal["gpus-per-node", "gres"] = opt("gpus-per-node", "How GPUs are requested: --gpus-per-node=N or --gres=gpu:N.")
    tasks_per_node: int = opt(1, "Tasks per node when gpus_per_node is 0.")
    cpus_per_task: int = opt(4, "CPUs per task (data loader workers + 1).")
    mem_gb: float = opt(0.0, "Memory per node in GB (0: the cluster's default).")
    time_min: int = opt(60, "Time limit of each job in minutes.")
    signal_delay_s: int = opt(120, "Seconds before the time limit at which Slurm sends USR2 (the trainer saves and requeues).")
    max_requeue: int = opt(10, "Requeues (preemption, time limit, node failure) after which a job stops for good.")
    setup: list[str] = opt([], "Shell lines run in the batch script before srun (module load, env activation).")
    sbatch_extra: dict = opt({}, "Further sbatch flags without the leading --, e.g. {mail-type: END}.")
    srun_args: list[str] = opt([], "Further srun arguments.")
    python: str = opt("", "Python interpreter on the compute nodes (empty: the one running resdepth-launch).")
    socket_ifname: str = opt("", "Network interface for gloo and NCCL across nodes, e.g. ib0 or eth0 (sets GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME; empty: the interface that routes to the master).")
    collective_timeout_s: float = opt(0.0, "Seconds a collective waits for a lost peer before the job ends and is requeued (RESDEPTH_COLLECTIVE_TIMEOUT; 0: the program's default, 600 s for training, 3600 s for evaluation).")


def profile_path(name: str) -> Path:
    """``configs/cluster/NAME.yaml``, or NAME itself when it is a YAML file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    return config_dir() / "cluster" / f"{name}.yaml"


def load_profile(name: str | None) -> ClusterProfile:
    """The named profile (None: built-in defaults); unknown keys and wrong types fail here."""
    if not name:
        return ClusterProfile()
    path = profile_path(name)
    if not path.exists():
        known = sorted(p.stem for p in (config_dir() / "cluster").glob("*.yaml"))
        raise ConfigError(f"--profile {name}: no file {path} (known profiles: {', '.join(known)})")
    data = yaml.safe_load(path.read_text()) or {}
    try:
        return from_dict(ClusterProfile, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


@dataclass
class Resources:
    """What one job asks of the cluster (a profile with command-line flags applied)."""
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    cpus_per_task: int = 4
    mem_gb: float = 0.0
    time_min: int = 60
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    exclude: str = ""
    signal_delay_s: int = 120
    gpu_request: str = "gpus-per-node"
    setup: list[str] = dataclasses.field(default_factory=list)
    sbatch_extra: dict = dataclasses.field(default_factory=dict)
    srun_args: list[str] = dataclasses.field(default_factory=list)
    python: str = ""
    socket_ifname: str = ""
    collective_timeout_s: float = 0.0
    job_name: str = "resdepth"
    dependency: str = ""

    @classmethod
    def from_profile(cls, profile: ClusterProfile, **overrides: Any) -> "Resources":
        """Profile values, then every override that is not None."""
        fields = {f.name for f in dataclasses.fields(cls)}
        base = {k: v for k, v in dataclasses.asdict(profile).items() if k in fields}
        base.update({k: v for k, v in overrides.items() if v is not None})
        res = cls(**base)
        problems = res.check()
        if problems:
            raise ConfigError("invalid job resources:\n  " + "\n  ".join(problems))
        return res

    def check(self) -> list[str]:
        """Every request Slurm would reject or misread, as ``--flag VALUE: problem``."""
        out = []
        for name, low in (("nodes", 1), ("gpus_per_node", 0), ("tasks_per_node", 1),
                          ("cpus_per_task", 1), ("mem_gb", 0), ("time_min", 1), ("signal_delay_s", 0),
                          ("collective_timeout_s", 0)):
            value = getattr(self, name)
            if value < low:
                flag = "--time" if name == "time_min" else "--" + name.replace("_", "-")
                key = f" (or profile key {name})" if name in ClusterProfile.__dataclass_fields__ else ""
                out.append(f"{flag} {value}{key}: must be >= {low}")
        if self.signal_delay_s >= 60 * self.time_min > 0:
            out.append(f"--signal-delay {self.signal_delay_s}: must be shorter than --time "
                       f"{self.time_min} minutes, or USR2 comes before the job starts working")
        return out

    @property
    def ntasks_per_node(self) -> int:
        """One task per GPU; CPU jobs use ``tasks_per_node``."""
        return self.gpus_per_node if self.gpus_per_node > 0 else self.tasks_per_node

    def slurm_parameters(self) -> dict[str, Any]:
        """Keyword arguments of ``submitit.SlurmExecutor.update_parameters`` (Slurm's own names)."""
        p: dict[str, Any] = dict(job_name=self.job_name, nodes=self.nodes,
                                 ntasks_per_node=self.ntasks_per_node,
                                 cpus_per_task=self.cpus_per_task, time=self.time_min,
                                 signal_delay_s=self.signal_delay_s, stderr_to_stdout=False)
        extra = {"requeue": True}  # preemption and node failure put the job back in the queue
        if self.gpus_per_node > 0:
            if self.gpu_request == "gres":
                p["gres"] = f"gpu:{self.gpus_per_node}"
            else:
                p["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb > 0:
            from submitit.slurm.slurm import _convert_mem

            p["mem"] = _convert_mem(self.mem_gb)
        for key in ("partition", "account", "qos", "constraint", "exclude", "dependency"):
            if getattr(self, key):
                p[key] = getattr(self, key)
        if self.setup or self.env_lines():
            p["setup"] = list(self.setup) + self.env_lines()
        if self.srun_args:
            p["srun_args"] = list(self.srun_args)
        extra.update(self.sbatch_extra)
        p["additional_parameters"] = extra
        return p

    def env_lines(self) -> list[str]:
        """Batch-script lines for the interface and collective-timeout settings (read by
        ``resdepth.dist``)."""
        out = []
        if self.socket_ifname:
            name = shlex.quote(self.socket_ifname)
            out.append(f"export GLOO_SOCKET_IFNAME={name} NCCL_SOCKET_IFNAME={name}")
        if self.collective_timeout_s > 0:
            out.append(f"export RESDEPTH_COLLECTIVE_TIMEOUT={self.collective_timeout_s:g}")
        return out

    def interpreter(self) -> str:
        return self.python or shlex.quote(sys.executable)


def make_executor(cluster: str, folder: Path, res: Resources):
    """A submitit executor for ``slurm``, ``local`` (subprocesses) or ``debug`` (this process)."""
    import submitit

    folder = Path(folder)
    if cluster == "slurm":
        # Requeues are bounded by the job itself (--max-requeue), not by submitit's timeout count.
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=10_000, python=res.interpreter())
        ex.update_parameters(**res.slurm_parameters())
        return ex
    if cluster == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=res.time_min, tasks_per_node=res.ntasks_per_node,
                             nodes=1, gpus_per_node=res.gpus_per_node,
                             signal_delay_s=res.signal_delay_s,
                             setup=list(res.setup) + res.env_lines())
        return ex
    if cluster == "debug":
        return submitit.DebugExecutor(folder=folder)
    raise UserError(f"--cluster {cluster}: expected slurm, local or debug")


def render_sbatch(folder: Path, res: Resources) -> str:
    """The sbatch script submitit would submit for these resources (nothing is submitted)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([res.interpreter(), SUBMITIT_COMMAND, shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, **res.slurm_parameters())
