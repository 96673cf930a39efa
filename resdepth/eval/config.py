"""Configuration of an evaluation run: which exports, which data, how to sample, how to split the work."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Optional

from resdepth.config.core import ConfigError, opt
from resdepth.infer import config as infer_config
from resdepth.infer.config import INFERENCE_NON_RESULT_KEYS, InferenceSettings, inference_errors


@dataclass
class EvalConfig(InferenceSettings):
    """An evaluation: the shared inference settings, the labelled split and what to write."""
    data: str = opt("", "Split directory holding index.json and tar shards, or shard URLs (brace pattern).")
    out: str = opt("", "Output directory: parts/, metrics.json, report.md, samples.png, predictions.")
    max_samples: int = opt(0, "Evaluate only the first N samples of the work list (0: all).")
    protocol: Literal["pooled", "e2depth", "ramnet", "hmnet"] = opt("pooled", "Scoring protocol: pooled (every valid pixel of the split weighs the same), e2depth (per-frame means as rpg_e2depth scores MVSEC: truth capped at Dmax and rescaled per frame, strict masks, sq_rel err^2/t^2), ramnet (as RAM-Net's evaluation.py: like e2depth, but truth only capped, never rescaled, and inclusive masks) or hmnet (per-frame means as HMNet: truth in [Dmax exp(-alpha), Dmax], sq_rel err^2/t). See resdepth/eval/metrics.py.")
    noise_baseline: bool = opt(True, "Also score the noise baseline: the regression mean plus Gaussian noise of the residual std the diffusion run measured, with as many members as the ensemble.")
    save_predictions: bool = opt(False, "Write pred-<unit>.tar shards with regression, ensemble mean and std per sample.")
    save_members: bool = opt(False, "Also store the ensemble members in the prediction shards.")
    baseline: Optional[str] = opt(None, "Training split for the per-pixel mean-depth baseline (default: sibling train/ of the data split; 'none' disables).")
    calibrate: Optional[str] = opt(None, "Validation split on which to fit spread_scale first: the evaluation runs there (OUT/calibration/, resumable like any evaluation), takes the scale of least CRPS on a grid from 0.5 to 4 and evaluates --data with it; 'auto': the val/ split beside --data. Unset: spread_scale as given.")
    num_workers: int = opt(0, "Reader threads prefetching samples per rank.")
    preview: int = opt(4, "Samples shown in samples.png (the first ones of the work list).")
    wandb: bool = opt(False, "Log the metrics table and samples.png to Weights & Biases: into the W&B run of the evaluated net's training run when it has one (diffusion, else regression), else a new run in wandb_project.")
    wandb_project: str = opt("resdepth", "W&B project of the new run when the evaluated net's training run has no W&B run.")


# Settings that change no number in parts/: a rerun or another array task may differ in these.
# (``calibrate`` changes numbers only through the ``spread_scale`` it fits, which is hashed)
NON_RESULT_KEYS = INFERENCE_NON_RESULT_KEYS + ("num_workers", "save_predictions", "save_members", "data",
                                               "baseline", "wandb", "wandb_project", "calibrate")


def result_hash(cfg: EvalConfig, identity: Mapping[str, object]) -> str:
    """Hash of every evaluation setting that changes a number in a part, plus the inputs' identities
    (``resdepth.infer.config.result_hash`` without evaluation's ``NON_RESULT_KEYS``)."""
    return infer_config.result_hash(cfg, identity, NON_RESULT_KEYS)


def sibling_split(data: str, name: str) -> Optional[Path]:
    """The split ``name`` beside the split directory ``data`` (``shards/val`` beside
    ``shards/test``), or None when ``data`` is not a directory or there is no such other split."""
    guess = Path(data).parent / name
    if Path(data).is_dir() and guess.is_dir() and guess.resolve() != Path(data).resolve():
        return guess
    return None


def validate(cfg: EvalConfig) -> None:
    """Collect every problem of a config that parsed but cannot run."""
    errors = []
    if not cfg.data:
        errors.append("data: required (split directory or shard URLs)")
    if not cfg.out:
        errors.append("out: required (output directory)")
    if cfg.max_samples < 0 or cfg.preview < 0 or cfg.num_workers < 0:
        errors.append("max_samples, preview and num_workers must be >= 0")
    if cfg.calibrate and not cfg.diffusion:
        errors.append("calibrate: fits the diffusion ensemble's spread; pass --diffusion too")
    errors += inference_errors(cfg)
    if errors:
        raise ConfigError("invalid evaluation configuration:\n  " + "\n  ".join(errors))
