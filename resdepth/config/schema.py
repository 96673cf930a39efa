"""The training configuration: one section per package."""
from __future__ import annotations

from dataclasses import dataclass

from resdepth.config.core import opt
from resdepth.data.config import DataConfig
from resdepth.diffusion.config import DiffusionConfig
from resdepth.models.config import ModelConfig
from resdepth.train.config import LoggingConfig, RunConfig, TrainerConfig


@dataclass
class Config:
    run: RunConfig = opt(None, "Run directory, seed and logging.")
    data: DataConfig = opt(None, "Shards and the streaming loader.")
    model: ModelConfig = opt(None, "Network architecture and stage.")
    diffusion: DiffusionConfig = opt(None, "EDM residual loss and samplers.")
    trainer: TrainerConfig = opt(None, "Optimisation, distribution and checkpoints.")
    logging: LoggingConfig = opt(None, "Optional loggers beside TensorBoard and stats.jsonl (Weights & Biases).")
