"""Learning-rate schedule (a pure function of the step, so resuming needs no scheduler state),
the optimiser that skips non-finite steps without a host sync, and the fp32 EMA."""
from __future__ import annotations

import copy
import math
from typing import Optional

import torch

from resdepth.train.config import TrainerConfig


def schedule_steps(cfg: TrainerConfig) -> int:
    """Steps the cosine decay spans: ``trainer.schedule_steps``, or ``max_steps`` when it is 0."""
    return cfg.schedule_steps if cfg.schedule_steps > 0 else cfg.max_steps


def lr_at(step: int, cfg: TrainerConfig) -> float:
    """Linear warm-up to ``cfg.lr``, then cosine to ``lr * min_lr_ratio``, step decay or constant."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.step_gamma ** ((step - cfg.warmup_steps) // max(cfg.step_every, 1))
    span = max(schedule_steps(cfg) - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class GuardedAdamW(torch.optim.AdamW):
    """Fused AdamW whose step is skipped on the device when a gradient is not finite.

    The flag goes to the fused kernel as ``found_inf`` (as ``torch.amp.GradScaler`` does), so no
    value is read back to the host: parameters, moments and the step count stay untouched on a
    bad step; ``loss_bad`` (set before ``step``) marks a non-finite loss as bad too. The flag is
    max-reduced over ranks on the device, so every rank skips the same steps. ``clip`` > 0 clips
    by the global norm first (where the gradients are whole on every rank: DDP after its
    all-reduce, DeepSpeed ZeRO-0 in fp32); ``clip`` = None only checks finiteness (DeepSpeed has
    clipped already; ZeRO ranks hold different slices, the reduced flag covers them all).
    After ``step``: ``last_ok`` (bool tensor) and ``last_norm`` (the pre-clip norm, or None).
    """

    def __init__(self, params, *, clip: Optional[float] = None, **kw):
        super().__init__(params, fused=True, **kw)
        self.clip = clip
        self.last_ok: Optional[torch.Tensor] = None
        self.last_norm: Optional[torch.Tensor] = None
        self.loss_bad: Optional[torch.Tensor] = None  # set by the engine: a rank's loss is not finite

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return None
        if self.clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.clip if self.clip > 0 else math.inf,
                                                  foreach=True)
            self.last_norm = self._global_grad_norm = norm
        else:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))
        bad = ~torch.isfinite(norm)
        if self.loss_bad is not None:
            bad = bad | self.loss_bad.to(bad.device)
        bad = bad.to(torch.float32)
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            # the losses (and ZeRO's gradient slices) differ between ranks: agree on the device
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        self.found_inf = bad
        self.last_ok = bad == 0
        return super().step(closure)


def make_optimizer(net: torch.nn.Module, cfg: TrainerConfig, *, clip: Optional[float]) -> GuardedAdamW:
    """``GuardedAdamW`` over the trainable parameters with the configured hyper-parameters."""
    params = [p for p in net.parameters() if p.requires_grad]
    return GuardedAdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                        clip=clip)


class EMA:
    """Exponential moving average of weights with a half-life counted in images (as in EDM).

    The average is kept in fp32 whatever the training precision: with a half-life of thousands
    of images each update moves a weight by ~1e-3 of its distance to the average, below bf16
    resolution. When the module's weights are low-precision copies (DeepSpeed bf16), ``update``
    takes ``masters``: per parameter the fp32 master ``(start, numel, flat slice)`` this rank
    holds (``numel`` 0 when another rank holds it; ``None`` for an fp32 parameter, its own
    master). With ``partitioned`` masters (ZeRO) each rank averages its slice (no communication
    per step) and ``synchronize`` assembles the whole average: a collective that every rank
    calls before the average is read. The update is masked by the step's ``ok`` flag on the
    device, so a skipped step leaves the average alone without a host sync.
    """

    def __init__(self, net: torch.nn.Module, halflife_images: float, device: torch.device):
        self.halflife_images = halflife_images
        self.net = copy.deepcopy(net).float().to(device).eval().requires_grad_(False)
        self._partitioned = False

    @torch.no_grad()
    def update(self, net: torch.nn.Module, batch_images: int, ok: Optional[torch.Tensor] = None,
               masters: Optional[list] = None, partitioned: bool = False) -> None:
        beta = 0.5 ** (batch_images / self.halflife_images) if self.halflife_images > 0 else 0.0
        weight = 1.0 - beta
        if ok is not None:
            weight = ok.to(torch.float32) * weight
        self._partitioned = partitioned
        ema, src = [], []
        params = list(net.parameters())
        for i, (e, p) in enumerate(zip(self.net.parameters(), params)):
            m = masters[i] if masters is not None else None
            if m is None:
                ema.append(e)
                src.append(p.detach() if p.dtype == torch.float32 else p.detach().float())
            elif m[1]:
                start, numel, hp = m
                ema.append(e.view(-1).narrow(0, start, numel))
                src.append(hp.detach().view(-1))
        if ema:
            if torch.is_tensor(weight):
                deltas = torch._foreach_sub(src, ema)
                torch._foreach_mul_(deltas, weight)
                torch._foreach_add_(ema, deltas)
            else:
                torch._foreach_lerp_(ema, src, weight)
        for e, b in zip(self.net.buffers(), net.buffers()):
            e.copy_(b)
        self._masters = [(m[0], m[1]) if m is not None else None for m in masters] if masters else None

    @torch.no_grad()
    def synchronize(self) -> None:
        """Assemble the slices each rank averaged into the whole average on every rank (a
        collective with partitioned masters; a no-op otherwise)."""
        if not self._partitioned or not torch.distributed.is_initialized():
            return
        for e, m in zip(self.net.parameters(), self._masters):
            if m is None:
                continue
            start, numel = m
            mine = torch.zeros_like(e)
            if numel:
                mine.view(-1).narrow(0, start, numel).copy_(e.view(-1).narrow(0, start, numel))
            torch.distributed.all_reduce(mine)
            e.copy_(mine)

    def state_dict(self) -> dict:
        return self.net.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state)
