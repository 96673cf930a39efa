"""Cutting images into patches and putting them back, for patch-based training and sampling.

Layout: patches are stacked sample-major, ``[N * P, C, h, w]`` with the patches of sample ``n`` in
rows ``n * P ... n * P + P - 1``. A ``global_index`` ``[N * P, 2, h, w]`` (long) holds, for every
patch pixel, its (row, column) in the full image; ``SongUNetPosEmbd`` uses it to cut the same
patch out of its positional grid. One index per patch row (P = N * P, B = 1 in PhysicsNeMo's
terms) keeps that lookup independent of how the U-Net orders patches within a batch.

Grid patching (inference): the image is reflect-padded by ``boundary_pix`` on every side (so the
border pixels also get context) and, on the bottom/right, by what the last patch needs; patches
of stride ``patch - overlap_pix`` cover it; fusing sums the patches, divides by how many patches
cover each pixel and crops the padding off again.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from resdepth.utils.errors import UserError


def _axis(size: int, patch: int, overlap: int, boundary: int) -> tuple[int, int, int]:
    """(patches along the axis, stride, padding after the image) for one image axis."""
    if not 0 <= overlap < patch:
        raise UserError(f"overlap_pix={overlap} must be in [0, patch size {patch})")
    if boundary < 0:
        raise UserError(f"boundary_pix={boundary} must be >= 0")
    stride = patch - overlap
    n = max(1, math.ceil((size + 2 * boundary - patch) / stride) + 1)
    after = (n - 1) * stride + patch - size - boundary
    if max(boundary, after) >= size and max(boundary, after) > 0:
        raise UserError(f"reflect padding of {max(boundary, after)} pixels needs an image axis "
                         f"longer than that (got {size}); use smaller patches or boundary_pix")
    return n, stride, after


def _pad(x: torch.Tensor, patch_shape: Sequence[int], overlap_pix: int, boundary_pix: int
         ) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    _, sy, after_y = _axis(h, patch_shape[0], overlap_pix, boundary_pix)
    _, sx, after_x = _axis(w, patch_shape[1], overlap_pix, boundary_pix)
    b = boundary_pix
    if b or after_x or after_y:
        x = F.pad(x, (b, after_x, b, after_y), mode="reflect")
    return x, (sy, sx)


def patchify(x: torch.Tensor, patch_shape: Sequence[int], overlap_pix: int = 0,
             boundary_pix: int = 0) -> torch.Tensor:
    """Grid patches ``[N * P, C, h, w]`` of ``x [N, C, H, W]`` (reflect-padded, see module doc)."""
    n, c = x.shape[:2]
    ph, pw = patch_shape
    padded, stride = _pad(x, patch_shape, overlap_pix, boundary_pix)
    cols = F.unfold(padded, kernel_size=(ph, pw), stride=stride)  # [N, C*ph*pw, P]
    p = cols.shape[-1]
    return cols.view(n, c, ph, pw, p).permute(0, 4, 1, 2, 3).reshape(n * p, c, ph, pw)


def unpatchify(patches: torch.Tensor, img_shape: Sequence[int], overlap_pix: int = 0,
               boundary_pix: int = 0) -> torch.Tensor:
    """Fuse grid patches ``[N * P, C, h, w]`` back into ``[N, C, H, W]``, averaging overlaps."""
    h, w = img_shape
    _, c, ph, pw = patches.shape
    ny, sy, after_y = _axis(h, ph, overlap_pix, boundary_pix)
    nx, sx, after_x = _axis(w, pw, overlap_pix, boundary_pix)
    p = ny * nx
    n = patches.shape[0] // p
    if n * p != patches.shape[0]:
        raise ValueError(f"{patches.shape[0]} patches are not a multiple of the {p} patches per image")
    out_size = (h + boundary_pix + after_y, w + boundary_pix + after_x)
    cols = patches.reshape(n, p, c * ph * pw).permute(0, 2, 1)
    summed = F.fold(cols, out_size, kernel_size=(ph, pw), stride=(sy, sx))
    ones = torch.ones(1, ph * pw, p, dtype=patches.dtype, device=patches.device)
    count = F.fold(ones, out_size, kernel_size=(ph, pw), stride=(sy, sx))
    b = boundary_pix
    return (summed / count)[..., b:b + h, b:b + w]


def take_patches(x: torch.Tensor, global_index: torch.Tensor) -> torch.Tensor:
    """The patches ``[N * P, C, h, w]`` of ``x [N, C, H, W]`` that ``global_index`` points at."""
    n = x.shape[0]
    p = global_index.shape[0] // n
    sample = torch.arange(n, device=x.device).repeat_interleave(p)[:, None, None]
    rows, cols = global_index[:, 0], global_index[:, 1]
    return x[sample, :, rows, cols].permute(0, 3, 1, 2)  # advanced indexing puts C last


def random_patch_index(batch_size: int, img_shape: Sequence[int], patch_shape: Sequence[int],
                       patch_num: int = 1, generator: Optional[torch.Generator] = None,
                       device: Optional[torch.device] = None) -> torch.Tensor:
    """``global_index [batch_size * patch_num, 2, h, w]`` of uniformly placed patches inside the image."""
    (h, w), (ph, pw) = img_shape, patch_shape
    if ph > h or pw > w:
        raise UserError(f"patch {list(patch_shape)} larger than the image {list(img_shape)}")
    k = batch_size * patch_num
    top = torch.randint(0, h - ph + 1, (k,), generator=generator, device=device)
    left = torch.randint(0, w - pw + 1, (k,), generator=generator, device=device)
    rows = (top[:, None] + torch.arange(ph, device=device))[:, :, None].expand(k, ph, pw)
    cols = (left[:, None] + torch.arange(pw, device=device))[:, None, :].expand(k, ph, pw)
    return torch.stack([rows, cols], dim=1)


def crop_index(origin: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``global_index [N, 2, h, w]`` of crops of ``shape`` whose top-left pixels are ``origin [N, 2]``
    in the frame (one index row per image: the layout of ``take_patches`` with one patch each)."""
    h, w = int(shape[0]), int(shape[1])
    rows = torch.arange(h, device=origin.device)[None, :, None] + origin[:, 0, None, None]
    cols = torch.arange(w, device=origin.device)[None, None, :] + origin[:, 1, None, None]
    n = origin.shape[0]
    return torch.stack([rows.expand(n, h, w), cols.expand(n, h, w)], dim=1)


