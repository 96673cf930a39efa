"""Import PhysicsNeMo / CorrDiff checkpoints into resdepth's U-Nets, without pickle.

A ``.mdlus`` file is a zip archive (a tar archive in older releases) holding ``model.pt`` (a
``torch.save``d state dict), ``args.json`` (``{"__name__", "__module__", "__args__": {...}}``:
the class and its constructor arguments) and ``metadata.json``. CorrDiff saves its wrappers
(``EDMPrecondSuperResolution``, ``UNet`` / ``CorrDiffRegressionUNet``) whose ``__args__`` hold
``model_type`` and the U-Net keywords and whose state dict prefixes the U-Net's with ``model.``.
A plain ``.pt`` / ``.pth`` file must hold ``{"state_dict": ..., "args": {...}}`` (``args`` as in
``args.json`` or the U-Net keywords with an ``"arch"`` key) and is read with ``weights_only``.
"""
from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from resdepth.models.layers import PositionalEmbedding
from resdepth.models.song_unet import SongUNet, SongUNetPosEmbd
from resdepth.utils.errors import UserError

UNET_CLASSES = {"SongUNet": SongUNet, "SongUNetPosEmbd": SongUNetPosEmbd}
WRAPPERS = ("EDMPrecondSuperResolution", "EDMPrecondSR", "UNet", "CorrDiffRegressionUNet")
# Wrapper arguments that are not U-Net keywords.
WRAPPER_ONLY_ARGS = ("img_in_channels", "img_out_channels", "use_fp16", "model_type", "sigma_data",
                     "sigma_min", "sigma_max", "img_channels", "scale_cond_input")
# Attention parameters were stored on the block itself before PhysicsNeMo 1.x.
LEGACY_ATTENTION_KEYS = {"norm2.": "attn.norm.", "qkv.": "attn.qkv.", "proj.": "attn.proj."}


class CheckpointMismatch(UserError):
    """A checkpoint whose tensors do not fit the network its arguments describe."""


def load_physicsnemo(path: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the ``SongUNet`` / ``SongUNetPosEmbd`` saved in ``path`` (``.mdlus`` or ``.pt``)
    and load its weights strictly; raises ``CheckpointMismatch`` listing every bad key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if zipfile.is_zipfile(path) and _zip_has(path, "args.json"):
        args, state = _read_mdlus_zip(path, map_location)
    elif tarfile.is_tarfile(path):
        args, state = _read_mdlus_tar(path, map_location)
    else:
        args, state = _read_plain(path, map_location)
    name, kwargs, prefix = unet_arguments(args, str(path))
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    model = UNET_CLASSES[name](**kwargs)
    load_state_strict(model, migrate_state_dict(state, model), str(path))
    return model.to(map_location).eval()


def unet_arguments(args: dict[str, Any], source: str) -> tuple[str, dict[str, Any], str]:
    """Class name, constructor keywords and state-dict prefix of the U-Net in ``args``."""
    name = args.get("__name__", args.get("arch"))
    kwargs = dict(args.get("__args__", {k: v for k, v in args.items() if k != "arch"}))
    if name in UNET_CLASSES:
        return name, kwargs, ""
    if name in WRAPPERS or "model_type" in kwargs:
        inner = kwargs.get("model_type", "SongUNetPosEmbd")
        if inner not in UNET_CLASSES:
            raise UserError(f"{source}: wraps a {inner}; only {list(UNET_CLASSES)} can be imported")
        unet = {k: v for k, v in kwargs.items() if k not in WRAPPER_ONLY_ARGS}
        unet.update(in_channels=kwargs["img_in_channels"] + kwargs["img_out_channels"],
                    out_channels=kwargs["img_out_channels"])
        unet.update(unet.pop("model_kwargs", {}) or {})
        return inner, unet, "model."
    raise UserError(f"{source}: holds a {name!r}; only {list(UNET_CLASSES)} (possibly inside "
                     f"{list(WRAPPERS)}) can be imported")


def migrate_state_dict(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename pre-1.x attention keys and add buffers old releases did not save (``freqs``)."""
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        out[_new_attention_key(key, own)] = value
    for name, module in model.named_modules():
        key = f"{name}.freqs"
        if isinstance(module, PositionalEmbedding) and key not in out:
            out[key] = own[key].clone()  # deterministic, so old files did not persist it
    return out


def _new_attention_key(key: str, own: dict[str, torch.Tensor]) -> str:
    if key in own:
        return key
    head, _, leaf = key.rpartition(".")
    block, _, param = head.rpartition(".")
    new = f"{block}.{LEGACY_ATTENTION_KEYS.get(param + '.', param + '.')}{leaf}" if block else key
    return new if new in own else key


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` that first names all missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = ([f"missing: {k}" for k in missing] + [f"unexpected: {k}" for k in unexpected]
                 + [f"shape: {s}" for s in shapes])
        raise CheckpointMismatch(f"{source}: weights do not fit {type(model).__name__} "
                                 f"({len(lines)} problems):\n  " + "\n  ".join(lines))
    model.load_state_dict(state, strict=True)


def _zip_has(path: Path, member: str) -> bool:
    with zipfile.ZipFile(path) as z:
        return member in z.namelist()


def _read_mdlus_zip(path: Path, map_location: Any) -> tuple[dict, dict]:
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        if "model.pt" not in names:
            raise UserError(f"{path}: no model.pt in the archive (found {sorted(names)})")
        args = json.loads(z.read("args.json"))
        blob = z.read("model.pt")
    return args, _load_tensors(io.BytesIO(blob), map_location, path)


def _read_mdlus_tar(path: Path, map_location: Any) -> tuple[dict, dict]:
    with tarfile.open(path) as t:
        members = {m.name.lstrip("./"): m for m in t.getmembers() if m.isfile()}
        for need in ("args.json", "model.pt"):
            if need not in members:
                raise UserError(f"{path}: no {need} in the archive (found {sorted(members)})")
        args = json.loads(t.extractfile(members["args.json"]).read())
        blob = t.extractfile(members["model.pt"]).read()
    return args, _load_tensors(io.BytesIO(blob), map_location, path)


def _read_plain(path: Path, map_location: Any) -> tuple[dict, dict]:
    obj = _load_tensors(path, map_location, path, want_dict=False)
    if not (isinstance(obj, dict) and "state_dict" in obj and "args" in obj):
        raise UserError(f"{path}: a plain checkpoint must hold {{'state_dict': ..., 'args': ...}} "
                         "(or be a PhysicsNeMo .mdlus archive)")
    return obj["args"], obj["state_dict"]


def _load_tensors(src: Any, map_location: Any, path: Path, want_dict: bool = True) -> Any:
    try:
        obj = torch.load(src, map_location=map_location, weights_only=True)
    except Exception as e:  # weights_only refuses pickled code objects: say so, do not retry
        raise UserError(f"{path}: not loadable with weights_only=True ({e})") from e
    if want_dict and not isinstance(obj, dict):
        raise UserError(f"{path}: model.pt holds a {type(obj).__name__}, not a state dict")
    return obj
