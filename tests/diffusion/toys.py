"""Toy networks with the PhysicsNeMo U-Net call signature, small enough for CPU tests."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class PointUNet(nn.Module):
    """A 1x1-receptive-field "U-Net": a pointwise affine map of the first ``used_channels`` inputs,
    plus a noise-label term and a term in the pixel's (row, column), so patch positions matter.

    Channels beyond ``used_channels`` (the resized whole-image condition of patched nets) are
    ignored, which makes patched and whole-image sampling of it agree exactly.
    """

    takes_global_index = True  # like SongUNetPosEmbd: patches tell it where they are

    def __init__(self, used_channels: int, out_channels: int = 1, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.used_channels = used_channels
        self.weight = nn.Parameter(torch.randn(out_channels, used_channels, generator=g) * 0.5)
        self.noise_weight = nn.Parameter(torch.randn(out_channels, generator=g))
        self.pos_weight = nn.Parameter(torch.randn(2, generator=g) * 0.01)
        self.calls: list[dict] = []

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels=None,
                global_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.calls.append({"x": x.detach().clone(), "noise_labels": noise_labels.detach().clone(),
                           "global_index": global_index})
        n, _, h, w = x.shape
        if global_index is None:
            rows = torch.arange(h, dtype=x.dtype).view(1, h, 1).expand(n, h, w)
            cols = torch.arange(w, dtype=x.dtype).view(1, 1, w).expand(n, h, w)
        else:
            rows, cols = global_index[:, 0].to(x.dtype), global_index[:, 1].to(x.dtype)
        out = torch.einsum("oc,nchw->nohw", self.weight, x[:, :self.used_channels])
        out = out + self.noise_weight.view(1, -1, 1, 1) * noise_labels.view(-1, 1, 1, 1)
        return out + (self.pos_weight[0] * rows + self.pos_weight[1] * cols)[:, None]


class ConvUNet(nn.Module):
    """A small convolutional net (3x3 receptive fields) with the U-Net call signature."""

    def __init__(self, in_channels: int, out_channels: int = 1, width: int = 8):
        super().__init__()
        self.inp = nn.Conv2d(in_channels, width, 3, padding=1)
        self.emb = nn.Linear(1, width)
        self.out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, x, noise_labels, class_labels=None, global_index=None):
        h = self.inp(x) + self.emb(noise_labels.view(-1, 1).to(x.dtype))[:, :, None, None]
        return self.out(torch.nn.functional.silu(h))


class GaussianDenoiser(nn.Module):
    """The exact denoiser of data ``N(mu, sd^2)`` per pixel: ``D(x; sigma) = mu + sd^2/(sd^2+sigma^2)(x-mu)``."""

    def __init__(self, mu: float, sd: float):
        super().__init__()
        self.mu, self.sd = mu, sd

    def forward(self, x, sigma, cond, global_index=None):
        return self.mu + self.sd ** 2 / (self.sd ** 2 + sigma ** 2) * (x - self.mu)
