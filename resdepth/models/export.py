"""Exported inference weights: ``model.safetensors`` (the U-Net's EMA weights, PhysicsNeMo names)
beside ``model.json`` (architecture spec, depth normalisation, provenance, and under ``data`` the
net's input: grid shape ``bins``/``height``/``width``, ``voxel_norm``, and how the training shards
made the grid from events, ``splat``/``window``/``window_ms``/``events_per_sample`` as
their ``index.json`` params say; ``resdepth.data.netinput.input_spec`` builds it).

This is all the evaluator ever reads: no optimiser, no pickle.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from resdepth.models.build import build_net, check_same_arch
from resdepth.utils.atomic import replacing, write_json_atomic
from resdepth.utils.errors import UserError

EXPORT_VERSION = 1


def save_export(out_dir: Path, net: torch.nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``net``'s U-Net weights and ``meta`` (must hold ``spec``) atomically into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous()
             for k, v in net.unet.state_dict().items()}
    with replacing(out_dir / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_json_atomic(out_dir / "model.json", {"export_version": EXPORT_VERSION, **meta},
                      default=str)
    return out_dir / "model.safetensors"


def resolve_export(path: str | Path) -> Path:
    """The ``model.safetensors`` of a run directory, an export directory or the file itself."""
    p = Path(path)
    for cand in (p, p / "model.safetensors", p / "export" / "model.safetensors"):
        if cand.is_file() and cand.suffix == ".safetensors":
            return cand
    raise FileNotFoundError(f"{path}: no exported weights (looked for {p}/model.safetensors and "
                            f"{p}/export/model.safetensors); a run exports them when it finishes")


def load_export(path: str | Path, expected_spec: Optional[dict] = None,
                device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the exported net with its weights; ``expected_spec`` refuses other architectures."""
    weights = resolve_export(path)
    meta_path = weights.with_name("model.json")
    if not meta_path.exists():
        raise FileNotFoundError(f"{weights}: model.json missing beside it (architecture unknown)")
    meta = json.loads(meta_path.read_text())
    if "spec" not in meta:
        raise UserError(f"{meta_path}: no 'spec' key; not a resdepth export")
    if expected_spec is not None:
        check_same_arch(meta["spec"], expected_spec, str(weights))
    net = build_net(meta["spec"], sigma_data=meta.get("sigma_data", 0.5))
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{weights}: unreadable safetensors file ({e})") from e
    load_unet_state(net, state, str(weights))
    return net.to(device).eval(), meta


def load_unet_state(net: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a U-Net state dict strictly, naming missing, unexpected and mis-shaped keys."""
    own = net.unet.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append(f"shape mismatch (file vs net): {'; '.join(shapes[:8])}")
        raise UserError(f"{source}: weights do not fit the network: " + " | ".join(parts))
    net.unet.load_state_dict(state)
