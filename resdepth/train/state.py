"""The counters of a training run, saved beside the weights: step, images seen, the log
interval's sums and the non-finite step counts."""
from __future__ import annotations

from typing import Any

import torch

from resdepth.train.engine import StepResult


class TrainState:
    """Where a run stands. The sums and counts stay on the device, so a step reads nothing back
    to the host; the metrics logger reads them once per log interval."""

    def __init__(self, device: torch.device):
        self.device = device
        self.step = 0
        self.images_seen = 0
        # Skipped steps in a row, and the first step at which max_nonfinite of them was reached.
        self.in_row = torch.zeros((), dtype=torch.int64, device=device)
        self.limit_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.last_norm: Any = None
        self.zero_interval()

    def zero_interval(self) -> None:
        """Start a new log interval."""
        z = lambda: torch.zeros((), dtype=torch.float64, device=self.device)  # noqa: E731
        self.interval = {"loss_sum": z(), "n": z(), "nonfinite": z()}

    def record(self, res: StepResult, micro_batches: int, batch_size: int,
               max_nonfinite: int) -> None:
        """Count one optimiser step on the device (no host sync)."""
        ok = res.ok
        okf = ok.to(torch.float64)
        self.in_row = torch.where(ok, 0, self.in_row + 1)
        reached = (self.in_row >= max_nonfinite) & (self.limit_step < 0)
        self.limit_step = torch.where(reached, self.step, self.limit_step)
        # a skipped step adds nothing (where, not okf *: 0 x NaN would poison the interval's mean)
        self.interval["loss_sum"] += torch.where(ok, res.loss_sum.to(torch.float64), 0.0) / micro_batches
        self.interval["n"] += okf
        self.interval["nonfinite"] += 1 - okf
        self.last_norm = res.grad_norm
        self.step += 1
        self.images_seen += batch_size

    @property
    def nonfinite_in_row(self) -> int:
        """Skipped steps in a row up to now (reads the device counter)."""
        return int(self.in_row)

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers (the keys sit at the top level of ``train_state.pt``)."""
        return {"step": self.step, "images_seen": self.images_seen,
                "interval": {k: float(v) for k, v in self.interval.items()},
                "nonfinite_in_row": self.nonfinite_in_row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (extra keys are ignored)."""
        self.step = int(state["step"])
        self.images_seen = int(state["images_seen"])
        self.zero_interval()
        for k, v in state["interval"].items():
            self.interval[k].fill_(v)
        self.in_row.fill_(int(state["nonfinite_in_row"]))
