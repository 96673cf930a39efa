"""The one function that turns a voxel grid into what a net takes: training, evaluation and
prediction all call ``net_input``.

Shards store the grid in float16 (``resdepth.data.format``); a grid voxelised on the fly (prediction)
is rounded to float16 the same way, so a net sees bit for bit the values it learnt from. The grid
is then float32 and normalised as the run's ``data.voxel_norm`` says (``resdepth.data.voxel``).
Padding to the U-Net's multiple is not done here: the wrapped nets pad every call and crop back
(``resdepth.models.padding``), so the input keeps the frame's size.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from resdepth.data.voxel import apply_voxel_norm


def net_input(grid: np.ndarray, voxel_norm: str) -> np.ndarray:
    """``[B, H, W]`` float32: ``grid`` as a shard stores it (float16), then ``voxel_norm``."""
    stored = np.ascontiguousarray(np.asarray(grid).astype(np.float16, copy=False))
    # torch widens float16 to float32 many times faster than numpy's astype (the values are exact)
    return apply_voxel_norm(torch.from_numpy(stored).to(torch.float32).numpy(), voxel_norm)


def net_input_batch(grids: Sequence[np.ndarray], voxel_norm: str) -> torch.Tensor:
    """``[N, B, H, W]`` float32 on the CPU: ``net_input`` of each grid, stacked."""
    return torch.from_numpy(np.stack([net_input(g, voxel_norm) for g in grids]))


# ``index.json`` params that say how a split's voxel grids were made from events
VOXELISATION_KEYS = ("splat", "window", "window_ms", "events_per_sample")


def input_spec(index: Optional[dict], voxel_norm: str) -> dict[str, Any]:
    """What a net's input is made with, for its export: the split's voxelisation as its
    ``index.json`` params record it (bins, splat, window) and the run's ``voxel_norm``; prediction
    voxelises a recording the same way and warns where it cannot."""
    params = (index or {}).get("params") or {}
    spec: dict[str, Any] = {k: params[k] for k in VOXELISATION_KEYS if k in params}
    if index is not None:
        spec["bins"] = int(index["bins"])
    spec["voxel_norm"] = voxel_norm
    return spec
