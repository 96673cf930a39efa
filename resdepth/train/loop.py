"""The training loop shared by both stages: regression (masked MSE) and residual diffusion (EDM).

``main(cfg)`` is what ``resdepth-train``, ``torchrun``, ``srun`` and the Slurm launcher all call.
It returns 0 when ``trainer.max_steps`` is reached and ``REQUEUE_EXIT_CODE`` after saving on a
stop signal. Resuming is exact: model, EMA, optimiser, counters, RNG states and every rank's
data position are restored, and the per-step noise comes from generators seeded by the step.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import logging.handlers
import os
import signal
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from resdepth import dist
from resdepth.config import config_hash, to_yaml
from resdepth.config.schema import Config
from resdepth.data.loader import finish_batch
from resdepth.models.build import arch_spec, build_net
from resdepth.train.checkpoint import Checkpointer, CheckpointError, rng_state, set_rng_state
from resdepth.train.engine import StepResult, autocast_ctx, configure_backends, make_engine
from resdepth.train.monitor import Monitor
from resdepth.train.optim import EMA, lr_at, schedule_steps
from resdepth.train.rundir import claim_run_dir, write_stop_marker
from resdepth.train.signals import REQUEUE_EXIT_CODE, StopFlag
from resdepth.train.stage import build_loss, load_regression_net, predict_panels
from resdepth.train.wandb_sink import open_sink
from resdepth.utils.logging import setup_logging

log = logging.getLogger("resdepth")
# Keys that may change between a run and its resumption without breaking exactness. max_steps is
# one of them only as the stopping point: the cosine schedule's length enters the hash by itself.
RESUME_FREE_KEYS = ("run", "logging", "trainer.max_steps", "trainer.resume")
# Test hook: rank 0 sends itself SIGUSR2 after this step (as Slurm's submitit signals rank 0 only).
FAULT_SIGNAL_ENV = "RESDEPTH_FAULT_SIGNAL_AT_STEP"


class NonFiniteError(RuntimeError):
    """Too many non-finite losses or gradients in a row."""


def resumable_hash(cfg: Config) -> str:
    """Hash of every setting a resumed run must share with the run it continues.

    A cosine schedule without ``trainer.schedule_steps`` spans ``max_steps``: changing
    ``max_steps`` then changes every later learning rate, so the span is hashed as
    ``schedule_steps`` (set ``schedule_steps`` to extend a run exactly).
    """
    tc = cfg.trainer
    span = schedule_steps(tc) if tc.schedule == "cosine" else tc.schedule_steps
    return config_hash(dataclasses.replace(cfg, trainer=dataclasses.replace(tc, schedule_steps=span)),
                       ignore=RESUME_FREE_KEYS)


def step_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed from the run seed and integers (step, rank, micro-batch)."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


class Trainer:
    """State of one training run; ``run()`` drives it."""

    def __init__(self, cfg: Config, dry_run: bool = False):
        from resdepth.data.loader import ShardStream, split_urls
        from resdepth.data.norm import DepthNorm

        self.cfg = cfg
        self.run_dir = Path(cfg.run.dir)
        self.device = dist.device()
        configure_backends(cfg.trainer, self.device)
        world = dist.world_size()
        tc = cfg.trainer
        per_rank, rem = divmod(tc.batch_size, world * tc.grad_accum)
        if rem or per_rank < 1:
            raise ValueError(f"trainer.batch_size={tc.batch_size} must be a multiple of world size "
                             f"({world}) x trainer.grad_accum ({tc.grad_accum})")
        self.micro_batch = per_rank
        if not cfg.data.root and not cfg.data.train_urls:
            raise ValueError("data.root is empty: point it at a directory holding train/ and val/ "
                             "(make one with `resdepth-shards synth --out DIR`)")
        self.norm = DepthNorm.from_config(cfg.data)
        train_src = cfg.data.train_urls or str(Path(cfg.data.root) / "train")
        if not cfg.data.train_urls and not (Path(train_src) / "index.json").is_file():
            raise FileNotFoundError(f"data.root={cfg.data.root}: no {train_src}/index.json; data.root "
                                    "must hold train/ and val/ split directories written by "
                                    "resdepth-shards (synth, pack or reshard)")
        self.train_urls = split_urls(train_src, None)
        self.index = _read_index_or_none(cfg.data.root, "train")
        self.bins, self.height, self.width = _shape_from(self.index, self.train_urls)
        crop = cfg.data.crop or None
        self.train_stream = ShardStream(
            self.train_urls, mode="train", batch_size=per_rank, num_workers=cfg.data.num_workers,
            seed=cfg.run.seed, crop=crop, flip=cfg.data.flip, norm=self.norm,
            shuffle_buffer=cfg.data.shuffle_buffer, on_error=cfg.data.on_error, index=self.index,
            max_consecutive_skips=cfg.data.max_consecutive_skips, voxel_norm=cfg.data.voxel_norm,
            raw=True, pin_memory=self.device.type == "cuda")
        self.val_stream = None
        val_src = cfg.data.val_urls or (str(Path(cfg.data.root) / "val") if cfg.data.root else None)
        if cfg.run.val_every > 0 and val_src and (cfg.data.val_urls or Path(val_src).is_dir()):
            self.val_stream = ShardStream(
                split_urls(val_src, None), mode="eval", batch_size=per_rank, num_workers=0,
                seed=cfg.run.seed, norm=self.norm, on_error=cfg.data.on_error,
                max_consecutive_skips=cfg.data.max_consecutive_skips,
                index=_read_index_or_none(cfg.data.root, "val"), voxel_norm=cfg.data.voxel_norm,
                raw=True)

        patching = bool(cfg.diffusion.patch_shape)
        self.spec = arch_spec(cfg.model, cfg.model.stage, self.bins, [self.height, self.width], patching)
        self.regression_net = None
        self.residual_scale: dict[str, float] = {}
        if cfg.model.stage == "diffusion":
            reg_spec = arch_spec(cfg.model, "regression", self.bins, [self.height, self.width])
            self.regression_net = load_regression_net(cfg.model.regression_ckpt, reg_spec,
                                                      self.norm, self.device, cfg.data.voxel_norm)
            self.residual_scale = self.measure_residual_scale(train_src)
        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        net = build_net(self.spec, sigma_data=cfg.diffusion.sigma_data,
                        use_apex_gn=cfg.model.use_apex_gn)
        self.loss_fn_core = build_loss(cfg, self.regression_net)
        self.num_params = sum(p.numel() for p in net.parameters())
        self.dry_run = dry_run
        if dry_run:
            self.net = net.to(self.device)
            return
        # The EMA copies the fp32 weights before DeepSpeed bf16 casts the module in place.
        self.ema = EMA(net, tc.ema_halflife_images, self.device) if tc.ema_halflife_images > 0 else None
        self.engine = make_engine(net, tc, self.device, per_rank)
        self.checkpointer = Checkpointer(self.run_dir, tc.keep_last)
        self.step = 0
        self.images_seen = 0
        self._zero_interval()
        # Non-finite bookkeeping stays on the device; it is read at log intervals only.
        self._in_row = torch.zeros((), dtype=torch.int64, device=self.device)
        self._limit_step = torch.full((), -1, dtype=torch.int64, device=self.device)
        self.last_norm: Any = None
        self.stop = StopFlag()
        self.saved_step = -1

    def measure_residual_scale(self, train_src: str) -> dict[str, float]:
        """Measure the residual std on the train split; unset sigma_data, P_mean and sigma_max
        of ``cfg.diffusion`` follow from it (the values go into checkpoints and the export)."""
        from resdepth.data.loader import ShardStream, split_urls
        from resdepth.diffusion.config import resolve_residual_scale
        from resdepth.train.stage import measure_residual_std

        d = self.cfg.diffusion
        stream = ShardStream(split_urls(train_src, None), mode="eval", batch_size=self.micro_batch,
                             num_workers=0, seed=self.cfg.run.seed, norm=self.norm,
                             on_error=self.cfg.data.on_error, index=self.index,
                             voxel_norm=self.cfg.data.voxel_norm)
        std = measure_residual_std(self.regression_net, stream, self.device, d.residual_samples)
        given = {k: getattr(d, k) for k in ("sigma_data", "P_mean", "sigma_max")}
        scale = resolve_residual_scale(d, std)
        log.info("residual std %.4f (normalised depth, %d train samples per rank): sigma_data %.4f, "
                 "P_mean %.3f, sampler sigma_max %.3f%s", std, d.residual_samples, d.sigma_data,
                 d.P_mean, d.sigma_max, "" if all(v is None for v in given.values()) else
                 f" (given: {', '.join(k for k, v in given.items() if v is not None)})")
        return scale

    # ---- resume --------------------------------------------------------------------------
    def resume(self) -> Optional[Path]:
        """Load the checkpoint ``trainer.resume`` names; returns its path or None."""
        found = self.load_resume_checkpoint()
        if found is None:
            return None
        path, (meta, shared, per_rank) = found
        if meta.get("spec") != self.spec:
            from resdepth.models.build import check_same_arch
            check_same_arch(meta.get("spec", {}), self.spec, str(path))
        if meta.get("resume_hash") != resumable_hash(self.cfg):
            log.warning("%s was written with a different configuration (hash %s, now %s): "
                        "resuming anyway, the run is no longer an exact continuation",
                        path, meta.get("resume_hash"), resumable_hash(self.cfg))
        if meta.get("backend") != self.engine.name:
            raise ValueError(f"{path} was written by trainer.backend={meta.get('backend')}, "
                             f"this run uses {self.engine.name}")
        self.engine.module.load_state_dict(shared["model"])
        self.engine.load_state_dict(shared["engine"])
        self.engine.load_from(path)
        if self.ema is not None and shared.get("ema") is not None:
            self.ema.load_state_dict(shared["ema"])
        self.step = int(shared["step"])
        self.saved_step = self.step
        self.images_seen = int(shared["images_seen"])
        self._zero_interval()
        for k, v in shared["interval"].items():
            self.interval[k].fill_(v)
        self._in_row.fill_(int(shared["nonfinite_in_row"]))
        if per_rank is not None:
            set_rng_state(per_rank["rng"])
            self.train_stream.load_state_dict(per_rank["data"])
        else:
            log.warning("%s was written by %s ranks, this run has %d: the data order restarts at "
                        "the epoch (model and optimiser are restored)", path,
                        meta.get("world_size"), dist.world_size())
            self.train_stream.load_state_dict({**shared["data0"], "position": 0})
        log.info("resumed from %s at step %d (%d images seen)", path, self.step, self.images_seen)
        return path

    def load_resume_checkpoint(self) -> Optional[tuple[Path, tuple]]:
        """(path, ``Checkpointer.load`` result) of the checkpoint to resume from, or None.

        With ``resume=auto`` a damaged newest checkpoint (a truncated or unreadable file on any
        rank) is set aside with a warning naming it, and the previous complete one is tried."""
        mode = self.cfg.trainer.resume
        if mode == "never":
            return None
        if mode != "auto":
            path = Path(mode)
            if not (path / "meta.json").is_file():
                what = "no such directory" if not path.exists() else "no meta.json in it"
                raise CheckpointError(f"trainer.resume={mode}: {what}; name a checkpoint directory "
                                      "(RUN/checkpoints/step-NNNNNNN) or use auto or never")
            return path, Checkpointer.load(path)
        damaged = []
        for path in reversed(self.checkpointer.complete()):
            try:
                loaded, error = Checkpointer.load(path), None
            except CheckpointError as e:
                loaded, error = None, str(e)
            if not dist.any_rank(error is not None):
                if damaged:
                    log.warning("resuming from %s, the newest complete checkpoint that loads; "
                                "damaged and set aside: %s", path, ", ".join(damaged))
                return path, loaded
            reason = error or "a file of another rank cannot be loaded"
            log.warning("checkpoint %s is damaged (%s); falling back to the previous one", path, reason)
            damaged.append(str(self.checkpointer.set_aside(path)))
        if damaged:
            raise CheckpointError(f"every checkpoint in {self.checkpointer.root} is damaged (set aside: "
                                  f"{', '.join(damaged)}); resume one by hand with trainer.resume=PATH "
                                  "after repairing it, or start over with trainer.resume=never "
                                  "run.overwrite=true")
        return None

    @property
    def nonfinite_in_row(self) -> int:
        """Skipped steps in a row up to now (reads the device counter)."""
        return int(self._in_row)

    def _zero_interval(self) -> None:
        z = lambda: torch.zeros((), dtype=torch.float64, device=self.device)  # noqa: E731
        self.interval = {"loss_sum": z(), "n": z(), "nonfinite": z()}

    def _ema_net(self) -> torch.nn.Module:
        """The whole EMA net (a collective under DeepSpeed bf16 with several ranks)."""
        self.ema.synchronize()
        return self.ema.net

    def save(self) -> Path:
        ema = self._ema_net().state_dict() if self.ema is not None else None
        shared = {"model": self.engine.module.state_dict(), "engine": self.engine.state_dict(),
                  "ema": ema, "step": self.step, "images_seen": self.images_seen,
                  "interval": {k: float(v) for k, v in self.interval.items()},
                  "nonfinite_in_row": self.nonfinite_in_row,
                  "lr_schedule": {"step": self.step, "lr": lr_at(self.step, self.cfg.trainer)},
                  "data0": self.train_stream.state_dict()}
        per_rank = {"rng": rng_state(), "data": self.train_stream.state_dict()}
        meta = {"spec": self.spec, "backend": self.engine.name, "images_seen": self.images_seen,
                "config_hash": config_hash(self.cfg), "resume_hash": resumable_hash(self.cfg),
                "norm": self.norm.to_dict(), **self.scale_meta(), "data": self.data_meta()}
        self.last_save_time = time.monotonic()
        self.saved_step = self.step
        return self.checkpointer.save(self.step, shared, per_rank, meta, self.engine.save_into)

    def export(self) -> None:
        """Write the EMA (or raw) weights and ``model.json`` to ``run.dir/export`` (rank 0)."""
        net = self._ema_net() if self.ema is not None else self.engine.module
        if not dist.is_main():
            return
        from resdepth.models.export import save_export

        meta = {"spec": self.spec, **self.scale_meta(), "norm": self.norm.to_dict(),
                "data": self.data_meta(),
                "step": self.step, "images_seen": self.images_seen,
                "config_hash": config_hash(self.cfg), "weights": "ema" if self.ema else "raw",
                "regression_ckpt": self.cfg.model.regression_ckpt or None}
        save_export(self.run_dir / "export", net, meta)
        log.info("exported inference weights to %s", self.run_dir / "export")

    def scale_meta(self) -> dict[str, Any]:
        """sigma_data and, in stage 2, the measured residual std and the resolved noise settings."""
        d = self.cfg.diffusion
        return {"sigma_data": d.sigma_data, **self.residual_scale}

    def data_meta(self) -> dict[str, Any]:
        """The input a net of this run expects: voxel grid shape and event normalisation."""
        return {"bins": self.bins, "height": self.height, "width": self.width,
                "voxel_norm": self.cfg.data.voxel_norm}

    @torch.no_grad()
    def dry_forward(self, images: int = 2) -> list[str]:
        """One forward pass of the loss on the first ``images`` of the first real training batch
        (and validation batch), so that size and configuration errors show before a job is queued
        (quickly, even on a CPU login node); one line per batch."""
        lines = []
        streams = [("train", self.train_stream)] + ([("val", self.val_stream)] if self.val_stream else [])
        self.net.eval()
        for name, stream in streams:
            batch = next(iter(stream))
            batch = finish_batch({k: v[:images] for k, v in batch.items()}, self.device, self.norm)
            gen = torch.Generator(self.device).manual_seed(self.cfg.run.seed)
            t0 = time.perf_counter()
            loss = float(self.loss_fn_core(self.net, batch, gen))
            lines.append(f"{name} batch {list(batch['events'].shape)}: loss {loss:.5f} "
                         f"({time.perf_counter() - t0:.2f} s forward)")
        return lines

    # ---- one step ------------------------------------------------------------------------
    def loss_fn(self, model: torch.nn.Module, batch: dict, micro: int) -> torch.Tensor:
        gen = torch.Generator(self.device).manual_seed(
            step_seed(self.cfg.run.seed, self.step, dist.rank(), micro))
        return self.loss_fn_core(model, batch, gen)

    def next_batches(self, it) -> tuple[list[dict], Any]:
        out = []
        while len(out) < self.cfg.trainer.grad_accum:
            try:
                batch = next(it)
            except StopIteration:
                it = iter(self.train_stream)  # next epoch; every rank has the same length
                continue
            out.append(finish_batch(batch, self.device, self.norm))
        return out, it

    def train_one(self, batches: list[dict]) -> StepResult:
        lr = lr_at(self.step, self.cfg.trainer)
        self.engine.module.train()
        return self.engine.train_step(self.loss_fn, batches, lr)

    def after_step(self, res: StepResult, micro_batches: int) -> None:
        """Count the step on the device (no host sync); ``check_nonfinite`` reads the counts."""
        tc = self.cfg.trainer
        ok = res.ok
        okf = ok.to(torch.float64)
        self._in_row = torch.where(ok, 0, self._in_row + 1)
        reached = (self._in_row >= tc.max_nonfinite) & (self._limit_step < 0)
        self._limit_step = torch.where(reached, self.step, self._limit_step)
        # a skipped step adds nothing (where, not okf *: 0 x NaN would poison the interval's mean)
        self.interval["loss_sum"] += torch.where(ok, res.loss_sum.to(torch.float64), 0.0) / micro_batches
        self.interval["n"] += okf
        self.interval["nonfinite"] += 1 - okf
        if self.ema is not None:
            masters, partitioned = self.engine.fp32_masters()
            self.ema.update(self.engine.module, tc.batch_size, ok, masters, partitioned)
        self.last_norm = res.grad_norm
        self.step += 1
        self.images_seen += tc.batch_size

    def check_nonfinite(self, nonfinite: int) -> None:
        """Raise once ``max_nonfinite`` steps in a row were skipped (checked at log intervals:
        the skipped steps changed nothing, so stopping a few steps late loses nothing)."""
        tc = self.cfg.trainer
        if nonfinite:
            log.warning("step %d: %d non-finite steps skipped since the last log line (%d in a row "
                        "now, limit %d)", self.step, nonfinite, self.nonfinite_in_row,
                        tc.max_nonfinite)
        limit_step = int(self._limit_step)
        if limit_step >= 0:
            raise NonFiniteError(f"step {limit_step}: {tc.max_nonfinite} non-finite losses or "
                                 f"gradients in a row (trainer.max_nonfinite={tc.max_nonfinite}); "
                                 "check the data (resdepth-shards verify) and lower trainer.lr")

    # ---- logging and validation ----------------------------------------------------------
    def log_interval(self, monitor: Monitor, timing: dict) -> float:
        """Reduce the interval's sums over ranks (the one host sync of the interval) and log them;
        returns the mean loss."""
        totals = dist.all_reduce_sum(torch.stack(list(self.interval.values())))
        loss_sum, n, nonfinite = totals.tolist()
        n, nonfinite = n / dist.world_size(), int(round(nonfinite / dist.world_size()))
        self.check_nonfinite(nonfinite)
        norm = self.last_norm
        norm = float(norm) if norm is not None else float("nan")
        values = {"loss": loss_sum / dist.world_size() / max(n, 1),
                  "lr": lr_at(self.step - 1, self.cfg.trainer),
                  "grad_norm": norm, "images_seen": self.images_seen, "nonfinite": nonfinite}
        elapsed = max(timing["elapsed"], 1e-9)
        perf = {"images_per_s": timing["images"] / elapsed,
                "data_wait_frac": timing["wait"] / elapsed}
        monitor.scalars(self.step, {**values, **perf})
        monitor.stats(self.step, {**values, **{k: round(v, 4) for k, v in perf.items()}})
        log.info("step %d loss %.5f lr %.2e grad %.3f %.1f img/s data-wait %.1f%%", self.step,
                 values["loss"], values["lr"], norm, perf["images_per_s"], 100 * perf["data_wait_frac"])
        self._zero_interval()
        return values["loss"]

    @torch.no_grad()
    def validate(self, monitor: Monitor) -> Optional[float]:
        if self.val_stream is None:
            return None
        net = self._ema_net() if self.ema is not None else self.engine.module
        net.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        first = None
        limit = self.cfg.run.val_batches
        for i, batch in enumerate(self.val_stream):
            if limit and i >= limit:
                break
            batch = finish_batch(batch, self.device, self.norm)
            gen = torch.Generator(self.device).manual_seed(step_seed(self.cfg.run.seed, -1, i))
            with autocast_ctx(self.cfg.trainer, self.device):
                loss = self.loss_fn_core(net, batch, gen)
            n = batch["events"].shape[0]
            totals[0] += loss.detach().to(torch.float64) * n
            totals[1] += n
            if first is None:
                first = batch
        dist.all_reduce_sum(totals)
        val = float(totals[0] / max(totals[1], 1))
        monitor.scalars(self.step, {"loss": val}, prefix="val")
        monitor.stats(self.step, {"val_loss": val})
        log.info("step %d validation loss %.5f", self.step, val)
        if first is not None and dist.is_main():
            self.image_panels(monitor, net, first)
        return val

    def image_panels(self, monitor: Monitor, net: torch.nn.Module, batch: dict) -> None:
        from resdepth.utils.viz import colorize_depth, colorize_events

        pred = predict_panels(self.cfg, net, self.regression_net, batch, self.norm)[0, 0].cpu().numpy()
        true_m = batch["depth_m"][0, 0].cpu().numpy()
        mask = batch["mask"][0, 0].cpu().numpy() > 0
        lo = float(true_m[mask].min()) if mask.any() else 1.0
        hi = float(self.cfg.data.max_depth)
        monitor.images(self.step, {
            "events": colorize_events(batch["events"][0].cpu().numpy()),
            "depth_true": colorize_depth(true_m, mask, lo, hi),
            "depth_pred": colorize_depth(pred, None, lo, hi),
            "residual": colorize_events(np.where(mask, true_m - pred, 0.0))})

    # ---- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        cfg, tc = self.cfg, self.cfg.trainer
        self.resume()
        monitor = Monitor(self.run_dir, self.step, tc.max_steps, dist.is_main(),
                          wandb=open_sink(self.run_dir, cfg) if dist.is_main() else None)
        self.stop.install()
        self.last_save_time = time.monotonic()
        timing = {"elapsed": 0.0, "wait": 0.0, "images": 0}
        shown = "loss -"
        it = iter(self.train_stream)
        try:
            while self.step < tc.max_steps:
                t0 = time.perf_counter()
                batches, it = self.next_batches(it)
                t1 = time.perf_counter()
                self.after_step(self.train_one(batches), len(batches))
                if dist.is_main() and os.environ.get(FAULT_SIGNAL_ENV) == str(self.step):
                    os.kill(os.getpid(), signal.SIGUSR2)
                timing["wait"] += t1 - t0
                timing["elapsed"] += time.perf_counter() - t0
                timing["images"] += tc.batch_size
                if self.step % cfg.run.log_every == 0 or self.step == tc.max_steps:
                    timing["elapsed"] += self._drain()  # the interval's queued GPU work counts
                    shown = f"loss {self.log_interval(monitor, timing):.4f}"
                    timing = {"elapsed": 0.0, "wait": 0.0, "images": 0}
                monitor.advance(self.step, shown)
                if cfg.run.val_every and self.step % cfg.run.val_every == 0:
                    self.validate(monitor)
                if self.should_stop_or_save():
                    return REQUEUE_EXIT_CODE
            if self.saved_step != self.step:
                self.save()
            self.export()
            log.info("final parameter checksum %s (rank %d)", self.param_checksum(), dist.rank())
            return 0
        finally:
            self.train_stream.log_skip_summary()
            monitor.close()
            self.stop.restore()

    def _drain(self) -> float:
        """Wait for the queued device work (once per log interval); returns the seconds waited,
        which belong to the interval's wall time."""
        before = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - before

    def param_checksum(self) -> str:
        """sha256 of this rank's parameters: equal on every rank after a correct data-parallel run."""
        h = hashlib.sha256()
        for p in self.engine.module.parameters():
            h.update(p.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def should_stop_or_save(self) -> bool:
        """Collective: save on schedule; on a stop signal (any rank) save and tell the caller to stop."""
        tc = self.cfg.trainer
        time_due = tc.ckpt_every_minutes > 0 and \
            time.monotonic() - self.last_save_time >= 60 * tc.ckpt_every_minutes
        flags = torch.tensor([float(self.stop.raised), float(time_due and dist.is_main())],
                             dtype=torch.float64)
        dist.all_reduce_sum(flags)
        stop, due = flags[0] > 0, flags[1] > 0
        step_due = tc.ckpt_every_steps > 0 and self.step % tc.ckpt_every_steps == 0
        if stop or due or step_due:
            path = self.save()
        if stop:
            if dist.is_main():
                write_stop_marker(self.run_dir, self.step, self.stop.signal_name or "on another rank",
                                  path, REQUEUE_EXIT_CODE)
            log.warning("stop signal (%s) at step %d: checkpoint saved, exiting with status %d "
                        "(requeue)", self.stop.signal_name or "on another rank", self.step,
                        REQUEUE_EXIT_CODE)
        return bool(stop)


def _read_index_or_none(root: str, split: str) -> Optional[dict]:
    from resdepth.data.format import read_index

    if not root or not (Path(root) / split / "index.json").exists():
        return None
    return read_index(Path(root) / split)


def _shape_from(index: Optional[dict], urls: list[str]) -> tuple[int, int, int]:
    """(bins, H, W) from ``index.json``, or from the first sample when streaming bare URLs."""
    if index is not None:
        b, h, w = index["shapes"]["events.npy"]
        return int(b), int(h), int(w)
    from resdepth.data.loader import peek_shape

    return peek_shape(urls)


def write_run_config(cfg: Config) -> None:
    run_dir = Path(cfg.run.dir)
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))


