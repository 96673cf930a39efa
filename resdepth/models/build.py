"""From config to networks: the U-Net arguments of each stage and the wrapped nets the losses take.

The architecture of a net is described by a small JSON-able dict (``arch_spec``) that is stored
next to its weights in every checkpoint and export, so weights are always rebuilt into the net
they were trained as, and a mismatch is reported key by key instead of as a shape error.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from resdepth.models.config import ModelConfig
from resdepth.models.padding import unet_resolution
from resdepth.models.precond import (EDMResidualNet, RegressionNet, regression_in_channels,
                                     residual_in_channels)
from resdepth.models.song_unet import SongUNet, SongUNetPosEmbd
from resdepth.utils.errors import UserError

ARCH_KEYS = ("model_channels", "channel_mult", "channel_mult_emb", "num_blocks", "attn_resolutions",
             "dropout", "embedding_type", "encoder_type", "decoder_type", "resample_filter",
             "checkpoint_level")
POS_EMBD_KEYS = ("gridtype", "N_grid_channels")


class ArchitectureMismatch(UserError):
    """Weights that were trained as another network than the one configured."""


def unet_kwargs(cfg: ModelConfig, arch: str, img_resolution: list[int], in_channels: int,
                out_channels: int = 1) -> dict[str, Any]:
    """Constructor arguments (PhysicsNeMo names) of ``arch`` for frames of ``img_resolution``.

    The U-Net's ``img_resolution`` is the frame padded to its multiple (``models.padding``), the
    size of its feature maps and of its positional grid. ``in_channels`` counts every input
    channel of the U-Net's first convolution: for ``SongUNetPosEmbd`` that includes the
    ``N_grid_channels`` of its positional grid.
    """
    resolution = unet_resolution(img_resolution, len(cfg.channel_mult))
    check_attention(cfg, img_resolution, resolution)
    kw: dict[str, Any] = {"img_resolution": resolution, "in_channels": in_channels,
                          "out_channels": out_channels}
    kw.update({k: getattr(cfg, k) for k in ARCH_KEYS})
    if not cfg.bottleneck_attention:  # absent = PhysicsNeMo's default (True): older specs stay equal
        kw["bottleneck_attention"] = False
    if arch == "SongUNetPosEmbd":
        kw.update({k: getattr(cfg, k) for k in POS_EMBD_KEYS})
        kw["in_channels"] += cfg.N_grid_channels  # as in PhysicsNeMo: in_channels counts the grid
    return kw


def level_shapes(resolution: list[int], levels: int) -> list[tuple[int, int]]:
    """``(height, width)`` of the feature maps of each level of a U-Net on a padded frame."""
    return [(resolution[0] >> lv, resolution[1] >> lv) for lv in range(levels)]


def check_attention(cfg: ModelConfig, frame: list[int], resolution: list[int]) -> None:
    """Refuse ``attn_resolutions`` that match no level, naming the levels' sizes.

    A level matches ``r`` when the height of its feature maps is ``r`` (PhysicsNeMo's rule, so
    CorrDiff checkpoints keep their layers; for the landscape frames of event cameras it is the
    shorter side): a 260x346 frame padded to 264x352 has levels 264x352, 132x176, 66x88, 33x44
    with ``channel_mult`` of length 4, so ``attn_resolutions: [33]`` puts attention at the last.
    """
    shapes = level_shapes(resolution, len(cfg.channel_mult))
    heights = [h for h, _ in shapes]
    unknown = [r for r in cfg.attn_resolutions if r not in heights]
    if unknown:
        levels = ", ".join(f"{h}x{w}" for h, w in shapes)
        raise UserError(f"model.attn_resolutions {unknown} match no level of the U-Net for "
                         f"{frame[0]}x{frame[1]} frames (padded to {resolution[0]}x{resolution[1]}; "
                         f"levels {levels}): a level matches its feature-map height, choose from "
                         f"{heights} or []")


def arch_spec(cfg: ModelConfig, stage: str, cond_channels: int, img_resolution: list[int],
              patching: bool = False, context: Optional[dict] = None) -> dict[str, Any]:
    """The full description of one stage's net: class, U-Net arguments and wrapper settings.
    ``cond_channels`` counts the window's bins and the temporal context's (``context``: its
    ``{"ms", "bins"}``, recorded so that a net trained with context refuses input without)."""
    if stage == "regression":
        arch = cfg.arch if cfg.stage == "regression" else cfg.regression_arch
        in_ch = regression_in_channels(cond_channels, img_channels=1)
        extra: dict[str, Any] = {}
    else:
        arch = cfg.arch
        in_ch = residual_in_channels(cond_channels, img_channels=1,
                                     hr_mean_conditioning=cfg.hr_mean_conditioning,
                                     patching=patching)
        extra = {"hr_mean_conditioning": cfg.hr_mean_conditioning, "patching": patching}
    if context:
        extra["context"] = {"ms": float(context["ms"]), "bins": int(context["bins"])}
    return {"stage": stage, "arch": arch, "img_channels": 1, "cond_channels": cond_channels,
            "unet": unet_kwargs(cfg, arch, img_resolution, in_ch), **extra}


def build_net(spec: dict[str, Any], sigma_data: float = 0.5, use_apex_gn: bool = False) -> torch.nn.Module:
    """The wrapped net of ``spec``: ``RegressionNet`` or ``EDMResidualNet`` around its U-Net
    (``use_apex_gn``: Apex's fused group norm in training, same weights)."""
    classes = {"SongUNet": SongUNet, "SongUNetPosEmbd": SongUNetPosEmbd}
    kw = dict(spec["unet"])
    if spec["arch"] == "SongUNet" and len(set(kw["img_resolution"])) == 1:
        kw["img_resolution"] = kw["img_resolution"][0]
    unet = classes[spec["arch"]](**kw, use_apex_gn=use_apex_gn)
    if spec["stage"] == "regression":
        return RegressionNet(unet, img_channels=spec["img_channels"])
    return EDMResidualNet(unet, img_channels=spec["img_channels"], sigma_data=sigma_data)


def check_same_arch(found: dict[str, Any], expected: dict[str, Any], source: str) -> None:
    """Raise ``ArchitectureMismatch`` naming every differing field of two ``arch_spec`` dicts."""
    diffs = []
    for key in sorted(set(found) | set(expected)):
        a, b = found.get(key), expected.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if _norm(a.get(k)) != _norm(b.get(k)):
                    diffs.append(f"{key}.{k}: checkpoint has {a.get(k)!r}, config expects {b.get(k)!r}")
        elif _norm(a) != _norm(b):
            diffs.append(f"{key}: checkpoint has {a!r}, config expects {b!r}")
    if diffs:
        raise ArchitectureMismatch(f"{source} holds a different architecture than configured:\n  "
                                   + "\n  ".join(diffs))


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v
