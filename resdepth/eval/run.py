"""``main(cfg)``: evaluate this process's share of the work list.

Flow of one process: load the exports, build the fixed work list (``resdepth.infer.work``), record
it in ``plan.json``, compute or load the baseline, evaluate each unit of this worker that has no
part yet (``evaluate_unit``), wait for the other ranks, and, when every unit of every task has its
part, merge them into ``metrics.json``, ``report.md`` and ``samples.png`` (``resdepth.eval.merge``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from resdepth import dist
from resdepth.data.format import context_of, shapes_for
from resdepth.data.netinput import context_mismatch, net_input_batch
from resdepth.eval.baseline import baseline_dir, baseline_identity, load_or_compute
from resdepth.eval.config import EvalConfig, result_hash, sibling_split, validate
from resdepth.eval.merge import merge, summary_line
from resdepth.eval.predictions import PredictionShard, pred_path
from resdepth.eval.samples import Sample, iter_samples
from resdepth.eval.scoring import SAVED, SPREAD_GRID, activity_group, score_by_group, to_floats
from resdepth.eval.wandb_log import log_evaluation
from resdepth.infer import parts as P
from resdepth.infer.batching import batches, prefetch
from resdepth.infer.frame import Frame, Share, process_frame, running
from resdepth.infer.nets import Nets, load_nets, make_patching, resolve_device
from resdepth.infer.progress import Progress
from resdepth.infer.sampler import predict
from resdepth.infer.work import Unit, make_units, split_shards
from resdepth.utils.errors import UserError

log = logging.getLogger("resdepth")


@dataclass
class Context:
    """What every unit of one process needs."""
    cfg: EvalConfig
    out: Path
    nets: Nets
    patching: Any
    baseline: Optional[torch.Tensor]  # [1, H, W] metres
    plan_hash: str
    device: torch.device
    shapes: dict          # every sample's array shapes (from the nets' data shape)
    totals: dict          # shard url -> its sample count in the index (None when uncounted)
    depth_range: tuple[float, float]  # [Dmax exp(-alpha), Dmax] of the depth normalisation
    noise_std: Optional[float]  # the noise baseline's std (normalised depth); None: no noise baseline
    spread_grid: tuple[float, ...] = ()  # a calibration run's scales (``calibrate``)


CALIBRATION = "calibration"  # OUT/calibration/: the evaluation of the calibration split


def main(cfg: EvalConfig) -> int:
    """Evaluate this process's units; the process that completes the work list merges it. 0 when
    done. With ``calibrate``, first fit ``spread_scale`` on the calibration split."""
    validate(cfg)
    with process_frame(cfg) as frame:
        if cfg.calibrate:
            cfg = calibrate(cfg, frame)
        evaluate_split(cfg, frame)
    return 0


def evaluate_split(cfg: EvalConfig, frame: Frame, spread_grid: tuple[float, ...] = ()) -> None:
    """This worker's units of ``cfg.data``, then the merge by whoever completes the work list."""
    ctx, units, plan = prepare(cfg, frame.out, spread_grid)
    share = Share.of(units, frame)
    todo = [u for u in share.mine if not unit_done(ctx, u)]
    label = "calibrate" if spread_grid else "eval"
    with running(frame.out, share, todo, ("evaluate", "evaluated"), "samples", label) as progress:
        for unit in todo:
            evaluate_unit(ctx, unit, progress)
            progress.unit_finished(unit.name)
    finish(cfg, frame, plan)


def calibration_split(cfg: EvalConfig) -> Path:
    """The split named by ``calibrate`` ('auto': ``val/`` beside the data split); never the
    evaluated split itself."""
    if cfg.calibrate == "auto":
        split = sibling_split(cfg.data, "val")
        if split is None:
            raise UserError(f"calibrate=auto: no val/ split beside {cfg.data} (looked for "
                             f"{Path(cfg.data).parent / 'val'}); pass --calibrate VAL_SPLIT")
    else:
        split = Path(cfg.calibrate)
        if not split.is_dir():
            raise UserError(f"calibrate={cfg.calibrate}: no such split directory")
    if Path(cfg.data).is_dir() and split.resolve() == Path(cfg.data).resolve():
        raise UserError(f"calibrate={cfg.calibrate}: that is the evaluated split itself; fit the "
                         "spread on a validation split")
    return split