def patch_condition(cond_patches: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
    """Append the whole-image condition, resized to the patch, to each patch's own condition.

    This is how CorrDiff tells a patch where it sits in the scene; ``cond_patches [N * P, C1, h, w]``,
    ``global_cond [N, C2, H, W]`` -> ``[N * P, C1 + C2, h, w]``.
    """
    n = global_cond.shape[0]
    p = cond_patches.shape[0] // n
    small = F.interpolate(global_cond.to(cond_patches.dtype), size=cond_patches.shape[-2:],
                          mode="bilinear", align_corners=False)
    return torch.cat([cond_patches, small.repeat_interleave(p, dim=0)], dim=1)


class GridPatching:
    """A fixed grid of overlapping patches over images of ``img_shape`` (inference)."""

    def __init__(self, img_shape: Sequence[int], patch_shape: Sequence[int], overlap_pix: int = 0,
                 boundary_pix: int = 0):
        self.img_shape = tuple(int(s) for s in img_shape)
        self.patch_shape = tuple(int(s) for s in patch_shape)
        self.overlap_pix = int(overlap_pix)
        self.boundary_pix = int(boundary_pix)
        ny, _, _ = _axis(self.img_shape[0], self.patch_shape[0], self.overlap_pix, self.boundary_pix)
        nx, _, _ = _axis(self.img_shape[1], self.patch_shape[1], self.overlap_pix, self.boundary_pix)
        self.num_patches = ny * nx

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W] -> [N * P, C, h, w]``."""
        return patchify(x, self.patch_shape, self.overlap_pix, self.boundary_pix)

    def fuse(self, patches: torch.Tensor) -> torch.Tensor:
        """``[N * P, C, h, w] -> [N, C, H, W]``, overlaps averaged."""
        return unpatchify(patches, self.img_shape, self.overlap_pix, self.boundary_pix)

    def global_index(self, batch_size: int, device: Optional[torch.device] = None) -> torch.Tensor:
        """``[batch_size * P, 2, h, w]`` (row, column) of every patch pixel in the image."""
        h, w = self.img_shape
        grid = torch.stack(torch.meshgrid(torch.arange(h, dtype=torch.float64),
                                          torch.arange(w, dtype=torch.float64), indexing="ij"))
        index = self.apply(grid[None]).round().long()  # reflect padding reflects the coordinates too
        return index.repeat(batch_size, 1, 1, 1).to(device)

    def condition(self, cond: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        """The residual net's condition per patch: patches of ``cond`` + resized ``global_cond``."""
        return patch_condition(self.apply(cond), global_cond)
