"""EDM samplers of the residual and the ensemble generator used by validation and evaluation.

Samplers are pure functions of a denoiser ``net(x, sigma, cond, global_index=None) -> D(x; sigma)``,
the initial unit-variance ``latents`` and an injectable ``randn_like`` (Karras et al. 2022,
algorithm 2). The time-step schedule and the state are float64; the net sees float32.

Reproducibility: every (sample key, ensemble member) draws its noise from its own generator,
seeded by a stable hash of (seed, key, member) (``sample_seed``), so a sample's ensemble does not
depend on the batch it was in, on the rank that drew it or on the world size.
"""
from __future__ import annotations

import hashlib
import math
from typing import Callable, Literal, Optional, Sequence

import torch
from torch import nn

from resdepth.diffusion.patching import GridPatching
from resdepth.utils.errors import UserError

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def edm_sigma_steps(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                    rho: float = 7.0, device: Optional[torch.device] = None) -> torch.Tensor:
    """EDM noise levels ``t_0 = sigma_max > ... > t_{N-1} = sigma_min``, then ``t_N = 0`` (float64)."""
    if sigma_max is None:
        raise UserError("sigma_max is unset: take it from the diffusion export (its 'sigma_max', "
                         "20 x the measured residual std) or pass a value")
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    if num_steps == 1:
        t = torch.full((1,), float(sigma_max), dtype=torch.float64, device=device)
    else:
        t = (sigma_max ** (1 / rho) + i / (num_steps - 1)
             * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros_like(t[:1])])


def make_denoiser(net: nn.Module, cond: torch.Tensor, patching: Optional[GridPatching] = None,
                  global_cond: Optional[torch.Tensor] = None) -> Denoise:
    """``denoise(x, sigma)`` on whole images, running ``net`` on patches when ``patching`` is given.

    With patching, each patch's condition is its piece of ``cond`` plus ``global_cond`` (the whole
    event condition) resized to the patch; the patch outputs are averaged where they overlap.
    """
    if patching is None:
        return lambda x, sigma: net(x, sigma, cond).to(torch.float64)
    if global_cond is None:
        raise ValueError("patched sampling needs global_cond, the whole-image condition")
    cond_p = patching.condition(cond, global_cond)
    index = patching.global_index(cond.shape[0], cond.device)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = net(patching.apply(x), sigma, cond_p, global_index=index)
        return patching.fuse(out.to(torch.float64))
    return denoise


def _edm_solve(denoise: Denoise, latents: torch.Tensor, t_steps: torch.Tensor, gammas: Sequence[float],
               randn_like: Callable, S_noise: float, second_order: bool) -> torch.Tensor:
    x_next = latents.to(torch.float64) * t_steps[0]
    num_steps = len(t_steps) - 1
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        # temporarily raise the noise level (churn), then step back down to t_next
        gamma = gammas[i]
        t_hat = t_cur + gamma * t_cur
        x_hat = x_cur
        if gamma > 0:
            x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur)
        d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if second_order and i < num_steps - 1:  # Heun correction, skipped at the last step (t=0)
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next.to(latents.dtype)


def stochastic_sampler(net: nn.Module, latents: torch.Tensor, cond: torch.Tensor, *,
                       randn_like: Callable = torch.randn_like, num_steps: int = 18,
                       sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                       S_churn: float = 0.0, S_min: float = 0.0, S_max: float = float("inf"),
                       S_noise: float = 1.0, patching: Optional[GridPatching] = None,
                       global_cond: Optional[torch.Tensor] = None) -> torch.Tensor:
    """EDM stochastic Heun sampler (Karras et al. 2022, algorithm 2); returns ``x_0`` like ``latents``.

    ``gamma_i = min(S_churn / num_steps, sqrt(2) - 1)`` where ``S_min <= t_i <= S_max``, else 0.
    """
    t_host = edm_sigma_steps(num_steps, sigma_min, sigma_max, rho)  # host copy: no device reads
    t_steps = t_host.to(latents.device)
    gamma_max = min(S_churn / num_steps, math.sqrt(2) - 1)
    gammas = [gamma_max if S_min <= t <= S_max else 0.0 for t in t_host[:-1].tolist()]
    denoise = make_denoiser(net, cond, patching, global_cond)
    return _edm_solve(denoise, latents, t_steps, gammas, randn_like, S_noise, second_order=True)


