"""Configuration of the EDM residual loss and the samplers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from resdepth.config.core import opt


@dataclass
class SamplerSettings:
    """The EDM sampler's settings, shared by validation during training and by evaluation."""

    sampler: Literal["stochastic", "deterministic"] = opt("stochastic", "EDM sampler: stochastic (Heun with churn) or deterministic.")
    sigma_min: float = opt(0.002, "Smallest noise level of the sampling schedule.")
    sigma_max: float = opt(80.0, "Largest noise level of the sampling schedule.")
    rho: float = opt(7.0, "Exponent of the EDM time-step discretisation.")
    S_churn: float = opt(0.0, "Stochasticity strength of the stochastic sampler.")
    S_min: float = opt(0.0, "Lowest sigma at which churn is applied.")
    S_max: float = opt(float("inf"), "Highest sigma at which churn is applied.")
    S_noise: float = opt(1.0, "Noise inflation of the churn step.")

    def sampler_kwargs(self) -> dict:
        """These settings as keyword arguments of ``generate_ensemble``."""
        return {f: getattr(self, f) for f in ("sampler", "sigma_min", "sigma_max", "rho",
                                              "S_churn", "S_min", "S_max", "S_noise")}


@dataclass
class DiffusionConfig(SamplerSettings):
    sigma_data: float = opt(0.5, "EDM sigma_data of the residual.")
    P_mean: float = opt(-1.2, "Mean of ln(sigma) when sampling training noise levels.")
    P_std: float = opt(1.2, "Standard deviation of ln(sigma) when sampling training noise levels.")
    patch_shape: list[int] = opt([], "Training patch [H, W] for the residual loss; [] trains on full frames.")
    patch_num: int = opt(1, "Random patches per image in the residual loss.")
    num_steps: int = opt(18, "Sampler steps of the one-member previews drawn at each validation.")
