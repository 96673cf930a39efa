"""One optimiser step on DDP or DeepSpeed behind the same three calls: ``train_step``,
``state_dict``/``load_state_dict`` and ``save_into``/``load_from`` (DeepSpeed's own files).

A step whose loss or gradient is not finite on any rank is skipped on every rank (the parameters
stay untouched) and reported to the loop, which counts it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

import torch

from resdepth import dist
from resdepth.train.config import TrainerConfig
from resdepth.train.optim import set_lr

log = logging.getLogger("resdepth")
LossFn = Callable[[torch.nn.Module, dict, int], torch.Tensor]


def make_optimizer(net: torch.nn.Module, cfg: TrainerConfig) -> torch.optim.Optimizer:
    params = [p for p in net.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def autocast_ctx(cfg: TrainerConfig, device: torch.device):
    """bf16 autocast on GPU when asked; CPU trains in fp32 (bit-exact resume, no slow bf16 kernels)."""
    if device.type == "cuda" and cfg.precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class DDPEngine:
    """Plain PyTorch: DistributedDataParallel when there are several ranks, AdamW, clipping."""

    name = "ddp"

    def __init__(self, net: torch.nn.Module, cfg: TrainerConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.module = net.to(device)
        self.model: torch.nn.Module = net
        if dist.world_size() > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.optimizer = make_optimizer(net, cfg)
        self.params = [p for p in net.parameters() if p.requires_grad]

    def train_step(self, loss_fn: LossFn, batches: list[dict], lr: float) -> tuple[torch.Tensor, float, bool]:
        """Forward/backward every micro-batch, then step; returns (local loss sum, grad norm, stepped)."""
        loss_sum = torch.zeros((), dtype=torch.float64)
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                with autocast_ctx(self.cfg, self.device):
                    loss = loss_fn(self.model, batch, i)
                (loss / len(batches)).backward()
            loss_sum += loss.detach().double().cpu()
        clip = self.cfg.clip_grad if self.cfg.clip_grad > 0 else math.inf
        # Gradients are already averaged over ranks, so the norm (and its finiteness) agrees.
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        ok = math.isfinite(norm)
        if ok:
            set_lr(self.optimizer, lr)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum, norm, ok

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    def save_into(self, ckpt_dir: Path) -> None:  # noqa: ARG002 - DDP keeps all in train_state.pt
        return None

    def load_from(self, ckpt_dir: Path) -> None:  # noqa: ARG002
        return None


def deepspeed_config(cfg: TrainerConfig, micro_batch: int, use_bf16: bool) -> dict[str, Any]:
    """The DeepSpeed JSON: ``trainer.deepspeed_config`` file, then the inline trainer keys."""
    ds: dict[str, Any] = {}
    if cfg.deepspeed_config:
        path = Path(cfg.deepspeed_config)
        if not path.exists() and not path.is_absolute():
            from resdepth.config import config_dir
            path = config_dir().parent / path  # e.g. configs/deepspeed/zero2.json from anywhere
        try:
            ds = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"trainer.deepspeed_config={path}: cannot read DeepSpeed JSON ({e})") from e
    zero = dict(ds.get("zero_optimization", {}))
    if cfg.zero_stage is not None:
        zero["stage"] = cfg.zero_stage
    zero.setdefault("stage", 0)
    if zero["stage"] not in (0, 1, 2):
        raise ValueError(f"ZeRO stage {zero['stage']} is not supported (0, 1 or 2)")
    ds.update({"train_micro_batch_size_per_gpu": micro_batch,
               "gradient_accumulation_steps": cfg.grad_accum,
               "train_batch_size": micro_batch * cfg.grad_accum * dist.world_size(),
               "zero_optimization": zero,
               "gradient_clipping": cfg.clip_grad,
               "steps_per_print": 10**9,
               "bf16": {"enabled": use_bf16}})
    ds.pop("fp16", None)
    ds.pop("optimizer", None)  # our torch AdamW is passed in (a config Adam compiles an op)
    return ds


def load_deepspeed_files_safely(engine) -> None:
    """Make the engine read its checkpoint files with ``weights_only=True`` (DeepSpeed's own
    loader unpickles arbitrary objects)."""
    from resdepth.train.checkpoint import safe_load_deepspeed

    engine.checkpoint_engine.load = lambda path, map_location=None: safe_load_deepspeed(path)


class DeepSpeedEngine:
    """DeepSpeed ZeRO 0/1/2 with a torch AdamW passed in; checkpoints through the engine."""

    name = "deepspeed"

    def __init__(self, net: torch.nn.Module, cfg: TrainerConfig, device: torch.device, micro_batch: int):
        import deepspeed
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # skip a 30 s op build
        dist.init(device.type, group=True)  # DeepSpeed wants a process group even for one process
        self.cfg, self.device = cfg, device
        use_bf16 = device.type == "cuda" and cfg.precision == "bf16"
        optimizer = make_optimizer(net, cfg)
        self.model, self.optimizer, _, _ = deepspeed.initialize(
            model=net.to(device), optimizer=optimizer,
            config=deepspeed_config(cfg, micro_batch, use_bf16), dist_init_required=False)
        load_deepspeed_files_safely(self.model)
        self.module = self.model.module
        self._base_optimizer = optimizer

    def train_step(self, loss_fn: LossFn, batches: list[dict], lr: float) -> tuple[torch.Tensor, float, bool]:
        loss_sum = torch.zeros((), dtype=torch.float64)
        ok = True
        for i, batch in enumerate(batches):
            loss = loss_fn(self.model, batch, i)
            # Agree before backward: a non-finite loss on any rank skips this micro-batch everywhere.
            finite = not dist.any_rank(not bool(torch.isfinite(loss.detach()).all()))
            loss_sum += loss.detach().double().cpu()
            if not finite:
                ok = False
                continue
            set_lr(self._base_optimizer, lr)
            self.model.backward(loss)
            self.model.step()
        norm = self.model.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        if not math.isfinite(norm) and ok:
            ok = False  # already applied by the engine: counted so repeated failures stop the run
        return loss_sum, norm, ok

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: ARG002 - in DeepSpeed's files
        return None

    def save_into(self, ckpt_dir: Path) -> None:
        self.model.save_checkpoint(str(ckpt_dir), tag="deepspeed", save_latest=False)

    def load_from(self, ckpt_dir: Path) -> None:
        if not (Path(ckpt_dir) / "deepspeed").is_dir():
            raise FileNotFoundError(f"{ckpt_dir}: no deepspeed/ directory; the checkpoint was written "
                                    "by another backend (set trainer.backend to match it)")
        self.model.load_checkpoint(str(ckpt_dir), tag="deepspeed", load_module_strict=True,
                                   load_optimizer_states=True, load_lr_scheduler_states=False)


def make_engine(net: torch.nn.Module, cfg: TrainerConfig, device: torch.device, micro_batch: int):
    if cfg.backend == "deepspeed":
        return DeepSpeedEngine(net, cfg, device, micro_batch)
    return DDPEngine(net, cfg, device)
