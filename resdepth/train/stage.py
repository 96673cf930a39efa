"""What differs between the two stages: the loss, the frozen regression net, preview predictions."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Optional

import torch

from resdepth import dist
from resdepth.data.loader import ShardStream
from resdepth.data.netinput import context_mismatch
from resdepth.diffusion.config import resolve_residual_scale
from resdepth.diffusion.loss import RegressionLoss, ResidualLoss
from resdepth.diffusion.patching import GridPatching
from resdepth.diffusion.sampler import generate_ensemble
from resdepth.models.build import build_net, check_same_arch
from resdepth.models.export import load_export, load_unet_state, resolve_export
from resdepth.train.checkpoint import Checkpointer, safe_load
from resdepth.train.config import Config
from resdepth.utils.errors import UserError

log = logging.getLogger("resdepth")


def build_loss(cfg: Config, regression_net: Optional[torch.nn.Module]) -> Callable:
    """``loss(model, batch, generator) -> scalar`` for the configured stage."""
    if cfg.model.stage == "regression":
        core = RegressionLoss()
        return lambda model, batch, gen: core(model, batch["depth"], batch["events"], batch["mask"],
                                              origin=batch.get("origin"))
    d = cfg.diffusion
    core = ResidualLoss(regression_net, P_mean=d.P_mean, P_std=d.P_std, sigma_data=d.sigma_data,
                        hr_mean_conditioning=cfg.model.hr_mean_conditioning,
                        patch_shape=tuple(d.patch_shape) or None, patch_num=d.patch_num)
    return lambda model, batch, gen: core(model, batch["depth"], batch["events"], batch["mask"],
                                          generator=gen, origin=batch.get("origin"))


@torch.no_grad()
def measure_residual_std(regression_net: torch.nn.Module, stream, device: torch.device,
                         max_samples: int) -> float:
    """Std over valid pixels of ``depth - regression_net(events)`` (normalised depth) on the first
    ``max_samples`` samples of ``stream`` (per rank), reduced over ranks."""
    totals = torch.zeros(3, dtype=torch.float64)  # pixels, sum, sum of squares
    seen = 0
    for batch in stream:
        if seen >= max_samples:
            break
        events = batch["events"].to(device)
        valid = batch["mask"].to(device).bool()
        r = (batch["depth"].to(device).float() - regression_net(events).float())[valid].double()
        totals += torch.stack([torch.tensor(float(r.numel()), dtype=torch.float64),
                               r.sum().cpu(), (r ** 2).sum().cpu()])
        seen += events.shape[0]
    dist.all_reduce_sum(totals)
    if totals[0] < 2:
        raise UserError("no valid depth pixel in the train samples read to measure the residual "
                         "std; set diffusion.sigma_data explicitly")
    mean = totals[1] / totals[0]
    return float((totals[2] / totals[0] - mean ** 2).clamp_min(0).sqrt())


def residual_scale(cfg: Config, regression_net: torch.nn.Module, stream: Callable[[], ShardStream],
                   device: torch.device, recorded_std: Optional[float] = None,
                   recorded_in: str = "") -> dict[str, float]:
    """Resolve stage 2's unset ``sigma_data``, ``P_mean`` and ``sigma_max`` in ``cfg.diffusion``
    from the residual std: the one recorded in the checkpoint a run resumes from, else measured
    on the train split (``stream()``). Returns what goes into checkpoints and the export."""
    d = cfg.diffusion
    given = [k for k in ("sigma_data", "P_mean", "sigma_max") if getattr(d, k) is not None]
    if recorded_std is None:
        std = measure_residual_std(regression_net, stream(), device, d.residual_samples)
        source = f"measured on {d.residual_samples} train samples per rank"
    else:
        std, source = recorded_std, f"restored from {recorded_in}"
    scale = resolve_residual_scale(d, std)
    log.info("residual std %.4f (normalised depth, %s): sigma_data %.4f, P_mean %.3f, sampler "
             "sigma_max %.3f%s", std, source, d.sigma_data, d.P_mean, d.sigma_max,
             f" (given: {', '.join(given)})" if given else "")
    return scale


def load_regression_net(path: str, expected_spec: dict, norm, device: torch.device,
                        voxel_norm: str = "none") -> torch.nn.Module:
    """The frozen stage-1 net from a run directory, a checkpoint directory or an exported file.

    Refuses weights of another architecture, another depth normalisation or another event voxel
    normalisation, naming what differs.
    """
    if not path:
        raise UserError("model.stage=diffusion needs model.regression_ckpt: the regression run "
                         "directory, one of its checkpoints, or its export/model.safetensors")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model.regression_ckpt={path}: no such file or directory")
    ckpt_dir = None
    if (p / "meta.json").is_file() and (p / "train_state.pt").is_file():
        ckpt_dir = p
    elif not (p.is_file() or (p / "model.safetensors").is_file() or (p / "export" / "model.safetensors").is_file()):
        ckpt_dir = Checkpointer(p).latest()
        if ckpt_dir is None:
            raise FileNotFoundError(f"model.regression_ckpt={path}: neither exported weights nor a "
                                    "complete checkpoint found there")
    meta_file = ckpt_dir / "meta.json" if ckpt_dir else resolve_export(p).with_name("model.json")
    refuse_other_context(meta_file, expected_spec)
    if ckpt_dir is None:
        net, meta = load_export(p, expected_spec=expected_spec, device=device)
        source = str(p)
    else:
        meta = json.loads((ckpt_dir / "meta.json").read_text())
        check_same_arch(meta.get("spec", {}), expected_spec, str(ckpt_dir))
        shared = safe_load(ckpt_dir / "train_state.pt")
        net = build_net(meta["spec"])
        state = shared["ema"] if shared.get("ema") is not None else shared["model"]
        load_unet_state(net, {k.removeprefix("unet."): v for k, v in state.items()}, str(ckpt_dir))
        net = net.to(device)
        source = str(ckpt_dir)
    if meta.get("norm") is not None and meta["norm"] != norm.to_dict():
        raise UserError(f"{source}: the regression net was trained with depth normalisation "
                         f"{meta['norm']}, this run uses {norm.to_dict()}")
    trained_voxel_norm = (meta.get("data") or {}).get("voxel_norm", "none")
    if trained_voxel_norm != voxel_norm:
        raise UserError(f"{source}: the regression net was trained with data.voxel_norm="
                         f"{trained_voxel_norm}, this run uses data.voxel_norm={voxel_norm}")
    log.info("frozen regression net loaded from %s", source)
    return net.eval().requires_grad_(False)


def refuse_other_context(meta_file: Path, expected_spec: dict) -> None:
    """A regression net trained with another temporal context than this run's shards carry is
    refused in those words, before its architecture (whose condition channels then differ too)."""
    if not meta_file.is_file():
        return  # reported by the loader
    found = (json.loads(meta_file.read_text()).get("spec") or {}).get("context")
    why = context_mismatch(found, expected_spec.get("context"),
                           f"{meta_file.parent}: the regression net", "this run's training split")
    if why:
        raise UserError(why)


@torch.no_grad()
def predict_panels(cfg: Config, net: torch.nn.Module, regression_net: Optional[torch.nn.Module],
                   batch: dict, norm) -> torch.Tensor:
    """A one-image prediction in metres for TensorBoard panels (one ensemble member in stage 2)."""
    cond = batch["events"][:1]
    if cfg.model.stage == "regression":
        return norm.denormalize(net(cond).float())
    d = cfg.diffusion
    # A net trained on patches also takes the resized whole condition: one frame-sized patch.
    frame = tuple(cond.shape[-2:])
    patch = GridPatching(frame, frame) if d.patch_shape else None
    out = generate_ensemble(net, regression_net, cond, list(batch["key"][:1]), seed=cfg.run.seed,
                            members=1, num_steps=d.num_steps, **d.sampler_kwargs(),
                            hr_mean_conditioning=cfg.model.hr_mean_conditioning, patch=patch)
    return norm.denormalize(out["mean"].float())