def calibrate(cfg: EvalConfig, frame: Frame) -> EvalConfig:
    """``cfg`` with ``spread_scale`` fitted on the calibration split: that split evaluated with
    the same nets and sampler into ``OUT/calibration/`` (parts, resume and merge as any evaluation;
    every array task evaluates all of it, so none waits for another), its members scored widened by
    each scale of ``SPREAD_GRID``, the scale of least CRPS taken."""
    split = calibration_split(cfg)
    out = frame.out / CALIBRATION
    cal = dataclasses.replace(cfg, data=str(split), out=str(out), calibrate=None, spread_scale=1.0,
                              max_samples=0, noise_baseline=False, baseline="none",
                              denoised_sigma=0.0, save_predictions=False, save_members=False,
                              preview=0, wandb=False)
    evaluate_split(cal, Frame(out, 1, 0), SPREAD_GRID)
    dist.barrier()
    fit = json.loads((out / "metrics.json").read_text())["spread_calibration"]
    if dist.is_main():
        log.info("spread_scale %g fitted on %s: CRPS %.4f m there (%.4f m as sampled); evaluating "
                 "%s with it", fit["best"], split, fit["crps_at_best"], fit["crps_at_1"], cfg.data)
        if fit["best"] in (SPREAD_GRID[0], SPREAD_GRID[-1]):
            log.warning("spread_scale %g is at the end of the calibration grid [%g, %g]: the "
                        "ensemble is far from calibrated (too few sampler steps or an untrained "
                        "residual net?)", fit["best"], SPREAD_GRID[0], SPREAD_GRID[-1])
    return dataclasses.replace(cfg, spread_scale=fit["best"], calibrate=str(split))


def residual_std(cfg: EvalConfig, nets: Nets) -> Optional[float]:
    """The noise baseline's std (normalised depth): the residual std that stage 2 measured."""
    if not cfg.noise_baseline or nets.diffusion_meta is None:
        return None
    value = nets.diffusion_meta.get("residual_std")
    return None if value is None else float(value)


def make_plan(cfg: EvalConfig, nets: Nets, units: list[Unit], index: Optional[dict],
              baseline: Optional[list], device: torch.device,
              spread_grid: tuple[float, ...] = ()) -> dict:
    """The work list and the settings that every part of it must share.

    ``baseline`` names the training split of the mean-depth baseline (None: no baseline);
    ``device`` matters with a diffusion net: CPU and CUDA generators draw different noise.
    """
    counts = [u.count for u in units]
    total = None if any(c is None for c in counts) else int(sum(counts))
    # the data by content where the index has checksums, so a moved split keeps its parts
    data_id = ([s.get("sha256") or s["name"] for s in index["shards"]] if index is not None
               else cfg.data)
    identity = {"nets": nets.identity(), "data": data_id, "baseline": baseline,
                "units": [(u.name, u.count) for u in units]}
    if cfg.diffusion:
        identity["noise_device"] = device.type
    if spread_grid:
        identity["spread_grid"] = list(spread_grid)
    with_baseline = baseline is not None
    settings = {"ensemble": cfg.ensemble if cfg.diffusion else None, "steps": cfg.steps,
                "sampler": cfg.sampler, "patch": cfg.patch, "seed": cfg.seed,
                "spread_scale": cfg.spread_scale if cfg.diffusion else None,
                "spread_scale_fitted_on": cfg.calibrate,
                "protocol": cfg.protocol,
                "noise_std": residual_std(cfg, nets)}
    return {"hash": result_hash(cfg, identity), "data": cfg.data, "num_samples": total,
            "index_num_samples": None if index is None else int(index.get("num_samples", -1)),
            "max_samples": cfg.max_samples, "preview": cfg.preview,
            "diffusion": bool(cfg.diffusion), "baseline": with_baseline,
            "settings": {k: v for k, v in settings.items() if v is not None},
            "units": [u.to_dict() for u in units]}


