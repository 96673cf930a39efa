"""Configuration of the EDM residual loss and the samplers, and the residual scale taken from data."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

from resdepth.config.core import opt

SIGMA_MAX_DEFAULT = 80.0  # EDM's, for exports that recorded no residual scale
SIGMA_MAX_PER_SIGMA_DATA = 20.0  # start noise 20 x the residual scale: the residual is drowned
# EDM's training noise, ln(sigma) ~ N(-1.2, 1.2^2) for sigma_data = 0.5, kept relative to sigma_data
P_MEAN_OFFSET = -1.2 - math.log(0.5)
# CorrDiff's residual loss (PhysicsNeMo ResLoss): P_mean 0 for sigma_data 0.5, 1.2 higher than EDM's
CORRDIFF_P_MEAN_OFFSET = 0.0 - math.log(0.5)


@dataclass
class SamplerSettings:
    """The EDM sampler's settings, shared by validation during training and by evaluation."""

    sampler: Literal["stochastic", "deterministic"] = opt("stochastic", "stochastic: EDM Heun steps with churn (fresh noise at every step, so members also differ along the way); deterministic: the probability-flow ODE with Heun steps (members differ only by their start noise).")
    sigma_min: float = opt(0.002, "Smallest noise level of the schedule; the last step goes from it to 0.")
    sigma_max: Optional[float] = opt(None, "Largest noise level, where sampling starts from pure noise. Unset: 20 x sigma_data of the diffusion run (recorded in its checkpoint and export), 80 where none is recorded.")
    rho: float = opt(7.0, "Exponent of the EDM time-step spacing; larger values put more of the steps at small noise levels.")
    S_churn: float = opt(10.0, "Total churn of the stochastic sampler: each step with S_min <= sigma <= S_max first raises sigma by the factor 1 + min(S_churn / steps, sqrt(2) - 1) with fresh noise, then steps down; 0 makes it the deterministic sampler.")
    S_min: float = opt(0.0, "Lowest noise level at which churn is applied.")
    S_max: float = opt(float("inf"), "Highest noise level at which churn is applied.")
    S_noise: float = opt(1.0, "Scale of the fresh churn noise; slightly above 1 offsets a denoiser that removes too much noise.")
    denoised_sigma: float = opt(0.5, "Noise level, in units of sigma_data, of the denoised point estimate: the regression mean plus the residual net's D(0; denoised_sigma x sigma_data), the residual's conditional mean shrunk toward the regression mean as a noisy observation of residual 0 would shrink it (one net evaluation, no member noise; 0: none). Larger values shrink less and approach the many-member ensemble mean; 0.5 was chosen on the validation split of the demo's former independent scenes (docs/second-stage.md).")

    def sampler_kwargs(self) -> dict:
        """These settings as keyword arguments of ``generate_ensemble``."""
        return {f: getattr(self, f) for f in ("sampler", "sigma_min", "sigma_max", "rho",
                                              "S_churn", "S_min", "S_max", "S_noise")}


@dataclass
class DiffusionConfig(SamplerSettings):
    sigma_data: Optional[float] = opt(None, "EDM sigma_data of the residual (normalised depth). Unset: the residual std measured on the train split when stage 2 starts.")
    P_mean: Optional[float] = opt(None, "Mean of ln(sigma) of the training noise levels. Unset: ln(sigma_data) + P_mean_offset.")
    P_mean_offset: float = opt(P_MEAN_OFFSET, "ln(sigma) mean of the training noise relative to ln(sigma_data), used when P_mean is unset: -0.507 is EDM's (P_mean -1.2 at sigma_data 0.5), 0.693 CorrDiff's residual loss (P_mean 0 at sigma_data 0.5, training more at the noise levels where sampling starts).")
    P_std: float = opt(1.2, "Standard deviation of ln(sigma) of the training noise levels.")
    residual_samples: int = opt(256, "Train samples over which stage 2 measures the residual std at start.")
    patch_shape: list[int] = opt([], "Training patch [H, W] for the residual loss; [] trains on full frames.")
    patch_num: int = opt(1, "Random patches per image in the residual loss.")
    num_steps: int = opt(18, "Sampler steps of the one-member previews drawn at each validation.")


def resolve_residual_scale(cfg: DiffusionConfig, residual_std: float) -> dict[str, float]:
    """Fill the unset ``sigma_data``, ``P_mean`` and ``sigma_max`` of ``cfg`` from the measured
    residual std (in place); returns the values used."""
    if cfg.sigma_data is None:
        cfg.sigma_data = float(residual_std)
    if cfg.P_mean is None:
        cfg.P_mean = math.log(cfg.sigma_data) + cfg.P_mean_offset
    if cfg.sigma_max is None:
        cfg.sigma_max = SIGMA_MAX_PER_SIGMA_DATA * cfg.sigma_data
    return {"residual_std": float(residual_std), "sigma_data": cfg.sigma_data,
            "P_mean": cfg.P_mean, "sigma_max": cfg.sigma_max}
