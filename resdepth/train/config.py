"""The training configuration: the run directory and the training loop, and ``Config``, the
whole schema a training run is given (one section per package)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from resdepth.config.core import opt
from resdepth.data.config import DataConfig
from resdepth.diffusion.config import DiffusionConfig
from resdepth.models.config import ModelConfig


@dataclass
class RunConfig:
    dir: str = opt("runs/default", "Run directory: config.yaml, checkpoints/, tb/, stats.jsonl, log-rankN.txt, export/.")
    seed: int = opt(0, "Seed of model initialisation, data order and noise.")
    log_every: int = opt(10, "Steps between stats.jsonl lines and TensorBoard scalars.")
    val_every: int = opt(100, "Steps between validations on the val split, with TensorBoard image panels (0 = never).")
    val_batches: int = opt(4, "Batches per validation (0 = the whole split).")
    overwrite: bool = opt(False, "With trainer.resume=never: move an earlier run found in run.dir (checkpoints, stats, tb, export, config, logs) to DIR.old-N instead of refusing to start.")

    def check(self) -> list[tuple[str, str]]:
        """(key, problem) for every value out of range."""
        out = []
        if not self.dir.strip():
            out.append(("dir", "must name a directory (it is empty)"))
        if self.log_every <= 0:
            out.append(("log_every", f"must be >= 1, got {self.log_every}"))
        for key in ("val_every", "val_batches"):
            if getattr(self, key) < 0:
                out.append((key, f"must be >= 0, got {getattr(self, key)}"))
        return out


@dataclass
class LoggingConfig:
    wandb: bool = opt(False, "Also log to Weights & Biases (pip install -e '.[wandb]'; mode from WANDB_MODE, e.g. offline on nodes without network); TensorBoard and stats.jsonl stay.")
    wandb_project: str = opt("resdepth", "W&B project.")
    wandb_entity: Optional[str] = opt(None, "W&B entity (user or team); null: the logged-in user's default.")
    wandb_name: Optional[str] = opt(None, "W&B run name; null: the name of run.dir.")
    wandb_group: Optional[str] = opt(None, "W&B group; null: in stage 2 the group (else the name) of the stage-1 run, in stage 1 none.")
    wandb_tags: list[str] = opt([], "W&B run tags.")


@dataclass
class TrainerConfig:
    max_steps: int = opt(1000, "Optimiser steps to train for.")
    batch_size: int = opt(8, "Global batch size in images (split over ranks and accumulation steps).")
    grad_accum: int = opt(1, "Micro-batches accumulated per optimiser step.")
    backend: Literal["ddp", "deepspeed"] = opt("ddp", "Distributed backend.")
    zero_stage: Optional[int] = opt(None, "DeepSpeed ZeRO stage (0, 1 or 2); null takes the stage of deepspeed_config (default 0).")
    deepspeed_config: str = opt("", "DeepSpeed JSON (e.g. configs/deepspeed/zero2.json); inline keys above win.")
    precision: Literal["fp32", "bf16"] = opt("bf16", "Autocast precision on GPU (CPU trains in fp32 unless cpu_bf16).")
    cpu_bf16: bool = opt(False, "Honour precision=bf16 on the CPU too (slow; checks the bf16 path without a GPU).")
    tf32: bool = opt(True, "Allow TF32 tensor-core maths for fp32 matmuls and convolutions on GPU.")
    deterministic: bool = opt(False, "Deterministic GPU kernels (cudnn.deterministic, torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG); slower.")
    lr: float = opt(2e-4, "Peak learning rate of AdamW.")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    betas: list[float] = opt([0.9, 0.999], "AdamW betas.")
    warmup_steps: int = opt(50, "Linear warm-up steps.")
    schedule_steps: int = opt(0, "Steps the cosine decay spans (0 = max_steps; set it to extend max_steps on resume without changing the schedule).")
    schedule: Literal["cosine", "step", "constant"] = opt("cosine", "Decay after warm-up.")
    step_every: int = opt(1000, "Step decay: steps between decays.")
    step_gamma: float = opt(0.5, "Step decay: factor per decay.")
    min_lr_ratio: float = opt(0.05, "Cosine decay ends at lr * min_lr_ratio.")
    clip_grad: float = opt(1.0, "Gradient norm clip (0 = off).")
    ema_halflife_images: float = opt(5000.0, "EMA half-life in images (0 = no EMA).")
    ckpt_every_steps: int = opt(200, "Steps between checkpoints (0 = only by time and at the end).")
    ckpt_every_minutes: float = opt(30.0, "Minutes between checkpoints (0 = only by steps).")
    keep_last: int = opt(3, "Complete checkpoints kept; older ones are deleted.")
    resume: str = opt("auto", "auto (newest complete checkpoint in run.dir), never, or a checkpoint path.")
    max_nonfinite: int = opt(5, "Non-finite losses or gradients in a row before training stops.")
    compile: bool = opt(False, "torch.compile the network.")

    def check(self) -> list[tuple[str, str]]:
        """(key, problem) for every value out of range."""
        out = []
        for key, low in (("max_steps", 0), ("batch_size", 1), ("grad_accum", 1), ("warmup_steps", 0),
                         ("step_every", 1), ("ckpt_every_steps", 0), ("keep_last", 0),
                         ("max_nonfinite", 1), ("lr", 0), ("weight_decay", 0), ("step_gamma", 0),
                         ("min_lr_ratio", 0), ("clip_grad", 0), ("ema_halflife_images", 0),
                         ("ckpt_every_minutes", 0)):
            if getattr(self, key) < low:
                out.append((key, f"must be >= {low}, got {getattr(self, key)}"))
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            out.append(("betas", f"must be two numbers in [0, 1), got {self.betas}"))
        if self.zero_stage not in (None, 0, 1, 2):
            out.append(("zero_stage", f"must be 0, 1, 2 or null, got {self.zero_stage}"))
        if not self.resume.strip():
            out.append(("resume", "must be auto, never or a checkpoint path (it is empty)"))
        return out


@dataclass
class Config:
    run: RunConfig = opt(None, "Run directory, seed and logging.")
    data: DataConfig = opt(None, "Shards and the streaming loader.")
    model: ModelConfig = opt(None, "Network architecture and stage.")
    diffusion: DiffusionConfig = opt(None, "EDM residual loss and samplers.")
    trainer: TrainerConfig = opt(None, "Optimisation, distribution and checkpoints.")
    logging: LoggingConfig = opt(None, "Optional loggers beside TensorBoard and stats.jsonl (Weights & Biases).")