def check_split(data: str, index: Optional[dict], nets: Nets) -> None:
    """Refuse a split whose events are not of the shape the nets were trained on, or whose
    temporal context is not the one they were trained with."""
    if index is not None and "shapes" in index:
        found = [int(s) for s in index["shapes"]["events.npy"]]
        if found != list(nets.data_shape):
            raise UserError(f"{data} holds events of shape {found}, the nets were trained on "
                             f"{list(nets.data_shape)} (bins, height, width)")
        why = context_mismatch(nets.context, context_of(index), "the nets", data)
        if why:
            raise UserError(why)


def prepare(cfg: EvalConfig, out: Path,
            spread_grid: tuple[float, ...] = ()) -> tuple[Context, list[Unit], dict]:
    """Nets, work list, plan (written by rank 0) and baseline: what this process's units need
    (``spread_grid``: the scales a calibration run scores)."""
    device = resolve_device(cfg)
    nets = load_nets(cfg, device)
    bins, h, w = nets.data_shape
    shards, index = split_shards(cfg.data)
    check_split(cfg.data, index, nets)
    units = make_units(shards, cfg.unit_size, cfg.max_samples)
    if not units:
        raise UserError(f"{cfg.data}: no samples to evaluate")
    train = baseline_dir(cfg)
    train_identity = baseline_identity(train) if train is not None else None
    plan = make_plan(cfg, nets, units, index, train_identity, device, spread_grid)
    if dist.is_main():
        (out / P.PARTS).mkdir(parents=True, exist_ok=True)
        P.write_plan(out, plan)
    dist.barrier()
    base = load_or_compute(train, train_identity, out, (h, w)) if train is not None else None
    ctx = Context(cfg, out, nets, make_patching(cfg, nets),
                  None if base is None else torch.from_numpy(base)[None].to(device), plan["hash"],
                  device, shapes_for(bins, h, w, (nets.context or {}).get("bins", 0)), dict(shards),
                  nets.depth_range(),
                  residual_std(cfg, nets), tuple(spread_grid))
    return ctx, units, plan


def finish(cfg: EvalConfig, frame: Frame, plan: dict) -> None:
    """Rank 0 merges when every unit of every task has its part, else says who will."""
    if not dist.is_main():
        return
    missing = P.missing_units(frame.out, plan)
    if missing:
        log.info("task %d finished; %d units of other tasks have no part yet: the last task to "
                 "finish (or `resdepth-eval merge %s`) writes metrics.json", frame.task_id,
                 len(missing), frame.out)
    else:
        metrics = merge(frame.out)
        dist.print0(summary_line(metrics, frame.out))
        if cfg.wandb:
            log_evaluation(frame.out, metrics, cfg.diffusion or cfg.regression, cfg.wandb_project)


def unit_done(ctx: Context, unit: Unit) -> bool:
    """A unit is done when its part exists (and its prediction shard, if predictions are wanted)."""
    part = P.read_part(ctx.out, unit.name)
    if part is None:
        return False
    if part.get("hash") != ctx.plan_hash:
        raise UserError(f"{P.part_path(ctx.out, unit.name)} was written by another evaluation")
    return not ctx.cfg.save_predictions or pred_path(ctx.out, unit.name).exists()


