"""The sampler call: what the nets predict for a batch of event tensors, in metres."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from resdepth.diffusion.config import SIGMA_MAX_DEFAULT
from resdepth.diffusion.sampler import (StackedRandomGenerator, denoised_mean, generate_ensemble,
                                        sample_seed)
from resdepth.infer.config import InferenceSettings
from resdepth.infer.nets import Nets


@torch.no_grad()
def predict(cfg: InferenceSettings, nets: Nets, events: torch.Tensor, keys: Sequence[str],
            patching=None, noise_std: Optional[float] = None,
            keep_normalised: bool = False) -> dict[str, torch.Tensor]:
    """``regression [N,1,H,W]`` and, with a diffusion net, ``members [N,M,1,H,W]``, their ``mean``,
    ``median`` and ``std`` (unbiased over members), with ``denoised_sigma`` > 0 ``denoised`` (the
    regression mean plus the residual net's ``D(0; denoised_sigma x sigma_data)``, one more net
    call), and with ``noise_std`` (normalised depth, see ``residual_std``) ``noise_members`` of the
    noise baseline; all float32 in metres. ``keep_normalised`` adds ``members_normalised``, the
    members in normalised depth before they are clipped to the depth range.

    ``mean`` is ``ensemble_mean`` of the members in normalised depth space, denormalised: the same
    definition as the regression mean and the samplers. ``median`` (lower median) and ``std`` are
    taken over members in metres (the median commutes with the normalisation).
    """
    norm = nets.norm
    amp = torch.autocast(events.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    if nets.diffusion is None:
        with amp:
            reg = nets.regression(events)
        return {"regression": norm.denormalize(reg.float()).float()}
    spec = nets.diffusion_meta["spec"]
    with amp:
        out = generate_ensemble(
            nets.diffusion, nets.regression, events, list(keys), seed=cfg.seed,
            members=cfg.ensemble, num_steps=cfg.steps, **sampler_kwargs(cfg, nets),
            hr_mean_conditioning=bool(spec.get("hr_mean_conditioning", False)), patch=patching,
            return_members=True, max_rows=cfg.sample_rows or None, spread_scale=cfg.spread_scale)
    members = norm.denormalize(out["members"].float()).float()
    pred = {"regression": norm.denormalize(out["regression"].float()).float(),
            "members": members, "mean": norm.denormalize(out["mean"].float()).float(),
            "median": members.median(dim=1).values, "std": members.std(dim=1)}
    if keep_normalised:
        pred["members_normalised"] = out["members"].float()
    if cfg.denoised_sigma > 0:
        with amp:
            den = denoised_mean(nets.diffusion, nets.regression, events,
                                cfg.denoised_sigma * float(nets.diffusion.sigma_data),
                                bool(spec.get("hr_mean_conditioning", False)), patching,
                                mean=out["regression"])
        pred["denoised"] = norm.denormalize(den["denoised"].float()).float()
    if noise_std is not None:
        pred["noise_members"] = norm.denormalize(
            noise_baseline(out["regression"].float(), keys, cfg.seed, cfg.ensemble, noise_std)).float()
    return pred


def sampler_kwargs(cfg: InferenceSettings, nets: Nets) -> dict:
    """The sampler settings; an unset ``sigma_max`` takes the value the diffusion run recorded."""
    kw = cfg.sampler_kwargs()
    if kw["sigma_max"] is None:
        recorded = (nets.diffusion_meta or {}).get("sigma_max")
        kw["sigma_max"] = float(recorded) if recorded is not None else SIGMA_MAX_DEFAULT
    return kw


def noise_baseline(regression: torch.Tensor, keys: Sequence[str], seed: int, members: int,
                   std: float) -> torch.Tensor:
    """``members`` draws of the regression mean plus Gaussian noise of ``std`` (normalised space),
    ``[N, M, C, H, W]``; each (key, member) has its own generator, as the diffusion members do."""
    draws = []
    for m in range(members):
        rng = StackedRandomGenerator([sample_seed(seed, f"noise/{k}", m) for k in keys],
                                     regression.device)
        draws.append(regression + std * rng.randn(regression.shape, device=regression.device))
    return torch.stack(draws, dim=1)
