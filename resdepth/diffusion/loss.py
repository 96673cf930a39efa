"""The two training losses of the CorrDiff recipe, on valid depth pixels only.

Both are callables ``loss(net, depth, cond, mask, ...) -> scalar``: the mean over valid pixels of
the batch (pixel-pooled), 0 (with a gradient) when no pixel is valid. Values of masked pixels never
reach the result, not even as NaN.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from resdepth.diffusion.patching import crop_index, patch_condition, random_patch_index, take_patches


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``valid`` pixels (broadcast); 0 when none is valid."""
    valid = valid.expand_as(values)
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    return total / valid.sum().clamp_min(1)


def _crop_index(origin: Optional[torch.Tensor], like: torch.Tensor) -> Optional[torch.Tensor]:
    # where each training crop sits in the frame, for the positional grid of SongUNetPosEmbd
    return None if origin is None else crop_index(origin.to(like.device), like.shape[-2:])


class RegressionLoss:
    """Stage 1: masked MSE between ``net(cond)`` and the depth."""

    def __call__(self, net: nn.Module, depth: torch.Tensor, cond: torch.Tensor,
                 mask: torch.Tensor, origin: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mean squared error over valid pixels; ``depth, mask [N, 1, H, W]``, ``cond [N, C, H, W]``,
        ``origin [N, 2]`` the crops' top-left pixels in the frame (None: whole frames)."""
        valid = mask.bool()
        index = _crop_index(origin, cond)
        pred = net(cond) if index is None else net(cond, global_index=index)
        # zero before squaring: a NaN depth under the mask must not reach the gradient either
        err = torch.where(valid, pred - torch.where(valid, depth, 0.0), 0.0)
        return masked_mean(err ** 2, valid)


class ResidualLoss:
    """Stage 2: EDM denoising loss on the residual ``depth - regression_net(cond)``.

    ``sigma = exp(N(P_mean, P_std))`` per sample (per patch when patching), weight
    ``(sigma^2 + sigma_data^2) / (sigma * sigma_data)^2`` (Karras et al. 2022, eq. 8 with
    ``lambda`` making the effective weight 1 at every sigma).

    ``hr_mean_conditioning``: the regression mean is put in front of the condition channels, so
    the residual net sees ``[x, mean, cond]`` (the samplers do the same).
    ``patch_shape``: train on ``patch_num`` random patches per image; each patch carries its
    ``global_index`` (for the positional grid of ``SongUNetPosEmbd``) and the whole condition
    resized to the patch as extra channels, as CorrDiff does.
    The residual at invalid pixels is set to 0, so the depth stored there never reaches the net.
    """

    def __init__(self, regression_net: Optional[nn.Module], P_mean: float = -1.2, P_std: float = 1.2,
                 sigma_data: float = 0.5, hr_mean_conditioning: bool = False,
                 patch_shape: Optional[Sequence[int]] = None, patch_num: int = 1):
        self.regression_net = regression_net
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data
        self.hr_mean_conditioning = hr_mean_conditioning
        self.patch_shape = tuple(patch_shape) if patch_shape else None
        self.patch_num = patch_num

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """EDM loss weight ``lambda(sigma)``."""
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2

    @torch.no_grad()
    def mean(self, cond: torch.Tensor, like: torch.Tensor,
             global_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Frozen regression mean (zeros when there is no regression net)."""
        if self.regression_net is None:
            return torch.zeros_like(like, dtype=torch.float32)
        if global_index is None:
            return self.regression_net(cond).to(torch.float32)
        return self.regression_net(cond, global_index=global_index).to(torch.float32)

    def __call__(self, net: nn.Module, depth: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor,
                 generator: Optional[torch.Generator] = None,
                 origin: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Weighted denoising error over valid pixels; ``net(x, sigma, cond, global_index=...)``.

        ``origin [N, 2]``: top-left pixels of training crops in the frame (None: whole frames);
        the positional grid is cut at the crop's (and the patch's) place in the frame.
        """
        valid = mask.bool()
        global_index = _crop_index(origin, cond)
        mean = self.mean(cond, depth, global_index)
        y = torch.where(valid, depth.to(torch.float32) - mean, 0.0)
        net_cond = torch.cat([mean, cond.to(torch.float32)], 1) if self.hr_mean_conditioning else cond
        if self.patch_shape is not None:
            local = random_patch_index(y.shape[0], y.shape[-2:], self.patch_shape,
                                       self.patch_num, generator, y.device)
            y, valid = take_patches(y, local), take_patches(valid, local)
            net_cond = patch_condition(take_patches(net_cond, local), cond)
            if global_index is not None:  # patch position in the frame = in the crop + crop origin
                local = local + origin.to(y.device).repeat_interleave(self.patch_num, 0)[:, :, None, None]
            global_index = local
        n = y.shape[0]
        rnd_normal = torch.randn([n, 1, 1, 1], generator=generator, device=y.device)
        sigma = (rnd_normal * self.P_std + self.P_mean).exp()
        n_noise = torch.randn(y.shape, generator=generator, device=y.device) * sigma
        D_yn = net(y + n_noise, sigma, net_cond, global_index=global_index)
        return masked_mean(self.weight(sigma) * (D_yn - y) ** 2, valid)
