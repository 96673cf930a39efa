"""One optimiser step on DDP or DeepSpeed behind the same three calls: ``train_step``,
``state_dict``/``load_state_dict`` and ``save_into``/``load_from`` (DeepSpeed's own files).

A step whose loss or gradient is not finite on any rank is skipped on every rank (the parameters
stay untouched) and reported to the loop, which counts it. The decision is taken on the device
(``GuardedAdamW``): a step reads nothing back to the host.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import torch

from resdepth import dist
from resdepth.config import config_dir
from resdepth.train.checkpoint import safe_load_deepspeed
from resdepth.train.config import TrainerConfig
from resdepth.train.optim import make_optimizer, set_lr
from resdepth.utils.errors import UserError

log = logging.getLogger("resdepth")
LossFn = Callable[[torch.nn.Module, dict, int], torch.Tensor]


def use_bf16(cfg: TrainerConfig, device: torch.device) -> bool:
    """bf16 maths when asked, on GPU (and on CPU only with ``trainer.cpu_bf16``)."""
    return cfg.precision == "bf16" and (device.type == "cuda" or cfg.cpu_bf16)


def autocast_ctx(cfg: TrainerConfig, device: torch.device):
    """bf16 autocast when ``use_bf16``; otherwise fp32 (CPU default: bit-exact resume, no slow
    bf16 kernels)."""
    if use_bf16(cfg, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_backends(cfg: TrainerConfig, device: torch.device) -> None:
    """cuDNN autotuning, TF32 and deterministic kernels as configured (process-wide settings).

    ``deterministic`` turns off autotuning (it may pick different algorithms run to run) and asks
    for deterministic kernels; cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` before its first use.
    """
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=False)
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = not cfg.deterministic
    torch.backends.cudnn.deterministic = cfg.deterministic
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    torch.backends.cudnn.allow_tf32 = cfg.tf32


class StepResult(NamedTuple):
    """One optimiser step, all on the device (nothing is read back to the host here)."""
    loss_sum: torch.Tensor          # this rank's sum of micro-batch losses
    grad_norm: Any                  # tensor (or DeepSpeed's float / None), read at log intervals
    ok: torch.Tensor                # bool: the update was applied (same on every rank)


class DDPEngine:
    """Plain PyTorch: DistributedDataParallel when there are several ranks, fused AdamW, clipping.

    A step whose gradient norm (or any rank's loss) is not finite is skipped on the device by
    ``GuardedAdamW``.

    On CUDA the weights are made channels-last like the activations (``SongUNet.memory_format``):
    cuDNN returns the weight gradients of NHWC convolutions in channels-last strides, DDP's bucket
    views copy each parameter's strides, and a gradient whose strides differ is copied into its
    bucket every step ("Grad strides do not match bucket view strides"). On the CPU, oneDNN hands
    back contiguous weight gradients, so the weights stay as they are (and the CPU numbers too).
    """

    name = "ddp"

    def __init__(self, net: torch.nn.Module, cfg: TrainerConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        if device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        self.module = net.to(device)
        self.model: torch.nn.Module = net
        if dist.world_size() > 1:
            ids = [device.index] if device.type == "cuda" else None
            # Our nets use every parameter every step and hold only constant buffers: the graph is
            # static and buffers need no broadcast; gradients live in the buckets (no copy).
            self.model = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=ids, gradient_as_bucket_view=True, broadcast_buffers=False,
                static_graph=True)
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.optimizer = make_optimizer(net, cfg, clip=cfg.clip_grad)

    def train_step(self, loss_fn: LossFn, batches: list[dict], lr: float) -> StepResult:
        """Forward/backward every micro-batch, then step (skipped on the device if not finite)."""
        loss_sum = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                with autocast_ctx(self.cfg, self.device):
                    loss = loss_fn(self.model, batch, i)
                (loss / len(batches)).backward()
            loss_sum += loss.detach().float()
        set_lr(self.optimizer, lr)
        self.optimizer.loss_bad = ~torch.isfinite(loss_sum)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss_sum, self.optimizer.last_norm, self.optimizer.last_ok)

    def fp32_masters(self) -> tuple[None, bool]:
        """The module's weights are the fp32 masters themselves (see ``DeepSpeedEngine``)."""
        return None, False

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
            path = config_dir().parent / path  # e.g. configs/deepspeed/zero2.json from anywhere
        try:
            ds = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"trainer.deepspeed_config={path}: cannot read DeepSpeed JSON ({e})") from e
    zero = dict(ds.get("zero_optimization", {}))
    if cfg.zero_stage is not None:
        zero["stage"] = cfg.zero_stage
    zero.setdefault("stage", 0)
    if zero["stage"] not in (0, 1, 2):
        raise UserError(f"ZeRO stage {zero['stage']} is not supported (0, 1 or 2)")
    ds.update({"train_micro_batch_size_per_gpu": micro_batch,
               "gradient_accumulation_steps": cfg.grad_accum,
               "train_batch_size": micro_batch * cfg.grad_accum * dist.world_size(),
               "zero_optimization": zero,
               "gradient_clipping": cfg.clip_grad,
               "zero_allow_untested_optimizer": True,  # our AdamW subclass (fused, guarded)
               "steps_per_print": 10**9,
               "bf16": {"enabled": use_bf16}})
    ds.pop("fp16", None)
    ds.pop("optimizer", None)  # our torch AdamW is passed in (a config Adam compiles an op)
    return ds


def load_deepspeed_files_safely(engine) -> None:
    """Make the engine read its checkpoint files with ``weights_only=True`` (DeepSpeed's own
    loader unpickles arbitrary objects)."""
    engine.checkpoint_engine.load = lambda path, map_location=None: safe_load_deepspeed(path)


class DeepSpeedEngine:
    """DeepSpeed ZeRO 0/1/2 with our fused AdamW passed in; checkpoints through the engine.

    bf16: DeepSpeed keeps fp32 masters and bf16 module weights; the forward runs under bf16
    autocast. fp32 ZeRO-0: DeepSpeed leaves clipping and the norm to the optimiser.
    """

    name = "deepspeed"

    def __init__(self, net: torch.nn.Module, cfg: TrainerConfig, device: torch.device, micro_batch: int):
        import deepspeed
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # skip a 30 s op build
        dist.init(device.type, group=True)  # DeepSpeed wants a process group even for one process
        self.cfg, self.device = cfg, device
        bf16 = use_bf16(cfg, device)
        ds_cfg = deepspeed_config(cfg, micro_batch, bf16)
        own_clipping = not bf16 and ds_cfg["zero_optimization"]["stage"] == 0
        if own_clipping:  # fp32 ZeRO-0 neither reports nor checks the norm: our optimiser clips there
            ds_cfg["gradient_clipping"] = 0.0
        optimizer = make_optimizer(net, cfg, clip=cfg.clip_grad if own_clipping else None)
        self.model, self.optimizer, _, _ = deepspeed.initialize(
            model=net.to(device), optimizer=optimizer, config=ds_cfg, dist_init_required=False)
        load_deepspeed_files_safely(self.model)
        if cfg.compile:
            self.model.compile()
        self.module = self.model.module
        self._base_optimizer = optimizer

    def train_step(self, loss_fn: LossFn, batches: list[dict], lr: float) -> StepResult:
        loss_sum = torch.zeros((), device=self.device)
        base = self._base_optimizer
        base.last_ok = None
        for i, batch in enumerate(batches):
            with autocast_ctx(self.cfg, self.device):
                loss = loss_fn(self.model, batch, i)
            loss_sum += loss.detach().float()
            set_lr(base, lr)
            base.loss_bad = ~torch.isfinite(loss_sum)
            self.model.backward(loss)
            self.model.step()
        # DeepSpeed's bf16 optimiser skips a non-finite norm itself and never calls ours.
        ok = base.last_ok if base.last_ok is not None else torch.zeros((), dtype=torch.bool,
                                                                        device=self.device)
        return StepResult(loss_sum, self.model.get_global_grad_norm(), ok)

    def fp32_masters(self) -> tuple[Optional[list], bool]:
        """Per module parameter, the fp32 master slice this rank holds, for the EMA.

        Returns ``(masters, partitioned)``; ``masters`` is None when the module is fp32 (its
        weights are the masters), else one ``(start, numel, flat fp32 tensor)`` per parameter:
        DeepSpeed's bf16 ZeRO-0 optimiser keeps whole fp32 copies (per parameter or flat per
        group); ZeRO 1/2 link
        each bf16 parameter to the slice of the masters its rank owns (``_hp_mapping``). The
        lookup is redone at each call: loading a checkpoint may replace the master tensors.
        """
        params = list(self.module.parameters())
        if all(p.dtype == torch.float32 for p in params):
            return None, False
        opt = self.model.optimizer
        if hasattr(opt, "fp16_groups") and hasattr(opt, "fp32_groups"):  # ZeRO-0 bf16 (unfused)
            where = {id(p): (0, p.numel(), m) for lp, hp in zip(opt.fp16_groups, opt.fp32_groups)
                     for p, m in zip(lp, hp)}
            return [where.get(id(p), (0, 0, None)) for p in params], False
        if hasattr(opt, "fp16_groups") and hasattr(opt, "fp32_groups_flat"):  # ZeRO-0 bf16 (fused)
            where = {}
            for flat, group in zip(opt.fp32_groups_flat, opt.fp16_groups):
                offset = 0
                for p in group:
                    where[id(p)] = (0, p.numel(), flat.narrow(0, offset, p.numel()))
                    offset += p.numel()
            return [where.get(id(p), (0, 0, None)) for p in params], False
        out = []
        for p in params:
            mapping = getattr(p, "_hp_mapping", None)
            out.append((0, 0, None) if mapping is None else
                       (mapping.lp_fragment_address.start, mapping.lp_fragment_address.numel,
                        mapping.get_hp_fragment()))
        return out, True

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
