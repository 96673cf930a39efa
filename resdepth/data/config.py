"""Configuration of the streaming data pipeline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from resdepth.config.core import opt


@dataclass
class DataConfig:
    root: str = opt("", "Directory holding the train/, val/ and test/ split directories of tar shards.")
    train_urls: Optional[str] = opt(None, "Shard URLs for training (brace pattern or pipe:), overriding root/train.")
    val_urls: Optional[str] = opt(None, "Shard URLs for validation (brace pattern or pipe:), overriding root/val.")
    num_workers: int = opt(2, "Loader worker processes per rank.")
    shuffle_buffer: int = opt(256, "Samples held in the shuffle buffer (0 disables sample shuffling).")
    crop: list[int] = opt([], "Random crop [H, W] applied to events, depth and mask together; [] keeps full frames.")
    flip: bool = opt(True, "Random horizontal flip in training.")
    depth_norm: Literal["log", "linear", "inverse"] = opt("log", "Depth normalisation: E2Depth log depth, linear D/Dmax, or inverse Dmin/D.")
    max_depth: float = opt(80.0, "Dmax in metres for the normalisation; deeper values are clipped.")
    min_depth: float = opt(1.0, "Dmin in metres for the inverse-depth normalisation.")
    alpha: float = opt(3.7, "alpha of the log-depth normalisation 1 + ln(D/Dmax)/alpha.")
    voxel_norm: Literal["none", "nonzero"] = opt("none", "Event voxel normalisation per sample: none, or non-zero cells to zero mean and unit std (E2Depth); recorded in the export.")
    on_error: Literal["raise", "skip"] = opt("raise", "Bad sample: raise naming shard, key and reason, or skip it, count and log it.")
    max_consecutive_skips: int = opt(100, "With on_error=skip: stop with an error after this many bad samples in a row (0: never).")

    def check(self) -> list[tuple[str, str]]:
        """(key, problem) for every value out of range."""
        out = []
        if self.crop and (len(self.crop) != 2 or any(c <= 0 for c in self.crop)):
            out.append(("crop", f"must be [] or [H, W] with H, W >= 1, got {self.crop}"))
        for key in ("num_workers", "shuffle_buffer", "max_consecutive_skips"):
            if getattr(self, key) < 0:
                out.append((key, f"must be >= 0, got {getattr(self, key)}"))
        return out
