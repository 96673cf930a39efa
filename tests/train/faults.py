"""``python -m tests.train.faults [train args]``: ``resdepth-train`` with faults injected by
patching the trainer (the library holds no test hooks). Set in the child's environment:

- ``FAULT_SIGNAL_AT_STEP=N``: rank 0 sends itself SIGUSR2 right after step N (as Slurm's
  submitit signals rank 0 only);
- ``FAULT_CKPT_DELAY=STEP:SECONDS``: from checkpoint STEP on, sleep between writing the rank
  files and committing the checkpoint, so that a test can kill the process in the middle;
- ``FAULT_NO_RESIDUAL_MEASURE=1``: measuring stage 2's residual std fails (a resumed run must
  take it from its checkpoint).
"""
from __future__ import annotations

import os
import signal
import sys
import time

from resdepth import dist
from resdepth.train import stage
from resdepth.train.__main__ import cli
from resdepth.train.checkpoint import Checkpointer
from resdepth.train.loop import Trainer


def signal_after_step(at_step: int) -> None:
    real = Trainer.train_step

    def train_step(self, micro_batches):
        res = real(self, micro_batches)
        if dist.is_main() and self.state.step == at_step:
            os.kill(os.getpid(), signal.SIGUSR2)
        return res

    Trainer.train_step = train_step


def slow_checkpoint_commit(from_step: int, seconds: float) -> None:
    real = Checkpointer._write_rank_files

    def write_rank_files(step, tmp, per_rank, engine_save):
        failure = real(step, tmp, per_rank, engine_save)
        if step >= from_step:
            time.sleep(seconds)
        return failure

    Checkpointer._write_rank_files = staticmethod(write_rank_files)


def forbid_residual_measurement() -> None:
    def measure(*args, **kwargs):
        raise AssertionError("the residual std was measured again")

    stage.measure_residual_std = measure


if __name__ == "__main__":
    if os.environ.get("FAULT_NO_RESIDUAL_MEASURE"):
        forbid_residual_measurement()
    if os.environ.get("FAULT_SIGNAL_AT_STEP"):
        signal_after_step(int(os.environ["FAULT_SIGNAL_AT_STEP"]))
    if os.environ.get("FAULT_CKPT_DELAY"):
        step, seconds = os.environ["FAULT_CKPT_DELAY"].split(":")
        slow_checkpoint_commit(int(step), float(seconds))
    cli(sys.argv[1:])