def main(cfg: Config, dry_run: bool = False) -> int:
    """Train as configured; 0 when done, ``REQUEUE_EXIT_CODE`` after saving on a stop signal."""
    rank = dist.detect_env().rank
    # Console only until the run directory is this run's (an old run's logs may be moved aside);
    # what is logged before goes into the log file afterwards.
    setup_logging(None, rank)
    early = logging.handlers.BufferingHandler(10_000)
    log.addHandler(early)
    dist.init()
    ok = False
    lock = None
    try:
        try:
            lock = claim_run_dir(Path(cfg.run.dir), cfg.trainer.resume, cfg.run.overwrite)
        finally:
            log.removeHandler(early)
        setup_logging(Path(cfg.run.dir), rank)
        for handler in log.handlers:
            if isinstance(handler, logging.FileHandler):
                for record in early.buffer:
                    handler.handle(record)
        if lock is not None:
            lock.report()
        write_run_config(cfg)
        trainer = Trainer(cfg, dry_run=dry_run)
        if dry_run:
            dist.print0(f"dry run: {trainer.num_params:,} parameters ({cfg.model.stage}, "
                        f"{cfg.model.arch}), {len(trainer.train_urls)} train shards, input "
                        f"{trainer.bins}x{trainer.height}x{trainer.width}, "
                        f"{trainer.micro_batch} images per rank per micro-batch, "
                        f"{len(trainer.train_stream)} batches per epoch per rank")
            for line in trainer.dry_forward():
                dist.print0(f"dry run: {line}")
            ok = True
            return 0
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