def evaluate_unit(ctx: Context, unit: Unit, progress: Progress) -> dict:
    """Predict every sample of ``unit``, write its predictions and previews, then (last) its part."""
    cfg = ctx.cfg
    samples = prefetch(iter_samples(unit.url, unit.start, unit.stop, ctx.shapes,
                                    ctx.totals.get(unit.url)), cfg.num_workers * cfg.batch)
    writer = PredictionShard(pred_path(ctx.out, unit.name)) if cfg.save_predictions else None
    sums: dict[str, dict] = {}
    previews: dict[str, list[np.ndarray]] = {}
    n, valid = 0, 0
    unit_keys: list[str] = []
    try:
        for batch in batches(samples, cfg.batch):
            unit_keys += [s.key for s in batch]
            valid += evaluate_batch(ctx, unit, n, batch, writer, sums, previews)
            n += len(batch)
            progress.update(extra=n)
        if writer is not None:
            writer.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if unit.count is not None and n != unit.count:
        raise UserError(f"{unit.url}: {n} samples in [{unit.start}, {unit.stop}), the index says "
                         f"{unit.count}")
    if previews:
        P.save_npz_atomic(P.preview_path(ctx.out, unit.name),
                          {k: np.stack(v) for k, v in previews.items()})
    part = {"unit": unit.name, "hash": ctx.plan_hash, "num_samples": n,
            "num_valid_pixels": valid, "sums": to_floats(sums), "keys": unit_keys}
    P.write_part(ctx.out, unit.name, part)
    return part


def evaluate_batch(ctx: Context, unit: Unit, n: int, batch: list[Sample],
                   writer: Optional[PredictionShard], sums: dict, previews: dict) -> int:
    """Predict and score one batch (samples ``n...`` of the unit), write what is asked; returns
    its number of valid pixels."""
    cfg = ctx.cfg
    keys = [s.key for s in batch]
    events = net_input_batch([s.events for s in batch], ctx.nets.voxel_norm,
                             [s.context for s in batch]).to(ctx.device)
    mask_host = np.stack([s.mask for s in batch])
    # metrics run where the predictions are: only the saved arrays come back to the host
    depth = torch.from_numpy(np.stack([s.depth for s in batch])).to(ctx.device)
    mask = torch.from_numpy(mask_host).to(ctx.device)
    pred = predict(cfg, ctx.nets, events, keys, ctx.patching, ctx.noise_std,
                   keep_normalised=bool(ctx.spread_grid))
    score_by_group(ctx, sums, pred, depth, mask, [s.sequence for s in batch],
                   [activity_group(s.num_events, int(s.mask.sum())) for s in batch])
    previewed = unit.offset is not None and unit.offset + n < cfg.preview
    if writer is not None or previewed:  # to the host: what is saved or previewed only
        pred = {k: v.cpu() for k, v in pred.items()
                if k in SAVED and (k != "members" or cfg.save_members or previewed)}
    if writer is not None:
        for i, key in enumerate(keys):
            writer.write(key, {k: v[i] for k, v in pred.items()
                               if k != "members" or cfg.save_members})
    keep_previews(ctx, unit, n, batch, pred, previews)
    return int(mask_host.sum())


def keep_previews(ctx: Context, unit: Unit, n: int, batch: list, pred: dict,
                  previews: dict[str, list[np.ndarray]]) -> None:
    """Keep the arrays of the first ``preview`` samples of the work list (fixed for any world size)."""
    if unit.offset is None:
        return
    for i, s in enumerate(batch):
        if unit.offset + n + i >= ctx.cfg.preview:
            return
        previews.setdefault("keys", []).append(np.array(s.key))
        previews.setdefault("events", []).append(s.events.sum(axis=0))
        previews.setdefault("depth", []).append(s.depth[0])
        previews.setdefault("mask", []).append(s.mask[0])
        previews.setdefault("regression", []).append(pred["regression"][i, 0].numpy())
        if "members" in pred:
            previews.setdefault("mean", []).append(pred["mean"][i, 0].numpy())
            previews.setdefault("median", []).append(pred["median"][i, 0].numpy())
            previews.setdefault("member", []).append(pred["members"][i, 0, 0].numpy())
            previews.setdefault("std", []).append(pred["std"][i, 0].numpy())
