"""Depth normalisation between metres and the network's [0, 1] target.

``log``: ``1 + ln(D / Dmax) / alpha`` clipped to [0, 1] (E2Depth); ``linear``: ``D / Dmax``;
``inverse``: ``Dmin / D``. Invalid pixels (depth 0) map to 0 in every kind. ``denormalize`` is
the exact inverse on the valid range (depths between the kind's clip limits).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from resdepth.utils.errors import UserError

KINDS = ("log", "linear", "inverse")


@dataclass(frozen=True)
class DepthNorm:
    """A depth normalisation and its parameters."""
    kind: str = "log"
    max_depth: float = 80.0
    min_depth: float = 1.0
    alpha: float = 3.7

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"depth normalisation kind {self.kind!r}: expected one of {KINDS}")
        if not (self.max_depth > 0 and self.min_depth > 0 and self.alpha > 0):
            raise UserError(f"depth normalisation needs positive max_depth, min_depth, alpha: {self}")

    def normalize(self, depth_m: torch.Tensor) -> torch.Tensor:
        """Metres to [0, 1]; pixels with depth <= 0 (invalid) give 0."""
        valid = depth_m > 0
        d = torch.where(valid, depth_m, torch.ones_like(depth_m))
        if self.kind == "log":
            x = 1.0 + torch.log(d / self.max_depth) / self.alpha
        elif self.kind == "linear":
            x = d / self.max_depth
        else:
            x = self.min_depth / d
        return torch.where(valid, x.clamp(0.0, 1.0), torch.zeros_like(x))

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] back to metres (values are clipped to [0, 1] first)."""
        x = x.clamp(0.0, 1.0)
        if self.kind == "log":
            return self.max_depth * torch.exp((x - 1.0) * self.alpha)
        if self.kind == "linear":
            return x * self.max_depth
        return self.min_depth / x.clamp_min(self.min_depth / 1e6)

    def valid_range_m(self) -> tuple[float, float]:
        """Depths (metres) that round-trip exactly."""
        if self.kind == "log":
            return self.max_depth * math.exp(-self.alpha), self.max_depth
        if self.kind == "linear":
            return 0.0, self.max_depth
        return self.min_depth, float("inf")

    def to_dict(self) -> dict[str, Any]:
        """Plain parameters, saved with checkpoints and exports."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DepthNorm":
        return cls(kind=str(d.get("kind", "log")), max_depth=float(d.get("max_depth", 80.0)),
                   min_depth=float(d.get("min_depth", 1.0)), alpha=float(d.get("alpha", 3.7)))

    @classmethod
    def from_config(cls, data_cfg: Any) -> "DepthNorm":
        """From a ``DataConfig`` (fields ``depth_norm``, ``max_depth``, ``min_depth``, ``alpha``)."""
        return cls(kind=data_cfg.depth_norm, max_depth=float(data_cfg.max_depth),
                   min_depth=float(data_cfg.min_depth), alpha=float(data_cfg.alpha))
