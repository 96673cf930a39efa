"""The settings evaluation and prediction share (nets, sampler, work split) and what names a result."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Literal, Mapping, Optional

from resdepth.config.core import ConfigError, opt
from resdepth.diffusion.config import SamplerSettings


@dataclass
class InferenceSettings(SamplerSettings):
    """The nets, how to sample them and how to share the work: what evaluation and prediction share."""
    regression: str = opt("", "Regression run directory, export directory or model.safetensors file.")
    diffusion: Optional[str] = opt(None, "Residual diffusion run directory, export directory or weights file; omitted: regression only.")
    ensemble: int = opt(8, "Ensemble members drawn per image by the diffusion sampler.")
    steps: int = opt(18, "Sampler steps.")
    spread_scale: float = opt(1.0, "The members are moved away from their ensemble mean by this factor (mean + spread_scale x (member - mean), normalised depth): the mean stays, the spread grows above 1. A residual net trained briefly draws too narrow an ensemble; `resdepth-eval --calibrate` fits the factor on a validation split by minimum CRPS and metrics.json records it.")
    patch: int = opt(0, "Patch size for patch-based diffusion sampling (0 samples the full image).")
    overlap: int = opt(4, "Overlap in pixels between neighbouring patches.")
    boundary: int = opt(2, "Boundary pixels padded around each patch.")
    batch: int = opt(4, "Images per forward pass (does not change any prediction).")
    sample_rows: int = opt(0, "Images x ensemble members per sampler batch: members and images run together (0: batch x ensemble; does not change any prediction).")
    precision: Literal["fp32", "bf16"] = opt("fp32", "Autocast precision of the nets (bf16: faster on GPU, changes the numbers).")
    seed: int = opt(0, "Base seed; every member of every sample has its own generator from (seed, key, member).")
    unit_size: int = opt(64, "Samples per work unit (one part file each); fixed, so the work list does not depend on the world size.")
    num_tasks: Optional[int] = opt(None, "Slurm array tasks sharing this work (default: SLURM_ARRAY_TASK_COUNT, else 1).")
    task_id: Optional[int] = opt(None, "This array task's index in [0, num_tasks) (default: SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN).")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "Device: each rank's GPU when available, else the CPU.")
    threads: int = opt(0, "torch.set_num_threads per process (0 keeps the default).")


# Settings of evaluation and prediction alike that change no number: where and how fast it runs,
# and the exports' paths (their content is in the identity)
INFERENCE_NON_RESULT_KEYS = ("out", "batch", "sample_rows", "num_tasks", "task_id", "device", "threads",
                             "regression", "diffusion")


def result_hash(cfg: InferenceSettings, identity: Mapping[str, object],
                ignore: tuple[str, ...]) -> str:
    """Hash of every setting that changes a number in a part, plus the inputs' identities.

    ``identity`` names the exports and data by content (export steps, shard list), so that moving a
    directory does not invalidate parts while swapping weights does.
    """
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ignore}
    d["identity"] = dict(identity)
    text = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve_tasks(cfg: InferenceSettings, environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """``(num_tasks, task_id)`` from the config, else the Slurm array variables, else ``(1, 0)``."""
    num, tid = cfg.num_tasks, cfg.task_id
    if num is None and "SLURM_ARRAY_TASK_COUNT" in environ:
        num = int(environ["SLURM_ARRAY_TASK_COUNT"])
    if tid is None and "SLURM_ARRAY_TASK_ID" in environ:
        # Arrays may start anywhere (--array=5-9) and step (--array=0-20:4): index from min and step.
        first = int(environ.get("SLURM_ARRAY_TASK_MIN", 0))
        step = int(environ.get("SLURM_ARRAY_TASK_STEP", 1) or 1)
        offset = int(environ["SLURM_ARRAY_TASK_ID"]) - first
        if offset % step:
            raise ConfigError(f"SLURM_ARRAY_TASK_ID={environ['SLURM_ARRAY_TASK_ID']} is not on the "
                              f"array's grid (min {first}, step {step}); pass --num-tasks and "
                              "--task-id explicitly")
        tid = offset // step
    num = 1 if num is None else num
    tid = 0 if tid is None else tid
    if num < 1 or not 0 <= tid < num:
        raise ConfigError(f"task_id={tid} is not in [0, num_tasks={num}); with a Slurm array given as a "
                          "list (--array=1,5,7) pass --num-tasks and --task-id explicitly")
    return num, tid


def inference_errors(cfg: InferenceSettings) -> list[str]:
    """The problems of the settings evaluation and prediction share."""
    errors = []
    if not cfg.regression:
        errors.append("regression: required (run directory, export directory or weights file)")
    for name in ("ensemble", "steps", "batch", "unit_size"):
        if getattr(cfg, name) < 1:
            errors.append(f"{name}: must be >= 1, got {getattr(cfg, name)}")
    if cfg.ensemble < 2 and cfg.diffusion:
        errors.append("ensemble: at least 2 members are needed for the ensemble spread and CRPS")
    if cfg.threads < 0:
        errors.append(f"threads: must be >= 0, got {cfg.threads}")
    if cfg.sample_rows < 0:
        errors.append(f"sample_rows: must be >= 0, got {cfg.sample_rows}")
    if not cfg.spread_scale > 0:
        errors.append(f"spread_scale: must be > 0, got {cfg.spread_scale}")
    if cfg.patch < 0:
        errors.append(f"patch: must be >= 0, got {cfg.patch}")
    if cfg.patch and not 0 <= cfg.overlap < cfg.patch:
        errors.append(f"overlap: must be in [0, patch={cfg.patch}), got {cfg.overlap}")
    if cfg.boundary < 0:
        errors.append(f"boundary: must be >= 0, got {cfg.boundary}")
    return errors