def deterministic_sampler(net: nn.Module, latents: torch.Tensor, cond: torch.Tensor, *,
                          num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0,
                          rho: float = 7.0, solver: Literal["heun", "euler"] = "heun",
                          patching: Optional[GridPatching] = None,
                          global_cond: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Probability-flow ODE solved with Heun (2nd order) or Euler steps on the EDM schedule."""
    if solver not in ("heun", "euler"):
        raise UserError(f"solver must be 'heun' or 'euler', got {solver!r}")
    t_steps = edm_sigma_steps(num_steps, sigma_min, sigma_max, rho, latents.device)
    denoise = make_denoiser(net, cond, patching, global_cond)
    return _edm_solve(denoise, latents, t_steps, [0.0] * num_steps, torch.randn_like, 0.0,
                      second_order=solver == "heun")


def sample_seed(seed: int, key: str, member: int) -> int:
    """A 63-bit seed from (seed, sample key, member); sha256, so stable across processes."""
    digest = hashlib.sha256(f"{int(seed)}/{key}/{int(member)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


class StackedRandomGenerator:
    """One ``torch.Generator`` per batch row: row ``i`` of every draw comes from ``seeds[i]``."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.generators = [torch.Generator(device).manual_seed(int(s)) for s in seeds]

    def randn(self, size: Sequence[int], **kwargs) -> torch.Tensor:
        """Standard normal ``[len(seeds), *size[1:]]``."""
        if size[0] != len(self.generators):
            raise ValueError(f"batch of {size[0]} rows for {len(self.generators)} generators")
        return torch.stack([torch.randn(size[1:], generator=g, **kwargs) for g in self.generators])

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal shaped, typed and placed like ``x``."""
        return self.randn(x.shape, dtype=x.dtype, layout=x.layout, device=x.device)


def ensemble_mean(members: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The ensemble mean: members averaged in normalised depth space, where the regression mean
    lives (regression + mean residual). Evaluation, validation previews and the samplers all use
    this one; in metres it is ``denormalize`` of it (a geometric mean under log normalisation)."""
    return members.mean(dim=dim)


def widen(members: torch.Tensor, scale: float, dim: int = 1) -> torch.Tensor:
    """``members`` (normalised depth) moved away from their ``ensemble_mean`` by ``scale``:
    ``mean + scale * (member - mean)``. The mean stays; the spread, and every member's distance to
    the mean, grows by ``scale`` (shrinks below 1). ``scale`` 1 returns ``members`` unchanged."""
    if scale == 1.0:
        return members
    mean = ensemble_mean(members, dim).unsqueeze(dim)
    return mean + scale * (members - mean)


@torch.no_grad()
def denoised_mean(residual_net: nn.Module, regression_net: nn.Module, cond: torch.Tensor,
                  sigma: float, hr_mean_conditioning: bool = False,
                  patch: Optional[GridPatching] = None,
                  mean: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """The regression mean plus the residual net's denoised zero residual, ``D(0; sigma)``.

    For an ideal denoiser ``D(0; sigma) = E[residual | residual + sigma n = 0, cond]``: the
    residual's conditional mean, shrunk toward the regression mean as a noisy observation of
    "residual 0" with noise ``sigma`` would shrink it (fully at sigma 0, not at all as sigma grows,
    where it is the mean that ensembles of many members approach). One net evaluation, no member
    noise. Returns ``regression`` and ``denoised``, ``[N, C, H, W]`` float32, normalised depth.
    ``mean``: the regression mean of ``cond`` when the caller has it already (``regression_net``
    is then not run again).
    """
    mean = regression_net(cond).to(torch.float32) if mean is None else mean.to(torch.float32)
    net_cond = torch.cat([mean, cond.to(torch.float32)], 1) if hr_mean_conditioning else cond
    denoise = make_denoiser(residual_net, net_cond, patch, cond if patch is not None else None)
    t = torch.tensor(float(sigma), dtype=torch.float64, device=cond.device)
    res = denoise(torch.zeros_like(mean, dtype=torch.float64), t)
    return {"regression": mean, "denoised": mean + res.to(torch.float32)}


def _img_channels(net: nn.Module) -> int:
    # validation may hand over a DDP / EMA wrapper; the wrapped net knows its channels
    while not hasattr(net, "img_channels") and hasattr(net, "module"):
        net = net.module
    return int(getattr(net, "img_channels", 1))


@torch.no_grad()
def generate_ensemble(residual_net: Optional[nn.Module], regression_net: Optional[nn.Module],
                      cond: torch.Tensor, keys: Sequence[str], *, seed: int, members: int,
                      sampler: Literal["stochastic", "deterministic"] = "stochastic",
                      num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0,
                      rho: float = 7.0, S_churn: float = 0.0, S_min: float = 0.0,
                      S_max: float = float("inf"), S_noise: float = 1.0,
                      hr_mean_conditioning: bool = False, patch: Optional[GridPatching] = None,
                      return_members: bool = False, max_rows: Optional[int] = None,
                      spread_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Regression mean plus ``members`` sampled residuals per image, in normalised depth space.

    Returns ``regression``, ``mean`` and ``std`` (unbiased over members, 0 for one member), all
    ``[N, 1, H, W]`` float32, and ``members [N, M, 1, H, W]`` when ``return_members``.
    ``residual_net=None`` evaluates the regression net alone (every member equals it);
    ``regression_net=None`` takes a zero mean (a diffusion net on depth itself).
    A net trained on patches always needs ``patch``; ``GridPatching(img, img)`` runs it on whole frames.
    ``max_rows``: images x members per sampler batch (members and images are batched together;
    None or 0: all at once); the result is the same for any value.
    ``spread_scale``: the members are ``widen``-ed about their mean by it (1: as sampled).
    """
    if len(keys) != cond.shape[0]:
        raise ValueError(f"{len(keys)} keys for a batch of {cond.shape[0]}")
    if residual_net is None and regression_net is None:
        raise ValueError("generate_ensemble needs a residual net, a regression net or both")
    n, _, h, w = cond.shape
    if regression_net is not None:
        mean = regression_net(cond).to(torch.float32)
    else:
        mean = torch.zeros(n, _img_channels(residual_net), h, w, device=cond.device)
    if residual_net is None:
        draws = [mean] * members
    else:
        if sampler not in ("stochastic", "deterministic"):
            raise UserError(f"sampler must be 'stochastic' or 'deterministic', got {sampler!r}")
        net_cond = torch.cat([mean, cond.to(torch.float32)], 1) if hr_mean_conditioning else cond
        settings = dict(num_steps=num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
        if sampler == "stochastic":
            settings.update(S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise)
        res = _sample_residuals(residual_net, cond, net_cond, keys, seed, members, mean.shape[1],
                                sampler, patch, max_rows, settings)
        draws = [mean + res[m] for m in range(members)]
    stacked = widen(torch.stack(draws, dim=1), spread_scale)  # one member: its own mean, unchanged
    out = {"regression": mean, "mean": ensemble_mean(stacked),
           "std": stacked.std(dim=1) if members > 1 else torch.zeros_like(mean)}
    if return_members:
        out["members"] = stacked
    return out


def _sample_residuals(residual_net: nn.Module, cond: torch.Tensor, net_cond: torch.Tensor,
                      keys: Sequence[str], seed: int, members: int, img_channels: int,
                      sampler: str, patch: Optional[GridPatching], max_rows: Optional[int],
                      settings: dict) -> torch.Tensor:
    """``[members, N, C, H, W]`` sampled residuals. Rows (member m, image i) in member-major order
    are sampled ``max_rows`` at a time; each row draws from its own generator, so the result does
    not depend on how rows are batched."""
    n, _, h, w = cond.shape
    rows = [(m, i) for m in range(members) for i in range(n)]
    step = max_rows if max_rows and max_rows > 0 else len(rows)
    res_rows = []
    for r0 in range(0, len(rows), step):
        chunk = rows[r0:r0 + step]
        idx = torch.tensor([i for _, i in chunk], device=cond.device)
        rng = StackedRandomGenerator([sample_seed(seed, keys[i], m) for m, i in chunk], cond.device)
        latents = rng.randn([len(chunk), img_channels, h, w], device=cond.device)
        common = dict(settings, patching=patch, global_cond=cond[idx] if patch is not None else None)
        if sampler == "stochastic":
            res = stochastic_sampler(residual_net, latents, net_cond[idx], randn_like=rng.randn_like,
                                     **common)
        else:
            res = deterministic_sampler(residual_net, latents, net_cond[idx], **common)
        res_rows.append(res)
    return torch.cat(res_rows).reshape(members, n, img_channels, h, w)
