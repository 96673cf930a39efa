"""The exported nets and what they predict for a batch of event tensors, in metres."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from resdepth.diffusion.config import SIGMA_MAX_DEFAULT
from resdepth.eval.config import EvalConfig

log = logging.getLogger("resdepth")


@dataclass
class Nets:
    """The frozen nets of an evaluation and the metadata of their exports."""
    regression: torch.nn.Module
    regression_meta: dict[str, Any]
    diffusion: Optional[torch.nn.Module]
    diffusion_meta: Optional[dict[str, Any]]
    norm: Any  # resdepth.data.norm.DepthNorm

    @property
    def data_shape(self) -> tuple[int, int, int]:
        d = self.regression_meta["data"]
        return int(d["bins"]), int(d["height"]), int(d["width"])

    @property
    def voxel_norm(self) -> str:
        """Event normalisation the nets were trained with (``data.voxel_norm``)."""
        return str(self.regression_meta["data"].get("voxel_norm", "none"))

    def identity(self) -> dict[str, Any]:
        """What names the weights in the settings hash: step, config hash, file size."""
        out = {}
        for name, meta in (("regression", self.regression_meta), ("diffusion", self.diffusion_meta)):
            if meta is not None:
                out[name] = {k: meta.get(k) for k in ("step", "config_hash", "images_seen", "spec")}
                out[name]["bytes"] = meta.get("_bytes")
        return out


def check_exports(reg: dict, diff: Optional[dict], reg_src: str, diff_src: Optional[str]) -> None:
    """Refuse exports that cannot be combined, naming every difference at once."""
    errors = []
    if reg["spec"].get("stage") != "regression":
        errors.append(f"{reg_src} is a {reg['spec'].get('stage')!r} export, --regression needs a "
                      "regression one")
    for key in ("norm", "data"):
        if reg.get(key) is None:
            errors.append(f"{reg_src}: model.json has no {key!r}")
    if diff is not None:
        if diff["spec"].get("stage") != "diffusion":
            errors.append(f"{diff_src} is a {diff['spec'].get('stage')!r} export, --diffusion needs "
                          "a diffusion one")
        if diff.get("norm") != reg.get("norm"):
            errors.append(f"depth normalisation differs: regression {reg.get('norm')}, "
                          f"diffusion {diff.get('norm')}")
        if diff.get("data") != reg.get("data"):
            errors.append(f"data shape differs: regression {reg.get('data')} (bins, height, width), "
                          f"diffusion {diff.get('data')}")
        if diff["spec"].get("cond_channels") != reg["spec"].get("cond_channels"):
            errors.append(f"condition channels differ: regression {reg['spec'].get('cond_channels')}, "
                          f"diffusion {diff['spec'].get('cond_channels')}")
    if errors:
        raise ValueError("the exports cannot be evaluated together:\n  " + "\n  ".join(errors))


def load_nets(cfg: EvalConfig, device: torch.device) -> Nets:
    """Load the exported nets (weights and model.json only, never training state) and check them."""
    from resdepth.data.norm import DepthNorm
    from resdepth.models.export import load_export, resolve_export

    reg_net, reg_meta = load_export(cfg.regression, device=device)
    reg_meta["_bytes"] = resolve_export(cfg.regression).stat().st_size
    diff_net, diff_meta = None, None
    if cfg.diffusion:
        diff_net, diff_meta = load_export(cfg.diffusion, device=device)
        diff_meta["_bytes"] = resolve_export(cfg.diffusion).stat().st_size
    check_exports(reg_meta, diff_meta, cfg.regression, cfg.diffusion)
    for net in (reg_net, diff_net):
        if net is not None:
            net.eval().requires_grad_(False)
    return Nets(reg_net, reg_meta, diff_net, diff_meta, DepthNorm.from_dict(reg_meta["norm"]))


def make_patching(cfg: EvalConfig, nets: Nets, frame: Optional[tuple[int, int]] = None):
    """The inference patch grid over ``frame`` (H, W; default: the nets' training frame), or None
    for whole-image sampling.

    A net trained on patches expects the resized whole condition; without ``--patch`` it then
    runs on one patch covering the frame.
    """
    from resdepth.diffusion.patching import GridPatching

    if nets.diffusion is None:
        return None
    h, w = frame or nets.data_shape[1:]
    if cfg.patch:
        if not nets.diffusion_meta["spec"].get("patching", False):
            raise ValueError(f"--patch {cfg.patch}: {cfg.diffusion} was trained on whole frames "
                             "(its spec has patching=false) and takes no patch condition")
        return GridPatching((h, w), (cfg.patch, cfg.patch), cfg.overlap, cfg.boundary)
    if nets.diffusion_meta["spec"].get("patching", False):
        return GridPatching((h, w), (h, w), 0, 0)
    return None


@torch.no_grad()
def predict(cfg: EvalConfig, nets: Nets, events: torch.Tensor, keys: Sequence[str],
            patching=None, noise_std: Optional[float] = None) -> dict[str, torch.Tensor]:
    """``regression [N,1,H,W]`` and, with a diffusion net, ``members [N,M,1,H,W]``, their ``mean``,
    ``median`` and ``std`` (unbiased over members), and with ``noise_std`` (normalised depth, see
    ``residual_std``) ``noise_members`` of the noise baseline; all float32 in metres.

    ``mean`` is ``ensemble_mean`` of the members in normalised depth space, denormalised: the same
    definition as the regression mean and the samplers. ``median`` (lower median) and ``std`` are
    taken over members in metres (the median commutes with the normalisation).
    """
    from resdepth.diffusion.sampler import generate_ensemble

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
            return_members=True, max_rows=cfg.sample_rows or None)
    members = norm.denormalize(out["members"].float()).float()
    pred = {"regression": norm.denormalize(out["regression"].float()).float(),
            "members": members, "mean": norm.denormalize(out["mean"].float()).float(),
            "median": members.median(dim=1).values, "std": members.std(dim=1)}
    if noise_std is not None:
        pred["noise_members"] = norm.denormalize(
            noise_baseline(out["regression"].float(), keys, cfg.seed, cfg.ensemble, noise_std)).float()
    return pred


def residual_std(cfg: EvalConfig, nets: Nets) -> Optional[float]:
    """The noise baseline's std (normalised depth): the residual std that stage 2 measured."""
    if not cfg.noise_baseline or nets.diffusion_meta is None:
        return None
    value = nets.diffusion_meta.get("residual_std")
    return None if value is None else float(value)


def sampler_kwargs(cfg: EvalConfig, nets: Nets) -> dict:
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
    from resdepth.diffusion.sampler import StackedRandomGenerator, sample_seed

    draws = []
    for m in range(members):
        rng = StackedRandomGenerator([sample_seed(seed, f"noise/{k}", m) for k in keys],
                                     regression.device)
        draws.append(regression + std * rng.randn(regression.shape, device=regression.device))
    return torch.stack(draws, dim=1)


def resolve_device(cfg: EvalConfig) -> torch.device:
    from resdepth import dist

    if cfg.device == "cpu":
        return torch.device("cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no GPU is visible")
    return dist.device()

