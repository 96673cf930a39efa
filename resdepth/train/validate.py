"""Validation during training: the loss on the val split and TensorBoard image panels; and the
dry run's single forward pass."""
from __future__ import annotations

import hashlib
import logging
import time
from typing import Callable, Optional

import numpy as np
import torch

from resdepth import dist
from resdepth.data.loader import ShardStream, finish_batch
from resdepth.data.norm import DepthNorm
from resdepth.train.config import Config
from resdepth.train.engine import autocast_ctx
from resdepth.train.metrics import MetricsLogger
from resdepth.train.stage import predict_panels
from resdepth.utils.viz import Scale, validation_panels

log = logging.getLogger("resdepth")
LossCore = Callable[[torch.nn.Module, dict, torch.Generator], torch.Tensor]


def step_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed from the run seed and integers (step, rank, micro-batch)."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


class Validator:
    """The mean loss over (the first ``run.val_batches`` batches of) the val split, reduced over
    ranks, with the same noise at every validation; panels of the first image on rank 0 (its
    window's ``bins`` event channels, without the temporal context that follows them)."""

    def __init__(self, cfg: Config, stream: ShardStream, loss_core: LossCore,
                 regression_net: Optional[torch.nn.Module], norm: DepthNorm, device: torch.device,
                 bins: Optional[int] = None):
        self.cfg, self.stream, self.loss_core = cfg, stream, loss_core
        self.regression_net, self.norm, self.device = regression_net, norm, device
        self.bins = bins

    @torch.no_grad()
    def run(self, net: torch.nn.Module, step: int, metrics: MetricsLogger) -> float:
        """Validate ``net`` (collective); writes ``val/loss`` and the panels, returns the loss."""
        net.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        first = None
        limit = self.cfg.run.val_batches
        for i, batch in enumerate(self.stream):
            if limit and i >= limit:
                break
            batch = finish_batch(batch, self.device, self.norm)
            gen = torch.Generator(self.device).manual_seed(step_seed(self.cfg.run.seed, -1, i))
            with autocast_ctx(self.cfg.trainer, self.device):
                loss = self.loss_core(net, batch, gen)
            n = batch["events"].shape[0]
            totals[0] += loss.detach().to(torch.float64) * n
            totals[1] += n
            if first is None:
                first = batch
        dist.all_reduce_sum(totals)
        val = float(totals[0] / max(totals[1], 1))
        metrics.scalars(step, {"loss": val}, prefix="val")
        log.info("step %d validation loss %.5f", step, val)
        if first is not None and dist.is_main():
            metrics.images(step, self.panels(net, first))
        return val

    def panels(self, net: torch.nn.Module, batch: dict) -> dict[str, np.ndarray]:
        """Events, true and predicted depth, their difference and |error| for the batch's first image."""
        pred = predict_panels(self.cfg, net, self.regression_net, batch, self.norm)[0, 0].cpu().numpy()
        true_m = batch["depth_m"][0, 0].cpu().numpy()
        mask = batch["mask"][0, 0].cpu().numpy() > 0
        lo = float(true_m[mask].min()) if mask.any() else 1.0
        return validation_panels(batch["events"][0, :self.bins].cpu().numpy(), true_m, mask, pred,
                                 Scale(lo, float(self.cfg.data.max_depth)))


@torch.no_grad()
def dry_forward(net: torch.nn.Module, loss_core: LossCore, streams: dict[str, ShardStream],
                norm: DepthNorm, device: torch.device, seed: int, images: int = 2) -> list[str]:
    """One forward pass of the loss on the first ``images`` of the first real batch of each
    stream, so that size and configuration errors show before a job is queued (quickly, even on
    a CPU login node); one line per stream."""
    lines = []
    net.eval()
    for name, stream in streams.items():
        batch = next(iter(stream))
        batch = finish_batch({k: v[:images] for k, v in batch.items()}, device, norm)
        gen = torch.Generator(device).manual_seed(seed)
        t0 = time.perf_counter()
        loss = float(loss_core(net, batch, gen))
        lines.append(f"{name} batch {list(batch['events'].shape)}: loss {loss:.5f} "
                     f"({time.perf_counter() - t0:.2f} s forward)")
    return lines
