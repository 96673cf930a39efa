"""The one named logger: rank 0 to the console, every rank to its own ``log-rankN.txt``."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

LOGGER_NAME = "resdepth"


def setup_logging(run_dir: Optional[Path] = None, rank: int = 0, level: int = logging.INFO) -> logging.Logger:
    """Configure the ``resdepth`` logger once per process; safe to call again with a run dir."""
    log = logging.getLogger(LOGGER_NAME)
    log.setLevel(level)
    log.propagate = False
    fmt = logging.Formatter(f"%(asctime)s [rank{rank}] %(levelname)s %(message)s", "%H:%M:%S")
    for h in list(log.handlers):
        if getattr(h, "_resdepth", False):
            log.removeHandler(h)
            h.close()
    if rank == 0:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(fmt)
        console._resdepth = True
        log.addHandler(console)
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(run_dir) / f"log-rank{rank}.txt")
        fh.setFormatter(fmt)
        fh._resdepth = True
        log.addHandler(fh)
    return log
