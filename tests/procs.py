"""Running resdepth commands as separate processes, as users and launchers do."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
RENDEZVOUS_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict:
    """This environment without rendezvous or Slurm variables, one thread, the repo importable."""
    env = {k: v for k, v in os.environ.items()
           if k not in RENDEZVOUS_VARS and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), **extra)
    return env


def run_module(module: str, args: list[str], nproc: int = 1, env: Optional[dict] = None,
               check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m module args`` (or under ``torchrun`` with ``nproc`` processes on a free port);
    with ``check``, a failure raises with the ends of its output."""
    if nproc == 1:
        cmd = [sys.executable, "-m", module, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
               f"--nproc_per_node={nproc}", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{free_port()}", "-m", module, *args]
    return run_command(cmd, env=env, check=check, timeout=timeout)


def run_command(cmd: list[str], env: Optional[dict] = None, check: bool = True,
                timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env or child_env(),
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc
