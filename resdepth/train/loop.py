"""The training loop shared by both stages: regression (masked MSE) and residual diffusion (EDM).

``main(cfg)`` is what ``resdepth-train``, ``torchrun``, ``srun`` and the Slurm launcher all call.
It returns 0 when ``trainer.max_steps`` is reached and ``REQUEUE_EXIT_CODE`` after saving on a
stop signal. Resuming is exact: model, EMA, optimiser, counters, RNG states and every rank's
data position are restored, and the per-step noise comes from generators seeded by the step.

The parts: ``TrainInputs`` (streams), ``TrainState`` (counters), ``CheckpointManager`` (resume
and saves), ``MetricsLogger`` (interval sums, non-finite guard, writers), ``Validator``.
"""
from __future__ import annotations

import hashlib
import logging
import logging.handlers
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from resdepth import dist
from resdepth.config import config_hash
from resdepth.data.loader import finish_batch
from resdepth.models.build import arch_spec, build_net
from resdepth.models.export import save_export
from resdepth.train.config import Config
from resdepth.train.engine import StepResult, configure_backends, make_engine
from resdepth.train.inputs import TrainInputs
from resdepth.train.manager import CheckpointManager, Parts, Resume
from resdepth.train.metrics import MetricsLogger, drain
from resdepth.train.optim import EMA, lr_at
from resdepth.train.rundir import open_run_dir, write_run_config
from resdepth.train.signals import REQUEUE_EXIT_CODE, StopFlag
from resdepth.train.stage import build_loss, load_regression_net, residual_scale
from resdepth.train.state import TrainState
from resdepth.train.validate import Validator, dry_forward, step_seed
from resdepth.train.wandb_sink import open_sink
from resdepth.utils.logging import setup_logging

log = logging.getLogger("resdepth")


class Nets:
    """The net to train (fp32, on the device), its loss and, in stage 2, the frozen regression
    net and the resolved residual scale (``resume`` supplies a recorded one)."""

    def __init__(self, cfg: Config, inputs: TrainInputs, device: torch.device,
                 resume: Optional[Resume] = None):
        size = [inputs.height, inputs.width]
        self.spec = arch_spec(cfg.model, cfg.model.stage, inputs.cond_channels, size,
                              bool(cfg.diffusion.patch_shape), inputs.context)
        self.regression_net = None
        self.scale: dict[str, float] = {}
        if cfg.model.stage == "diffusion":
            reg_spec = arch_spec(cfg.model, "regression", inputs.cond_channels, size,
                                 context=inputs.context)
            self.regression_net = load_regression_net(cfg.model.regression_ckpt, reg_spec,
                                                      inputs.norm, device, cfg.data.voxel_norm)
            self.scale = residual_scale(cfg, self.regression_net, lambda: inputs.train_in_order(cfg),
                                        device, resume.residual_std if resume else None,
                                        str(resume.path) if resume else "")
        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        self.net = build_net(self.spec, sigma_data=cfg.diffusion.sigma_data,
                             use_apex_gn=cfg.model.use_apex_gn).to(device)
        self.loss_core = build_loss(cfg, self.regression_net)
        self.num_params = sum(p.numel() for p in self.net.parameters())


class Trainer:
    """One training run assembled from its parts; ``run()`` is the loop."""

    def __init__(self, cfg: Config):
        self.cfg, tc = cfg, cfg.trainer
        self.run_dir = Path(cfg.run.dir)
        self.device = dist.device()
        configure_backends(tc, self.device)
        self.inputs = TrainInputs.build(cfg, self.device)
        self.checkpoints = CheckpointManager(cfg)  # finds the checkpoint to resume from
        nets = Nets(cfg, self.inputs, self.device, self.checkpoints.found)
        self.spec, self.scale, self.loss_core = nets.spec, nets.scale, nets.loss_core
        # The EMA copies the fp32 weights before DeepSpeed bf16 casts the module in place.
        self.ema = EMA(nets.net, tc.ema_halflife_images, self.device) if tc.ema_halflife_images > 0 else None
        self.engine = make_engine(nets.net, tc, self.device, self.inputs.micro_batch)
        self.state = TrainState(self.device)
        self.validator = None if self.inputs.val is None else Validator(
            cfg, self.inputs.val, lambda *a: self.loss_core(*a), nets.regression_net,
            self.inputs.norm, self.device, self.inputs.bins)
        self.parts = Parts(self.engine, self.ema, self.state, self.inputs.train, self.eval_net,
                           self.run_meta)
        self.stop = StopFlag()

    def run(self) -> int:
        """Train to ``trainer.max_steps``: 0 when done, ``REQUEUE_EXIT_CODE`` after saving on a
        stop signal."""
        cfg, tc, state = self.cfg, self.cfg.trainer, self.state
        self.checkpoints.restore(self.parts)
        metrics = MetricsLogger(self.run_dir, state.step, tc)
        if dist.is_main():
            sink = open_sink(self.run_dir, cfg)  # None, with one warning, when W&B cannot log
            if sink is not None:
                metrics.add_writer(sink)
        self.stop.install()
        batches = self.batches()
        try:
            while state.step < tc.max_steps:
                t0 = time.perf_counter()
                micro_batches = next(batches)
                t1 = time.perf_counter()
                self.train_step(micro_batches)
                metrics.time_step(t1 - t0, time.perf_counter() - t0, tc.batch_size)
                if state.step % cfg.run.log_every == 0 or state.step == tc.max_steps:
                    metrics.log_interval(state, drain(self.device))
                metrics.advance(state.step)
                if self.validator and cfg.run.val_every and state.step % cfg.run.val_every == 0:
                    self.validator.run(self.eval_net(), state.step, metrics)
                if self.checkpoints.maybe_save(self.stop):
                    return REQUEUE_EXIT_CODE
            self.checkpoints.save_final()
            self.export()
            log.info("final parameter checksum %s (rank %d)", self.param_checksum(), dist.rank())
            return 0
        finally:
            self.inputs.train.log_skip_summary()
            metrics.close()
            self.stop.restore()

    def batches(self) -> Iterator[list[dict]]:
        """``grad_accum`` micro-batches per step, on the device, epoch after epoch."""
        it = iter(self.inputs.train)
        while True:
            out = []
            while len(out) < self.cfg.trainer.grad_accum:
                try:
                    batch = next(it)
                except StopIteration:
                    it = iter(self.inputs.train)  # next epoch; every rank has the same length
                    continue
                out.append(finish_batch(batch, self.device, self.inputs.norm))
            yield out

    def train_step(self, micro_batches: list[dict]) -> StepResult:
        """One optimiser step with this step's learning rate and noise, counted in the state."""
        tc, step = self.cfg.trainer, self.state.step

        def loss_fn(model: torch.nn.Module, batch: dict, micro: int) -> torch.Tensor:
            gen = torch.Generator(self.device).manual_seed(
                step_seed(self.cfg.run.seed, step, dist.rank(), micro))
            return self.loss_core(model, batch, gen)

        self.engine.module.train()
        res = self.engine.train_step(loss_fn, micro_batches, lr_at(step, tc))
        self.state.record(res, len(micro_batches), tc.batch_size, tc.max_nonfinite)
        if self.ema is not None:
            masters, partitioned = self.engine.fp32_masters()
            self.ema.update(self.engine.module, tc.batch_size, res.ok, masters, partitioned)
        return res

    def eval_net(self) -> torch.nn.Module:
        """The EMA net (a collective under DeepSpeed bf16 with several ranks), or the raw one."""
        if self.ema is None:
            return self.engine.module
        self.ema.synchronize()
        return self.ema.net

    def run_meta(self) -> dict[str, Any]:
        """What a checkpoint and the export record about the net: architecture, depth
        normalisation, input, sigma_data (and stage 2's residual scale), progress."""
        return {"spec": self.spec, "sigma_data": self.cfg.diffusion.sigma_data, **self.scale,
                "norm": self.inputs.norm.to_dict(), "data": self.inputs.meta(self.cfg),
                "step": self.state.step, "images_seen": self.state.images_seen,
                "config_hash": config_hash(self.cfg)}

    def export(self) -> None:
        """Write the EMA (or raw) weights and ``model.json`` to ``run.dir/export`` (rank 0)."""
        net = self.eval_net()
        if dist.is_main():
            save_export(self.run_dir / "export", net, {
                **self.run_meta(), "weights": "ema" if self.ema else "raw",
                "regression_ckpt": self.cfg.model.regression_ckpt or None})
            log.info("exported inference weights to %s", self.run_dir / "export")

    def param_checksum(self) -> str:
        """sha256 of this rank's parameters: equal on every rank after a correct data-parallel run."""
        h = hashlib.sha256()
        for p in self.engine.module.parameters():
            h.update(p.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]


def run_dry(cfg: Config) -> int:
    """Build the data and the net, report sizes and run one forward pass; train nothing."""
    device = dist.device()
    configure_backends(cfg.trainer, device)
    inputs = TrainInputs.build(cfg, device)
    nets = Nets(cfg, inputs, device)
    dist.print0(f"dry run: {nets.num_params:,} parameters ({cfg.model.stage}, {cfg.model.arch}), "
                f"{len(inputs.train_urls)} train shards, input {inputs.bins}x{inputs.height}x"
                f"{inputs.width}, {inputs.micro_batch} images per rank per micro-batch, "
                f"{len(inputs.train)} batches per epoch per rank")
    streams = {"train": inputs.train, **({"val": inputs.val} if inputs.val else {})}
    for line in dry_forward(nets.net, nets.loss_core, streams, inputs.norm, device, cfg.run.seed):
        dist.print0(f"dry run: {line}")
    return 0


def main(cfg: Config, dry_run: bool = False) -> int:
    """Train as configured; 0 when done, ``REQUEUE_EXIT_CODE`` after saving on a stop signal.
    With ``dry_run``: build data and net, run one forward pass, train nothing."""
    rank = dist.detect_env().rank
    # Console only until the run directory is this run's (an old run's logs may be moved aside);
    # what is logged before goes into the log file afterwards.
    setup_logging(None, rank)
    early = logging.handlers.BufferingHandler(10_000)
    log.addHandler(early)
    dist.init()
    ok, lock = False, None
    try:
        lock = open_run_dir(cfg, rank, early)
        # config.yaml is written once stage 2's residual scale is resolved into cfg: it says
        # what ran.
        if dry_run:
            code = run_dry(cfg)
            write_run_config(cfg)
        else:
            trainer = Trainer(cfg)
            write_run_config(cfg)
            code = trainer.run()
        ok = True
        return code
    finally:
        if ok:
            dist.shutdown()
        elif dist.is_dist():
            torch.distributed.destroy_process_group()
        if lock is not None:
            lock.release()
