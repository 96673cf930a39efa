"""Learning-rate schedule (a pure function of the step, so resuming needs no scheduler state) and EMA."""
from __future__ import annotations

import copy
import math

import torch

from resdepth.train.config import TrainerConfig


def lr_at(step: int, cfg: TrainerConfig) -> float:
    """Linear warm-up to ``cfg.lr``, then cosine to ``lr * min_lr_ratio``, step decay or constant."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.step_gamma ** ((step - cfg.warmup_steps) // max(cfg.step_every, 1))
    span = max(cfg.max_steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class EMA:
    """Exponential moving average of weights with a half-life counted in images (as in EDM)."""

    def __init__(self, net: torch.nn.Module, halflife_images: float):
        self.halflife_images = halflife_images
        self.net = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: torch.nn.Module, batch_images: int) -> None:
        beta = 0.5 ** (batch_images / self.halflife_images) if self.halflife_images > 0 else 0.0
        for e, p in zip(self.net.parameters(), net.parameters()):
            e.copy_(p.detach().lerp(e, beta))
        for e, b in zip(self.net.buffers(), net.buffers()):
            e.copy_(b)

    def state_dict(self) -> dict:
        return self.net.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state)
