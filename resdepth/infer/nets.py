"""The exported nets of an inference run, what their input must be, and the device they run on."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from resdepth import dist
from resdepth.data.norm import DepthNorm
from resdepth.diffusion.patching import GridPatching
from resdepth.infer.config import InferenceSettings
from resdepth.models.export import load_export, resolve_export
from resdepth.models.padding import unet_resolution
from resdepth.utils.errors import UserError

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
    def context(self) -> Optional[dict]:
        """The temporal context (``{"ms", "bins"}``) the nets were trained with, None without."""
        return self.regression_meta["data"].get("context")

    @property
    def voxel_norm(self) -> str:
        """Event normalisation the nets were trained with (``data.voxel_norm``)."""
        return str(self.regression_meta["data"].get("voxel_norm", "none"))

    def depth_range(self) -> tuple[float, Optional[float]]:
        """What the nets can predict, in metres: the depth normalisation's exact range (upper
        bound None when unbounded)."""
        lo, hi = self.norm.valid_range_m()
        return max(float(lo), 1e-3), float(hi) if math.isfinite(hi) else None

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
        differs = data_differences(reg.get("data") or {}, diff.get("data") or {})
        if differs:
            errors.append(f"input data differs ({', '.join(differs)}): regression {reg.get('data')}, "
                          f"diffusion {diff.get('data')}")
        if diff["spec"].get("cond_channels") != reg["spec"].get("cond_channels"):
            errors.append(f"condition channels differ: regression {reg['spec'].get('cond_channels')}, "
                          f"diffusion {diff['spec'].get('cond_channels')}")
    if errors:
        raise UserError("the exports cannot be evaluated together:\n  " + "\n  ".join(errors))


def data_differences(a: dict, b: dict) -> list[str]:
    """The input settings two exports' data metas disagree on: the grid shape and event
    normalisation always, how the grid was made where both record it (older exports do not)."""
    always = ("bins", "height", "width", "voxel_norm", "context")
    keys = [k for k in a.keys() | b.keys() if k in always or (k in a and k in b)]
    return sorted(k for k in keys if a.get(k, "none" if k == "voxel_norm" else None)
                  != b.get(k, "none" if k == "voxel_norm" else None))


def load_nets(cfg: InferenceSettings, device: torch.device) -> Nets:
    """Load the exported nets (weights and model.json only, never training state) and check them."""
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


def make_patching(cfg: InferenceSettings, nets: Nets,
                  frame: Optional[tuple[int, int]] = None) -> Optional[GridPatching]:
    """The inference patch grid over ``frame`` (H, W; default: the nets' training frame), or None
    for whole-image sampling.

    A net trained on patches expects the resized whole condition; without ``--patch`` it then
    runs on one patch covering the frame.
    """
    if nets.diffusion is None:
        return None
    h, w = frame or nets.data_shape[1:]
    if cfg.patch:
        if not nets.diffusion_meta["spec"].get("patching", False):
            raise UserError(f"--patch {cfg.patch}: {cfg.diffusion} was trained on whole frames "
                             "(its spec has patching=false) and takes no patch condition")
        return GridPatching((h, w), (cfg.patch, cfg.patch), cfg.overlap, cfg.boundary)
    if nets.diffusion_meta["spec"].get("patching", False):
        return GridPatching((h, w), (h, w), 0, 0)
    return None


def resolve_device(cfg: InferenceSettings) -> torch.device:
    """The configured device, or each rank's GPU (else the CPU) for ``auto``."""
    if cfg.device == "cpu":
        return torch.device("cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no GPU is visible")
    return dist.device()


def frame_problem(nets: Nets, frame: tuple[int, int]) -> Optional[str]:
    """Why the nets cannot run on whole frames of ``frame`` (H, W), or None when they can.

    A ``SongUNetPosEmbd`` net appends its positional grid, built for the padded training frame,
    to its input; run on a whole frame it needs the frame to pad to that same size. A net trained
    on patches indexes the grid by position instead, so any frame size works for it.
    """
    for name, meta in (("regression", nets.regression_meta), ("diffusion", nets.diffusion_meta)):
        if meta is None:
            continue
        spec = meta["spec"]
        unet = spec.get("unet", {})
        if spec.get("arch") != "SongUNetPosEmbd" or not unet.get("N_grid_channels", 0):
            continue
        if name == "diffusion" and spec.get("patching", False):
            continue
        levels = len(unet.get("channel_mult", [1]))
        grid = [int(v) for v in unet["img_resolution"]]
        if unet_resolution(frame, levels) != grid:
            _, h, w = nets.data_shape
            return (f"the {name} net has a positional grid for {h}x{w} frames (padded to "
                    f"{grid[0]}x{grid[1]}) and was trained on whole frames, so it cannot predict "
                    f"{frame[0]}x{frame[1]} frames; use a recording of the training size "
                    f"({h}x{w}), or nets trained on patches (data.patch with model.patching), "
                    "whose grid is indexed by position")
    return None
