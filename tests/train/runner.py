"""Run ``resdepth-train`` as users do (subprocesses) and read what it leaves behind."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.procs import child_env, free_port, run_module  # noqa: F401 - re-exported for the tests

TINY = ["model.model_channels=8", "model.channel_mult=[1,2]", "model.num_blocks=1",
        "model.attn_resolutions=[]", "trainer.batch_size=4", "trainer.warmup_steps=2",
        "trainer.ema_halflife_images=40", "data.num_workers=0", "data.shuffle_buffer=16",
        "run.val_every=0", "run.log_every=5", "trainer.ckpt_every_minutes=0"]


# ``resdepth-train`` with faults patched in (see tests/train/faults.py)
FAULTS = "tests.train.faults"


def train(args: list[str], nproc: int = 1, env: dict | None = None, check: bool = True,
          timeout: float = 600, module: str = "resdepth.train") -> subprocess.CompletedProcess:
    """``python -m resdepth.train`` (or under ``torchrun`` with ``nproc`` processes); ``module=FAULTS``
    with ``FAULT_*`` variables in ``env`` injects faults."""
    return run_module(module, args, nproc, env, check, timeout)


def stats(run_dir: Path, fields=("loss", "lr", "grad_norm", "images_seen")) -> list[tuple]:
    """The deterministic part of ``stats.jsonl``: per-step training lines without timings."""
    out = []
    for line in (run_dir / "stats.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out.append((rec["step"], *(rec[f] for f in fields)))
    return out


def checksums(run_dir: Path) -> list[str]:
    """Final parameter checksum logged by each rank."""
    sums = []
    for log in sorted(run_dir.glob("log-rank*.txt")):
        lines = [l for l in log.read_text().splitlines() if "final parameter checksum" in l]
        assert lines, f"{log} has no final checksum"
        sums.append(lines[-1].split("checksum ")[1].split()[0])
    return sums
