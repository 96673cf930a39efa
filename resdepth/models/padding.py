"""Frames of any size through a U-Net that halves its input ``len(channel_mult) - 1`` times.

The one padding rule of resdepth: an axis the U-Net would refuse (not a multiple of
``2**(levels-1)``; PhysicsNeMo also accepts powers of two below it) is zero-padded at the bottom
and the right up to the next multiple, the net runs on the padded frame, and its output is cropped
back to the input's size. The wrapped nets (``resdepth.models.precond``) apply it on every
call, so training, validation, evaluation and patched sampling all see predictions of the input's
size, and the padded pixels (mask 0: no target there) never reach a loss or a metric.

Padding at the bottom/right keeps pixel ``(r, c)`` at ``(r, c)``, so the positional grid of
``SongUNetPosEmbd`` is built for the padded frame (``unet_resolution``) and indexed with the frame
coordinates; patch and crop indices continue into the padding (clamped to the grid).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def unet_multiple(levels: int) -> int:
    """Sizes a U-Net with ``levels`` resolution levels takes: multiples of ``2**(levels-1)``."""
    return 2 ** (max(int(levels), 1) - 1)


def padded_size(size: int, multiple: int) -> int:
    """``size`` if the U-Net takes it as it is, else the next multiple of ``multiple``."""
    pow2_below = size > 0 and (size & (size - 1)) == 0 and size < multiple
    if size % multiple == 0 or pow2_below:
        return size
    return -(-size // multiple) * multiple


def unet_resolution(frame: Sequence[int], levels: int) -> list[int]:
    """``[H, W]`` of the padded frame a U-Net with ``levels`` levels runs on for ``frame``."""
    m = unet_multiple(levels)
    return [padded_size(int(s), m) for s in frame]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``x [..., H, W]`` zero-padded at the bottom and right to sizes the U-Net takes."""
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, multiple) - h, padded_size(w, multiple) - w
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


def extend_index(global_index: torch.Tensor, shape: Sequence[int],
                 grid_shape: Sequence[int]) -> torch.Tensor:
    """``global_index [P, 2, h, w]`` (row, column) continued to ``shape`` (padding at the bottom and
    right, one more row/column per padded pixel), clamped to the ``grid_shape`` positional grid."""
    h, w = global_index.shape[-2:]
    ph, pw = int(shape[0]) - h, int(shape[1]) - w
    if ph == 0 and pw == 0:
        return global_index
    rows, cols = global_index[:, 0], global_index[:, 1]
    if ph:
        step = torch.arange(1, ph + 1, device=rows.device)[None, :, None]
        rows = torch.cat([rows, rows[:, -1:] + step.expand(rows.shape[0], ph, w)], dim=1)
        cols = torch.cat([cols, cols[:, -1:].expand(-1, ph, -1)], dim=1)
    if pw:
        step = torch.arange(1, pw + 1, device=cols.device)[None, None, :]
        cols = torch.cat([cols, cols[:, :, -1:] + step.expand(cols.shape[0], cols.shape[1], pw)], dim=2)
        rows = torch.cat([rows, rows[:, :, -1:].expand(-1, -1, pw)], dim=2)
    return torch.stack([rows.clamp(0, int(grid_shape[0]) - 1),
                        cols.clamp(0, int(grid_shape[1]) - 1)], dim=1)


def run_padded(unet: torch.nn.Module, x: torch.Tensor, noise_labels: torch.Tensor,
               global_index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``unet(x, noise_labels, None[, global_index])`` on ``x`` padded to the U-Net's multiple,
    cropped back to ``x``'s height and width. ``global_index`` is passed only to nets that take it
    (``SongUNetPosEmbd``); a plain ``SongUNet`` is translation-equivariant and needs no position."""
    h, w = x.shape[-2:]
    padded = pad_to_multiple(x, getattr(unet, "input_multiple", 1))
    if global_index is None or not getattr(unet, "takes_global_index", False):
        out = unet(padded, noise_labels, None)
    else:
        if padded.shape[-2:] != x.shape[-2:]:
            global_index = extend_index(global_index, padded.shape[-2:],
                                        (unet.img_shape_y, unet.img_shape_x))
        out = unet(padded, noise_labels, None, global_index=global_index)
    return out[..., :h, :w]
