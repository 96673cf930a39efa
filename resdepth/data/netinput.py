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


def net_input(grid: np.ndarray, voxel_norm: str, context: Optional[np.ndarray] = None) -> np.ndarray:
    """``[B (+ N), H, W]`` float32: ``grid`` as a shard stores it (float16), then ``voxel_norm``;
    with ``context`` (``[N, H, W]``, the events before the window) its channels follow, made the
    same way and normalised on their own (a window's scale does not depend on its past)."""
    out = _one(grid, voxel_norm)
    return out if context is None else np.concatenate([out, _one(context, voxel_norm)])


def _one(grid: np.ndarray, voxel_norm: str) -> np.ndarray:
    stored = np.ascontiguousarray(np.asarray(grid).astype(np.float16, copy=False))
    # torch widens float16 to float32 many times faster than numpy's astype (the values are exact)
    return apply_voxel_norm(torch.from_numpy(stored).to(torch.float32).numpy(), voxel_norm)


def stored_input(grid: np.ndarray, context: Optional[np.ndarray] = None) -> np.ndarray:
    """The window's grid and its context as stored (float16), channels one after the other: what
    ``net_input`` makes a net's input from when ``voxel_norm`` is ``none`` (the loader hands these
    to the device, which widens them)."""
    return grid if context is None else np.concatenate([grid, context])


def net_input_batch(grids: Sequence[np.ndarray], voxel_norm: str,
                    contexts: Optional[Sequence[Optional[np.ndarray]]] = None) -> torch.Tensor:
    """``[N, B (+ context bins), H, W]`` float32 on the CPU: ``net_input`` of each, stacked."""
    contexts = contexts if contexts is not None else [None] * len(grids)
    return torch.from_numpy(np.stack([net_input(g, voxel_norm, c) for g, c in zip(grids, contexts)]))


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


def context_mismatch(net: Optional[dict], data: Optional[dict], net_name: str = "the net",
                     data_name: str = "the input", fix: Optional[str] = None,
                     made: str = "trained") -> Optional[str]:
    """Why a net trained with one temporal context cannot take input with another (``{"ms",
    "bins"}`` or None on each side), or None when they agree; ``fix`` replaces the advice and
    ``made`` the verb of the first side (two splits: ``packed``)."""
    if (net or None) == (data or None):
        return None
    def say(c: Optional[dict]) -> str:
        return f"context {c['ms']:g} ms in {c['bins']} bins" if c else "no temporal context"
    fix = fix or ("pack the split with --context-ms/--context-bins as the net was trained" if net
                  else "use a net trained with context, or a split packed without it")
    return f"{net_name}: {made} with {say(net)}; {data_name}: {say(data)}; {fix}"

