"""Global positional grids that ``SongUNetPosEmbd`` appends to its input, as closed forms.

With ``u`` the column angle ``linspace(0, 2*pi, W)`` (varying along width) and ``v`` the row
angle ``linspace(0, 2*pi, H)`` (varying along height), the sinusoidal grid with ``4k`` channels is,
for each frequency ``f`` in turn::

    sin(f u), sin(f v), cos(f u), cos(f v)

Channel 0 is thus constant down each column and channel 1 constant along each row; this is the
order of the original CorrDiff code and of PhysicsNeMo after PR #1096 (PR #1000 had stacked the
components in the wrong order). ``sinusoidal`` uses the legacy bands ``f = 2**linspace(0, k, k)``
that trained checkpoints expect (1 for k = 1; 1, 4 for k = 2), ``sinusoidal_octave`` the octaves
``f = 2**arange(k)``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from resdepth.utils.errors import UserError

GRID_TYPES = ("sinusoidal", "sinusoidal_octave", "learnable", "linear", "test")


def positional_grid(gridtype: str, channels: int, height: int, width: int) -> Optional[torch.Tensor]:
    """The ``(channels, height, width)`` float32 grid of ``gridtype`` (random for ``learnable``);
    ``None`` when ``channels`` is 0."""
    if channels == 0:
        return None
    if gridtype == "learnable":
        return torch.randn(channels, height, width)
    if gridtype == "linear":
        _need(channels == 2, "gridtype 'linear' needs N_grid_channels == 2")
        cols, rows = _axes(torch.linspace(-1, 1, width, dtype=torch.float64),
                           torch.linspace(-1, 1, height, dtype=torch.float64))
        return torch.stack([cols, rows]).float()
    if gridtype in ("sinusoidal", "sinusoidal_octave"):
        _need(channels % 4 == 0, f"gridtype {gridtype!r} needs N_grid_channels a multiple of 4")
        return sinusoidal_grid(channels // 4, height, width, octave=gridtype == "sinusoidal_octave")
    if gridtype == "test":
        _need(channels == 2, "gridtype 'test' needs N_grid_channels == 2")
        cols, rows = _axes(torch.arange(width), torch.arange(height))
        return torch.stack([rows, cols]).float()
    raise UserError(f"gridtype {gridtype!r} not supported; choose from {list(GRID_TYPES)}")


def sinusoidal_grid(num_freq: int, height: int, width: int, octave: bool = False) -> torch.Tensor:
    """``(4*num_freq, height, width)``: ``sin(f u), sin(f v), cos(f u), cos(f v)`` per band ``f``."""
    if octave:
        freqs = 2.0 ** torch.arange(num_freq, dtype=torch.float64)
    else:
        freqs = 2.0 ** torch.linspace(0.0, num_freq, num_freq, dtype=torch.float64)
    u, v = _axes(torch.linspace(0, 2 * math.pi, width, dtype=torch.float64),
                 torch.linspace(0, 2 * math.pi, height, dtype=torch.float64))
    channels = []
    for f in freqs:
        channels += [torch.sin(f * u), torch.sin(f * v), torch.cos(f * u), torch.cos(f * v)]
    return torch.stack(channels).float()


def _axes(cols: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H, W)`` maps of the column value and of the row value at each pixel."""
    return cols[None, :].expand(len(rows), -1), rows[:, None].expand(-1, len(cols))


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise UserError(msg)
