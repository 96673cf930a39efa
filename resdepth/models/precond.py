"""The two wrapped nets of the CorrDiff recipe around a U-Net with the PhysicsNeMo call signature.

A wrapped U-Net is any ``nn.Module`` called as ``unet(x, noise_labels, class_labels)`` (``SongUNet``)
or ``unet(x, noise_labels, class_labels, global_index=...)`` (``SongUNetPosEmbd``, for patches).

Channel layout of the U-Net input, fixed here so that the trainer, the loss and the samplers agree:

    regression:  [zeros (img_channels), cond]
    residual:    [c_in * x (img_channels), regression mean (img_channels, if hr_mean_conditioning),
                  cond, cond resized to the patch (only when the net is trained on patches)]

Both wrappers run the U-Net on frames of any size: padded to its multiple and cropped back
(``resdepth.models.padding``). The wrappers only see ``cond`` as one tensor: the loss and the samplers build it (regression mean
first, then the condition, then the resized full condition; see ``patching.patch_condition``).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from resdepth.models.padding import run_padded


def regression_in_channels(cond_channels: int, img_channels: int = 1) -> int:
    """U-Net ``in_channels`` of a ``RegressionNet``: target placeholder plus condition."""
    return img_channels + cond_channels


def residual_in_channels(cond_channels: int, img_channels: int = 1, hr_mean_conditioning: bool = False,
                         patching: bool = False) -> int:
    """U-Net ``in_channels`` of an ``EDMResidualNet`` for the given conditioning options."""
    n = img_channels + cond_channels
    if hr_mean_conditioning:
        n += img_channels
    if patching:
        n += cond_channels  # the whole condition, resized to the patch
    return n


class RegressionNet(nn.Module):
    """Stage 1: the conditional mean E[depth | events], no noise preconditioning.

    The U-Net sees zeros in place of the target (so its weights share the residual net's layout)
    and a noise label of zero.
    """

    def __init__(self, unet: nn.Module, img_channels: int = 1):
        super().__init__()
        self.unet = unet
        self.img_channels = img_channels

    def forward(self, cond: torch.Tensor, global_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mean depth ``[N, img_channels, H, W]`` (normalised space) for condition ``[N, C, H, W]``."""
        n, _, h, w = cond.shape
        x = torch.zeros(n, self.img_channels, h, w, dtype=cond.dtype, device=cond.device)
        noise_labels = torch.zeros(n, dtype=cond.dtype, device=cond.device)
        return run_padded(self.unet, torch.cat([x, cond], dim=1), noise_labels, global_index)


class EDMResidualNet(nn.Module):
    """Stage 2: EDM-preconditioned denoiser ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)``.

    The condition is concatenated unscaled: only the noisy residual is multiplied by ``c_in``
    (PhysicsNeMo once scaled the condition by ``c_in`` as well, issue 229; that hides the events
    from the net at large sigma).
    """

    def __init__(self, unet: nn.Module, img_channels: int = 1, sigma_data: float = 0.5):
        super().__init__()
        self.unet = unet
        self.img_channels = img_channels
        self.sigma_data = float(sigma_data)

    def coefficients(self, sigma: torch.Tensor) -> dict[str, torch.Tensor]:
        """EDM preconditioning ``c_skip, c_out, c_in, c_noise`` (Karras et al. 2022, table 1)."""
        sd = self.sigma_data
        return {"c_skip": sd ** 2 / (sigma ** 2 + sd ** 2),
                "c_out": sigma * sd / (sigma ** 2 + sd ** 2).sqrt(),
                "c_in": 1 / (sd ** 2 + sigma ** 2).sqrt(),
                "c_noise": sigma.log() / 4}

    def forward(self, x: torch.Tensor, sigma: Union[torch.Tensor, float], cond: torch.Tensor,
                global_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Denoised residual ``D(x; sigma)`` of noisy ``x [N, img_channels, H, W]``.

        ``sigma`` is a scalar or one value per sample; the output is float32.
        """
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        sigma = sigma.expand(x.shape[0], 1, 1, 1)
        c = self.coefficients(sigma)
        arg = torch.cat([c["c_in"] * x, cond.to(torch.float32)], dim=1)
        F_x = run_padded(self.unet, arg, c["c_noise"].flatten(), global_index)
        return c["c_skip"] * x + c["c_out"] * F_x.to(torch.float32)
